"""Stage 2, plan: decide every sample from metadata alone, in columns and by region.

From the scene inventory to one row per (tile, time step) in ``plan.parquet``:

1. **Level**: S2 products of the other processing level (``s2_level``) are set aside.
2. **Dedup (a)**, the same product delivered twice (mirror copies, a SAFE and its Earth
   Search COG twin): one delivery per product id is kept.
3. **Tiles**: the grid tiles each S2 scene covers by at least ``min_scene_coverage``
   (:mod:`.coverage`: grid arithmetic, exact geometry only at the footprint's outline).
4. **Dedup (b)**, one acquisition in several products (overlapping MGRS tiles of a
   datatake, reprocessed baselines): per tile and acquisition the product covering the
   tile best is kept (then: already in the tile's CRS, newest baseline).
5. **Dedup (c)**, zone edges: tiles of neighbouring UTM zones whose footprints overlap by
   IoU >= ``zone_overlap_iou`` (shapely STRtree) are near-duplicates; the tile whose centre
   lies deeper inside its own zone stays. Only tiles within two tile diagonals of a zone
   edge can clash, so this runs once, for the whole archive, over those alone.
6. **Pairing**: per tile one S1 orbit direction (the one that pairs most steps, unless
   configured); each S2 candidate takes the S1 of that direction nearest in time within
   ``max_dt_days`` (a sorted time join per tile).
7. **Seasons**: per tile and season the clearest S2 candidate (scene cloud cover, then
   paired, then coverage); up to ``seasons`` steps, in time order.
8. **Split**: blocks of ``split_block_tiles`` tiles go to val or train as a whole.
9. **Shards**: the tiles of a split, in a seeded random order, are cut into shards of
   ``samples_per_shard``, so every shard mixes places and scenes from the whole area.
10. **Reads** (:func:`plan_reads`): per source scene (S2, S1, land cover) the tiles it
    serves, north to south and west to east, in as few tasks as keep the workers busy (or
    of ``read_task_rows`` tile rows; a JPEG 2000 scene in one task with several threads
    rather than parts, :func:`split_read`): each source is read once, in raster order,
    whichever shards its tiles go to.

How it scales (shards/DESIGN.md#scale): scenes are columns (:class:`Scenes`), candidate
(tile, scene) pairs are NumPy arrays keyed by integer tile keys, dedup and season choice
are sort + group-by, pairing is a sorted join: O(n log n). Steps 3-7 run per **plan
region** (``plan_region_tiles`` square blocks of one zone's grid) on the scenes that touch
it, so memory follows the region, not the archive; a region's result depends only on its
own tiles, and the union over regions is the same whatever the region size.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.errors import ErrorRow
from eoforge.ingest.coverage import (
    Window, footprint_cells, key_parts, lonlat_to_utm, tile_centres_lonlat, tile_id_strings, tile_of,
    zone_band, zone_epsg, zones_touched,
)
from eoforge.ingest.grid import Grid, zone_central_meridian
from eoforge.ingest.names import parse_time
from eoforge.ingest.scene import Scene, scenes_table
from eoforge.ingest.sizes import estimate_tile_bytes
from eoforge.shards.digest import stable_hash
from eoforge.shards.keys import TileId
from eoforge.shards.manifest import atomic_parquet_writer

#: S1 and land-cover footprints give tiles of every zone whose band, widened by this, they touch
#: (a zone's edge tiles reach past its band by less than a tile: < 0.4° up to 84° latitude).
CROSS_ZONE_MARGIN_DEG = 1.0
#: Examples kept per removal reason (the report shows them; the counts are exact).
REMOVED_EXAMPLES = 5
_US_PER_DAY = 86400e6

#: Repeated strings (a tile has ~4 rows, a product ~100) are dictionary-encoded, in memory as
#: in the file: the plan of 10⁵ products holds 4 bytes per row for each instead of ~60.
_TEXT = pa.dictionary(pa.int32(), pa.string())
PLAN_SCHEMA = pa.schema([
    ("tile_id", _TEXT), ("epsg", pa.int64()), ("step", pa.int64()), ("season", pa.int64()),
    ("s2_scene", pa.int64()), ("s2_product_id", _TEXT), ("s2_datetime", _TEXT),
    ("s2_coverage", pa.float64()), ("cloud_percentage", pa.float64()),
    ("s1_scene", pa.int64()), ("s1_product_id", _TEXT), ("s1_datetime", _TEXT),
    ("dt_days", pa.float64()), ("orbit_direction", _TEXT),
    ("split", _TEXT), ("wave", pa.int64()), ("shard", pa.int64()), ("position", pa.int64()),
    ("landcover_scenes", pa.list_(pa.int64())),
])
#: The scene columns planning reads (``scenes.parquet`` has more).
SCENE_COLUMNS = ("scene", "sensor", "product_id", "location", "level", "datetime", "baseline", "mgrs_tile",
                 "orbit_direction", "source_id", "epsg", "cloud_percentage", "footprint", "paths")


@dataclass
class Removed:
    """What one removal reason took out: the exact count and the first few records."""

    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.count

    def add(self, count: int, examples: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
        self.count += int(count)
        for record in examples:
            if len(self.examples) >= REMOVED_EXAMPLES:
                break
            self.examples.append(record)


@dataclass
class Plan:
    """The planned samples and what planning removed.

    Attributes:
        rows: one row per (tile, time step), :data:`PLAN_SCHEMA`, in shard order.
        removed: reason -> :class:`Removed` (counts and examples for the report).
        errors: error rows (e.g. land-cover rasters overlapping no tile).
        pairing: S1 usage counts and the Δt of every pair (``dt_days``, float64 array).
        regions: plan regions planned.
    """

    rows: pa.Table
    removed: dict[str, Removed] = field(default_factory=dict)
    errors: list[ErrorRow] = field(default_factory=list)
    pairing: dict[str, Any] = field(default_factory=dict)
    regions: int = 0

    @property
    def num_tiles(self) -> int:
        return len(set(self.rows.column("tile_id").to_pylist())) if self.rows.num_rows else 0


def read_scenes(path: str | os.PathLike[str]) -> pa.Table:
    """The columns of ``scenes.parquet`` that planning reads (of ``paths``, only the first:
    a SAFE lists ~30 files, and planning names a file only in a land-cover error row)."""
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in SCENE_COLUMNS if c in names and c != "paths"])
    batches = pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["paths"])
    first = pa.chunked_array([pc.list_element(batch.column(0), 0) for batch in batches], pa.string())
    return table.append_column("first_path", first)


def season_of(when: datetime, seasons: int) -> int:
    """Season index 0..seasons-1: the year in equal month ranges starting in December
    (4 seasons: DJF, MAM, JJA, SON)."""
    return ((when.month % 12) * seasons) // 12


def _ranks(values: list[Any]) -> np.ndarray:
    """Dense int64 rank of each value in sorted order (equal values, equal ranks)."""
    _, inverse = np.unique(np.asarray(values, dtype=object), return_inverse=True)
    return inverse.astype(np.int64)


def _group_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each run of equal keys (rows already sorted by them)."""
    n = len(sorted_keys[0])
    first = np.zeros(n, dtype=bool)
    if n:
        first[0] = True
        for k in sorted_keys:
            first[1:] |= k[1:] != k[:-1]
    return first


# ---------------------------------------------------------------------------- scenes as columns

class Scenes:
    """The scan's scenes as columns (:class:`~eoforge.ingest.scene.Scene` s or a
    ``scenes.parquet`` table), with the derived keys planning sorts and joins on. Row ``k``
    is scene ``ids[k]``."""

    def __init__(self, scenes: Sequence[Scene] | pa.Table) -> None:
        if not isinstance(scenes, pa.Table):
            scenes = scenes_table(scenes)

        def col(name: str) -> list[Any]:
            return scenes.column(name).to_pylist() if name in scenes.column_names else [None] * scenes.num_rows

        self.ids = np.asarray(col("scene"), dtype=np.int64)
        self.sensor = np.asarray(col("sensor"), dtype=object)
        self.product_id = col("product_id")
        self.location = col("location")
        self.level = col("level")
        self.datetime = col("datetime")
        self.mgrs_tile = col("mgrs_tile")
        self.mgrs_code = np.where([m is None for m in self.mgrs_tile], -1, _ranks([m or "" for m in self.mgrs_tile]))
        self.orbit_direction = col("orbit_direction")
        self.has_source_id = np.array([v is not None for v in col("source_id")], dtype=bool)
        self.epsg = np.asarray([e if e is not None else -1 for e in col("epsg")], dtype=np.int64)
        self.baseline = np.asarray([float(b or 0) for b in col("baseline")])
        self.cloud = np.asarray([np.nan if c is None else float(c) for c in col("cloud_percentage")])
        self.footprint_wkb: list[bytes] = col("footprint")
        self.first_path = col("first_path") if "first_path" in scenes.column_names \
            else [p[0] if p else "" for p in col("paths")]
        self.pid_rank = _ranks(self.product_id)
        self.datetime_rank = _ranks([d or "" for d in self.datetime])
        times = [parse_time(d) if d else None for d in self.datetime]
        epoch = datetime(1970, 1, 1)
        self.time_us = np.asarray([(t - epoch) // _ONE_US if t else 0 for t in times], dtype=np.int64)
        self.month = np.asarray([t.month if t else 0 for t in times], dtype=np.int64)
        # same mission, sensor and start second = same acquisition
        self.acquisition = _ranks([f"{s}|{p[:3]}|{(d or '')[:19]}" for s, p, d in
                                   zip(self.sensor, self.product_id, self.datetime)])
        self.descending = np.asarray([d == "descending" for d in self.orbit_direction], dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Scenes:
        """The scenes of ``rows`` (ranks stay those of the whole inventory, so sorts agree)."""
        sub = object.__new__(Scenes)
        for name, value in vars(self).items():
            setattr(sub, name, value[rows] if isinstance(value, np.ndarray) else [value[k] for k in rows.tolist()])
        return sub

    def footprint(self, k: int) -> shapely.Geometry:
        return _footprint(self.footprint_wkb[k])


_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)


@lru_cache(maxsize=8192)
def _footprint(wkb: bytes) -> shapely.Geometry:
    return shapely.from_wkb(wkb)


# ---------------------------------------------------------------------------- steps 1-2

def _one_delivery_per_product(sc: Scenes, config: IngestConfig, removed: dict[str, Removed]) -> np.ndarray:
    """Steps 1-2: set other-level S2 aside; keep one delivery per product id (a SAFE before its
    COG twin, then by location). Returns the kept rows (indices into ``sc``), sorted."""
    other_level = (sc.sensor == "s2") & np.array([lv != config.s2_level for lv in sc.level], dtype=bool)
    removed["other_level"].add(other_level.sum(), (
        {"product_id": sc.product_id[k], "location": sc.location[k],
         "why": f"{sc.level[k]} product; s2_level is {config.s2_level}"} for k in np.flatnonzero(other_level)))
    rows = np.flatnonzero(~other_level & (sc.sensor != "landcover"))
    location_rank = _ranks(sc.location)
    sensor_rank = _ranks(list(sc.sensor))
    order = rows[np.lexsort((location_rank[rows], sc.has_source_id[rows], sc.pid_rank[rows], sensor_rank[rows]))]
    first = _group_starts(sensor_rank[order], sc.pid_rank[order])
    kept_copy = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    dups = np.flatnonzero(~first)
    removed["duplicate_product"].add(len(dups), (
        {"product_id": sc.product_id[order[d]], "location": sc.location[order[d]],
         "why": f"same product as {sc.location[order[kept_copy[d]]]}"} for d in dups))
    return np.sort(np.concatenate([order[first], np.flatnonzero(sc.sensor == "landcover")]))


# ---------------------------------------------------------------------------- regions

@dataclass(frozen=True, order=True)
class Region:
    """A plan region: ``size`` × ``size`` tiles of one zone's grid (``col // size``, ``row // size``)."""

    zone: int
    south: bool
    rc: int
    rr: int
    size: int

    @classmethod
    def of(cls, tile: TileId, size: int) -> Region:
        """The region of ``size`` x ``size`` tiles that holds ``tile``."""
        return cls(tile.zone, tile.hemisphere == "s", tile.col // size, tile.row // size, size)

    @property
    def window(self) -> Window:
        return Window(self.rc * self.size, (self.rc + 1) * self.size, self.rr * self.size, (self.rr + 1) * self.size)

    def __str__(self) -> str:
        return f"{self.zone:02d}{'s' if self.south else 'n'}_{self.rc}_{self.rr}"

    def tiles_of(self, keys: np.ndarray) -> np.ndarray:
        """The tile keys (of ``keys``) inside this region."""
        zone, south, col, row = key_parts(keys)
        w = self.window
        inside = (zone == self.zone) & (south == self.south) & (col >= w.col0) & (col < w.col1) & \
            (row >= w.row0) & (row < w.row1)
        return keys[inside]


def _regions_touched(grid: Grid, footprint: shapely.Geometry, size: int, margin_deg: float) -> list[Region]:
    """Regions whose tiles a footprint may cover (from its bounds in each zone: a superset)."""
    found = []
    region_m = size * grid.tile_m
    for zone, south in zones_touched(footprint, margin_deg):
        part = shapely.intersection(footprint, zone_band(zone, south, margin_deg))
        if part.is_empty or part.area == 0:
            continue
        x0, y0, x1, y1 = lonlat_to_utm(part, zone_epsg(zone, south)).bounds
        for rc in range(max(int(x0 // region_m), 0), int(x1 // region_m) + 1):
            for rr in range(max(int(y0 // region_m), 0), int(y1 // region_m) + 1):
                found.append(Region(zone, south, rc, rr, size))
    return found


def scenes_by_region(grid: Grid, sc: Scenes, rows: np.ndarray, size: int, margin_deg: float
                     ) -> dict[Region, list[int]]:
    """Region -> the scene rows (of ``rows``) whose footprint may cover its tiles."""
    out: dict[Region, list[int]] = defaultdict(list)
    by_wkb: dict[bytes, list[Region]] = {}
    for k in rows.tolist():
        wkb = sc.footprint_wkb[k]
        if wkb not in by_wkb:
            by_wkb[wkb] = _regions_touched(grid, sc.footprint(k), size, margin_deg)
        for region in by_wkb[wkb]:
            out[region].append(k)
    return out


# ---------------------------------------------------------------------------- candidate (tile, scene) pairs

@dataclass
class Pairs:
    """Candidate (tile, scene) pairs: int64 tile keys, scene rows, coverage 0..1."""

    tile: np.ndarray
    scene: np.ndarray
    coverage: np.ndarray

    def take(self, index: np.ndarray) -> Pairs:
        return Pairs(self.tile[index], self.scene[index], self.coverage[index])

    def __len__(self) -> int:
        return len(self.tile)


def covered_pairs(grid: Grid, sc: Scenes, rows: list[int], region: Region, margin_deg: float) -> Pairs:
    """Every (tile of ``region``, scene) pair with the tile's coverage by the scene."""
    tiles, scenes, covs = [], [], []
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # one MGRS footprint serves ~60 dates
    for k in rows:
        wkb = sc.footprint_wkb[k]
        if wkb not in cache:
            cache[wkb] = footprint_cells(grid, sc.footprint(k), region.zone, region.south,
                                         margin_deg=margin_deg, window=region.window)
        keys, cov = cache[wkb]
        tiles.append(keys)
        scenes.append(np.full(len(keys), k, dtype=np.int64))
        covs.append(cov)
    if not tiles:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    return Pairs(np.concatenate(tiles), np.concatenate(scenes), np.concatenate(covs))


def one_per_acquisition(pairs: Pairs, sc: Scenes, removed: dict[str, Removed]) -> Pairs:
    """Step 4: per tile and acquisition the product covering the tile best (then: already in
    the tile's CRS, newest baseline, product id)."""
    if not len(pairs):
        return pairs
    zone, south, _, _ = key_parts(pairs.tile)
    other_crs = sc.epsg[pairs.scene] != (np.where(south, 32700, 32600) + zone)
    acq = sc.acquisition[pairs.scene]
    order = np.lexsort((sc.pid_rank[pairs.scene], -sc.baseline[pairs.scene], other_crs,
                        -np.round(pairs.coverage, 6), acq, pairs.tile))
    p = pairs.take(order)
    first = _group_starts(p.tile, acq[order])
    winner = np.maximum.accumulate(np.where(first, np.arange(len(p)), 0))
    losers = np.flatnonzero(~first)
    if len(losers):
        a, b = p.scene[winner[losers]], p.scene[losers]
        same_mgrs = (sc.mgrs_code[a] >= 0) & (sc.mgrs_code[a] == sc.mgrs_code[b])
        for reason, sel in (("reprocessed_baseline", same_mgrs), ("same_acquisition", ~same_mgrs)):
            idx = losers[sel]
            removed[reason].add(len(idx), (
                {"tile_id": str(tile_of(int(p.tile[d]))), "product_id": sc.product_id[p.scene[d]],
                 "why": f"{(sc.datetime[p.scene[d]] or '')[:19]} also in {sc.product_id[p.scene[winner[d]]]} "
                        f"(coverage {p.coverage[winner[d]]:.2f} vs {p.coverage[d]:.2f})"} for d in idx[:REMOVED_EXAMPLES]))
    return p.take(np.flatnonzero(first))


# ---------------------------------------------------------------------------- step 5: zone edges

def zone_edge_duplicates(grid: Grid, keys: np.ndarray, min_iou: float, removed: dict[str, Removed]) -> np.ndarray:
    """Step 5: of candidate tiles (int64 keys), those to drop as near-duplicates of a tile of a
    neighbouring zone. Only tiles near a zone edge can overlap another zone's tiles, so only
    they are compared: visited deepest-in-their-zone first, a tile is dropped when it overlaps
    an already kept tile of another zone by IoU >= ``min_iou`` (shapely STRtree)."""
    keys = np.unique(keys)
    if not len(keys):
        return keys
    lon, lat = tile_centres_lonlat(grid, keys)
    zone, _, _, _ = key_parts(keys)
    depth = 3.0 - np.abs(lon - zone_central_meridian(zone))  # degrees to the zone's nearest edge
    # a tile reaches at most its diagonal from its centre: tiles deeper than two diagonals
    # (in degrees of longitude at their latitude) overlap no other zone's tile
    reach_deg = 2 * math.sqrt(2) * grid.tile_m / (111_320.0 * np.maximum(np.cos(np.radians(lat)), 0.01))
    edge = depth < reach_deg
    if not edge.any():
        return np.empty(0, np.int64)
    tiles = [tile_of(int(k)) for k in keys[edge]]
    depth_edge = depth[edge]
    polys = [grid.footprint_lonlat(t) for t in tiles]
    tree = shapely.STRtree(polys)
    kept: set[int] = set()
    dropped = []
    for i in sorted(range(len(tiles)), key=lambda i: (-depth_edge[i], tiles[i])):
        clash = None
        for h in tree.query(polys[i], predicate="intersects"):
            if tiles[h].zone == tiles[i].zone or h not in kept:
                continue
            inter = shapely.area(shapely.intersection(polys[i], polys[h]))
            iou = inter / (shapely.area(polys[i]) + shapely.area(polys[h]) - inter)
            if iou >= min_iou:
                clash = (tiles[h], iou)
                break
        if clash:
            dropped.append(i)
            removed["zone_edge_overlap"].add(1, [{"tile_id": str(tiles[i]), "why": f"IoU {clash[1]:.2f} with {clash[0]}"}])
        else:
            kept.add(i)
    return np.sort(keys[edge][np.asarray(dropped, dtype=np.int64)]) if dropped else np.empty(0, np.int64)


def _edge_candidates(grid: Grid, sc: Scenes, s2_rows: np.ndarray, config: IngestConfig) -> np.ndarray:
    """Candidate tiles (coverage >= the minimum by some S2 scene) near a zone edge, from the S2
    footprints that come near one: the input of :func:`zone_edge_duplicates`, planned once
    for the whole archive before the regions (which then agree on every zone-edge decision)."""
    found = []
    seen: set[bytes] = set()
    threshold = max(config.min_scene_coverage, 1e-9)
    for k in s2_rows.tolist():
        wkb = sc.footprint_wkb[k]
        if wkb in seen:
            continue
        seen.add(wkb)
        fp = sc.footprint(k)
        lon0, lat0, lon1, lat1 = fp.bounds
        reach = 3 * grid.tile_m / (111_320.0 * max(math.cos(math.radians(max(abs(lat0), abs(lat1)))), 0.01))
        edges = np.arange(math.floor((lon0 + 180) / 6) * 6 - 180, lon1 + 6, 6.0)
        if not np.any((edges > lon0 - reach) & (edges < lon1 + reach)):
            continue
        for zone, south in zones_touched(fp):
            keys, cov = footprint_cells(grid, fp, zone, south)
            keys = keys[cov >= threshold]
            if len(keys):
                found.append(keys)
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)


# ---------------------------------------------------------------------------- step 6: pairing

def _time_join(left_group: np.ndarray, left_time: np.ndarray, right_group: np.ndarray, right_time: np.ndarray,
               max_us: float) -> tuple[np.ndarray, np.ndarray]:
    """All (left, right) index pairs of equal group whose times differ by at most ``max_us``
    (plus up to a second: callers filter exactly). A sorted join: O((n + m) log m + matches)."""
    order = np.lexsort((right_time, right_group))
    g, t = right_group[order], right_time[order] // 1_000_000
    lt = left_time // 1_000_000
    span = int(max_us // 1_000_000) + 2
    # composite key: group in the high bits, seconds since the earliest time in the low 40 bits
    t0 = min(int(t.min()) if len(t) else 0, int(lt.min()) if len(lt) else 0) - span
    composite = (g << 40) | (t - t0)
    lo = np.searchsorted(composite, (left_group << 40) | (lt - span - t0), side="left")
    hi = np.searchsorted(composite, (left_group << 40) | (lt + span - t0), side="right")
    counts = hi - lo
    left = np.repeat(np.arange(len(left_group)), counts)
    right = order[np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())] if counts.sum() else \
        np.empty(0, np.int64)
    return left, right


@dataclass
class RegionPlan:
    """What one region's planning returns: its rows (no split/shard yet) and its bookkeeping."""

    columns: dict[str, np.ndarray]
    landcover: tuple[np.ndarray, np.ndarray]  # (tile keys, land-cover scene ids), sorted
    removed: dict[str, Removed]
    s1_status: tuple[np.ndarray, np.ndarray]  # (S1 rows, their best status code here: see S1_STATUS)
    lc_used: np.ndarray  # land-cover rows that label some tile


#: S1 fates, best first: a scene's status is the best it reached on any tile.
S1_STATUS = ("used", "not_chosen", "other_orbit_direction", "far_in_time")
S1_WHY = {"far_in_time": "no S2 within {max_dt:g} days on any tile",
          "other_orbit_direction": "its tiles pair with the other orbit direction",
          "not_chosen": "another S1 is nearer in time on every tile",
          "no_tile": "covers no planned tile"}


def pair_with_s1(cand: Pairs, s1p: Pairs, final: np.ndarray, sc: Scenes, config: IngestConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 6: per tile one orbit direction, per S2 candidate the S1 of that direction nearest
    in time within ``max_dt_days`` (then better covered, then product id).

    Returns (pair: index into ``s1p`` per S2 candidate, -1 unpaired; each tile's direction,
    True = descending; each S1 pair's fate code, :data:`S1_STATUS` without "used")."""
    tile_index, s1_tile_index = np.searchsorted(final, cand.tile), np.searchsorted(final, s1p.tile)
    s2_time, s1_time = sc.time_us[cand.scene], sc.time_us[s1p.scene]
    s1_desc = sc.descending[s1p.scene]
    max_us = config.max_dt_days * 86400 * 1e6

    def nearest(direction_desc: np.ndarray) -> np.ndarray:
        left, right = _time_join(tile_index * 2 + direction_desc, s2_time, s1_tile_index * 2 + s1_desc, s1_time, max_us)
        dt = (s1_time[right] - s2_time[left]) / 1e6 / 86400.0
        ok = np.abs(dt) <= config.max_dt_days
        left, right, dt = left[ok], right[ok], dt[ok]
        order = np.lexsort((sc.pid_rank[s1p.scene[right]], -s1p.coverage[right], np.abs(dt), left))
        left, right = left[order], right[order]
        first = _group_starts(left)
        best = np.full(len(cand), -1, dtype=np.int64)
        best[left[first]] = right[first]
        return best

    if config.orbit_direction == "auto":  # the direction that pairs more steps; descending on a tie
        best_desc, best_asc = nearest(np.ones(len(cand), np.int64)), nearest(np.zeros(len(cand), np.int64))
        n_desc = np.bincount(tile_index, weights=best_desc >= 0, minlength=len(final))
        n_asc = np.bincount(tile_index, weights=best_asc >= 0, minlength=len(final))
        tile_desc = n_desc >= n_asc
        pair = np.where(tile_desc[tile_index], best_desc, best_asc)
    else:
        tile_desc = np.full(len(final), config.orbit_direction == "descending")
        pair = nearest(tile_desc[tile_index].astype(np.int64))
    # fates: near = some S2 candidate of the tile within max_dt_days
    left, right = _time_join(s1_tile_index, s1_time, tile_index, s2_time, max_us)
    close = np.abs((s1_time[left] - s2_time[right]) / 1e6) <= config.max_dt_days * 86400
    near = np.zeros(len(s1p), dtype=bool)
    near[left[close]] = True
    fate = np.where(near & (s1_desc == tile_desc[s1_tile_index]), 1, np.where(near, 2, 3))
    return pair, tile_desc, fate


def choose_steps(cand: Pairs, paired: np.ndarray, final: np.ndarray, sc: Scenes, config: IngestConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 7: per tile and season the clearest S2 candidate (scene cloud cover, then paired,
    then coverage, then time), the tile's steps in time order.

    Returns (chosen candidates, their season, their step index within the tile)."""
    tile_index = np.searchsorted(final, cand.tile)
    pool = np.flatnonzero(paired | config.keep_unpaired_s2)
    season = ((sc.month[cand.scene[pool]] % 12) * config.seasons) // 12
    cloud = np.nan_to_num(sc.cloud[cand.scene[pool]], nan=101.0)
    order = np.lexsort((sc.datetime_rank[cand.scene[pool]], -np.round(cand.coverage[pool], 6), ~paired[pool],
                        cloud, season, tile_index[pool]))
    first = _group_starts(tile_index[pool][order], season[order])
    chosen, chosen_season = pool[order][first], season[order][first]
    order = np.lexsort((sc.time_us[cand.scene[chosen]], tile_index[chosen]))
    chosen, chosen_season = chosen[order], chosen_season[order]
    tile_of_step = tile_index[chosen]
    return chosen, chosen_season, np.arange(len(chosen)) - np.searchsorted(tile_of_step, tile_of_step)


def plan_region(grid: Grid, sc: Scenes, region: Region, s2: list[int], s1: list[int], lcs: list[int],
                edge_drops: np.ndarray, config: IngestConfig) -> RegionPlan:
    """Steps 3-7 and the labels for the tiles of one region (``s2``, ``s1``, ``lcs``: the rows
    of the scenes that touch it; ``edge_drops``: its tiles step 5 removed)."""
    removed: dict[str, Removed] = defaultdict(Removed)
    threshold = max(config.min_scene_coverage, 1e-9)
    # 3-4: S2 candidates
    cand = covered_pairs(grid, sc, s2, region, 0.0)
    cand = one_per_acquisition(cand.take(np.flatnonzero(cand.coverage >= threshold)), sc, removed)
    # 5: zone-edge duplicates, decided for the whole archive beforehand
    cand = cand.take(np.flatnonzero(~np.isin(cand.tile, edge_drops)))
    final = np.unique(cand.tile)
    # 6: S1 candidates on the final tiles, one product per acquisition, then the pairing
    s1p = covered_pairs(grid, sc, s1, region, CROSS_ZONE_MARGIN_DEG)
    s1p = s1p.take(np.flatnonzero((s1p.coverage >= threshold) & np.isin(s1p.tile, final)))
    s1p = one_per_acquisition(s1p, sc, removed)
    pair, _, fate = pair_with_s1(cand, s1p, final, sc, config)
    # 7: seasons
    chosen, season, step = choose_steps(cand, pair >= 0, final, sc, config)
    s1_chosen = pair[chosen]
    has_s1 = s1_chosen >= 0
    fate[s1_chosen[has_s1]] = 0  # used
    order = np.lexsort((fate, s1p.scene))
    first = _group_starts(s1p.scene[order])
    s1_status = (s1p.scene[order][first], fate[order][first])  # each S1 row's best fate here

    s1_rows = np.full(len(chosen), -1, dtype=np.int64)
    s1_rows[has_s1] = s1p.scene[s1_chosen[has_s1]]
    s2_time = sc.time_us[cand.scene[chosen]]
    dt_days = np.where(has_s1, (sc.time_us[np.maximum(s1_rows, 0)] - s2_time) / 1e6 / 86400.0, np.nan)
    columns = {
        "tile": cand.tile[chosen], "step": step.astype(np.int16), "season": season.astype(np.int8),
        "s2_row": cand.scene[chosen], "s2_coverage": cand.coverage[chosen], "s1_row": s1_rows, "dt_days": dt_days,
    }
    # labels: land-cover rasters intersecting each final tile
    lc_pairs = covered_pairs(grid, sc, lcs, region, CROSS_ZONE_MARGIN_DEG)
    lc_pairs = lc_pairs.take(np.flatnonzero(np.isin(lc_pairs.tile, final)))
    lc_ids = sc.ids[lc_pairs.scene]
    order = np.lexsort((lc_ids, lc_pairs.tile))
    return RegionPlan(columns, (lc_pairs.tile[order], lc_ids[order]), dict(removed), s1_status,
                      np.unique(lc_pairs.scene))


# ---------------------------------------------------------------------------- the whole plan

def plan_ingest(scenes: Sequence[Scene] | pa.Table, config: IngestConfig, *,
                region_tiles: int | None = None, engine: Any = None) -> Plan:
    """Plan samples from scenes (``scan`` output or ``scenes.parquet``); see the module
    docstring. ``region_tiles`` overrides ``config.plan_region_tiles``; ``engine`` (an
    :class:`~eoforge.ingest.engine.Engine`) plans the regions as Dask tasks, else they run
    here one after another. The result is the same for every region size and worker count."""
    grid = config.grid
    size = region_tiles or config.plan_region_tiles
    sc = Scenes(scenes)
    removed: dict[str, Removed] = defaultdict(Removed)
    errors: list[ErrorRow] = []
    kept = _one_delivery_per_product(sc, config, removed)
    s2_rows = kept[sc.sensor[kept] == "s2"]
    s1_rows = kept[sc.sensor[kept] == "s1"]
    lc_rows = kept[sc.sensor[kept] == "landcover"]

    edge_drops = zone_edge_duplicates(grid, _edge_candidates(grid, sc, s2_rows, config), config.zone_overlap_iou, removed)
    s2_by_region = scenes_by_region(grid, sc, s2_rows, size, 0.0)
    s1_by_region = scenes_by_region(grid, sc, s1_rows, size, CROSS_ZONE_MARGIN_DEG)
    lc_by_region = scenes_by_region(grid, sc, lc_rows, size, CROSS_ZONE_MARGIN_DEG)

    regions = sorted(s2_by_region)
    payloads = [_region_payload(sc, region, s2_by_region[region], s1_by_region.get(region, []),
                                lc_by_region.get(region, []), edge_drops, config) for region in regions]
    if engine is None:
        results: Iterator[Any] = map(plan_region_task, payloads)
    else:
        results = iter(engine.map(plan_region_task, payloads, desc="plan", unit="region", key_prefix="plan",
                                      inline_below=8))
    parts: list[dict[str, np.ndarray]] = []
    lc_parts: list[tuple[np.ndarray, np.ndarray]] = []
    s1_best = np.full(len(sc), len(S1_STATUS), dtype=np.int64)  # per scene row; len(S1_STATUS): no tile
    lc_used = np.zeros(len(sc), dtype=bool)
    for region, rp in zip(regions, results):
        if isinstance(rp, BaseException):
            raise RuntimeError(f"planning region {region} failed: {type(rp).__name__}: {rp}") from rp
        parts.append(rp.columns)
        lc_parts.append(rp.landcover)
        for reason, r in rp.removed.items():
            removed[reason].add(r.count, r.examples)
        np.minimum.at(s1_best, rp.s1_status[0], rp.s1_status[1])
        lc_used[rp.lc_used] = True

    for k in s1_rows.tolist():
        status = S1_STATUS[s1_best[k]] if s1_best[k] < len(S1_STATUS) else "no_tile"
        if status != "used":
            removed[f"s1_{status}"].add(1, [{"product_id": sc.product_id[k],
                                             "why": S1_WHY[status].format(max_dt=config.max_dt_days)}])
    for k in lc_rows.tolist():
        if not lc_used[k]:
            errors.append(ErrorRow(sc.first_path[k], "plan", "land-cover raster overlaps no planned tile "
                                   "(check its extent and CRS against the S2 scenes)", sc.product_id[k]))

    columns = {name: np.concatenate([p.pop(name) for p in parts]) if parts else np.empty(0, np.int64)
               for name in ("tile", "step", "season", "s2_row", "s2_coverage", "s1_row", "dt_days")}
    del parts
    paired = columns["s1_row"] >= 0
    landcover = (np.concatenate([t for t, _ in lc_parts]) if lc_parts else np.empty(0, np.int64),
                 np.concatenate([i for _, i in lc_parts]) if lc_parts else np.empty(0, np.int64))
    rows = _rows_table(sc, columns, landcover, config)
    pairing = {
        "steps": rows.num_rows, "paired_steps": int(paired.sum()), "dt_days": columns["dt_days"][paired].astype(np.float64), "s1_scenes": len(s1_rows), "s1_used": int((s1_best == 0).sum()),
        "s2_scenes_used": len(np.unique(columns["s2_row"])),
    }
    return Plan(rows, {k: v for k, v in removed.items() if v.count}, errors, pairing, regions=len(regions))



def write_plan(rows: pa.Table, path: str | os.PathLike[str], batch_rows: int = 1 << 20) -> None:
    """``plan.parquet``, its text columns as plain strings (pyarrow's dictionary-column writes
    are not byte-reproducible), converted a batch at a time; atomic, no fsync (a working table,
    rewritten by every run)."""
    schema = pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                        for f in PLAN_SCHEMA])
    with atomic_parquet_writer(path, schema, fsync=False) as writer:
        for start in range(0, max(rows.num_rows, 1), batch_rows):
            writer.write_table(rows.slice(start, batch_rows).cast(schema), row_group_size=batch_rows)


def _region_payload(sc: Scenes, region: Region, s2: list[int], s1: list[int], lcs: list[int],
                    edge_drops: np.ndarray, config: IngestConfig) -> tuple[Any, ...]:
    """What one region's task gets: the scenes that touch it (and their rows in the inventory)."""
    rows = np.asarray(sorted(set(s2) | set(s1) | set(lcs)), dtype=np.int64)
    local = {int(k): i for i, k in enumerate(rows.tolist())}

    def remap(ks: list[int]) -> list[int]:
        return [local[k] for k in ks]

    return region, sc.take(rows), rows, remap(s2), remap(s1), remap(lcs), region.tiles_of(edge_drops), config


def plan_region_task(payload: tuple[Any, ...]) -> RegionPlan:
    """Plan one region (a Dask task): :func:`plan_region`, scene rows mapped back to the inventory's."""
    region, sc, rows, s2, s1, lcs, edge_drops, config = payload
    rp = plan_region(config.grid, sc, region, s2, s1, lcs, edge_drops, config)
    # int32 rows: the client gathers every region's columns (~40 bytes per planned step)
    rp.columns["s2_row"] = rows[rp.columns["s2_row"]].astype(np.int32)
    rp.columns["s1_row"] = np.where(rp.columns["s1_row"] >= 0, rows[np.maximum(rp.columns["s1_row"], 0)], -1).astype(np.int32)
    rp.s1_status = (rows[rp.s1_status[0]], rp.s1_status[1])
    rp.lc_used = rows[rp.lc_used]
    return rp


def _rows_table(sc: Scenes, c: dict[str, np.ndarray], landcover: tuple[np.ndarray, np.ndarray],
                config: IngestConfig) -> pa.Table:
    """The plan rows as :data:`PLAN_SCHEMA`, with split, shard and position, in shard order.
    ``landcover``: (tile keys, land-cover scene ids) pairs."""
    n = len(c["tile"])
    if not n:
        return PLAN_SCHEMA.empty_table()
    lc_tile, lc_id = landcover
    tile = c["tile"].astype(np.int64)
    tiles, tile_index = np.unique(tile, return_inverse=True)
    _, est_bytes = estimate_tile_bytes(np.bincount(tile_index, minlength=len(tiles)),
                                       np.bincount(tile_index, weights=c["s1_row"] >= 0, minlength=len(tiles)),
                                       np.isin(tiles, lc_tile), config)
    split, wave, shard, position = assign_splits_and_shards(tiles, est_bytes, config)
    split, wave, shard, position = split[tile_index], wave[tile_index], shard[tile_index], position[tile_index]
    order = np.lexsort((c["step"], position, shard, split != "train"))
    c = {k: v[order] for k, v in c.items()}
    split, wave, shard, position = split[order], wave[order], shard[order], position[order]
    tile = c["tile"].astype(np.int64)
    s2, s1 = c["s2_row"].astype(np.int64), c["s1_row"].astype(np.int64)
    no_s1 = s1 < 0
    s1_or_0 = np.maximum(s1, 0)
    zone, south, _, _ = key_parts(tile)
    tiles, tile_index = np.unique(tile, return_inverse=True)

    def strings(values: list[Any], index: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
        """``values[index]`` as a dictionary column holding only the values used, in first-use order."""
        used, first = np.unique(index if mask is None else index[~mask], return_index=True)
        used = used[np.argsort(first)]
        code = np.zeros(len(values) if len(values) else 1, dtype=np.int32)
        code[used] = np.arange(len(used), dtype=np.int32)
        indices = pa.array(code[index], pa.int32(), mask=mask)
        return pa.DictionaryArray.from_arrays(indices, pa.array([values[k] for k in used.tolist()], pa.string()))

    lc_order = np.lexsort((lc_id, lc_tile))
    lc_tile, lc_id = lc_tile[lc_order], lc_id[lc_order]
    lo, hi = np.searchsorted(lc_tile, tile, "left"), np.searchsorted(lc_tile, tile, "right")
    counts = hi - lo
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = lc_id[np.repeat(lo - offsets[:-1], counts) + np.arange(offsets[-1])] if offsets[-1] else lc_id[:0]
    cloud = sc.cloud[s2]
    return pa.table({
        "tile_id": strings(tile_id_strings(tiles), tile_index),
        "epsg": pa.array(np.where(south, 32700, 32600) + zone, pa.int64()),
        "step": pa.array(c["step"].astype(np.int64), pa.int64()),
        "season": pa.array(c["season"].astype(np.int64), pa.int64()),
        "s2_scene": pa.array(sc.ids[s2], pa.int64()),
        "s2_product_id": strings(sc.product_id, s2),
        "s2_datetime": strings(sc.datetime, s2),
        "s2_coverage": pa.array(c["s2_coverage"], pa.float64()),
        "cloud_percentage": pa.array(cloud, pa.float64(), mask=np.isnan(cloud)),
        "s1_scene": pa.array(sc.ids[s1_or_0], pa.int64(), mask=no_s1),
        "s1_product_id": strings(sc.product_id, s1_or_0, no_s1),
        "s1_datetime": strings(sc.datetime, s1_or_0, no_s1),
        "dt_days": pa.array(c["dt_days"], pa.float64(), mask=no_s1),
        "orbit_direction": strings(sc.orbit_direction, s1_or_0, no_s1),
        "split": strings(["train", "val"], (split == "val").astype(np.int64)),
        "wave": pa.array(wave, pa.int64()),
        "shard": pa.array(shard, pa.int64()),
        "position": pa.array(position, pa.int64()),
        "landcover_scenes": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64())),
    }, schema=PLAN_SCHEMA)


def assign_waves(tiles: np.ndarray, tile_bytes: np.ndarray, config: IngestConfig) -> np.ndarray:
    """Wave of each tile (int64 keys, sorted): rows of split blocks (``split_block_tiles`` tile
    rows of one zone, north to south), packed greedily until their estimated bytes reach
    ``staging_budget_gb`` (a block row larger than the budget is a wave of its own).

    Whole tile rows, because a read task reads a source one tile row at a time, in windows
    spanning the row's tiles: a row never split between waves is read in the same windows as
    in a single wave, so the pixels are the same bytes (warped reads through GDAL's
    approximate transformer depend, at the 1e-3 level, on the window they are read in)."""
    zone, south, _, row = key_parts(tiles)
    unit_key = ((zone * 2 + south) << 32) + (np.int64(1 << 20) - row // config.split_block_tiles)
    units, unit_index = np.unique(unit_key, return_inverse=True)
    unit_bytes = np.bincount(unit_index, weights=tile_bytes, minlength=len(units))
    budget = config.staging_budget_gb * 1e9
    unit_wave = np.zeros(len(units), dtype=np.int64)
    wave, filled = 0, 0.0
    for u, size in enumerate(unit_bytes.tolist()):
        if filled > 0 and filled + size > budget:
            wave, filled = wave + 1, 0.0
        unit_wave[u] = wave
        filled += size
    return unit_wave[unit_index]


def assign_splits_and_shards(tiles: np.ndarray, tile_bytes: np.ndarray, config: IngestConfig
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split (``"train"``/``"val"``), wave, shard and position of each tile (int64 keys, sorted,
    unique; ``tile_bytes`` their estimated size).

    Split blocks of ``split_block_tiles`` tiles go to val or train as a whole, in a seeded
    order. Waves: :func:`assign_waves`. The tiles of a split in one wave, in a seeded random
    order, are dealt round-robin to ``ceil(tiles / samples_per_shard)`` shards, numbered on
    from the previous wave's, so every shard mixes places from the whole wave.
    """
    zone, south, col, row = key_parts(tiles)
    B = config.split_block_tiles
    blocks = [f"{z:02d}{'s' if s else 'n'}_{c}_{r}" for z, s, c, r in
              zip(zone.tolist(), south.tolist(), (col // B).tolist(), (row // B).tolist())]
    unique_blocks = sorted(set(blocks), key=lambda b: (stable_hash(config.seed, "split", b), b))
    n_val = round(config.val_fraction * len(unique_blocks))
    if config.val_fraction > 0 and len(unique_blocks) >= 2:
        n_val = max(1, n_val)
    val_blocks = set(unique_blocks[:n_val])
    is_val = np.array([b in val_blocks for b in blocks], dtype=bool)
    wave = assign_waves(tiles, tile_bytes, config)
    ids = tile_id_strings(tiles)
    shard = np.zeros(len(tiles), dtype=np.int64)
    position = np.zeros(len(tiles), dtype=np.int64)
    next_shard = {False: 0, True: 0}
    for w in range(int(wave.max()) + 1 if len(wave) else 0):
        for val in (False, True):
            members = np.flatnonzero((wave == w) & (is_val == val))
            if not len(members):
                continue
            members = np.asarray(sorted(members.tolist(), key=lambda i: (stable_hash(config.seed, "shard", ids[i]), ids[i])))
            n_shards = math.ceil(len(members) / config.samples_per_shard)
            rank = np.arange(len(members))
            shard[members] = next_shard[val] + rank % n_shards  # dealt round-robin
            position[members] = rank // n_shards
            next_shard[val] += n_shards
    return np.where(is_val, "val", "train"), wave, shard, position


def read_order(tile: TileId) -> tuple[int, int, int]:
    """Sort key of tiles in the order a source is read: zone, north to south, west to east."""
    return tile.epsg, -tile.row, tile.col


@dataclass(frozen=True, slots=True)
class ReadTask:
    """One source read for the tiles of one wave it serves (or a part of them).

    Attributes:
        name: ``<kind>-<scene:06d>-w<wave:03d>-<part:03d>of<parts:03d>``, the key of its staged
            pieces and report.
        wave: the wave it belongs to.
        kind: ``"s2"``, ``"s1"`` or ``"lc"`` (land cover).
        scene: the source's scene number.
        tiles: tile ids, in :func:`read_order`.
        train: per tile, whether it is in the train split (its S2 values go into ``stats.json``).
        redo: read again even when a finished report is on disk (a pending shard needs frames
            released after their first writing).
        threads: the cores the task may use (:func:`plan_reads`): GDAL decodes with as many
            threads, and a helper thread cuts and encodes one window while the next is read.
    """

    name: str
    wave: int
    kind: str
    scene: int
    tiles: tuple[str, ...]
    train: tuple[bool, ...]
    redo: bool = False
    threads: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRow:
    """One planned (tile, time step): a row of ``plan.parquet`` as Python values, with the
    names and order of :data:`PLAN_SCHEMA`.

    Attributes:
        tile_id: the grid tile (:class:`~eoforge.shards.keys.TileId` text); epsg: its UTM zone.
        step: the time step's index within the tile; season: :func:`season_of` its S2 date.
        s2_scene, s2_product_id, s2_datetime: the S2 scene of the step (number, name, ISO time).
        s2_coverage: the fraction of the tile the S2 footprint covers (0-1).
        cloud_percentage: the S2 product's cloud cover in percent, when known.
        s1_scene, s1_product_id, s1_datetime: the paired S1 scene, None when unpaired.
        dt_days: S1 time minus S2 time in days (None when unpaired); orbit_direction: the S1's.
        split: ``"train"`` or ``"val"``; wave, shard, position: where the sample is written
            (wave of pixels, shard number within the split, index in the shard).
        landcover_scenes: the land-cover rasters that cover the tile, in mosaic order.
    """

    tile_id: str
    epsg: int
    step: int
    season: int
    s2_scene: int
    s2_product_id: str
    s2_datetime: str
    s2_coverage: float
    cloud_percentage: float | None
    s1_scene: int | None
    s1_product_id: str | None
    s1_datetime: str | None
    dt_days: float | None
    orbit_direction: str | None
    split: str
    wave: int
    shard: int
    position: int
    landcover_scenes: tuple[int, ...]


def plan_rows(rows: pa.Table) -> list[PlanRow]:
    """Plan rows (:data:`PLAN_SCHEMA`) as :class:`PlanRow` s, in table order."""
    return [PlanRow(**{**r, "landcover_scenes": tuple(r["landcover_scenes"] or ())}) for r in rows.to_pylist()]


@dataclass(frozen=True, slots=True)
class ShardJob:
    """One shard to write: its plan rows, grouped per tile (the time steps of a tile)."""

    split: str
    shard: int
    wave: int
    tiles: tuple[tuple[PlanRow, ...], ...]


def plan_reads(rows: Sequence[PlanRow], config: IngestConfig, workers: int = 1,
               scenes: Mapping[int, Scene] | None = None) -> list[ReadTask]:
    """The read tasks of a plan.

    One source scene (``kind`` ``s2``, ``s1`` or ``lc``) and the tiles of one wave it serves, in
    :func:`read_order`, split into parts of about equal work (so a scene's tasks take about
    equally long): parts of at most ``read_task_rows`` rows, or, when that is None,
    ``ceil(workers / scenes of the kind in the wave)`` parts (one when the scenes alone keep
    ``workers`` busy: every split decodes the source blocks where two parts meet twice).
    The automatic parts of an S2 scene whose valid or decode profile is known (``scenes``)
    hold about equal estimated work (:func:`part_work`: valid area and, from the files'
    compressed sizes, decoding, :func:`balanced_cuts`); else equal tile rows. Such a
    scene's share of the workers may instead go to fewer parts with several threads each
    (:attr:`ReadTask.threads`, :func:`split_read`): a JPEG 2000 scene, whose decoding
    threads share well and whose parts would decode their common block rows twice.
    ``train`` flags the tiles of the train split (their S2 values go into ``stats.json``).
    Task names are ``<kind>-<scene:06d>-w<wave:03d>-<part:03d>of<parts:03d>``: a rerun that
    splits a scene differently (other ``workers``) reads it again instead of taking another
    split's pieces for its own.
    """
    users: dict[tuple[int, str, int], dict[str, bool]] = defaultdict(dict)
    for r in rows:
        train = r.split == "train"
        for kind, used in (("s2", (r.s2_scene,)), ("s1", (r.s1_scene,)), ("lc", r.landcover_scenes)):
            for scene in used:
                if scene is not None:
                    users[(r.wave, kind, int(scene))][r.tile_id] = train
    order = {"s2": 0, "s1": 1, "lc": 2}
    scenes_of_kind = Counter((wave, kind) for wave, kind, _ in users)
    tasks: list[ReadTask] = []
    for (wave, kind, scene), tiles in sorted(users.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        parsed = sorted((TileId.parse(t) for t in tiles), key=read_order)
        tile_rows: list[list[TileId]] = []
        for t in parsed:
            if not tile_rows or (tile_rows[-1][0].epsg, tile_rows[-1][0].row) != (t.epsg, t.row):
                tile_rows.append([])
            tile_rows[-1].append(t)
        cores = math.ceil(max(1, workers) / scenes_of_kind[(wave, kind)])  # the scene's share of the workers
        if config.read_task_rows is None:
            parts = min(len(tile_rows), cores)
        else:
            parts = math.ceil(len(tile_rows) / config.read_task_rows)
        source = scenes.get(scene) if scenes is not None and kind == "s2" else None
        threads = 1
        if cores > 1 and config.read_task_rows is None and source is not None \
                and (source.valid_profile or source.decode_rows):
            parts, threads, cuts = split_read(len(tile_rows), cores, part_work(tile_rows, source, config.grid))
        else:
            cuts = [part * len(tile_rows) // parts for part in range(parts + 1)]
        for part in range(parts):
            chunk = tile_rows[cuts[part]:cuts[part + 1]]
            ids = tuple(str(t) for row in chunk for t in row)
            tasks.append(ReadTask(f"{kind}-{scene:06d}-w{wave:03d}-{part:03d}of{parts:03d}", wave, kind, scene, ids,
                                  tuple(tiles[t] for t in ids), threads=threads))
    return tasks


#: A planned tile's read work without valid pixels, relative to a fully valid tile's
#: (windows read, blocks of nodata decoded, the piece cut); measured on the bench's COG scene.
EMPTY_TILE_WORK = 0.3
#: A fully valid tile's read work apart from decoding (upsampling, QA, encoding, statistics),
#: in the milliseconds of :data:`~eoforge.ingest.blocks.DECODE_MS_PER_MB` (the bench's COG
#: scene: 7.9 s for 1482 valid and 282 empty tiles).
TILE_WORK_MS = 5.0


def tile_row_work(tile_rows: Sequence[Sequence[TileId]], scene: Scene, grid: Grid) -> list[float]:
    """The estimated read work of each tile row of an S2 scene apart from decoding, in ms:
    per tile ``TILE_WORK_MS`` x (``EMPTY_TILE_WORK`` + the scene's valid fraction in the tile
    row's band of its :attr:`~.Scene.valid_profile`; 1 when unknown or when the tile lies in
    another UTM zone than the scene)."""
    valid_bins = np.frombuffer(scene.valid_profile or b"", dtype=np.uint8) / 100.0
    work = []
    for row in tile_rows:
        valid = 1.0
        span = _row_span(row, scene, grid)
        if len(valid_bins) and span is not None:
            edges = np.linspace(0.0, 1.0, len(valid_bins) + 1)
            lo, hi = max(0.0, span[0]), min(1.0, span[1])
            overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
            valid = float((valid_bins * overlap).sum() / overlap.sum()) if overlap.sum() > 0 else \
                float(valid_bins[0 if span[1] <= 0 else -1])
        work.append(len(row) * TILE_WORK_MS * (EMPTY_TILE_WORK + valid))
    return work


def _row_span(row: Sequence[TileId], scene: Scene, grid: Grid) -> tuple[float, float] | None:
    """Where a tile row lies in the scene, as fractions of its height from the north (None
    when the tiles are in another UTM zone than the scene's)."""
    _, bottom, _, top = scene.bounds
    if top <= bottom or row[0].epsg != scene.epsg:
        return None
    _, y0, _, y1 = grid.bounds(row[0])
    return (top - y1) / (top - bottom), (top - y0) / (top - bottom)


class PartWork(Protocol):
    def __call__(self, i: int, j: int, threads: int = 1) -> float:
        """The estimated wall time (ms) of a read task for items ``i:j`` with ``threads`` threads."""


def part_work(tile_rows: Sequence[Sequence[TileId]], scene: Scene, grid: Grid) -> PartWork:
    """``work(i, j, threads=1)``: the estimated read time (ms) of a task that reads tile rows
    ``i:j`` of an S2 scene: their :func:`tile_row_work`, plus the decoding of every block row
    of the scene's band files that they touch, whole (:attr:`~.Scene.decode_rows`), or, for
    the tiles in another zone, the scene's mean decoding per tile. Only the decoding is
    divided among ``threads`` (GDAL decodes the blocks of one request in parallel); the
    rest counts whole, though the task overlaps part of it (:class:`~.pieces._Cutter`), so
    the estimate errs against threads: on the bench's scenes, one task with 2 threads,
    48.1 s estimated and 45 s measured for the SAFE, 10.3 and 8.4-9.0 s for the COG."""
    fixed = np.concatenate([[0.0], np.cumsum(tile_row_work(tile_rows, scene, grid))])
    blocks = np.frombuffer(scene.decode_rows or b"", dtype=np.float32).astype(np.float64).reshape(-1, 3)
    spans = [_row_span(row, scene, grid) for row in tile_rows]
    left, bottom, right, top = scene.bounds
    tile_m = grid.tile_size_px * grid.resolution_m
    tiles_in_scene = max(1.0, (right - left) / tile_m) * max(1.0, (top - bottom) / tile_m)
    mean_decode = float(blocks[:, 2].sum()) / tiles_in_scene  # 0 without a decode profile
    elsewhere = np.concatenate([[0], np.cumsum([len(r) if s is None else 0 for r, s in zip(tile_rows, spans)])])

    def work(i: int, j: int, threads: int = 1) -> float:
        decode = float(mean_decode * (elsewhere[j] - elsewhere[i]))
        here = [s for s in spans[i:j] if s is not None]
        if here:
            lo, hi = min(s[0] for s in here), max(s[1] for s in here)
            decode += float(blocks[(blocks[:, 0] < hi) & (blocks[:, 1] > lo), 2].sum())
        return float(fixed[j] - fixed[i]) + decode / threads

    return work


#: The most threads one read task is given. Such a task asks for a whole tile row's source
#: blocks at once (:class:`~eoforge.ingest.read.BlockPrefetch`): 11 at 10 m and 6 at 20 m for
#: an S2 product in 1024 px blocks; more threads than that wait on one another (measured up
#: to 2, on 2 cores).
MAX_READ_THREADS = 4


def split_read(n: int, cores: int, work: PartWork) -> tuple[int, int, list[int]]:
    """How to read ``n`` tile rows of one scene with ``cores`` cores: (parts, threads per
    part, cut points), the split whose slowest part's estimated ``work`` is smallest.

    Parts cost where they meet: the block rows they share are decoded by both (about 10 s
    of the bench's JPEG 2000 scene, 0.2 s of its COG). Threads cost where the work is not
    decoding, which one task does mostly alone. So a JPEG 2000 scene is read by one task
    with two threads and a DEFLATE COG by two single-threaded parts. Ties go to fewer threads."""
    best: tuple[float, int, int, list[int]] | None = None
    for threads in range(1, min(cores, MAX_READ_THREADS) + 1):
        parts = min(n, cores // threads)
        cuts = balanced_cuts(n, parts, functools.partial(work, threads=threads)) if parts > 1 else [0, n]
        slowest = max(work(cuts[k], cuts[k + 1], threads) for k in range(parts))
        if best is None or slowest < best[0] * 0.999:
            best = (slowest, parts, threads, cuts)
    assert best is not None
    return best[1], best[2], best[3]


def balanced_cuts(n: int, parts: int, work: Callable[[int, int], float]) -> list[int]:
    """Cut points ``0 = c0 < c1 < … < c_parts = n`` of ``n`` items into contiguous parts whose
    largest ``work(i, j)`` (of items ``i:j``; never smaller for a larger range) is about as
    small as it can be: a bisection on that largest work, each try packing the parts from
    the north, every part at least one item."""

    def pack(limit: float) -> list[int] | None:
        cuts, i = [0], 0
        for part in range(parts - 1):
            j = i + 1
            if work(i, j) > limit:
                return None
            while j < n - (parts - part - 1) and work(i, j + 1) <= limit:
                j += 1
            cuts.append(j)
            i = j
        return [*cuts, n] if work(i, n) <= limit else None

    low, high = 0.0, work(0, n)
    best = pack(high) or [part * n // parts for part in range(parts + 1)]
    for _ in range(40):
        mid = (low + high) / 2
        cuts = pack(mid)
        if cuts is None:
            low = mid
        else:
            best, high = cuts, mid
    return best


def shard_index(rows: pa.Table) -> list[tuple[str, int, int]]:
    """(split, shard, wave) of every shard of a plan, in shard order."""
    keys = pa.table({"split": rows.column("split").cast(pa.string()), "shard": rows.column("shard"),
                     "wave": rows.column("wave")}).group_by(["split", "shard", "wave"], use_threads=False).aggregate([])
    return sorted(zip(keys.column("split").to_pylist(), keys.column("shard").to_pylist(), keys.column("wave").to_pylist()),
                  key=lambda k: (k[0] != "train", k[1]))


def wave_rows(rows: pa.Table, wave: int) -> list[PlanRow]:
    """The plan rows of one wave (in plan order)."""
    return plan_rows(rows.filter(pc.equal(rows.column("wave"), wave)))


def plan_shards(rows: Sequence[PlanRow]) -> list[ShardJob]:
    """Group plan rows (in plan order) into shard jobs, train first, then by shard number."""
    tiles: dict[tuple[str, int], list[list[PlanRow]]] = {}
    waves: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r.split, r.shard)
        job = tiles.setdefault(key, [])
        waves.setdefault(key, r.wave)
        if not job or job[-1][0].tile_id != r.tile_id:
            job.append([])
        job[-1].append(r)
    return [ShardJob(split, shard, waves[(split, shard)], tuple(tuple(t) for t in tiles[(split, shard)]))
            for split, shard in sorted(tiles, key=lambda k: (k[0] != "train", k[1]))]
