"""The global grid: one tile id per location, member tiles cover any footprint."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from eoforge.ingest.grid import Grid, utm_zone
from eoforge.shards.keys import TileId

GRID = Grid()


@pytest.mark.parametrize(("lon", "zone"), [(-180.0, 1), (-177.01, 1), (11.999, 32), (12.0, 33), (179.99, 60), (180.0, 60)])
def test_utm_zone(lon, zone):
    assert utm_zone(lon) == zone


@pytest.mark.parametrize(("lon", "lat"), [(11.95, 45.6), (12.05, 45.6), (-8.9, 52.6), (-0.78, 38.1), (147.3, -42.9)])
def test_tile_at_contains_the_point(lon, lat):
    tile = GRID.tile_at(lon, lat)
    x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(lon, lat)
    x0, y0, x1, y1 = GRID.bounds(tile)
    assert x0 <= x < x1 and y0 <= y < y1
    assert GRID.is_member(tile)
    assert tile.hemisphere == ("n" if lat >= 0 else "s")
    if utm_zone(GRID.centre_lonlat(tile)[0]) == tile.zone:
        assert GRID.tile_at(*GRID.centre_lonlat(tile)) == tile
    assert (x1 - x0, y1 - y0) == (2640.0, 2640.0)


def test_transform_puts_pixel_centres_inside_the_tile():
    tile = TileId(32, "n", 109, 1727)
    t = GRID.transform(tile)
    assert (t.c, t.f) == (109 * 2640.0, 1728 * 2640.0)
    x, y = t @ (263.5, 263.5)
    assert (x, y) == (109 * 2640 + 2635.0, 1727 * 2640 + 5.0)


def test_tiles_covering_spans_the_zone_edge_and_covers_the_footprint():
    box = shapely.box(11.95, 45.58, 12.05, 45.62)
    tiles = GRID.tiles_covering(box)
    assert {t.zone for t in tiles} == {32, 33}
    assert all(GRID.is_member(t) for t in tiles)
    union = shapely.union_all([GRID.footprint_lonlat(t) for t in tiles])
    assert box.difference(union).area < 1e-9 * box.area
    rng = np.random.default_rng(0)
    for lon, lat in zip(rng.uniform(11.95, 12.05, 50), rng.uniform(45.58, 45.62, 50)):
        assert GRID.tile_at(lon, lat) in tiles
    # the near-duplicates that dedup must remove: zone-32 and zone-33 tiles overlapping on the ground
    west = [GRID.footprint_lonlat(t) for t in tiles if t.zone == 32]
    east = [GRID.footprint_lonlat(t) for t in tiles if t.zone == 33]
    assert max(a.intersection(b).area for a in west for b in east) > 0


def test_min_overlap_keeps_only_well_covered_tiles():
    tile = TileId(32, "n", 109, 1727)
    fp = GRID.footprint_lonlat(tile).buffer(-1e-4)  # slightly inside the tile
    assert GRID.tiles_covering(fp, min_overlap=0.9) == [tile]
    assert len(GRID.tiles_covering(GRID.footprint_lonlat(tile).buffer(1e-4))) == 9
