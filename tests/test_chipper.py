"""The hand-written chipper the ingest bench compares against (``ingest/chipper.py``): readable
webdataset shards whose arrays are what rasterio reads, on a small generated S2 scene."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zstandard
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from eoforge.ingest.bench import make_scene
from eoforge.ingest.chipper import S2_BANDS, chip_scene, find_bands
from eoforge.shards.keys import TileId
from eoforge.shards.schema import S2_BAND_NAMES

TILE_PX = 264
SCENE_PX = 528  # 2 x 2 tiles of the scene's own size; on the global grid it overlaps 3 x 3


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(tmp_path_factory.mktemp("chipper") / "scene", SCENE_PX, "cog")


@pytest.fixture(scope="module")
def chipped(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    out = tmp_path_factory.mktemp("chips")
    result = chip_scene(scene, out, processes=2, tile_px=TILE_PX, samples_per_shard=4)
    return result, _read_shards(sorted(out.glob("*.tar")))


def _read_shards(paths: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """key -> member -> array, decoded the plain way (tarfile, zstd, ``np.load`` without pickle)."""
    samples: dict[str, dict[str, np.ndarray]] = {}
    dctx = zstandard.ZstdDecompressor()
    for path in paths:
        with tarfile.open(path) as tar:
            for info in tar:
                key, member = info.name.split(".", 1)
                data = dctx.decompress(tar.extractfile(info).read())
                samples.setdefault(key, {})[member] = np.load(io.BytesIO(data), allow_pickle=False)
    return samples


def test_tiles_on_eoforge_grid_and_shards_readable(chipped: tuple[dict, dict]) -> None:
    result, samples = chipped
    assert S2_BANDS == tuple(f"B{n[1:].zfill(2)}" if n != "B8A" else n for n in S2_BAND_NAMES)
    # the scene's upper-left corner (499980, 5100000) lies inside tile (189, 1931) of the 2640 m grid
    expected = [str(TileId(32, "n", c, r)) for r in (1931, 1930, 1929) for c in (189, 190, 191)]
    assert result["tile_ids"] == expected
    assert result["tiles"] == result["samples"] == 9 and sorted(samples) == sorted(expected)
    assert result["shards"] == 3  # 3 tile rows over 2 processes: 3 and 6 samples, 4 per shard
    for arrays in samples.values():
        assert set(arrays) == {"s2.npy.zst", "scl.npy.zst"}
        assert arrays["s2.npy.zst"].shape == (13, TILE_PX, TILE_PX) and arrays["s2.npy.zst"].dtype == np.uint16
        assert arrays["scl.npy.zst"].shape == (TILE_PX, TILE_PX) and arrays["scl.npy.zst"].dtype == np.uint8
        assert not arrays["s2.npy.zst"][S2_BANDS.index("B10")].any()  # no B10 in L2A


def test_interior_tile_equals_rasterio(scene: Path, chipped: tuple[dict, dict]) -> None:
    """Every band of a tile inside the scene equals rasterio's read of the tile's bounds (20/60 m
    bands upsampled by the same ``out_shape`` call: the row window gives the same values)."""
    _, samples = chipped
    tile = TileId(32, "n", 190, 1930)
    tile_m = TILE_PX * 10.0
    bounds = (tile.col * tile_m, tile.row * tile_m, (tile.col + 1) * tile_m, (tile.row + 1) * tile_m)
    arrays = samples[str(tile)]
    files = find_bands(scene)
    for i, band in enumerate(S2_BANDS):
        if band not in files:
            continue
        with rasterio.open(files[band]) as src:
            expected = src.read(1, window=from_bounds(*bounds, transform=src.transform), out_shape=(TILE_PX, TILE_PX),
                                resampling=Resampling.bilinear)
        np.testing.assert_array_equal(arrays["s2.npy.zst"][i], expected, err_msg=band)
    with rasterio.open(files["SCL"]) as src:
        expected = src.read(1, window=from_bounds(*bounds, transform=src.transform), out_shape=(TILE_PX, TILE_PX),
                            resampling=Resampling.nearest)
    np.testing.assert_array_equal(arrays["scl.npy.zst"], expected)


def test_edge_tile_georeferenced_by_value(scene: Path, chipped: tuple[dict, dict]) -> None:
    """Pixels of the north-west tile (partly west and north of the scene): map coordinate of the
    pixel centre -> the 10 m band's own pixel there, exact; 0 outside the scene."""
    _, samples = chipped
    tile = TileId(32, "n", 189, 1931)
    tile_m = TILE_PX * 10.0
    b04 = samples[str(tile)]["s2.npy.zst"][S2_BANDS.index("B04")]
    inside = outside = 0
    with rasterio.open(find_bands(scene)["B04"]) as src:
        for r, c in [(0, 0), (47, 150), (48, 150), (50, 263), (263, 263), (200, 101), (200, 102), (120, 250)]:
            x, y = tile.col * tile_m + (c + 0.5) * 10, (tile.row + 1) * tile_m - (r + 0.5) * 10
            row, col = src.index(x, y)
            if 0 <= row < src.height and 0 <= col < src.width:
                assert b04[r, c] == src.read(1, window=Window(col, row, 1, 1))[0, 0], (r, c)
                inside += int(b04[r, c] != 0)
            else:
                assert b04[r, c] == 0, (r, c)
                outside += 1
    assert inside >= 3 and outside >= 3


def test_processes_and_min_valid(scene: Path, chipped: tuple[dict, dict], tmp_path: Path) -> None:
    """One process writes the same samples as two; ``min_valid_fraction`` skips the tiles with
    less than that share of pixels valid in every band: here all but column 190's upper two
    (column 191 and row 1929 lie mostly outside the scene, column 189 under its nodata wedge)."""
    _, two = chipped
    result = chip_scene(scene, tmp_path, processes=1, tile_px=TILE_PX, samples_per_shard=4, min_valid_fraction=0.5)
    one = _read_shards(sorted(tmp_path.glob("*.tar")))
    bands = [i for i, b in enumerate(S2_BANDS) if b != "B10"]
    kept = sorted(k for k, a in two.items() if np.all(a["s2.npy.zst"][bands] != 0, axis=0).mean() >= 0.5)
    assert kept == [str(TileId(32, "n", 190, r)) for r in (1930, 1931)]
    assert result["tiles"] == 9 and result["samples"] == 2 and result["shards"] == 1
    assert sorted(one) == kept
    for key, arrays in one.items():
        for member, value in arrays.items():
            np.testing.assert_array_equal(value, two[key][member], err_msg=f"{key}.{member}")
