"""Shared fixtures: realistic in-memory samples and one small dataset per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from eoforge.shards.keys import TileId
from eoforge.shards.manifest import merge_parts
from eoforge.shards.meta import Labels, SampleMeta, TimeStep
from eoforge.shards.sample import Sample
from eoforge.shards.schema import WORLDCOVER
from eoforge.shards.writer import ShardWriter

TILE_PX = 32
RES_M = 10.0


def make_sample(index: int, split: str = "train", steps: int = 2, seed: int = 0, size: int = TILE_PX) -> Sample:
    """A grid tile in UTM 32N with S2 (L2A-like DN, zero B10, a nodata corner), S1 dB with a
    NaN strip, SCL, WorldCover classes and labels derived from them."""
    rng = np.random.default_rng([seed, index])
    tile = TileId(32, "n", 250 + index % 7, 1900 + index // 7)
    tile_m = size * RES_M
    # smooth field of land-cover classes: blocks of a few classes per tile
    classes = np.array(WORLDCOVER.codes[:5], dtype=np.uint8)
    lc = classes[rng.integers(0, 5, (4, 4))].repeat(size // 4, 0).repeat(size // 4, 1)[None]
    base = rng.integers(300, 4000, (13, 1, 1))
    s2 = (base + rng.normal(0, 150, (steps, 13, size, size))).clip(1, 20000).astype(np.uint16)
    s2[:, 10] = 0
    s2[:, :, : size // 8, : size // 8] = 0  # nodata corner
    s1 = rng.normal([-12.0, -19.0], 2.0, (steps, size, size, 2)).transpose(0, 3, 1, 2).astype(np.float16)
    s1valid = np.ones((steps, size, size), dtype=bool)
    s1valid[:, :, -3:] = False
    s1[:, :, :, -3:] = np.nan
    scl = np.full((steps, size, size), 4, dtype=np.uint8)
    scl[:, : size // 8, : size // 8] = 0
    counts = np.array([(lc == c).sum() for c in WORLDCOVER.codes], dtype=np.float64)
    fractions = (counts / counts.sum()).round(6).tolist()
    meta = SampleMeta(
        key=str(tile),
        tile_id=str(tile),
        epsg=tile.epsg,
        transform=(RES_M, 0.0, tile.col * tile_m, 0.0, -RES_M, (tile.row + 1) * tile_m),
        width=size,
        height=size,
        split=split,
        time_steps=[
            TimeStep(
                datetime=f"2023-{3 * t + 1:02d}-{10 + t}T10:10:29Z",
                s2_product_id=f"S2B_MSIL2A_2023{3 * t + 1:02d}{10 + t}T101029_N0509_R022_T32TQR_2023{3 * t + 1:02d}{10 + t}T131508",
                s2_level="L2A",
                s2_processing_baseline="05.09",
                s2_offset_removed=1000,
                s2_b10_zero=True,
                s2_valid_fraction=float((s2[t, 1] != 0).mean()),
                cloud_fraction=0.0,
                s1_product_id=f"S1A_IW_GRDH_1SDV_2023{3 * t + 1:02d}{10 + t}T052947_2023{3 * t + 1:02d}{10 + t}T053012_049393_05F0C5_8A3F",
                s1_datetime=f"2023-{3 * t + 1:02d}-{10 + t}T05:29:47Z",
                s1_orbit_direction="descending",
                s1_valid_fraction=float(s1valid[t].mean()),
                s1_source_unit="db",
                dt_days=-0.2,
                relative_orbit=22,
            )
            for t in range(steps)
        ],
        labels=Labels(
            taxonomy="worldcover",
            names=list(WORLDCOVER.names),
            multi_hot=[int(f >= 0.01) for f in fractions],
            fractions=fractions,
            threshold=0.01,
            source="synthetic",
        ),
        grid={"tile_size_px": size, "resolution_m": RES_M},
    )
    return Sample({"s2": s2, "s1": s1, "s1valid": s1valid, "scl": scl, "lc": lc}, meta)


def build_dataset(root: Path, n_train: int = 9, n_val: int = 3, max_samples: int = 4, codec: str = "zstd") -> Path:
    for split, indices in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
        with ShardWriter(root, split, max_samples=max_samples, codec=codec) as writer:
            for i in indices:
                writer.write(make_sample(i, split))
    merge_parts(root)
    return root


@pytest.fixture
def sample_factory() -> Callable[..., Sample]:
    return make_sample


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset (train: 9 samples in 3 shards, val: 3 in 1); do not modify it."""
    return build_dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture
def dataset_copy(built_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`built_dataset` that a test may corrupt."""
    return Path(shutil.copytree(built_dataset, tmp_path / "ds"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``$EOFORGE_REAL_DATA`` (real Sentinel products); tests using it skip when unset."""
    path = os.environ.get("EOFORGE_REAL_DATA")
    if not path:
        pytest.skip("EOFORGE_REAL_DATA is not set")
    if not Path(path).is_dir():
        pytest.fail(f"EOFORGE_REAL_DATA={path} is not a folder")
    return Path(path)


#: The ingest settings of the shared demo dataset: small tiles so 6 km of scenes make
#: ~70 samples in several shards, quickly.
DEMO_INGEST = dict(tile_size_px=64, samples_per_shard=16, split_block_tiles=8)


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic raw scenes (``eoforge demo-data --extent-km 6``); do not modify them."""
    from eoforge.ingest.demo import generate_demo_data

    out = tmp_path_factory.mktemp("raw") / "raw"
    generate_demo_data(out, seed=0, extent_km=6, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_ingest(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory):
    """``demo_raw`` ingested on a 2-worker LocalCluster; returns the IngestResult."""
    from eoforge.ingest.config import IngestConfig
    from eoforge.ingest.pipeline import run_ingest

    out = tmp_path_factory.mktemp("demo") / "ds"
    return run_ingest([str(demo_raw)], out, config=IngestConfig(**DEMO_INGEST), workers=2, progress=False)
