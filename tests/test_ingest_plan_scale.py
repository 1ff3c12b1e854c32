"""The columnar, region-partitioned planner: exact tile coverage from grid arithmetic, and one
plan whatever the region size or worker count (same ``plan.parquet`` bytes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.coverage import (
    cells_covered, footprint_cells, key_of, key_parts, parse_tile_ids, tile_id_strings, tile_keys, tile_of, zones_touched,
)
from eoforge.ingest.engine import Engine
from eoforge.ingest.grid import Grid
from eoforge.ingest.plan import PLAN_SCHEMA, PlanRow, plan_ingest, plan_rows, read_scenes, write_plan
from eoforge.shards.keys import TileId

TILE_M = 2640.0


def brute_force(select: shapely.Geometry, measure: shapely.Geometry, tile_m: float) -> dict[tuple[int, int], float]:
    """Every tile of the bounding box tested against the polygons: the reference."""
    x0, y0, x1, y1 = select.bounds
    out = {}
    for c in range(int(x0 // tile_m), int(x1 // tile_m) + 1):
        for r in range(int(y0 // tile_m), int(y1 // tile_m) + 1):
            box = shapely.box(c * tile_m, r * tile_m, (c + 1) * tile_m, (r + 1) * tile_m)
            if shapely.intersects(select, box):
                out[(c, r)] = shapely.intersection(box, measure).area / box.area
    return out


FOOTPRINTS = {
    # a rotated S1-like swath (250 x 170 km), a concave L, a square with a hole, a sliver
    "swath": shapely.affinity.rotate(shapely.box(400_000, 5_000_000, 650_000, 5_170_000), 12, origin="center"),
    "concave": shapely.Polygon([(500_000, 5_000_000), (540_000, 5_000_000), (540_000, 5_010_000),
                                (510_000, 5_010_000), (510_000, 5_040_000), (500_000, 5_040_000)]),
    "hole": shapely.box(300_000, 4_000_000, 330_000, 4_030_000).difference(
        shapely.box(310_000, 4_010_000, 320_100, 4_020_050)),
    "sliver": shapely.box(600_001, 4_500_000, 600_500, 4_550_000),
}


@pytest.mark.parametrize("name", sorted(FOOTPRINTS))
def test_cells_covered_equals_testing_every_tile(name: str) -> None:
    poly = FOOTPRINTS[name]
    col, row, cov = cells_covered(poly, poly, TILE_M)
    got = {(c, r): v for c, r, v in zip(col.tolist(), row.tolist(), cov.tolist())}
    want = brute_force(poly, poly, TILE_M)
    assert set(got) == set(want)
    assert max(abs(got[k] - want[k]) for k in want) < 1e-9
    # the shortcut did its job: most tiles were judged by their centre alone
    if name == "swath":
        assert sum(v == 1.0 for v in got.values()) > 0.8 * len(got)


def test_cells_covered_selects_on_one_polygon_and_measures_on_another() -> None:
    measure = FOOTPRINTS["swath"]
    select = measure.intersection(shapely.box(0, 0, 520_000, 10_000_000))  # the part west of a line
    col, row, cov = cells_covered(select, measure, TILE_M)
    got = {(c, r): v for c, r, v in zip(col.tolist(), row.tolist(), cov.tolist())}
    want = brute_force(select, measure, TILE_M)
    assert set(got) == set(want)
    assert max(abs(got[k] - want[k]) for k in want) < 1e-9
    assert max(c for c, _ in got) == 520_000 // TILE_M  # tiles east of the cut are not selected ...
    assert got[(int(520_000 // TILE_M), int(5_085_000 // TILE_M))] == 1.0  # ... though covered by ``measure``


def test_tile_keys_sort_and_round_trip_like_tile_ids() -> None:
    tiles = [TileId(32, "n", 109, 1727), TileId(31, "s", 5, 99_999), TileId(32, "n", 109, 1), TileId(1, "n", 0, 0),
             TileId(60, "s", 99_999, 99_999), TileId(32, "s", 0, 0)]
    keys = np.array([key_of(t) for t in tiles])
    assert [tile_of(int(k)) for k in keys] == tiles
    assert [tiles[i] for i in np.argsort(keys)] == sorted(tiles)
    assert tile_id_strings(keys) == [str(t) for t in tiles]
    assert np.array_equal(parse_tile_ids([str(t) for t in tiles]), keys)
    zone, south, col, row = key_parts(keys)
    assert np.array_equal(tile_keys(zone, south, col, row), keys)


def test_footprint_cells_agree_with_the_grid_lookup_across_a_zone_edge() -> None:
    """``Grid.tiles_covering`` (polygon tests of every tile) gives the same tiles, zone by zone."""
    grid = Grid(64, 10.0)
    footprint = shapely.box(11.8, 47.0, 12.15, 47.2)  # across 12° E: zones 32 and 33
    want = sorted(key_of(t) for t in grid.tiles_covering(footprint))
    got = sorted(k for zone, south in zones_touched(footprint) for k in footprint_cells(grid, footprint, zone, south)[0])
    assert got == want
    assert {tile_of(k).zone for k in got} == {32, 33}


def _plan_bytes(plan, tmp_path: Path) -> str:
    write_plan(plan.rows, tmp_path / "plan.parquet")
    return hashlib.sha256((tmp_path / "plan.parquet").read_bytes()).hexdigest()


def test_demo_plan_is_one_plan_whatever_the_regions_and_workers(demo_ingest, tmp_path: Path) -> None:
    """The demo's scenes planned with 3-tile, 64-tile and huge regions, in process and on a
    2-worker LocalCluster: the same rows, byte for byte, as the plan the ingest wrote."""
    out = Path(demo_ingest.out)
    scenes = read_scenes(out / "scenes.parquet")
    config = IngestConfig.from_dict(json.loads((out / "ingest.json").read_text())["config"])
    digests = {"written by the ingest": hashlib.sha256((out / "plan.parquet").read_bytes()).hexdigest()}
    for size in (3, 64, 100_000):
        digests[size] = _plan_bytes(plan_ingest(scenes, config, region_tiles=size), tmp_path)
    with Engine(workers=2, progress=False) as engine:
        digests["dask"] = _plan_bytes(plan_ingest(scenes, config, region_tiles=5, engine=engine), tmp_path)
    assert len(set(digests.values())) == 1, digests
    assert plan_ingest(scenes, config, region_tiles=3).regions > plan_ingest(scenes, config, region_tiles=64).regions


def test_plan_rows_are_the_plan_schema_as_records(demo_ingest) -> None:
    """:class:`PlanRow` has :data:`PLAN_SCHEMA`'s names in its order, and the records of the
    demo plan hold every value of ``plan.parquet``."""
    assert [f.name for f in dataclasses.fields(PlanRow)] == PLAN_SCHEMA.names
    table = pq.read_table(Path(demo_ingest.out) / "plan.parquet")
    rows = plan_rows(table)
    assert len(rows) == table.num_rows > 100
    back = pa.Table.from_pylist([{**dataclasses.asdict(r), "landcover_scenes": list(r.landcover_scenes)} for r in rows],
                                schema=PLAN_SCHEMA)
    assert back.equals(table.cast(PLAN_SCHEMA))
