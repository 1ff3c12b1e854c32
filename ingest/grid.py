"""The global tile grid: every location maps to one tile id, whatever CRS it came in.

A tile is a square of ``tile_size_px`` pixels of ``resolution_m`` metres (default 264 px ×
10 m = 2640 m) in a WGS 84 / UTM zone (EPSG:326zz north, 327zz south), aligned to
multiples of the tile size along the zone's easting and northing. Zones are the plain 6°
bands (no Norway/Svalbard exceptions, so the rule needs no lookup table).

- A point maps to exactly one tile: the tile of the point's own zone that contains it.
- A zone's grid holds every tile that touches the zone's longitude band, so the grid has
  no gaps at zone edges. The price is that the edge tiles of two zones overlap on the
  ground; ingest removes those near-duplicates by footprint IoU (:mod:`eoforge.ingest.plan`).

Tile ids are :class:`eoforge.shards.keys.TileId` strings, e.g. ``32n_00109_01727``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from eoforge.shards.keys import TileId


def utm_zone(lon: float) -> int:
    """Plain 6° UTM zone (1..60) of a longitude in degrees; 180° belongs to zone 60."""
    return min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)


def zone_central_meridian(zone: Any) -> Any:
    """Longitude (degrees) of a UTM zone's central meridian; ``zone`` an int or an int array."""
    return -183.0 + 6.0 * zone


@lru_cache(maxsize=256)
def crs_transformer(src: int | str, dst: int | str) -> Transformer:
    """A cached always-x-y transformer between two CRSs (EPSG codes or strings)."""
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


@dataclass(frozen=True)
class Grid:
    """Grid parameters: tile size in pixels and pixel size in metres."""

    tile_size_px: int = 264
    resolution_m: float = 10.0

    def __post_init__(self) -> None:
        if self.tile_size_px < 1 or self.resolution_m <= 0:
            raise ValueError(f"invalid grid: {self.tile_size_px} px × {self.resolution_m} m")

    @property
    def tile_m(self) -> float:
        """Tile edge length in metres."""
        return self.tile_size_px * self.resolution_m

    def as_dict(self) -> dict[str, float]:
        return {"tile_size_px": self.tile_size_px, "resolution_m": self.resolution_m}

    # ------------------------------------------------------------------ one tile

    def transform(self, tile: TileId) -> Affine:
        """The tile's affine (north-up, origin at its upper-left corner) in its UTM CRS."""
        return Affine(
            self.resolution_m, 0.0, tile.col * self.tile_m,
            0.0, -self.resolution_m, (tile.row + 1) * self.tile_m,
        )

    def bounds(self, tile: TileId) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the tile in its UTM CRS, metres."""
        x0, y0 = tile.col * self.tile_m, tile.row * self.tile_m
        return x0, y0, x0 + self.tile_m, y0 + self.tile_m

    def centre_lonlat(self, tile: TileId) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds(tile)
        return crs_transformer(tile.epsg, 4326).transform((x0 + x1) / 2, (y0 + y1) / 2)

    def footprint_lonlat(self, tile: TileId, points_per_edge: int = 4) -> shapely.Polygon:
        """The tile outline in lon/lat (edges densified)."""
        x0, y0, x1, y1 = self.bounds(tile)
        ring = shapely.segmentize(shapely.box(x0, y0, x1, y1), self.tile_m / points_per_edge)
        xs, ys = np.asarray(ring.exterior.coords).T
        lon, lat = crs_transformer(tile.epsg, 4326).transform(xs, ys)
        return shapely.Polygon(np.column_stack([lon, lat]))

    def is_member(self, tile: TileId) -> bool:
        """True when the tile touches its own zone's longitude band and its hemisphere."""
        lon0, lat0, lon1, lat1 = self.footprint_lonlat(tile).bounds
        west = zone_central_meridian(tile.zone) - 3.0
        in_zone = lon0 < west + 6.0 and lon1 > west
        in_hemisphere = lat1 > 0 if tile.hemisphere == "n" else lat0 < 0
        return in_zone and in_hemisphere

    # ------------------------------------------------------------------ lookups

    def tile_at(self, lon: float, lat: float) -> TileId:
        """The grid tile containing a point (degrees): the tile of the point's own zone."""
        zone, hemi = utm_zone(lon), ("n" if lat >= 0 else "s")
        x, y = crs_transformer(4326, (32600 if hemi == "n" else 32700) + zone).transform(lon, lat)
        return TileId(zone, hemi, int(math.floor(x / self.tile_m)), int(math.floor(y / self.tile_m)))

    def tiles_covering(self, footprint_lonlat: shapely.Geometry, min_overlap: float = 0.0) -> list[TileId]:
        """Grid tiles that intersect a lon/lat footprint, sorted by id (each zone's tiles
        over the part of the footprint inside that zone).

        Args:
            footprint_lonlat: area in lon/lat degrees (a scene's valid-data footprint).
            min_overlap: keep tiles whose area inside the footprint is at least this share
                of the tile (0 keeps any intersecting tile, 1 only fully covered ones).
        """
        lon0, lat0, lon1, lat1 = footprint_lonlat.bounds
        found: list[TileId] = []
        for hemi, lat_band in (("n", (0.0, 90.0)), ("s", (-90.0, 0.0))):
            for zone in range(utm_zone(lon0), utm_zone(lon1) + 1):
                west = zone_central_meridian(zone) - 3.0
                part = shapely.intersection(footprint_lonlat, shapely.box(west, lat_band[0], west + 6.0, lat_band[1]))
                if part.is_empty or part.area == 0:
                    continue
                epsg = (32600 if hemi == "n" else 32700) + zone
                local = shapely.transform(
                    shapely.segmentize(part, 0.01),
                    lambda xy, e=epsg: np.column_stack(crs_transformer(4326, e).transform(xy[:, 0], xy[:, 1])),
                )
                x0, y0, x1, y1 = local.bounds
                cols = range(int(math.floor(x0 / self.tile_m)), int(math.floor(x1 / self.tile_m)) + 1)
                rows = range(int(math.floor(y0 / self.tile_m)), int(math.floor(y1 / self.tile_m)) + 1)
                boxes = [(c, r) for c in cols for r in rows if 0 <= c < 100_000 and 0 <= r < 100_000]
                if not boxes:
                    continue
                polys = shapely.box(
                    *np.array([[c * self.tile_m, r * self.tile_m, (c + 1) * self.tile_m, (r + 1) * self.tile_m] for c, r in boxes]).T
                )
                shapely.prepare(local)
                hit = shapely.intersects(local, polys)
                for (c, r), poly, h in zip(boxes, polys, hit):
                    if not h:
                        continue
                    tile = TileId(zone, hemi, c, r)
                    if min_overlap > 0 and shapely.intersection(local, poly).area < min_overlap * poly.area:
                        continue
                    found.append(tile)
        return sorted(set(found))
