"""Compressed bytes per block row, from file headers (ingest/blocks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from eoforge.ingest.blocks import DECODE_MS_PER_MB, decode_estimate, inspect_blocks, jp2_tile_rows


def _half_noise(height: int = 200, width: int = 256) -> np.ndarray:
    """North half one value (compresses to nothing), south half noise (does not compress)."""
    data = np.full((height, width), 1000, np.uint16)
    data[height // 2:] = np.random.default_rng(0).integers(1, 10000, (height - height // 2, width))
    return data


def _write(path: Path, driver: str, **options) -> Path:
    data = _half_noise()
    with rasterio.open(path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint16", crs="EPSG:32632", transform=from_origin(300000, 5000000, 10, 10),
                       **options) as dst:
        dst.write(data, 1)
    return path


@pytest.mark.parametrize(("driver", "suffix", "codec", "options"), [
    ("GTiff", ".tif", "geotiff", {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}),
    ("JP2OpenJPEG", ".jp2", "jpeg2000", {"QUALITY": 100, "REVERSIBLE": "YES", "BLOCKXSIZE": 64, "BLOCKYSIZE": 64}),
])
def test_block_layout_gives_where_the_compressed_bytes_lie(tmp_path, driver, suffix, codec, options) -> None:
    path = _write(tmp_path / f"band{suffix}", driver, **options)
    with rasterio.open(path) as src:
        found = inspect_blocks(src, str(path))[1]
        assert inspect_blocks(src, "/vsicurl/https://example.invalid/band" + suffix)[1] is None  # remote: not read
        height = src.height
    assert found is not None
    rows = decode_estimate(found, height)
    kind, spans = found
    assert kind == codec
    assert [(a, b) for a, b, _ in spans] == [(0, 64), (64, 128), (128, 192), (192, 200)]
    nbytes = [n for *_, n in spans]
    size = path.stat().st_size
    assert 0.9 * size < sum(nbytes) <= size  # every block counted once; headers are the rest
    assert nbytes[2] > 5 * nbytes[0] and nbytes[3] > nbytes[0]  # noise south of row 100, constant north
    assert nbytes[1] < nbytes[2]  # rows 64-128 are half constant
    assert [(a, b) for a, b, _ in rows] == [(0.0, 0.32), (0.32, 0.64), (0.64, 0.96), (0.96, 1.0)]
    np.testing.assert_allclose([ms for *_, ms in rows], np.array(nbytes) * DECODE_MS_PER_MB[codec] / 1e6)


def test_jp2_tile_parts_of_real_sentinel2_bands(real_data) -> None:
    """ESA's L2A JPEG 2000 bands: the tile-parts' lengths (SOT Psot) account for the whole file
    but its boxes and main header, tile row by tile row down the image."""
    bands = sorted(real_data.glob("*.SAFE/GRANULE/*/IMG_DATA/R*/*.jp2"))
    assert bands
    for path in bands:
        rows = jp2_tile_rows(str(path))
        assert rows is not None, path
        with rasterio.open(path) as src:
            height = src.height
            assert len(rows) == -(-height // src.block_shapes[0][0]), path
        assert rows[0][0] == 0 and rows[-1][1] == height and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        assert 0.98 * path.stat().st_size < sum(n for *_, n in rows) < path.stat().st_size, path


def test_a_broken_jpeg2000_gives_no_profile_and_no_exception(tmp_path) -> None:
    """A file cut short or not a codestream: None (the scene is then balanced by valid area;
    the truncation check and pixel reads say what is wrong with it)."""
    path = _write(tmp_path / "band.jp2", "JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=64, BLOCKYSIZE=64)
    data = path.read_bytes()
    cut = tmp_path / "cut.jp2"
    cut.write_bytes(data[: len(data) // 2])
    assert jp2_tile_rows(str(cut)) is None
    junk = tmp_path / "junk.j2k"
    junk.write_bytes(b"\xff\x4f\xff\x51\x00\x29" + bytes(60))  # SOC, then a SIZ of zeros
    assert jp2_tile_rows(str(junk)) is None
    junk.write_bytes(b"\xff\x4f" + bytes(10))
    assert jp2_tile_rows(str(junk)) is None
