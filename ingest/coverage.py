"""Which grid tiles a footprint covers, and how much of each: grid arithmetic, geometry only at the edges.

The planner asks this for every scene of an archive (10⁵ S2 products of ~1800 tiles each), so
it must not test every tile against the polygon. Within one UTM zone, the tiles of the
footprint's bounding box fall into two kinds:

- **boundary tiles**, those within one tile of a vertex of the footprint's outline once the
  outline is densified to half a tile (a segment shorter than a tile cannot reach a tile
  further away): the only tiles where shapely intersects a box with the polygon;
- **all others**, which the outline does not touch, so each lies wholly inside or wholly
  outside: one point-in-polygon test of its centre says which (coverage 1 or 0).

Coverage is the share of the tile's area (in its own UTM CRS, metres²) inside the footprint.
Tiles are returned as integer keys (:func:`tile_keys`), which sort as
:class:`~eoforge.shards.keys.TileId` does: zone, hemisphere, column, row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from eoforge.ingest.grid import Grid, crs_transformer, utm_zone, zone_central_meridian
from eoforge.shards.keys import TileId

#: Columns and rows of a zone's grid are < 10⁵ (``TileId``): 17 bits each.
_BITS = 17
_MASK = (1 << _BITS) - 1


# ---------------------------------------------------------------------------- integer tile keys

def tile_keys(zone: np.ndarray | int, south: np.ndarray | bool, col: np.ndarray | int,
              row: np.ndarray | int) -> np.ndarray:
    """int64 keys of tiles (``zone`` 1..60, ``south`` True for the southern grid, ``col``/``row``)."""
    zone_hemi = np.asarray(zone, dtype=np.int64) * 2 + np.asarray(south, dtype=np.int64)
    return (zone_hemi << (2 * _BITS)) | (np.asarray(col, dtype=np.int64) << _BITS) | np.asarray(row, dtype=np.int64)


def key_parts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(zone, south, col, row) arrays of int64 tile keys."""
    keys = np.asarray(keys, dtype=np.int64)
    zone_hemi = keys >> (2 * _BITS)
    return zone_hemi >> 1, (zone_hemi & 1).astype(bool), (keys >> _BITS) & _MASK, keys & _MASK


def key_of(tile: TileId) -> int:
    return int(tile_keys(tile.zone, tile.hemisphere == "s", tile.col, tile.row))


def tile_of(key: int) -> TileId:
    zone, south, col, row = (int(v[0]) for v in key_parts(np.array([key])))
    return TileId(zone, "s" if south else "n", col, row)


def tile_id_strings(keys: np.ndarray) -> list[str]:
    """``32n_00109_01727``-style ids of int64 keys (``str(TileId)``)."""
    zone, south, col, row = key_parts(keys)
    hemi = np.where(south, "s", "n")
    return [f"{z:02d}{h}_{c:05d}_{r:05d}" for z, h, c, r in zip(zone.tolist(), hemi.tolist(), col.tolist(), row.tolist())]


def parse_tile_ids(ids: list[str]) -> np.ndarray:
    """int64 keys of tile id strings."""
    tiles = [TileId.parse(t) for t in ids]
    return tile_keys(np.array([t.zone for t in tiles], dtype=np.int64), np.array([t.hemisphere == "s" for t in tiles]),
                     np.array([t.col for t in tiles], dtype=np.int64), np.array([t.row for t in tiles], dtype=np.int64))


def zone_epsg(zone: int, south: bool) -> int:
    return (32700 if south else 32600) + zone


def lonlat_to_utm(geom: shapely.Geometry, epsg: int, densify_deg: float = 0.01) -> shapely.Geometry:
    """A lon/lat geometry in a UTM CRS, edges densified first so they stay true on the ground."""
    tr = crs_transformer(4326, epsg)
    return shapely.transform(shapely.segmentize(geom, densify_deg),
                             lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def tile_centres_lonlat(grid: Grid, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) of tile centres, degrees (one transform per zone)."""
    zone, south, col, row = key_parts(keys)
    lon, lat = np.empty(len(keys)), np.empty(len(keys))
    for z, s in sorted(set(zip(zone.tolist(), south.tolist()))):
        sel = (zone == z) & (south == s)
        x, y = (col[sel] + 0.5) * grid.tile_m, (row[sel] + 0.5) * grid.tile_m
        lon[sel], lat[sel] = crs_transformer(zone_epsg(z, s), 4326).transform(x, y)
    return lon, lat


# ---------------------------------------------------------------------------- cells of one zone

@dataclass(frozen=True)
class Window:
    """Columns ``col0 <= c < col1`` and rows ``row0 <= r < row1`` of one zone's grid."""

    col0: int
    col1: int
    row0: int
    row1: int


FULL_ZONE = Window(0, 100_000, 0, 100_000)


def _near_outline(geom: shapely.Geometry, tile_m: float) -> np.ndarray:
    """(col, row) of every tile within one tile of the outline densified to half a tile: a
    superset of the tiles the outline touches (int64 ``[n, 2]``, with repeats)."""
    outline = shapely.segmentize(shapely.boundary(geom), tile_m / 2)
    cells = np.floor(shapely.get_coordinates(outline) / tile_m).astype(np.int64)
    offsets = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)], dtype=np.int64)
    return (cells[:, None, :] + offsets[None]).reshape(-1, 2)


def cells_covered(select: shapely.Geometry, measure: shapely.Geometry, tile_m: float,
                  window: Window = FULL_ZONE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tiles of one zone's grid (in ``window``) that intersect ``select``, with the share of
    each inside ``measure`` (both polygons in the zone's UTM CRS, metres; ``select`` ⊆ ``measure``).

    Returns (col, row, coverage): int64, int64, float64 arrays in column-major order.
    """
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    if select.is_empty:
        return empty
    x0, y0, x1, y1 = select.bounds
    c0, c1 = max(int(np.floor(x0 / tile_m)), window.col0), min(int(np.floor(x1 / tile_m)) + 1, window.col1)
    r0, r1 = max(int(np.floor(y0 / tile_m)), window.row0), min(int(np.floor(y1 / tile_m)) + 1, window.row1)
    if c0 >= c1 or r0 >= r1:
        return empty
    nx, ny = c1 - c0, r1 - r0

    def flags(cells: np.ndarray) -> np.ndarray:  # [nx, ny] mask of cells in the bbox window
        mask = np.zeros((nx, ny), dtype=bool)
        inside = (cells[:, 0] >= c0) & (cells[:, 0] < c1) & (cells[:, 1] >= r0) & (cells[:, 1] < r1)
        mask[cells[inside, 0] - c0, cells[inside, 1] - r0] = True
        return mask

    shapely.prepare(select)
    shapely.prepare(measure)
    cols, rows = np.meshgrid(np.arange(c0, c1, dtype=np.int64), np.arange(r0, r1, dtype=np.int64), indexing="ij")
    near_select = flags(_near_outline(select, tile_m))
    hit = np.zeros((nx, ny), dtype=bool)
    far = ~near_select
    hit[far] = shapely.contains_xy(select, (cols[far] + 0.5) * tile_m, (rows[far] + 0.5) * tile_m)
    boxes = shapely.box(cols[near_select] * tile_m, rows[near_select] * tile_m,
                        (cols[near_select] + 1) * tile_m, (rows[near_select] + 1) * tile_m)
    hit[near_select] = shapely.intersects(select, boxes)

    col, row = cols[hit], rows[hit]
    coverage = np.ones(len(col))
    near_measure = flags(_near_outline(measure, tile_m))[hit]
    # tiles off the outline of ``measure`` lie inside it (they touch ``select`` ⊆ ``measure``); of
    # those near it, the ones wholly inside (a cheap prepared test) need no intersection either
    near = np.flatnonzero(near_measure)
    if len(near):
        c, r = col[near], row[near]
        boxes = shapely.box(c * tile_m, r * tile_m, (c + 1) * tile_m, (r + 1) * tile_m)
        cut = ~shapely.contains_properly(measure, boxes)
        coverage[near[cut]] = np.clip(shapely.area(shapely.intersection(boxes[cut], measure)) / (tile_m * tile_m), 0, 1)
    return col, row, coverage


# ---------------------------------------------------------------------------- one footprint, every zone

def zone_band(zone: int, south: bool, margin_deg: float = 0.0) -> shapely.Polygon:
    """A zone's longitude band in one hemisphere (lon/lat box), widened by ``margin_deg``."""
    west = zone_central_meridian(zone) - 3.0
    lat0, lat1 = (-90.0, 0.0) if south else (0.0, 90.0)
    return shapely.box(west - margin_deg, max(lat0 - margin_deg, -90.0), west + 6.0 + margin_deg,
                       min(lat1 + margin_deg, 90.0))


def zones_touched(footprint_lonlat: shapely.Geometry, margin_deg: float = 0.0) -> list[tuple[int, bool]]:
    """(zone, south) grids whose band (widened by ``margin_deg``) the footprint touches."""
    lon0, lat0, lon1, lat1 = footprint_lonlat.bounds
    zones = range(utm_zone(max(lon0 - margin_deg, -180.0)), utm_zone(min(lon1 + margin_deg, 180.0)) + 1)
    hemis = [s for s in (False, True) if (lat1 + margin_deg > 0 if not s else lat0 - margin_deg < 0)]
    return [(z, s) for s in hemis for z in zones]


def footprint_cells(grid: Grid, footprint_lonlat: shapely.Geometry, zone: int, south: bool, *,
                    margin_deg: float = 0.0, window: Window = FULL_ZONE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of one zone's grid covered by a lon/lat footprint: (int64 keys, coverage 0..1).

    Tiles count when they intersect the part of the footprint inside the zone's band widened by
    ``margin_deg`` (0: the S2 rule, a scene gives each zone the tiles over its part of the scene;
    > 0: every tile of the zone's grid the footprint touches, for S1 and land cover, whose
    tiles are already chosen). Coverage is measured against the whole footprint.
    """
    part = shapely.intersection(footprint_lonlat, zone_band(zone, south, margin_deg))
    if part.is_empty or part.area == 0:
        return np.empty(0, np.int64), np.empty(0)
    epsg = zone_epsg(zone, south)
    select = lonlat_to_utm(part, epsg)
    measure = select if part.equals(footprint_lonlat) else lonlat_to_utm(footprint_lonlat, epsg)
    col, row, coverage = cells_covered(select, measure, grid.tile_m, window)
    return tile_keys(zone, south, col, row), coverage
