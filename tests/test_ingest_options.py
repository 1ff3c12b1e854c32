"""Ingest settings the README promises, each against the default ingest of the same raw data
(``demo_ingest``): cloud filtering, S2-only steps, a fixed S1 orbit direction, Dynamic World
land cover, and Earth Search's common band names as file names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from conftest import DEMO_INGEST
from rasterio.transform import from_origin

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pipeline import run_ingest
from eoforge.shards.reader import iter_dataset
from eoforge.shards.schema import DYNAMIC_WORLD

pytestmark = pytest.mark.slow


def _ingest(inputs: list[Path], out: Path, landcover: list[Path] | None = None, **settings: Any):
    return run_ingest([str(p) for p in inputs], out, landcover=[str(p) for p in landcover or []],
                      config=IngestConfig(**{**DEMO_INGEST, **settings}), workers=2, progress=False)


def _steps(ds: Path) -> list[dict[str, Any]]:
    return [t for s in iter_dataset(ds, decode=None) for t in json.loads(s["json"])["time_steps"]]


def test_max_cloud_fraction_drops_cloudier_steps(demo_raw: Path, demo_ingest, tmp_path: Path) -> None:
    before = _steps(demo_ingest.out)
    assert sum(t["cloud_fraction"] > 0.2 for t in before) >= 5  # the default keeps cloudy steps
    result = _ingest([demo_raw], tmp_path / "ds", max_cloud_fraction=0.2)
    after = _steps(result.out)
    assert after and max(t["cloud_fraction"] for t in after) <= 0.2
    assert result.report["stages"]["materialize"]["steps_dropped_cloudy"] >= 5


def test_without_unpaired_s2_every_step_has_s1(demo_raw: Path, demo_ingest, tmp_path: Path) -> None:
    assert any(t.get("s1_product_id") is None for t in _steps(demo_ingest.out))
    result = _ingest([demo_raw], tmp_path / "ds", keep_unpaired_s2=False)
    steps = _steps(result.out)
    assert steps and all(t["s1_product_id"] and abs(t["dt_days"]) <= 3.0 for t in steps)


def test_a_fixed_orbit_direction_pairs_only_that_direction(demo_raw: Path, tmp_path: Path) -> None:
    """The 2023-07-16 S2 products have two S1 partners within 3 days: a descending pass two days
    before and an ascending one the same evening; the setting chooses."""
    inputs = [*sorted((demo_raw / "s2").glob("S2B_MSIL2A_20230716*.SAFE")), demo_raw / "s1"]
    partners = {}
    for direction in ("descending", "ascending"):
        steps = _steps(_ingest(inputs, tmp_path / direction, orbit_direction=direction).out)
        paired = [t for t in steps if t.get("s1_product_id")]
        assert paired and {t["s1_orbit_direction"] for t in paired} == {direction}
        partners[direction] = {t["s1_product_id"][17:25] for t in paired}
    assert partners == {"descending": {"20230714"}, "ascending": {"20230716"}}


def _dynamic_world_raster(path: Path, like: Path) -> tuple[int, int]:
    """A Dynamic World ``label`` raster over the S2 product ``like``: west half trees (1), east
    half crops (4), 10 m, its CRS. Returns the two codes."""
    band = next(like.rglob("*_B02_10m.tif"))
    with rasterio.open(band) as src:
        crs, bounds = src.crs, src.bounds
    width, height = int((bounds.right - bounds.left) // 10), int((bounds.top - bounds.bottom) // 10)
    data = np.full((height, width), 4, np.uint8)
    data[:, : width // 2] = 1
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                       transform=from_origin(bounds.left, bounds.top, 10, 10), nodata=DYNAMIC_WORLD.nodata) as dst:
        dst.write(data, 1)
    return 1, 4


def test_dynamic_world_land_cover_labels_the_samples(demo_raw: Path, tmp_path: Path) -> None:
    product = next((demo_raw / "s2").glob("S2A_MSIL2A_20230422*_T33TTL_*.SAFE"))
    trees, crops = _dynamic_world_raster(tmp_path / "dw_label.tif", product)
    result = _ingest([product], tmp_path / "ds", landcover=[tmp_path / "dw_label.tif"], label_taxonomy="dynamic_world")
    samples = list(iter_dataset(result.out))
    assert samples
    for s in samples:
        labels = s["meta"]["labels"]
        assert labels["taxonomy"] == "dynamic_world" and labels["names"] == list(DYNAMIC_WORLD.names)
        codes = set(np.unique(s["lc"]).tolist()) - {DYNAMIC_WORLD.nodata}
        assert codes and codes <= {trees, crops}
        present = {DYNAMIC_WORLD.codes[i] for i, f in enumerate(labels["fractions"]) if f > 0}
        assert present == codes
        assert labels["multi_hot"] == [int(f >= labels["threshold"]) for f in labels["fractions"]]
    both = [s for s in samples if set(np.unique(s["lc"]).tolist()) >= {trees, crops}]
    assert both, "some tile straddles the trees/crops edge"


def test_common_band_names_read_like_band_numbers(demo_raw: Path, tmp_path: Path) -> None:
    """Earth Search's asset names as files (``blue.tif``, ``nir08.tif``, ``scl.tif``) give the same
    samples as the band-numbered files (``B02.tif``)."""
    numbered = demo_raw / "earth_search" / "S2A_33TTL_20221014_0_L2A"
    named = tmp_path / "named" / numbered.name
    named.mkdir(parents=True)
    # Earth Search's asset keys (written out here, not taken from the code under test)
    earth_search = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
                    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
                    "SCL": "scl"}
    for tif in numbered.glob("*.tif"):
        shutil.copy(tif, named / f"{earth_search[tif.stem]}.tif")
    assert (named / "blue.tif").is_file() and (named / "nir08.tif").is_file() and not (named / "B02.tif").exists()
    a = {s["__key__"]: s for s in iter_dataset(_ingest([numbered], tmp_path / "a").out)}
    b = {s["__key__"]: s for s in iter_dataset(_ingest([named], tmp_path / "b").out)}
    assert a and a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key]["s2"], b[key]["s2"]) and np.array_equal(a[key]["scl"], b[key]["scl"])
