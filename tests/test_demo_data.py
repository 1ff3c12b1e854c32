"""Tests of ``eoforge demo-data``: the synthetic raw inputs every other test relies on."""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from pyproj import Transformer

from eoforge.ingest.cli import demo_data
from eoforge.ingest.demo import DemoArea, Landscape, default_catalog, generate_demo_data
from eoforge.ingest.demo.landscape import WATER
from eoforge.ingest.demo.products import render_s2, s2_grid
from eoforge.shards.schema import S2_BANDS, WORLDCOVER

EXTENT_KM = 6.0
S2_NAME = re.compile(
    r"^(?P<sat>S2[AB])_MSI(?P<level>L1C|L2A)_(?P<start>\d{8}T\d{6})_N(?P<base>\d{4})_R(?P<orbit>\d{3})"
    r"_T(?P<tile>\d{2}[C-X][A-Z]{2})_(?P<gen>\d{8}T\d{6})$"
)
S1_NAME = re.compile(
    r"^S1[AB]_IW_GRDH_1SDV_(\d{8}T\d{6})_(\d{8}T\d{6})_(\d{6})_([0-9A-F]{6})_([0-9A-F]{4})$"
)


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "raw"
    generate_demo_data(out, seed=0, extent_km=EXTENT_KM, progress=False)
    return out


@pytest.fixture(scope="session")
def truth(demo: Path) -> dict[str, Any]:
    return json.loads((demo / "truth.json").read_text())


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _products(truth: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [p for p in truth["products"] if all(p.get(k) == v for k, v in match.items())]


def _band(demo: Path, rec: dict[str, Any], band: str) -> str:
    label = band if band in ("B8A", "SCL") else f"B{int(band[1:]):02d}"
    hits = [f for f in rec["files"] if f.endswith((f"_{label}_10m.tif", f"_{label}_20m.tif", f"_{label}_60m.tif",
                                                   f"_{label}.tif", f"/{label}.tif"))]
    assert len(hits) == 1, (band, hits)
    return str(demo / hits[0])


def _sample(path: str, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Values of band 1 at WGS84 points, read independently via ``src.index``."""
    with rasterio.open(path) as src:
        tr = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
        xs, ys = tr.transform(lon, lat)
        arr = src.read(1)
        rc = [src.index(x, y) for x, y in zip(np.atleast_1d(xs), np.atleast_1d(ys))]
        rows, cols = np.array([r for r, _ in rc]), np.array([c for _, c in rc])
        ok = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        out = np.full(len(rows), np.nan)
        out[ok] = arr[rows[ok], cols[ok]]
        return out


# ------------------------------------------------------------------ CLI, determinism


def test_cli_writes_identical_bytes_for_same_seed(demo: Path, truth: dict[str, Any], tmp_path: Path) -> None:
    res = CliRunner().invoke(demo_data, [str(tmp_path / "again"), "--seed", "0", "--extent-km", "6", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "truth.json" in res.output
    again = tmp_path / "again"
    s2 = _products(truth, sensor="S2", level="L2A", packaging="safe")[0]
    files = ["truth.json", s2["files"][0], s2["path"] + "/MTD_MSIL2A.xml",
             _band(demo, s2, "SCL").split(str(demo) + "/")[1]]
    files += [p["files"][0] for p in truth["products"] if p["sensor"] in ("S1", "WorldCover")]
    for f in files:
        assert _sha(demo / f) == _sha(again / f), f
    assert sorted(p.relative_to(again) for p in again.rglob("*")) == sorted(p.relative_to(demo) for p in demo.rglob("*"))


def test_different_seed_gives_different_world() -> None:
    area = DemoArea.from_extent(EXTENT_KM)
    cat = default_catalog(area)
    prod = cat.s2[0]
    grid = s2_grid(prod.tile, area, area.bounds[0], area.bounds[2])
    lon, lat = grid.lonlat()
    renders = []
    for seed in (0, 1):
        land = Landscape(seed, area)
        g = land.ground(lon, lat)
        renders.append((g.cls, render_s2(land, prod, grid, g, seed).dn["B4"]))
    assert (renders[0][0] != renders[1][0]).mean() > 0.2
    assert not np.array_equal(renders[0][1], renders[1][1])


# ------------------------------------------------------------------ product list


def test_product_list_and_names(truth: dict[str, Any]) -> None:
    s2 = _products(truth, sensor="S2")
    safe_l2a = [p for p in s2 if p["level"] == "L2A" and p["packaging"] == "safe" and p["role"] == "primary"]
    dates = sorted({p["datetime"] for p in safe_l2a})
    assert len(dates) >= 4
    for d in dates:  # every datatake arrives as one product per UTM zone
        assert sorted(p["epsg"] for p in safe_l2a if p["datetime"] == d) == [32632, 32633]
    baselines = set()
    for p in s2:
        m = S2_NAME.match(p["product_id"])
        assert m, p["product_id"]
        assert m["tile"] == p["mgrs_tile"] and m["tile"] in ("32TQR", "33TTL")
        assert int(m["tile"][:2]) == p["epsg"] - 32600
        assert m["orbit"] == "022"
        assert datetime.strptime(m["start"], "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ") == p["datetime"]
        assert datetime.strptime(m["gen"], "%Y%m%dT%H%M%S") > datetime.strptime(m["start"], "%Y%m%dT%H%M%S")
        base = int(m["base"]) / 100
        assert f"{base:05.2f}" == p["processing_baseline"]
        assert p["dn_offset"] == (1000 if base >= 4 else 0)
        # Baseline 04.00 went live on 2022-01-25; originals before that are older baselines.
        if p["role"] == "primary":
            assert (base >= 4) == (p["datetime"] >= "2022-01-25")
        baselines.add(base >= 4)
    assert baselines == {True, False}
    roles = {p["role"] for p in truth["products"]}
    assert {"duplicate_copy", "reprocessed", "l1c", "landcover"} <= roles
    rep = _products(truth, role="reprocessed")[0]
    assert rep["reprocessed_of"] in {p["product_id"] for p in s2}
    assert rep["dn_offset"] == 1000 and rep["datetime"] < "2022-01-25"
    es = _products(truth, packaging="earth_search")[0]
    assert re.match(r"^S2[AB]_33TTL_\d{8}_0_L2A$", es["earth_search_id"])
    for p in _products(truth, sensor="S1"):
        assert S1_NAME.match(p["product_id"]), p["product_id"]


def test_s2_band_files_have_native_grids(demo: Path, truth: dict[str, Any]) -> None:
    rec = _products(truth, sensor="S2", level="L2A", packaging="safe", role="primary")[0]
    origin = None
    for b in [b for b in S2_BANDS if b.in_l2a] + ["SCL"]:  # type: ignore[operator]
        name, gsd = (b, 20) if b == "SCL" else (b.name, b.gsd_m)  # type: ignore[union-attr]
        path = _band(demo, rec, name)
        assert f"/IMG_DATA/R{gsd}m/T{rec['mgrs_tile']}_" in path
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == rec["epsg"]
            assert src.res == (gsd, gsd)
            assert src.dtypes[0] == ("uint8" if name == "SCL" else "uint16")
            assert src.nodata == 0
            assert src.block_shapes[0] == (512, 512)
            assert src.compression.name.lower() == "deflate"
            assert src.width * gsd == rec["shape_10m"][1] * 10
            origin = origin or (src.transform.c, src.transform.f)
            assert (src.transform.c, src.transform.f) == origin
    # Origin on the real MGRS tile grid (60 m steps from the tile's upper-left corner).
    tile = truth["mgrs_tiles"][rec["mgrs_tile"]]
    assert (origin[0] - tile["tile_ulx"]) % 60 == 0 and (tile["tile_uly"] - origin[1]) % 60 == 0


def test_mtd_xml_mirrors_real_tags(demo: Path, truth: dict[str, Any]) -> None:
    for rec in _products(truth, sensor="S2", packaging="safe"):
        mtd = "MTD_MSIL2A.xml" if rec["level"] == "L2A" else "MTD_MSIL1C.xml"
        root = ET.parse(demo / rec["path"] / mtd).getroot()
        text = {e.tag: (e.text or "").strip() for e in root.iter()}
        assert text["PRODUCT_URI"] == rec["product_id"] + ".SAFE"
        assert text["PROCESSING_BASELINE"] == rec["processing_baseline"]
        assert text["PRODUCT_START_TIME"].startswith(rec["datetime"][:-1])
        assert text["SPACECRAFT_NAME"] == f"Sentinel-2{rec['spacecraft'][-1]}"
        assert text["SENSING_ORBIT_NUMBER"] == "22" and text["SENSING_ORBIT_DIRECTION"] == "DESCENDING"
        tag = "BOA_ADD_OFFSET" if rec["level"] == "L2A" else "RADIO_ADD_OFFSET"
        offsets = [int(e.text) for e in root.iter(tag)]  # type: ignore[arg-type]
        assert offsets == ([-1000] * 13 if rec["dn_offset"] else [])
        quant = "BOA_QUANTIFICATION_VALUE" if rec["level"] == "L2A" else "QUANTIFICATION_VALUE"
        assert text[quant] == "10000"
        # Listed image files exist (IMAGE_FILE carries no extension, as ESA writes it).
        for e in root.iter("IMAGE_FILE"):
            assert (demo / rec["path"] / f"{e.text}.tif").exists()


# ------------------------------------------------------------------ radiometry


def test_offset_only_in_new_baselines(demo: Path, truth: dict[str, Any]) -> None:
    rep = _products(truth, role="reprocessed")[0]
    orig = _products(truth, product_id=rep["reprocessed_of"])[0]
    with rasterio.open(_band(demo, rep, "B8")) as a, rasterio.open(_band(demo, orig, "B8")) as b:
        assert a.transform == b.transform
        new, old = a.read(1).astype(int), b.read(1).astype(int)
    valid = (new > 0) & (old > 0)
    diff = new[valid] - old[valid]
    assert abs(np.median(diff) - 1000) <= 2  # same ground pixel, +1000 DN, noise aside
    for rec in _products(truth, sensor="S2", packaging="safe", level="L2A"):
        with rasterio.open(_band(demo, rec, "B12")) as src:
            d = src.read(1)
        v = d[d > 0]
        if rec["dn_offset"]:
            assert v.min() > 950  # even water (B12 ~0.003) sits near/above the offset
        else:
            assert v.min() < 200


def test_scl_and_clouds(demo: Path, truth: dict[str, Any]) -> None:
    recs = _products(truth, sensor="S2", level="L2A", packaging="safe", role="primary")
    fractions = {}
    for rec in recs:
        with rasterio.open(_band(demo, rec, "SCL")) as s, rasterio.open(_band(demo, rec, "B2")) as b2, \
                rasterio.open(_band(demo, rec, "B8")) as b8:
            scl = s.read(1)
            blue = b2.read(1, out_shape=scl.shape).astype(float) - rec["dn_offset"]
            nir = b8.read(1, out_shape=scl.shape).astype(float) - rec["dn_offset"]
        assert set(np.unique(scl)) <= {0, 3, 4, 5, 6, 7, 8, 9, 10}
        valid = scl > 0
        cf = np.isin(scl[valid], (3, 8, 9, 10)).mean()
        assert cf == pytest.approx(rec["cloud_fraction"], abs=1e-3)
        fractions[rec["datetime"]] = cf
        assert {4, 6} <= set(np.unique(scl))  or cf > 0.3  # vegetation and water visible
        if (scl == 9).sum() > 20:
            assert np.median(blue[scl == 9]) > 3000  # opaque cloud is bright
        if (scl == 6).sum() > 20:
            assert np.median(nir[scl == 6]) < 300  # water is dark in the NIR
    vals = sorted(fractions.values())
    assert vals[0] < 0.05 and vals[-1] > 0.25  # one nearly clear date, one quite cloudy
    assert len({round(v, 3) for v in vals}) >= len(vals) // 2  # dates differ


def test_nodata_wedge(demo: Path, truth: dict[str, Any]) -> None:
    recs = [p for p in _products(truth, sensor="S2", packaging="safe") if p["nodata_wedge"]]
    assert recs
    for rec in recs:
        corner = rec["nodata_wedge"]
        for band in ("B2", "B5", "B1", "SCL"):
            with rasterio.open(_band(demo, rec, band)) as src:
                a = src.read(1)
            h, w = a.shape
            # the corner pixel is in the wedge, the opposite corner is not
            r, c = (0, w - 1) if corner == "ne" else (h - 1, 0)
            assert a[r, c] == 0 and a[h - 1 - r, w - 1 - c] > 0
            assert 0.05 < (a == 0).mean() < 0.4
        with rasterio.open(_band(demo, rec, "B2")) as b, rasterio.open(_band(demo, rec, "B8")) as n:
            assert np.array_equal(b.read(1) == 0, n.read(1) == 0)  # the same pixels in every band


def test_l1c_mirror_and_earth_search(demo: Path, truth: dict[str, Any]) -> None:
    l1c = _products(truth, level="L1C")[0]
    assert l1c["l2a_of_same_acquisition"] in {p["product_id"] for p in truth["products"]}
    names = sorted(Path(f).name for f in l1c["files"])
    assert len(names) == 13 and any(n.endswith("_B10.tif") for n in names)
    assert all(re.match(rf"^T{l1c['mgrs_tile']}_\d{{8}}T\d{{6}}_B(\d\d|8A)\.tif$", n) for n in names)
    assert (demo / l1c["path"] / "MTD_MSIL1C.xml").exists()
    dup = _products(truth, role="duplicate_copy")[0]
    assert dup["path"].startswith("mirror/")
    for f, g in zip(dup["files"], _products(truth, path=dup["duplicate_copy_of"])[0]["files"]):
        assert _sha(demo / f) == _sha(demo / g)
    es = _products(truth, packaging="earth_search")[0]
    folder = demo / es["path"]
    item = json.loads((folder / f"{es['earth_search_id']}.json").read_text())
    props = item["properties"]
    assert props["s2:product_uri"] == es["product_id"] + ".SAFE"
    assert props["s2:processing_baseline"] == es["processing_baseline"]
    assert props["sat:relative_orbit"] == 22 and props["sat:orbit_state"] == "descending"
    assert props["proj:epsg"] == 32633 and props["datetime"].startswith(es["datetime"][:-1])
    for name in ("B01", "B02", "B8A", "B12", "SCL"):
        with rasterio.open(folder / f"{name}.tif") as src:
            assert src.crs.to_epsg() == 32633 and src.nodata == 0


# ------------------------------------------------------------------ Sentinel-1


def _ground_s1(truth: dict[str, Any], rec: dict[str, Any]) -> tuple[Landscape, Any]:
    land = Landscape(truth["seed"], DemoArea.from_extent(truth["extent_km"]))
    a, _, c, _, e, f = rec["transform"]
    h, w = rec["shape"]
    lon, lat = np.meshgrid(c + a * (np.arange(w) + 0.5), f + e * (np.arange(h) + 0.5))
    return land, land.ground(lon, lat)


def test_s1_formats_ranges_and_strips(demo: Path, truth: dict[str, Any]) -> None:
    s1 = _products(truth, sensor="S1")
    assert {p["orbit_direction"] for p in s1} == {"ASCENDING", "DESCENDING"}
    assert sum(p["orbit_direction"] == "ASCENDING" for p in s1) == 1
    assert [p["far_in_time"] for p in s1].count(True) == 1
    for p in s1:
        # 0-2 calendar days (05:30 UTC S1 vs 10:10 UTC S2 makes "2 days" up to 2.2)
        assert (p["nearest_s2_days"] > 10) if p["far_in_time"] else (p["nearest_s2_days"] < 2.5)
    land, g = _ground_s1(truth, s1[0])
    strips = set()
    for p in _products(truth, sensor="S1", packaging="gee_db"):
        with rasterio.open(demo / p["path"]) as src:
            assert src.crs.to_epsg() == 4326 and src.res[0] == pytest.approx(1e-4)
            assert src.descriptions == ("VV", "VH") and src.dtypes[0] == "float32"
            assert src.tags()["orbitProperties_pass"] == p["orbit_direction"]
            vv, vh = src.read()
        if p["nodata_strip"] == "nan":
            assert np.isnan(src.nodata) and np.isnan(vv[:, :5]).all()
            strip = np.isnan(vv)
        else:
            assert src.nodata is None and (vv[:, -5:] == 0.0).all() and (vh[:, -5:] == 0.0).all()
            strip = vv == 0.0
        strips.add(p["nodata_strip"])
        assert 0.02 < strip.mean() < 0.2
        ok = ~strip
        assert -25 < np.percentile(vv[ok], 5) and np.percentile(vv[ok], 95) < 0
        assert -30 < np.percentile(vh[ok], 5) and np.percentile(vh[ok], 95) < -5
        assert np.mean(vv[ok & (g.cls == WATER)]) < -18
        assert np.mean(vv[ok & (g.cls == 50)]) > np.mean(vv[ok & (g.cls == 40)]) + 3  # built-up bright
    assert strips == {"nan", "zero"}
    for p in _products(truth, sensor="S1", packaging="bands_db"):
        for f, pol in zip(p["files"], ("VV", "VH")):
            assert f.endswith(f"_{pol}.tif")
            with rasterio.open(demo / f) as src:
                assert src.tags()["ORBIT_DIRECTION"] == p["orbit_direction"] and np.isnan(src.nodata)


def test_s1_linear_matches_landscape(demo: Path, truth: dict[str, Any]) -> None:
    p = _products(truth, sensor="S1", packaging="rtc_linear")[0]
    land, g = _ground_s1(truth, p)
    expect = land.backscatter_db(g, datetime.strptime(p["datetime"], "%Y-%m-%dT%H:%M:%SZ"),
                                 p["orbit_direction"] == "ASCENDING")
    for i, pol in enumerate(("vv", "vh")):
        with rasterio.open(demo / p["path"] / f"{pol}.tif") as src:
            assert src.nodata == 0 and src.tags()["ORBIT_DIRECTION"] == p["orbit_direction"]
            lin = src.read(1)
        valid = lin > 0
        assert 0.02 < (~valid).mean() < 0.2  # the strip is exactly 0
        assert lin[valid].max() < 20  # linear power, not dB
        for code in (10, 40, 80):
            m = valid & (g.cls == code)
            got = 10 * np.log10(lin[m].mean())
            want = 10 * np.log10(np.power(10.0, expect[i][m] / 10.0).mean())
            assert got == pytest.approx(want, abs=0.3), (pol, code)  # speckle averages out


# ------------------------------------------------------------------ WorldCover and agreement


def test_worldcover_tiles(demo: Path, truth: dict[str, Any]) -> None:
    wc = _products(truth, sensor="WorldCover")
    assert sorted(Path(p["path"]).name for p in wc) == [
        "ESA_WorldCover_10m_2021_v200_N45E009_Map.tif", "ESA_WorldCover_10m_2021_v200_N45E012_Map.tif"]
    for p in wc:
        path = demo / p["path"]
        assert path.stat().st_size < 5e6
        with rasterio.open(path) as src:
            assert (src.width, src.height) == (36000, 36000) and src.dtypes[0] == "uint8"
            assert src.crs.to_epsg() == 4326 and src.nodata == 0
            assert src.block_shapes[0] == (1024, 1024) and src.compression.name.lower() == "deflate"
            lon0 = 9.0 if "E009" in path.name else 12.0
            assert src.transform.almost_equals(rasterio.Affine(1 / 12000, 0, lon0, 0, -1 / 12000, 48.0))
            b = p["written_bbox_lonlat"]
            win = src.window(max(b[0], lon0), b[1], min(b[2], lon0 + 3), b[3]).round_offsets().round_lengths()
            arr = src.read(1, window=win)
            assert set(np.unique(arr)) - {0} <= set(WORLDCOVER.codes)
            assert len(set(np.unique(arr)) - {0}) >= 5
            assert (arr == 0).mean() < 0.01
            assert src.read(1, window=((0, 1024), (0, 1024))).max() == 0  # unwritten = nodata


def test_worldcover_agrees_with_s2(demo: Path, truth: dict[str, Any]) -> None:
    clear = min(_products(truth, sensor="S2", level="L2A", packaging="safe", role="primary"),
                key=lambda p: p["cloud_fraction"])
    wc = _products(truth, product_id="ESA_WorldCover_10m_2021_v200_N45E009_Map")[0]
    with rasterio.open(demo / wc["path"]) as src:
        b = wc["written_bbox_lonlat"]
        win = src.window(b[0], b[1], min(b[2], 12.0), b[3]).round_offsets().round_lengths()
        arr = src.read(1, window=win)
        t = src.window_transform(win)
    rng = np.random.default_rng(0)
    for code, band, lo, hi in ((80, "B8", 0, 0.05), (10, "B8", 0.15, 1.0)):
        rr, cc = np.nonzero(arr == code)
        pick = rng.choice(len(rr), size=min(300, len(rr)), replace=False)
        lon = t.c + (cc[pick] + 0.5) * t.a
        lat = t.f + (rr[pick] + 0.5) * t.e
        recs = [p for p in _products(truth, datetime=clear["datetime"], level="L2A", packaging="safe")
                if p["epsg"] == 32632]
        vals = (_sample(_band(demo, recs[0], band), lon, lat) - recs[0]["dn_offset"]) / 10000
        vals = vals[~np.isnan(vals)]
        assert len(vals) > 50
        assert ((vals > lo) & (vals < hi)).mean() > 0.85, code


def test_utm_twins_agree_on_the_ground(demo: Path, truth: dict[str, Any]) -> None:
    recs = _products(truth, sensor="S2", level="L2A", packaging="safe", role="primary")
    date = min(recs, key=lambda p: p["cloud_fraction"])["datetime"]
    west, east = sorted((p for p in recs if p["datetime"] == date), key=lambda p: p["epsg"])
    # Points spread over the overlap strip around 12°E.
    lon_w = max(p[0] for p in east["footprint_lonlat"][:1] + east["footprint_lonlat"][3:4])
    lon_e = min(p[0] for p in west["footprint_lonlat"][1:3])
    _, lat_min, _, lat_max = truth["area"]["bounds_lonlat"]
    rng = np.random.default_rng(1)
    lon = rng.uniform(lon_w + 0.002, lon_e - 0.002, 2000)
    lat = rng.uniform(lat_min + 0.002, lat_max - 0.002, 2000)
    scl_w, scl_e = _sample(_band(demo, west, "SCL"), lon, lat), _sample(_band(demo, east, "SCL"), lon, lat)
    ok = (scl_w > 0) & (scl_e > 0)
    assert ok.sum() > 1000
    assert (scl_w[ok] == scl_e[ok]).mean() > 0.9
    nir_w = _sample(_band(demo, west, "B8"), lon, lat) - west["dn_offset"]
    nir_e = _sample(_band(demo, east, "B8"), lon, lat) - east["dn_offset"]
    assert (np.abs(nir_w[ok] - nir_e[ok]) < 300).mean() > 0.8
    land = Landscape(truth["seed"], DemoArea.from_extent(truth["extent_km"]))
    cls = land.classes(lon, lat)
    water = ok & (cls == WATER)
    assert water.sum() > 5 and (scl_w[water] == 6).mean() > 0.8 and (scl_e[water] == 6).mean() > 0.8
