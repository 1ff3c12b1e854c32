"""The shard contract on real Sentinel products ($EOFORGE_REAL_DATA; skipped when unset)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from eoforge.shards.manifest import merge_parts
from eoforge.shards.meta import SampleMeta, TimeStep
from eoforge.shards.reader import iter_dataset
from eoforge.shards.sample import Sample
from eoforge.shards.schema import S2_BAND_NAMES, S2_BANDS, canonical_s2_band
from eoforge.shards.verify import verify_dataset
from eoforge.shards.writer import ShardWriter

pytestmark = pytest.mark.real_data


def _ben_sample(folder) -> Sample:
    """BigEarthNet S2 (12 bands at 10/20/60 m) + S1 dB as one 120x120 sample at 10 m.

    20/60 m bands are expanded by pixel repetition (their grids nest exactly in the 10 m
    grid), so every stored value is a real source value.
    """
    bands: dict[str, np.ndarray] = {}
    transform = crs = None
    for path in sorted(folder.glob("S2*_B*.tif")):
        name = canonical_s2_band(path.stem.rsplit("_", 1)[1])
        with rasterio.open(path) as src:
            arr = src.read(1)
            if src.res == (10.0, 10.0):
                transform, crs = src.transform, src.crs
        bands[name] = arr.repeat(120 // arr.shape[0], 0).repeat(120 // arr.shape[1], 1)
    s2 = np.stack([bands.get(n, np.zeros((120, 120), np.uint16)) for n in S2_BAND_NAMES])[None]
    vv, vh = (rasterio.open(next(folder.glob(f"S1*_{p}.tif"))).read(1) for p in ("VV", "VH"))
    s1 = np.stack([vv, vh])[None].astype(np.float32)
    valid = np.isfinite(s1).all(1) & (s1 != 0).all(1)
    meta = SampleMeta(
        key="ben_29upu_4_55", tile_id=None, epsg=crs.to_epsg(), transform=tuple(transform)[:6],
        width=120, height=120, split="train",
        time_steps=[TimeStep(datetime="2017-06-17T11:33:21Z", s2_product_id="S2A_MSIL2A_20170617T113321_N0205_R080_T29UPU",
                             s2_level="L2A", s2_b10_zero=True, s1_product_id="S1A_IW_GRDH_1SDV_20170617T064724",
                             s1_datetime="2017-06-17T06:47:24Z", dt_days=-(4 * 3600 + 46 * 60) / 86400)],
    )
    return Sample({"s2": s2, "s1": s1, "s1valid": valid}, meta)


def test_bigearthnet_pair_roundtrips_through_a_verified_shard(real_data, tmp_path):
    sample = _ben_sample(real_data / "ben_pair_29UPU_4_55")
    assert sample.arrays["s2"].shape == (1, 13, 120, 120)
    assert not sample.arrays["s2"][0, S2_BAND_NAMES.index("B10")].any()
    assert sample.arrays["s2"][0, 1].min() > 0  # B2 is all data in this patch
    with ShardWriter(tmp_path, "train") as w:
        w.write(sample)
    merge_parts(tmp_path)
    assert verify_dataset(tmp_path, workers=1).ok
    back = next(iter(iter_dataset(tmp_path)))
    assert np.array_equal(back["s2"], sample.arrays["s2"])
    assert np.array_equal(back["s1"], sample.arrays["s1"], equal_nan=True)
    # georeferencing survives: pixel (row 7, col 11) of B2 equals a direct read at its map coordinate
    a, b, c, d, e, f = back["meta"]["transform"]
    x, y = c + a * 11.5, f + e * 7.5
    with rasterio.open(next((real_data / "ben_pair_29UPU_4_55").glob("S2*_B02.tif"))) as src:
        r, col = src.index(x, y)
        direct = src.read(1, window=((r, r + 1), (col, col + 1)))[0, 0]
    assert back["s2"][0, 1, 7, 11] == direct


def test_band_table_matches_real_resolutions(real_data):
    folder = real_data / "ben_pair_29UPU_4_55"
    for path in sorted(folder.glob("S2*_B*.tif")):
        band = next(b for b in S2_BANDS if b.name == canonical_s2_band(path.stem.rsplit("_", 1)[1]))
        with rasterio.open(path) as src:
            assert src.res == (band.gsd_m, band.gsd_m), path.name
