"""STAC input: ItemCollections, item folders and stac-geoparquet ingest like the folders they describe.

The demo writes ``items.json`` (an ItemCollection of its products, hrefs relative). Its
ingest must give the demo folders' samples byte for byte; an item folder (absolute hrefs)
and a stac-geoparquet file (``file://`` hrefs, written by the reference ``stac-geoparquet``
library) must plan exactly what the ItemCollection plans; with complete ``proj:`` fields
the scan opens no raster (every raster is emptied before the scan, so any open would be
an error row); broken items are one error row each, naming the item.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.engine import Engine
from eoforge.ingest.pipeline import run_ingest
from eoforge.ingest.scan import scan
from eoforge.ingest.stac import item_product, load_signer, resolve_href
from eoforge.shards.manifest import read_manifest

from conftest import DEMO_INGEST

CONFIG = IngestConfig(**DEMO_INGEST)


class Inline:
    """Engine stand-in for scan-only tests: runs each task in this process (no cluster to start)."""

    def map(self, fn: Any, items: Any, **_: Any) -> list[Any]:
        return [fn(i) for i in items]


def _items(demo_raw: Path) -> list[dict[str, Any]]:
    return json.loads((demo_raw / "items.json").read_text())["features"]


def _absolute(items: list[dict[str, Any]], root: Path, scheme: str = "") -> list[dict[str, Any]]:
    out = copy.deepcopy(items)
    for item in out:
        for asset in item["assets"].values():
            asset["href"] = scheme + str((root / asset["href"]).resolve())
    return out


def _manifest(ds: Path) -> dict[str, dict[str, Any]]:
    def nan_safe(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return "NaN"
        return [nan_safe(x) for x in v] if isinstance(v, list) else v

    return {r["key"]: {k: nan_safe(v) for k, v in r.items() if k not in ("shard", "members")}
            for r in read_manifest(ds).to_pylist()}


def test_demo_items_load_in_pystac(demo_raw: Path) -> None:
    pystac = pytest.importorskip("pystac")
    collection = pystac.ItemCollection.from_file(str(demo_raw / "items.json"))
    truth = json.loads((demo_raw / "truth.json").read_text())
    distinct = {p["product_id"] for p in truth["products"] if p.get("role") != "duplicate_copy"}
    assert len(collection.items) == len(distinct)
    ids = {i.id for i in collection.items}
    assert "S2A_33TTL_20221014_0_L2A" in ids  # the Earth Search item keeps its id
    assert {c.collection_id for c in collection.items} >= {"sentinel-2-l2a", "sentinel-2-l1c", "esa-worldcover",
                                                           "sentinel-1-rtc"}


def test_item_collection_gives_the_samples_of_the_folders(demo_raw: Path, demo_ingest: Any, tmp_path: Path) -> None:
    result = run_ingest([str(demo_raw / "items.json")], tmp_path / "ds", config=CONFIG, workers=2, progress=False)
    assert result.errors == []
    assert result.samples == demo_ingest.samples > 0
    # keys, time steps, products, pairing, labels and each sample's sha256
    assert _manifest(tmp_path / "ds") == _manifest(demo_ingest.out)
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert report["stages"]["scan"]["headers_read"] == 0 and report["stages"]["scan"]["probes_run"] == 0


def test_item_folder_and_geoparquet_plan_what_the_collection_plans(demo_raw: Path, tmp_path: Path) -> None:
    sgp = pytest.importorskip("stac_geoparquet.arrow")
    items = _items(demo_raw)
    folder = tmp_path / "item-folder"
    folder.mkdir()
    for item in _absolute(items, demo_raw):  # absolute paths
        (folder / f"{item['id']}.json").write_text(json.dumps(item))
    parquet = tmp_path / "items.parquet"  # file:// hrefs, written by the reference library
    rows = _absolute(items, demo_raw, "file://")
    for item in rows:  # Arrow needs one type per column: the raster extension's "nan" goes (NaN is S1's nodata anyway)
        for asset in item["assets"].values():
            for band in asset.get("raster:bands", []):
                if band.get("nodata") == "nan":
                    del band["nodata"]
    sgp.to_parquet(sgp.parse_stac_items_to_arrow(rows), parquet)

    plans = {}
    with Engine(workers=2, progress=False) as engine:
        for name, source in (("collection", demo_raw / "items.json"), ("folder", folder), ("geoparquet", parquet)):
            out = tmp_path / f"ds-{name}"
            result = run_ingest([str(source)], out, config=CONFIG, engine=engine, progress=False, dry_run=True)
            assert result.errors == [], (name, result.errors[:3])
            plans[name] = (out / "plan.parquet").read_bytes()
            assert not list(out.rglob("*.tar"))  # a dry run writes no shard
    assert plans["folder"] == plans["collection"]
    assert plans["geoparquet"] == plans["collection"]
    assert pq.read_table(tmp_path / "ds-collection" / "plan.parquet").num_rows > 0


def test_with_complete_proj_fields_scan_opens_no_raster(demo_raw: Path, tmp_path: Path) -> None:
    """Every raster is emptied (0 bytes) before the scan: a scan that opened any would
    report it unreadable. The same emptied folder scanned as rasters shows that it would."""
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    rasters = [p for p in raw.rglob("*.tif")]
    assert len(rasters) > 100
    for p in rasters:
        p.write_bytes(b"")
    from_items = scan([str(raw / "items.json")], [], CONFIG, Inline())
    assert from_items.errors == []
    assert len(from_items.scenes) == len(_items(demo_raw))
    assert (from_items.headers_read, from_items.probes_run) == (0, 0)
    as_rasters = scan([str(raw / "s2")], [], CONFIG, Inline())
    assert as_rasters.scenes == [] and len(as_rasters.errors) > 0


def _broken_items(demo_raw: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The demo items (absolute hrefs) with one lacking B8A, one without datetime and one
    whose B04 file does not exist; returns the file and those items' ids."""
    items = _absolute(_items(demo_raw), demo_raw)
    s2 = [i for i in items if i["collection"] == "sentinel-2-l2a" and "B8A" in i["assets"]]
    no_b8a, no_time, missing = s2[0], s2[1], s2[2]
    del no_b8a["assets"]["B8A"]
    no_time["properties"]["datetime"] = None
    missing["assets"]["B04"]["href"] = str(tmp_path / "gone" / "B04.tif")
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path, {"B8A": no_b8a["id"], "datetime": no_time["id"], "missing": missing["id"]}


def test_items_without_what_a_scene_needs_are_error_rows_naming_the_item(demo_raw: Path, tmp_path: Path) -> None:
    path, broken = _broken_items(demo_raw, tmp_path)
    result = scan([str(path)], [], CONFIG, Inline())
    assert len(result.errors) == 3
    assert len(result.scenes) == len(_items(demo_raw)) - 3
    b8a = next(e for e in result.errors if broken["B8A"] in e.path)
    assert b8a.path == f"{path}#{broken['B8A']}"
    assert f"STAC item {broken['B8A']}" in b8a.reason and "B8A" in b8a.reason
    no_time = next(e for e in result.errors if broken["datetime"] in e.path)
    assert "no datetime" in no_time.reason and broken["datetime"] in no_time.reason
    gone = next(e for e in result.errors if broken["missing"] in e.path)
    assert "file not found" in gone.reason and "gone/B04.tif" in gone.reason and "'B04'" in gone.reason
    assert {e.product_id for e in result.errors} == set(broken.values())


def test_cli_exit_status_and_message_name_the_item(demo_raw: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from eoforge.cli import main

    path, broken = _broken_items(demo_raw, tmp_path)
    run = CliRunner().invoke(main, ["ingest", str(path), "--out", str(tmp_path / "ds"), "--dry-run", "--quiet",
                                    "--workers", "1", "--tile-size", "64"])
    assert run.exit_code == 1, run.output
    assert f"items.json#{broken['B8A']}: STAC item {broken['B8A']}: S2 L2A product without band(s) B8A" in run.output


def test_items_without_proj_fields_are_read_from_their_headers(demo_raw: Path) -> None:
    """Strip every proj: field: the scan reads the asset files' headers and gets the same scenes."""
    items = _items(demo_raw)
    bare = copy.deepcopy(items)
    for item in bare:
        item["properties"] = {k: v for k, v in item["properties"].items() if not k.startswith("proj:")}
        for asset in item["assets"].values():
            for k in [k for k in asset if k.startswith("proj:")]:
                del asset[k]
    path = demo_raw.parent / "bare-items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": _absolute(bare, demo_raw)}))
    try:
        with_proj = scan([str(demo_raw / "items.json")], [], CONFIG, Inline())
        without = scan([str(path)], [], CONFIG, Inline())
    finally:
        path.unlink()
    assert without.errors == []
    assert without.headers_read == without.files_seen > 100
    keep = ("product_id", "datetime", "bands", "bounds", "epsg", "dn_offset", "s1_unit", "orbit_direction")

    def rows(result: Any) -> list[dict[str, Any]]:
        return [json.loads(json.dumps({k: s.to_row()[k] for k in keep}, default=str).replace("NaN", "null"))
                for s in result.scenes]

    assert rows(without) == rows(with_proj)


def test_earth_search_and_planetary_computer_conventions(tmp_path: Path) -> None:
    """Asset keys and properties as the two catalogs publish them (hand-written items)."""
    for name in ("blue.tif", "blue.jp2", "scl.tif", "vv.tif", "vh.tif"):
        (tmp_path / name).write_bytes(b"")
    grid = {"proj:shape": [10980, 10980], "proj:transform": [10, 0, 600000, 0, -10, 5000040]}
    es = {
        "id": "S2B_33TTL_20240105_0_L2A", "collection": "sentinel-2-l2a", "geometry": None,
        "properties": {"datetime": "2024-01-05T10:10:29.024Z", "s2:processing_baseline": "05.10",
                       "earthsearch:boa_offset_applied": True, "proj:code": "EPSG:32633",
                       "s2:product_uri": "S2B_MSIL2A_20240105T101029_N0510_R022_T33TTL_20240105T120000.SAFE"},
        "assets": {
            "blue": {"href": "./blue.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                     "roles": ["data", "reflectance"], **grid,
                     "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0}]},
            "blue-jp2": {"href": "./blue.jp2", "type": "image/jp2", "roles": ["data"], **grid},
            "scl": {"href": "./scl.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                    "proj:shape": [5490, 5490], "proj:transform": [20, 0, 600000, 0, -20, 5000040]},
            "visual": {"href": "./visual.tif", "type": "image/tiff", "roles": ["visual"]},
            "thumbnail": {"href": "https://x/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]},
            "granule_metadata": {"href": "https://x/m.xml", "type": "application/xml", "roles": ["metadata"]},
        },
    }
    p = item_product(es, "es.json#x", str(tmp_path))
    assert p.sensor == "s2"
    assert p.metadata["product_id"] == "S2B_MSIL2A_20240105T101029_N0510_R022_T33TTL_20240105T120000"
    assert p.metadata["offset_applied"] is True and "dn_offset" not in p.metadata
    assert {band: Path(href).name for band, _, href in p.files} == {"B2": "blue.tif", "SCL": "scl.tif"}  # COG over JP2
    b2 = next(rec for band, rec, _ in p.files if band == "B2")
    assert b2 is not None and b2.bounds == (600000.0, 4890240.0, 709800.0, 5000040.0) and b2.epsg == 32633

    pc = copy.deepcopy(es)
    pc["properties"] = {"datetime": "2024-01-05T10:10:29Z", "s2:processing_baseline": "05.10", "proj:epsg": 32633,
                        "s2:mgrs_tile": "33TTL", "sat:relative_orbit": 22}
    pc["assets"] = {"B02": {**es["assets"]["blue"], "raster:bands": [{"scale": 0.0001, "offset": -0.1}]},
                    "SCL": es["assets"]["scl"], "preview": es["assets"]["thumbnail"]}
    p = item_product(pc, "pc.json#x", str(tmp_path))
    assert p.metadata["dn_offset"] == 1000 and p.metadata["mgrs_tile"] == "33TTL"
    assert p.metadata["relative_orbit"] == 22 and p.metadata["level"] == "L2A"

    rtc = {"id": "S1A_IW_GRDH_1SDV_20240105T052801_20240105T052826_051974_0647A3_rtc", "collection": "sentinel-1-rtc",
           "geometry": None, "properties": {"datetime": "2024-01-05T05:28:13Z", "sat:orbit_state": "descending",
                                            "proj:epsg": 32633},
           "assets": {pol: {"href": f"./{pol}.tif", **grid, "raster:bands": [{"nodata": -32768, "data_type": "float32"}]}
                      for pol in ("vv", "vh")}}
    p = item_product(rtc, "rtc.json#x", str(tmp_path))
    assert p.sensor == "s1" and p.metadata["s1_unit"] == "linear"
    assert p.metadata["product_id"] == "S1A_IW_GRDH_1SDV_20240105T052801_20240105T052826_051974_0647A3"
    assert {band: rec.nodata for band, rec, _ in p.files} == {"VH": -32768, "VV": -32768}
    # an RTC item whose bands say dB (a re-published dB copy) is read as dB: the bands' unit wins
    for asset in rtc["assets"].values():
        asset["raster:bands"][0]["unit"] = "dB"
    assert item_product(rtc, "rtc.json#x", str(tmp_path)).metadata["s1_unit"] == "db"


def test_hrefs_relative_absolute_and_file_urls(tmp_path: Path) -> None:
    base = str(tmp_path / "cat")
    assert resolve_href("./a/B02.tif", base) == str(tmp_path / "cat" / "a" / "B02.tif")
    assert resolve_href("../B02.tif", base) == str(tmp_path / "B02.tif")
    assert resolve_href("/data/B02.tif", base) == "/data/B02.tif"
    assert resolve_href("file:///data/my%20scenes/B02.tif", base) == "/data/my scenes/B02.tif"
    assert resolve_href("s3://bucket/B02.tif", base) == "s3://bucket/B02.tif"
    assert resolve_href("B02.tif", "https://host/items/") == "https://host/items/B02.tif"
    # remote hrefs open through GDAL's virtual file systems
    from eoforge.ingest.scan import gdal_path

    assert gdal_path(resolve_href("s3://sentinel-cogs/a/B02.tif", base)) == "/vsis3/sentinel-cogs/a/B02.tif"
    assert gdal_path(resolve_href("B02.tif", "https://host/items/")) == "/vsicurl/https://host/items/B02.tif"


def test_a_grid_from_proj_bbox_equals_the_one_from_proj_transform(tmp_path: Path) -> None:
    (tmp_path / "B02.tif").write_bytes(b"")
    base = {"id": "S2A_MSIL2A_20230715T101031_N0509_R022_T32TQM_20230715T153045", "geometry": None,
            "properties": {"datetime": "2023-07-15T10:10:31Z", "proj:code": "EPSG:32632"}}
    with_transform = {**base, "assets": {"B02": {"href": "B02.tif", "proj:shape": [1098, 549],
                                                 "proj:transform": [20.0, 0.0, 600000.0, 0.0, -20.0, 5100000.0]}}}
    with_bbox = {**base, "assets": {"B02": {"href": "B02.tif", "proj:shape": [1098, 549],
                                            "proj:bbox": [600000.0, 5078040.0, 610980.0, 5100000.0]}}}
    a = item_product(with_transform, "a#x", str(tmp_path)).files[0][1]
    b = item_product(with_bbox, "b#x", str(tmp_path)).files[0][1]
    assert a is not None and b is not None
    assert a.bounds == b.bounds == (600000.0, 5078040.0, 610980.0, 5100000.0)
    assert a.res == b.res == (20.0, 20.0) and a.epsg == 32632 and a.size == 0


def test_a_decimated_band_is_a_warning_in_the_report(demo_raw: Path, tmp_path: Path) -> None:
    """B02 delivered at 100 m (an overview copy): used, upsampled, and named in the dry-run report."""
    items = _absolute(_items(demo_raw), demo_raw)
    item = next(i for i in items if i["collection"] == "sentinel-2-l2a" and "B02" in i["assets"])
    asset = item["assets"]["B02"]
    coarse = tmp_path / "B02_100m.tif"
    with rasterio.open(asset["href"]) as src:
        data = src.read(1, out_shape=(src.height // 10, src.width // 10), resampling=rasterio.enums.Resampling.average)
        transform = src.transform * src.transform.scale(10, 10)  # 100 m pixels (the last partial ones dropped)
        profile = {**src.profile, "width": data.shape[1], "height": data.shape[0], "transform": transform}
    with rasterio.open(coarse, "w", **profile) as dst:
        dst.write(data.astype(np.uint16), 1)
    asset.update({"href": str(coarse), "proj:shape": list(data.shape), "proj:transform": list(transform)[:6]})
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    result = run_ingest([str(path)], tmp_path / "ds", config=CONFIG, workers=1, progress=False, dry_run=True)
    assert result.errors == []
    warnings = result.report["scan"]["warnings"]
    assert [(w["path"], w["product_id"]) for w in warnings] == [(str(coarse), item["id"])]
    assert "band B2 at 100 m, native 10 m" in warnings[0]["reason"]
    assert "band B2 at 100 m" in (tmp_path / "ds" / "dry-run.md").read_text()


def test_the_signing_hook_is_applied_where_files_are_opened(demo_raw: Path, demo_ingest: Any, tmp_path: Path) -> None:
    """Items whose hrefs only the signer can turn into something GDAL opens (here an
    unreachable https host mapped back to local paths): the ingest must give the folders' samples."""
    items = _items(demo_raw)
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = "https://eoforge.invalid" + str((demo_raw / asset["href"]).resolve())
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    signer = tmp_path / "signer.py"
    signer.write_text("def to_local(href):\n    return href.replace('https://eoforge.invalid', '', 1)\n")
    config = CONFIG.replace(href_signer=f"{signer}:to_local")
    assert load_signer(config.href_signer)("https://eoforge.invalid/x.tif") == "/x.tif"
    result = run_ingest([str(path)], tmp_path / "ds", config=config, workers=2, progress=False)
    assert result.errors == []
    assert _manifest(tmp_path / "ds") == _manifest(demo_ingest.out)


def test_ingest_recipes_load() -> None:
    recipes = sorted((Path(__file__).resolve().parents[1] / "ingest" / "recipes").glob("*.yaml"))
    configs = {p.stem: IngestConfig.load(p) for p in recipes}
    assert configs["planetary-computer"].href_signer == "planetary_computer:sign"


def test_cdse_items_take_each_band_at_its_native_pixel_size(tmp_path: Path) -> None:
    """Copernicus Data Space items: STAC 1.1 ``bands``, ``B01_20m`` / ``B01_60m`` / ``B02_10m``
    … keys, the id is the product name (its baseline in it), auxiliary ``AOT_10m`` / ``TCI_10m``."""
    grids = {10: [10980, 10980], 20: [5490, 5490], 60: [1830, 1830]}
    layout = {"B01": (20, 60), "B02": (10, 20, 60), "B05": (20, 60), "B8A": (20, 60), "SCL": (20, 60)}
    assets = {}
    for band, sizes in layout.items():
        for m in sizes:
            (tmp_path / f"{band}_{m}m.jp2").write_bytes(b"")
            assets[f"{band}_{m}m"] = {
                "href": f"./{band}_{m}m.jp2", "type": "image/jp2", "roles": ["data"], "gsd": m,
                "proj:shape": grids[m], "proj:transform": [m, 0, 600000, 0, -m, 5000040],
                "bands": [{"name": band, "nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16"}]}
    for aux in ("AOT_10m", "TCI_10m", "WVP_10m"):
        assets[aux] = {"href": f"./{aux}.jp2", "type": "image/jp2", "roles": ["data"], "gsd": 10}
    item = {"id": "S2B_MSIL2A_20240419T001429_N0510_R116_T56NNG_20240419T013152", "collection": "sentinel-2-l2a",
            "geometry": None, "properties": {"datetime": "2024-04-19T00:14:29.024Z", "proj:code": "EPSG:32756",
                                             "platform": "sentinel-2b", "eo:cloud_cover": 14.58,
                                             "processing:version": "05.10"},
            "assets": assets}
    p = item_product(item, "cdse.json#x", str(tmp_path))
    picked = {band: (Path(href).name, rec.res[0]) for band, rec, href in p.files}
    assert picked == {"B1": ("B01_60m.jp2", 60.0), "B2": ("B02_10m.jp2", 10.0), "B5": ("B05_20m.jp2", 20.0),
                      "B8A": ("B8A_20m.jp2", 20.0), "SCL": ("SCL_20m.jp2", 20.0)}
    assert p.metadata["product_id"] == item["id"] and p.metadata["cloud_percentage"] == 14.58
    assert p.metadata["baseline"] == "05.10"
