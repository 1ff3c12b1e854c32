"""Stage 2, plan: decide every sample from metadata alone.

From the scene inventory to one row per (tile, time step) in ``plan.parquet``:

1. **Level**: S2 products of the other processing level (``s2_level``) are set aside.
2. **Dedup (a)**, the same product delivered twice (mirror copies, a SAFE and its Earth
   Search COG twin): one delivery per product id is kept.
3. **Tiles**: the grid tiles each S2 scene covers by at least ``min_scene_coverage``.
4. **Dedup (b)**, one acquisition in several products (overlapping MGRS tiles of a
   datatake, reprocessed baselines): per tile and acquisition the product covering the
   tile best is kept (then: already in the tile's CRS, newest baseline).
5. **Dedup (c)**, zone edges: tiles of neighbouring UTM zones whose footprints overlap by
   IoU >= ``zone_overlap_iou`` (shapely STRtree) are near-duplicates; the tile whose centre
   lies deeper inside its own zone stays.
6. **Pairing**: per tile one S1 orbit direction (the one that pairs most steps, unless
   configured); each S2 candidate takes the S1 of that direction nearest in time within
   ``max_dt_days``.
7. **Seasons**: per tile and season the clearest S2 candidate (scene cloud cover, then
   paired, then coverage); up to ``seasons`` steps, in time order.
8. **Split**: blocks of ``split_block_tiles`` tiles go to val or train as a whole.
9. **Shards**: the tiles of a split, in a seeded random order, are cut into shards of
   ``samples_per_shard``, so every shard mixes places and scenes from the whole area.
10. **Reads** (:func:`plan_reads`): per source scene (S2, S1, land cover) the tiles it
    serves, north to south and west to east, in as few tasks as keep the workers busy (or
    of ``read_task_rows`` tile rows): each source is read once, in raster order, whichever
    shards its tiles go to.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import shapely

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.grid import Grid, zone_central_meridian
from eoforge.ingest.names import parse_time
from eoforge.ingest.scan import error_row
from eoforge.shards.keys import TileId


@dataclass
class Plan:
    """The planned samples and what planning removed.

    Attributes:
        rows: one dict per (tile, time step) (see :func:`plan_ingest`).
        removed: reason -> list of (what, why) records for the report.
        errors: error rows (e.g. land-cover rasters overlapping no tile).
        pairing: S1 usage (per S1 scene, why unused) and Δt values.
    """

    rows: list[dict[str, Any]]
    removed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pairing: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tiles(self) -> int:
        return len({r["tile_id"] for r in self.rows})


def season_of(when: datetime, seasons: int) -> int:
    """Season index 0..seasons-1: the year in equal month ranges starting in December
    (4 seasons: DJF, MAM, JJA, SON)."""
    return ((when.month % 12) * seasons) // 12


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _acquisition(scene: dict[str, Any]) -> tuple[str, str, str]:
    """Same mission, sensor and start second = same acquisition."""
    return scene["sensor"], scene["product_id"][:3], scene["datetime"][:19]


def tile_footprints(grid: Grid, tiles: list[TileId]) -> np.ndarray:
    return np.array([grid.footprint_lonlat(t) for t in tiles], dtype=object)


def _coverage(tile_polys: np.ndarray, footprint: shapely.Geometry) -> np.ndarray:
    """Share of each tile (lon/lat polygons) inside a scene footprint, 0..1."""
    shapely.prepare(footprint)
    inter = shapely.area(shapely.intersection(tile_polys, footprint))
    return np.clip(inter / shapely.area(tile_polys), 0.0, 1.0)


def _depth_in_zone(grid: Grid, tile: TileId) -> float:
    """Degrees of longitude between the tile centre and its zone's nearest edge
    (negative when the centre lies in the neighbouring zone)."""
    lon, _ = grid.centre_lonlat(tile)
    return 3.0 - abs(lon - zone_central_meridian(tile.zone))


def _one_delivery_per_product(scenes: list[dict[str, Any]], config: IngestConfig,
                              removed: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Steps 1-2: set other-level S2 aside; keep one delivery per product id (a SAFE
    before its COG twin, then by location)."""
    by_product: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in scenes:
        if s["sensor"] == "s2" and s["level"] != config.s2_level:
            removed["other_level"].append({"product_id": s["product_id"], "location": s["location"],
                                           "why": f"{s['level']} product; s2_level is {config.s2_level}"})
            continue
        by_product[(s["sensor"], s["product_id"])].append(s)
    kept: list[dict[str, Any]] = []
    for (sensor, pid), copies in sorted(by_product.items()):
        if sensor == "landcover":
            kept.extend(copies)
            continue
        copies = sorted(copies, key=lambda s: (s.get("source_id") is not None, s["location"]))
        kept.append(copies[0])
        for dup in copies[1:]:
            removed["duplicate_product"].append({"product_id": pid, "location": dup["location"],
                                                 "why": f"same product as {copies[0]['location']}"})
    return kept


def _drop_zone_edge_duplicates(grid: Grid, tiles: list[TileId], polys: dict[TileId, shapely.Polygon],
                               min_iou: float, removed: dict[str, list[dict[str, Any]]]) -> set[TileId]:
    """Step 5: visit tiles deepest-in-their-zone first; drop a tile whose footprint overlaps
    an already kept tile of another zone by IoU >= ``min_iou``. Returns the kept tiles."""
    tree = shapely.STRtree([polys[t] for t in tiles])
    kept: set[TileId] = set()
    for t in sorted(tiles, key=lambda t: (-_depth_in_zone(grid, t), t)):
        clash = None
        for h in tree.query(polys[t], predicate="intersects"):
            other = tiles[h]
            if other.zone == t.zone or other not in kept:
                continue
            inter = shapely.area(shapely.intersection(polys[t], polys[other]))
            iou = inter / (shapely.area(polys[t]) + shapely.area(polys[other]) - inter)
            if iou >= min_iou:
                clash = (other, iou)
                break
        if clash:
            removed["zone_edge_overlap"].append({"tile_id": str(t), "why": f"IoU {clash[1]:.2f} with {clash[0]}"})
        else:
            kept.add(t)
    return kept


def plan_ingest(scenes: list[dict[str, Any]], config: IngestConfig) -> Plan:
    """Plan samples from scene rows (``scan`` output); see the module docstring."""
    grid = config.grid
    removed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    errors: list[dict[str, Any]] = []

    kept = _one_delivery_per_product(scenes, config, removed)
    s2 = [s for s in kept if s["sensor"] == "s2"]
    s1 = [s for s in kept if s["sensor"] == "s1"]
    lcs = [s for s in kept if s["sensor"] == "landcover"]
    footprints = {s["scene"]: shapely.from_wkb(s["footprint"]) for s in kept}

    # 3: tiles per S2 scene, with coverage.
    cover: dict[TileId, dict[int, float]] = defaultdict(dict)  # tile -> s2 scene -> coverage
    polys: dict[TileId, shapely.Polygon] = {}
    for s in s2:
        fp = footprints[s["scene"]]
        tiles = grid.tiles_covering(fp)
        new = [t for t in tiles if t not in polys]
        polys.update(zip(new, tile_footprints(grid, new)))
        cov = _coverage(np.array([polys[t] for t in tiles], dtype=object), fp) if tiles else []
        for t, c in zip(tiles, cov):
            if c >= max(config.min_scene_coverage, 1e-9):
                cover[t][s["scene"]] = float(c)
    by_scene = {s["scene"]: s for s in kept}

    # 4: one product per (tile, acquisition).
    def _best(tile: TileId, ids: list[int], coverage: dict[int, float]) -> list[int]:
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for i in ids:
            groups[_acquisition(by_scene[i])].append(i)
        keep = []
        for acq, members in sorted(groups.items()):
            members.sort(key=lambda i: (-round(coverage[i], 6), by_scene[i]["epsg"] != tile.epsg,
                                        -float(by_scene[i].get("baseline") or 0), by_scene[i]["product_id"]))
            keep.append(members[0])
            for other in members[1:]:
                a, b = by_scene[members[0]], by_scene[other]
                reason = "reprocessed_baseline" if a.get("mgrs_tile") and a.get("mgrs_tile") == b.get("mgrs_tile") \
                    else "same_acquisition"
                removed[reason].append({"tile_id": str(tile), "product_id": b["product_id"],
                                        "why": f"{acq[2]} also in {a['product_id']} (coverage "
                                               f"{coverage[members[0]]:.2f} vs {coverage[other]:.2f})"})
        return keep

    candidates = {t: _best(t, sorted(c), c) for t, c in sorted(cover.items())}
    candidates = {t: c for t, c in candidates.items() if c}

    kept_tiles = _drop_zone_edge_duplicates(grid, sorted(candidates), polys, config.zone_overlap_iou, removed)

    # 6: S1 candidates per tile (one product per acquisition).
    s1_cover: dict[TileId, dict[int, float]] = defaultdict(dict)
    final_tiles = sorted(kept_tiles)
    final_polys = np.array([polys[t] for t in final_tiles], dtype=object)
    for s in s1:
        cov = _coverage(final_polys, footprints[s["scene"]]) if final_tiles else []
        for t, c in zip(final_tiles, cov):
            if c >= max(config.min_scene_coverage, 1e-9):
                s1_cover[t][s["scene"]] = float(c)
    s1_seen: dict[int, set[str]] = defaultdict(set)  # S1 scene -> what happened on each tile
    dts: list[float] = []
    rows: list[dict[str, Any]] = []
    times = {s["scene"]: parse_time(s["datetime"]) for s in kept if s["datetime"]}
    for t in final_tiles:
        s1_ids = _best(t, sorted(s1_cover.get(t, {})), s1_cover.get(t, {})) if s1_cover.get(t) else []
        s2_ids = candidates[t]

        def pair(i: int, direction: str) -> tuple[int, float] | None:
            best = None
            for j in s1_ids:
                if by_scene[j]["orbit_direction"] != direction:
                    continue
                dt = (times[j] - times[i]).total_seconds() / 86400.0
                if abs(dt) <= config.max_dt_days:
                    key = (abs(dt), -s1_cover[t][j], by_scene[j]["product_id"])
                    if best is None or key < best[0]:
                        best = (key, j, dt)
            return (best[1], best[2]) if best else None

        if config.orbit_direction == "auto":
            counts = {d: sum(pair(i, d) is not None for i in s2_ids) for d in ("descending", "ascending")}
            direction = max(counts, key=lambda d: (counts[d], d == "descending"))
        else:
            direction = config.orbit_direction
        pairs = {i: pair(i, direction) for i in s2_ids}
        for j in s1_ids:
            near = any(abs((times[j] - times[i]).total_seconds()) <= config.max_dt_days * 86400 for i in s2_ids)
            s1_seen[j].add("not_chosen" if near and by_scene[j]["orbit_direction"] == direction
                           else "other_orbit_direction" if near else "far_in_time")
        pool = [i for i in s2_ids if config.keep_unpaired_s2 or pairs[i]]
        by_season: dict[int, list[int]] = defaultdict(list)
        for i in pool:
            by_season[season_of(times[i], config.seasons)].append(i)
        chosen = []
        for season, members in sorted(by_season.items()):
            members.sort(key=lambda i: (by_scene[i]["cloud_percentage"] if by_scene[i]["cloud_percentage"] is not None else 101.0,
                                        pairs[i] is None, -round(cover[t][i], 6), by_scene[i]["datetime"]))
            chosen.append((season, members[0]))
        chosen.sort(key=lambda x: times[x[1]])
        for step, (season, i) in enumerate(chosen):
            s = by_scene[i]
            p = pairs[i]
            if p:
                s1_seen[p[0]].add("used")
                dts.append(p[1])
            rows.append({
                "tile_id": str(t), "epsg": t.epsg, "step": step, "season": season,
                "s2_scene": i, "s2_product_id": s["product_id"], "s2_datetime": s["datetime"],
                "s2_coverage": cover[t][i], "cloud_percentage": s["cloud_percentage"],
                "s1_scene": p[0] if p else None, "s1_product_id": by_scene[p[0]]["product_id"] if p else None,
                "s1_datetime": by_scene[p[0]]["datetime"] if p else None, "dt_days": p[1] if p else None,
                "orbit_direction": by_scene[p[0]]["orbit_direction"] if p else None,
            })
    s1_status = {}
    for s in s1:
        seen = s1_seen.get(s["scene"], set())
        status = next((k for k in ("used", "not_chosen", "other_orbit_direction", "far_in_time") if k in seen), "no_tile")
        s1_status[s["scene"]] = status
        if status != "used":
            why = {"far_in_time": f"no S2 within {config.max_dt_days:g} days on any tile",
                   "other_orbit_direction": "its tiles pair with the other orbit direction",
                   "not_chosen": "another S1 is nearer in time on every tile",
                   "no_tile": "covers no planned tile"}[status]
            removed[f"s1_{status}"].append({"product_id": s["product_id"], "why": why})

    # Labels: land-cover rasters intersecting each tile.
    lc_tiles: dict[str, list[int]] = defaultdict(list)
    for lc in lcs:
        hits = [t for t, p in zip(final_tiles, final_polys) if shapely.intersects(p, footprints[lc["scene"]])]
        if not hits:
            errors.append(error_row(lc["paths"][0], "plan", "land-cover raster overlaps no planned tile "
                                    "(check its extent and CRS against the S2 scenes)", lc["product_id"]))
        for t in hits:
            lc_tiles[str(t)].append(lc["scene"])

    assign_splits_and_shards(rows, lc_tiles, config)
    scenes_used = {r["s2_scene"] for r in rows}
    pairing = {
        "steps": len(rows), "paired_steps": sum(r["s1_scene"] is not None for r in rows),
        "dt_days": dts, "s1_scenes": len(s1), "s1_used": sum(v == "used" for v in s1_status.values()),
        "s2_scenes_used": len(scenes_used),
    }
    return Plan(rows, dict(removed), errors, pairing)


def assign_splits_and_shards(rows: list[dict[str, Any]], lc_tiles: dict[str, list[int]], config: IngestConfig) -> None:
    """Add ``split``, ``shard``, ``position`` and ``landcover_scenes`` to rows (in place) and
    sort them by (split, shard, position, step)."""
    tiles = sorted({r["tile_id"] for r in rows})
    parsed = {t: TileId.parse(t) for t in tiles}
    B = config.split_block_tiles

    def block(t: TileId) -> str:
        return f"{t.zone:02d}{t.hemisphere}_{t.col // B}_{t.row // B}"

    blocks = sorted({block(p) for p in parsed.values()}, key=lambda b: (_hash(config.seed, "split", b), b))
    n_val = round(config.val_fraction * len(blocks))
    if config.val_fraction > 0 and len(blocks) >= 2:
        n_val = max(1, n_val)
    val_blocks = set(blocks[:n_val])
    split = {t: "val" if block(p) in val_blocks else "train" for t, p in parsed.items()}
    shard_of: dict[str, tuple[int, int]] = {}
    for name in ("train", "val"):
        members = sorted((t for t in tiles if split[t] == name), key=lambda t: (_hash(config.seed, "shard", t), t))
        n_shards = math.ceil(len(members) / config.samples_per_shard)
        for i, t in enumerate(members):  # dealt round-robin: shard sizes differ by one at most
            shard_of[t] = (i % n_shards, i // n_shards)
    for r in rows:
        t = r["tile_id"]
        r["split"] = split[t]
        r["shard"], r["position"] = shard_of[t]
        r["landcover_scenes"] = sorted(lc_tiles.get(t, []))
    rows.sort(key=lambda r: (r["split"] != "train", r["shard"], r["position"], r["step"]))


def read_order(tile: TileId) -> tuple[int, int, int]:
    """Sort key of tiles in the order a source is read: zone, north to south, west to east."""
    return tile.epsg, -tile.row, tile.col


def plan_reads(rows: list[dict[str, Any]], config: IngestConfig, workers: int = 1) -> list[dict[str, Any]]:
    """The read tasks of a plan: ``{"task", "kind", "scene", "tiles", "train"}``.

    One source scene (``kind`` ``s2``, ``s1`` or ``lc``) and the tiles it serves, in
    :func:`read_order`, split into parts of about equal tile rows (so a scene's tasks take
    about equally long): parts of at most ``read_task_rows`` rows, or, when that is None,
    ``ceil(workers / scenes of the kind)`` parts (one when the scenes alone keep ``workers``
    busy: every split decodes the source blocks where two parts meet twice). ``train`` flags
    the tiles of the train split (their S2 values go into ``stats.json``). Task names are
    ``<kind>-<scene:06d>-<part:03d>of<parts:03d>``: a rerun that splits a scene differently
    (other ``workers``) reads it again instead of taking another split's pieces for its own.
    """
    users: dict[tuple[str, int], dict[str, bool]] = defaultdict(dict)
    for r in rows:
        train = r["split"] == "train"
        for kind, scenes in (("s2", [r["s2_scene"]]), ("s1", [r["s1_scene"]]), ("lc", r["landcover_scenes"])):
            for scene in scenes:
                if scene is not None:
                    users[(kind, int(scene))][r["tile_id"]] = train
    order = {"s2": 0, "s1": 1, "lc": 2}
    scenes_of_kind = Counter(kind for kind, _ in users)
    tasks: list[dict[str, Any]] = []
    for (kind, scene), tiles in sorted(users.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        parsed = sorted((TileId.parse(t) for t in tiles), key=read_order)
        tile_rows: list[list[TileId]] = []
        for t in parsed:
            if not tile_rows or (tile_rows[-1][0].epsg, tile_rows[-1][0].row) != (t.epsg, t.row):
                tile_rows.append([])
            tile_rows[-1].append(t)
        if config.read_task_rows is None:
            parts = min(len(tile_rows), math.ceil(max(1, workers) / scenes_of_kind[kind]))
        else:
            parts = math.ceil(len(tile_rows) / config.read_task_rows)
        for part in range(parts):
            chunk = tile_rows[part * len(tile_rows) // parts:(part + 1) * len(tile_rows) // parts]
            ids = [str(t) for row in chunk for t in row]
            tasks.append({"task": f"{kind}-{scene:06d}-{part:03d}of{parts:03d}", "kind": kind, "scene": scene,
                          "tiles": ids, "train": [tiles[t] for t in ids]})
    return tasks


def plan_shards(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group plan rows into shard jobs: ``{"split", "shard", "tiles": [[row, ...] per tile]}``."""
    jobs: dict[tuple[str, int], dict[str, list[list[dict[str, Any]]]]] = {}
    for r in rows:
        job = jobs.setdefault((r["split"], r["shard"]), {"split": r["split"], "shard": r["shard"], "tiles": []})
        if not job["tiles"] or job["tiles"][-1][0]["tile_id"] != r["tile_id"]:
            job["tiles"].append([])
        job["tiles"][-1].append(r)
    return [jobs[k] for k in sorted(jobs, key=lambda k: (k[0] != "train", k[1]))]
