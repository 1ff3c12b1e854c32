"""Synthetic scene headers for scale work: scan's table, real names and footprints, and a
plan with pairs (``ingest/synthetic_catalog.py``, ``ingest/bench_plan.py``)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from click.testing import CliRunner
from pyproj import Geod, Transformer

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.names import parse_product_name, parse_time
from eoforge.ingest.plan import plan_ingest
from eoforge.ingest.scan import footprint_wkb, orbit_from_solar_time
from eoforge.ingest.synthetic_catalog import synthetic_scenes

N_S2 = 2400  # 40 MGRS tiles over UTM zones 32 and 33


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_scenes(N_S2, seed=3)


@pytest.fixture(scope="module")
def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _by_sensor(rows: list[dict[str, Any]], sensor: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["sensor"] == sensor]


class _InProcess:
    """The engine interface scan uses, run in this process (no Dask cluster)."""

    def map(self, fn: Any, items: list[Any], **_: Any) -> list[Any]:
        return [fn(i) for i in items]


def test_columns_and_types_are_what_scan_writes(demo_raw: Path, table: pa.Table) -> None:
    from eoforge.ingest.scan import scan
    from eoforge.ingest.scene import Scene, scenes_table

    scanned = scan([str(demo_raw)], [], IngestConfig(), _InProcess())
    real = scenes_table(scanned.scenes).schema
    assert real.names == table.schema.names
    # every synthetic row is a scene read and planned like a scanned one
    scenes = [Scene.from_row(r) for r in table.to_pylist()]
    s2 = next(s for s in scenes if s.sensor == "s2")
    scanned_s2 = next(s for s in scanned.scenes if s.sensor == "s2" and s.level == "L2A")
    assert sorted(s2.bands) == sorted(scanned_s2.bands) and s2.bands["B2"].res == (10.0, 10.0)
    assert {s.number for s in scenes} == set(range(table.num_rows))
    for field in table.schema:
        assert real.field(field.name).type == field.type, field.name
    assert table.column("scene").to_pylist() == list(range(table.num_rows))
    # scan numbers scenes in the order of their group keys: S1 then S2, each by location
    keys = [f"{s}|{loc}" for s, loc in zip(table.column("sensor").to_pylist(), table.column("location").to_pylist())]
    assert keys == sorted(keys)


def test_product_names_parse_to_the_row(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        info = parse_product_name(r["product_id"])
        assert info.sensor == r["sensor"], r["product_id"]
        assert info.datetime == parse_time(r["datetime"]) and r["datetime"].endswith("Z")
        if r["sensor"] == "s2":
            assert (info.level, info.mgrs_tile, info.relative_orbit, info.baseline) == \
                (r["level"], r["mgrs_tile"], r["relative_orbit"], r["baseline"])
            assert (r["level"], r["baseline"], r["dn_offset"]) == ("L2A", "05.09", 1000)
            assert r["location"].endswith(f"/{r['product_id']}.SAFE") and len(r["paths"]) == 13
            assert set(json.loads(r["bands"])) == {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9",
                                                   "B11", "B12", "SCL"}
        else:
            assert r["product_id"].startswith("S1A_IW_GRDH_1SDV_") and r["paths"] == [r["location"]]
            assert set(json.loads(r["bands"])) == {"VV", "VH"}


def test_footprints_are_scans_and_s2_tiles_are_mgrs_squares(rows: list[dict[str, Any]]) -> None:
    s2 = _by_sensor(rows, "s2")
    tiles = {r["mgrs_tile"]: r for r in s2}
    for r in list(tiles.values())[:5] + _by_sensor(rows, "s1")[:5]:
        assert r["footprint"] == footprint_wkb(r["crs_wkt"], tuple(r["bounds"]))  # what scan computes
    for name, r in tiles.items():
        x0, y0, x1, y1 = r["bounds"]
        assert (x1 - x0, y1 - y0) == (109_800.0, 109_800.0) and r["epsg"] == 32600 + int(name[:2])
        # measured in the tile's UTM zone: the lon/lat footprint maps back onto the square
        to_utm = Transformer.from_crs(4326, r["epsg"], always_xy=True)
        lon, lat = np.asarray(shapely.from_wkb(r["footprint"]).exterior.coords).T
        x, y = to_utm.transform(lon, lat)
        assert np.allclose([x.min(), y.min(), x.max(), y.max()], r["bounds"], atol=0.01)
    # MGRS origins are 100 km apart: east-west neighbours in a zone overlap by 9.8 km
    origin = {(n[:2], r["bounds"][0], r["bounds"][1]): r for n, r in tiles.items()}
    pairs = [(a, origin[(z, x + 100_000, y)]) for (z, x, y), a in origin.items() if (z, x + 100_000, y) in origin]
    assert len(pairs) >= 10
    for a, b in pairs:
        assert a["bounds"][2] - b["bounds"][0] == pytest.approx(9_800.0)
        overlap = shapely.intersection(shapely.from_wkb(a["footprint"]), shapely.from_wkb(b["footprint"]))
        assert 0.07 < overlap.area / shapely.from_wkb(a["footprint"]).area < 0.11
    assert {n[:2] for n in tiles} == {"32", "33"}  # the continent straddles a zone edge


def test_s1_slices_are_250_by_170_km(rows: list[dict[str, Any]]) -> None:
    geod = Geod(ellps="WGS84")
    for r in _by_sensor(rows, "s1")[::50]:
        lon0, lat0, lon1, lat1 = shapely.from_wkb(r["footprint"]).bounds
        mid = (lat0 + lat1) / 2
        width = geod.inv(lon0, mid, lon1, mid)[2] / 1000
        height = geod.inv(lon0, lat0, lon0, lat1)[2] / 1000
        assert width == pytest.approx(250, rel=0.02) and height == pytest.approx(170, rel=0.02)
        assert r["epsg"] == 4326 and list(shapely.from_wkb(r["footprint"]).bounds) == pytest.approx(r["bounds"])


def test_dates_orbits_and_revisits(rows: list[dict[str, Any]]) -> None:
    s2, s1 = _by_sensor(rows, "s2"), _by_sensor(rows, "s1")
    assert len(s2) == N_S2
    assert 0.2 * N_S2 <= len(s1) <= 0.25 * N_S2
    per_tile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in s2:
        per_tile[r["mgrs_tile"]].append(r)
    counts = [len(v) for v in per_tile.values()]
    assert np.mean(counts) == pytest.approx(60, abs=1) and min(counts) >= 45 and max(counts) <= 74
    for tile_rows in per_tile.values():
        assert len({r["relative_orbit"] for r in tile_rows}) == 1  # one relative orbit per tile
        days = sorted((parse_time(r["datetime"]).date(), r["product_id"][:3]) for r in tile_rows)
        for (d0, sat0), (d1, sat1) in zip(days, days[1:]):
            gap = (d1 - d0).days
            assert gap % 5 == 0 and (sat0 != sat1) == (gap % 10 == 5)  # 5-day revisit, S2A/S2B alternating
    # a datatake's tiles share its sensing start, as real product names do
    starts = defaultdict(set)
    for r in s2:
        starts[(r["product_id"][:3], r["relative_orbit"], r["datetime"][:10])].add(r["datetime"])
    assert all(len(v) == 1 for v in starts.values())
    # S1: both directions, the direction agrees with local solar time, 12-day repeat per slice
    assert {r["orbit_direction"] for r in s1} == {"ascending", "descending"}
    slices: dict[tuple[float, ...], list[Any]] = defaultdict(list)
    for r in s1:
        when = parse_time(r["datetime"])
        assert orbit_from_solar_time(when, shapely.from_wkb(r["footprint"]).centroid.x) == r["orbit_direction"]
        slices[tuple(r["bounds"])].append(when)
    for times in slices.values():
        times.sort()
        assert all((b - a) % timedelta(days=12) < timedelta(minutes=1) for a, b in zip(times, times[1:]))
    clouds = np.array([r["cloud_percentage"] for r in s2])
    assert clouds.min() >= 0 and clouds.max() <= 100
    assert (clouds < 10).mean() > 0.1 and (clouds > 90).mean() > 0.1  # U-shaped, like real cloud cover


def test_deterministic_for_a_seed(table: pa.Table) -> None:
    assert synthetic_scenes(N_S2, seed=3).equals(table)
    other = synthetic_scenes(N_S2, seed=4)
    assert not other.column("product_id").equals(table.column("product_id"))

    def s2_footprints(t: pa.Table) -> set[bytes]:
        return {f for s, f in zip(t.column("sensor").to_pylist(), t.column("footprint").to_pylist()) if s == "s2"}

    assert s2_footprints(other) == s2_footprints(table)  # the seed draws dates, clouds and ids, not places


def test_a_small_catalog_plans_with_pairs_and_zone_edge_duplicates() -> None:
    scenes = synthetic_scenes(240)  # 4 MGRS tiles, 2 each side of the UTM 32/33 edge
    plan = plan_ingest(scenes, IngestConfig(tile_size_px=1320))  # 13.2 km tiles: a quick plan
    assert plan.pairing["steps"] > 0
    assert plan.pairing["paired_steps"] >= 0.3 * plan.pairing["steps"]  # S1 within 3 days for many steps
    assert "zone_edge_overlap" in plan.removed
    assert plan.pairing["s1_used"] > 0


def test_synth_catalog_command_writes_scenes_parquet(tmp_path: Path) -> None:
    from eoforge.cli import main

    result = CliRunner().invoke(main, ["synth-catalog", "--n-s2", "120", "--out", str(tmp_path / "cat"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    written = pq.read_table(tmp_path / "cat" / "scenes.parquet")
    assert written.equals(synthetic_scenes(120, seed=1))
    assert "120 s2" in result.output


def test_bench_reports_a_timeout_and_skips_larger_sizes(tmp_path: Path) -> None:
    from eoforge.ingest.bench_plan import fit_exponent, main

    assert fit_exponent([1000, 10_000, 100_000], [2.0, 20.0 * 10**0.1, 200.0 * 10**0.2]) == pytest.approx(1.1)
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--sizes", "60,120", "--timeout", "0.01"])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "results.json").read_text())["plan"]["runs"]
    # JSON keys are strings: "0" in process, "2" on a 2-worker LocalCluster
    assert [[r["measure"][w]["status"] for r in runs] for w in ("0", "2")] == [["timed out", "skipped"]] * 2
    md = (tmp_path / "results.md").read_text()
    assert "timed out" in md and "skipped" in md and "n/a (fewer than two sizes finished)" in md
