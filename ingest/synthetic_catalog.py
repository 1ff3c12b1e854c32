"""Synthetic scene headers for scale work: a continent of S2 and S1 products, no pixels.

:func:`synthetic_scenes` returns what ``scan`` would write to ``scenes.parquet`` for an
archive of ``n_s2`` Sentinel-2 L2A products and about ``n_s2 / 4`` Sentinel-1 IW GRD
products over one year (2023), with the same columns and types (one row per scene), so
the planner can be timed at 10³–10⁵ products without a byte of pixels:

- **S2**: real MGRS tiles (109.8 km squares on their UTM zone's grid, origins 100 km apart,
  so neighbours overlap by 9.8 km; names such as ``32TQR`` from the MGRS lettering),
  ``round(n_s2 / 60)`` of them in one contiguous "continent" (a 2:1 ellipse in km around
  12°E 45.6°N, the UTM 32/33 boundary, so zone edges and their duplicate tiles occur at
  every size). Each tile lies under one relative orbit (ground tracks 360/143° apart,
  tilted like descending passes); S2A and S2B alternate every 5 days, and ~18 % of the
  73 dates are missing (whole datatakes more often than single tiles), so a tile has ~60
  dates. Every tile of a datatake shares its sensing start (as real product names do),
  10:58 local solar time at the track. ``bounds``/``crs_wkt``/``epsg``: the tile in its UTM
  zone; ``footprint``: that box in lon/lat, edges densified as scan does.
- **S1**: 250 km (across track) × 170 km (along track) slices, as scan sees an EPSG:4326
  GeoTIFF export: an axis-aligned lon/lat box (scan records the raster's bounding box).
  Slices follow tilted descending and ascending tracks 2.5° of longitude apart (the real
  spacing is 2.06°; the wider one gives ``n_s1 ≈ n_s2 / 4`` with one S2 orbit per tile),
  12-day repeat per track, descending at 06:00 and ascending at 18:00 local solar time,
  consecutive slices of a pass 24 s apart; slices whose centre lies in the continent
  exist. Above ``round(n_s2 / 4)`` products, random ones are dropped (acquisition gaps).
- Cloud cover: U-shaped (Beta) per product, cloudier in winter. Sizes, baselines
  (``05.09``, +1000 DN offset), SAFE file lists and band tables as scan writes them.

Deterministic for a seed (the geometry does not depend on it; dates dropped, clouds,
sizes and ids do). 10⁵ S2 products take a few seconds (numpy, pyproj and shapely arrays).

Example::

    eoforge synth-catalog --n-s2 100000 --out build/catalog-100k
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import Transformer

from eoforge.ingest.demo.catalog import mgrs_tile
from eoforge.ingest.scan import L2A_BANDS, S2_GSD
from eoforge.ingest.scene import SCENES_SCHEMA
from eoforge.shards.manifest import write_parquet_atomic

#: Centre of the continent: the UTM 32/33 boundary at the demo's latitude (T32TQR/T33TTL).
CENTRE_LONLAT = (12.0, 45.6)
#: East-west : north-south axis ratio of the continent (an ellipse in km).
ASPECT = 2.0
YEAR = 2023
S2_DATES_PER_TILE = 60
S1_PER_S2 = 0.25

S2_TILE_M = 109_800.0
S2_TRACK_DEG = 360.0 / 143.0  # ground tracks of the 143 relative orbits
S2_LOCAL_H = 10.975  # local solar time over the continent (R022: 10:10:29 UTC at 12°E)
S2_ANCHOR = (np.datetime64("2023-07-16"), 22, "S2B")  # S2B flies R022 on this day (the demo's anchor)

S1_TRACK_DEG = 2.5
S1_SIZE_KM = (250.0, 170.0)  # across track (east-west) x along track (north-south)
S1_SLICE_KM = 165.0  # pitch of consecutive slices (24 s at 6.9 km/s; they overlap by ~5 km)
S1_SLICE_S = 24
S1_LOCAL_H = {"descending": 6.0, "ascending": 18.0}
#: (day the anchor track is flown, its relative orbit, longitude offset of its track) per direction
S1_ANCHOR = {"descending": (np.datetime64("2023-07-14"), 146, 0.0),
             "ascending": (np.datetime64("2023-07-16"), 7, S1_TRACK_DEG / 2)}
TRACK_SLOPE = 0.3  # degrees of longitude per degree of latitude along a descending track (~12° off north)

KM_PER_DEG_LAT = 110.57
KM_PER_DEG_LON = 111.32

_T0 = np.datetime64(f"{YEAR}-01-01T00:00:00", "s")
_DAYS = (np.datetime64(f"{YEAR + 1}-01-01") - np.datetime64(f"{YEAR}-01-01")).astype(int)


@lru_cache(maxsize=64)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


@lru_cache(maxsize=64)
def _crs_wkt(epsg: int) -> str:
    """The CRS as scan records it (rasterio's ``crs.to_wkt()``)."""
    from rasterio.crs import CRS

    return CRS.from_epsg(epsg).to_wkt()


def _km_xy(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kilometres east and north of the continent's centre (local scale at each point)."""
    lon0, lat0 = CENTRE_LONLAT
    return (lon - lon0) * KM_PER_DEG_LON * np.cos(np.radians(lat)), (lat - lat0) * KM_PER_DEG_LAT


def _ellipse_d(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    x, y = _km_xy(lon, lat)
    return np.hypot(x / ASPECT, y)


def _footprints_wkb(boxes: np.ndarray, epsgs: np.ndarray) -> np.ndarray:
    """scan's ``footprint_wkb`` for many boxes: each (minx, miny, maxx, maxy) in its CRS,
    edges cut into 16 segments along the longer side, as a lon/lat polygon, WKB."""
    boxes = np.asarray(boxes, dtype=np.float64)
    step = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 16
    rings = shapely.segmentize(shapely.box(*boxes.T), step)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    for epsg in np.unique(epsgs):
        if epsg == 4326:
            continue
        sel = epsgs[index] == epsg
        coords[sel, 0], coords[sel, 1] = _to_lonlat(int(epsg)).transform(coords[sel, 0], coords[sel, 1])
    polys = shapely.polygons(shapely.linearrings(coords, indices=index))
    return shapely.to_wkb(polys)


# ------------------------------------------------------------------ Sentinel-2


def _mgrs_tiles(n_tiles: int) -> dict[str, np.ndarray]:
    """The ``n_tiles`` S2 tiles nearest the continent's centre (ellipse distance, then name)."""
    lon0, lat0 = CENTRE_LONLAT
    b_km = math.sqrt(n_tiles * 1e4 / (math.pi * ASPECT)) + 300.0  # generous: zone edges add tiles
    lat_lo, lat_hi = lat0 - b_km / KM_PER_DEG_LAT, min(lat0 + b_km / KM_PER_DEG_LAT, 83.0)
    dlon = ASPECT * b_km / (KM_PER_DEG_LON * math.cos(math.radians(lat_hi)))
    zones = range(max(1, int((lon0 - dlon + 180) // 6) + 1), min(60, int((lon0 + dlon + 180) // 6) + 1) + 1)
    rows = np.arange(int(lat_lo * KM_PER_DEG_LAT // 100) - 2, int(lat_hi * KM_PER_DEG_LAT // 100) + 3)
    parts = []
    for zone in zones:
        col, row = (a.ravel() for a in np.meshgrid(np.arange(1, 9), rows))
        x0, y1 = col * 100_000.0 - 20.0, (row + 1) * 100_000.0 + 40.0
        x1, y0 = x0 + S2_TILE_M, y1 - S2_TILE_M
        tr = _to_lonlat(32600 + zone)
        clon, clat = tr.transform(np.stack([x0, x1, x0, x1]), np.stack([y0, y0, y1, y1]))
        west = -180.0 + 6.0 * (zone - 1)
        member = (clon.min(0) < west + 6.0) & (clon.max(0) > west) & (clat.min(0) > 0)
        mlon, mlat = tr.transform((x0 + x1) / 2, (y0 + y1) / 2)
        _, sq_lat = tr.transform(col * 100_000.0 + 50_000.0, row * 100_000.0 + 50_000.0)
        parts.append(dict(zone=np.full(member.sum(), zone), col=col[member], row=row[member],
                          bounds=np.column_stack([x0, y0, x1, y1])[member], lon=mlon[member], lat=mlat[member],
                          sq_lat=sq_lat[member]))
    tiles = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    tiles["name"] = np.array([mgrs_tile(int(z), c * 100_000.0, r * 100_000.0, la).name for z, c, r, la
                              in zip(tiles["zone"], tiles["col"], tiles["row"], tiles["sq_lat"])])
    order = np.lexsort((tiles["name"], np.round(_ellipse_d(tiles["lon"], tiles["lat"]), 6)))[:n_tiles]
    tiles = {k: v[order] for k, v in tiles.items()}
    if len(set(tiles["name"])) != len(order):  # pragma: no cover - the lettering repeats every 2000 km
        raise ValueError(f"{n_tiles} tiles: MGRS names repeat (a continent too large)")
    tiles["epsg"] = 32600 + tiles["zone"]
    return tiles


def _s2_track(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relative orbit, day of the 10-day cycle after the anchor, track longitude at the
    centre latitude) of the S2 ground track nearest each point. The orbit one track east
    is flown 100 orbits (7 days less 10 minutes) later: each orbit's track lies 10 tracks west
    of the one before, and 100 x 10 = 7 x 143 - 1."""
    lon0, lat0 = CENTRE_LONLAT
    k = np.round((lon - lon0 - TRACK_SLOPE * (lat - lat0)) / S2_TRACK_DEG).astype(np.int64)
    m = (-43 * k) % 143  # orbits after the anchor's
    rel = (S2_ANCHOR[1] - 1 + m) % 143 + 1
    return rel, (m * 10 + 71) // 143, lon0 + k * S2_TRACK_DEG  # m x 10/143 days, to the nearest day


def _s2_rows(n_s2: int, rng: np.random.Generator, root: str) -> dict[str, Any]:
    """Scan's columns of the S2 products (values per row: numpy, lists or Arrow arrays)."""
    n_tiles = max(1, round(n_s2 / S2_DATES_PER_TILE))
    tiles = _mgrs_tiles(n_tiles)
    rel, phase, track_lon = _s2_track(tiles["lon"], tiles["lat"])
    # Candidate dates: every 5 days from the tile's first pass of the year (S2A, S2B alternating).
    first = ((S2_ANCHOR[0] - np.datetime64(f"{YEAR}-01-01")).astype(int) + phase) % 5
    per_tile = (_DAYS - first + 4) // 5
    tile_idx = np.repeat(np.arange(n_tiles), per_tile)
    day = first[tile_idx] + 5 * (np.arange(tile_idx.size) - np.repeat(np.cumsum(per_tile) - per_tile, per_tile))
    anchor_day = (S2_ANCHOR[0] - np.datetime64(f"{YEAR}-01-01")).astype(int) + phase[tile_idx]
    sat = np.where(((day - anchor_day) // 5) % 2 == 0, S2_ANCHOR[2], "S2A" if S2_ANCHOR[2] == "S2B" else "S2B")
    # Missing dates: a datatake (orbit, day) draw shared by its tiles plus one per tile.
    datatake = rel[tile_idx] * 400 + day
    u_dt = rng.random(143 * 400 + 400)
    priority = 0.55 * u_dt[datatake] + 0.45 * rng.random(day.size)
    keep = np.sort(np.argsort(priority, kind="stable")[:n_s2])
    tile_idx, day, sat, datatake = tile_idx[keep], day[keep], sat[keep], datatake[keep]
    # Sensing start of the datatake: local solar time at the track, a few seconds of wander.
    jitter = rng.integers(-10, 11, u_dt.size)
    tod = np.round((S2_LOCAL_H - track_lon[tile_idx] / 15.0) * 3600).astype(np.int64) + jitter[datatake]
    sensed = _T0 + (day * 86400 + tod).astype("timedelta64[s]")
    generated = sensed + rng.integers(2 * 3600, 6 * 3600, u_dt.size)[datatake].astype("timedelta64[s]")
    stamp = _compact(sensed)
    gen_stamp = _compact(generated)
    ids = [f"{s}_MSIL2A_{a}_N0509_R{o:03d}_T{n}_{g}" for s, a, o, n, g
           in zip(sat, stamp, rel[tile_idx].tolist(), tiles["name"][tile_idx], gen_stamp)]
    # scan numbers scenes in the order of their locations: sort now (ids have one length)
    order = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
    ids, stamp = [ids[i] for i in order], [stamp[i] for i in order]
    tile_idx, sat, sensed = tile_idx[order], sat[order], sensed[order]
    r = rel[tile_idx]
    name = tiles["name"][tile_idx].tolist()
    location = [f"{root}/s2/{i}.SAFE" for i in ids]
    abs_orbit = _s2_absolute_orbit(sensed, sat, r)
    granule = [f"{loc}/GRANULE/L2A_T{n}_A{a:06d}_{s}/IMG_DATA/" for loc, n, a, s
               in zip(location, name, abs_orbit.tolist(), stamp)]
    prefix = [f"T{n}_{s}_" for n, s in zip(name, stamp)]
    paths, bands = _s2_files(granule, prefix)
    month = sensed.astype("datetime64[M]").astype(int) % 12
    winter = np.cos(2 * np.pi * (month + 0.5) / 12)  # +1 in January, -1 in July
    cloud = 100 * rng.beta(0.5 + 0.15 * winter, 0.6 - 0.15 * winter)  # mean ~59 % in winter, ~32 % in summer
    fp = _footprints_wkb(tiles["bounds"], tiles["epsg"])[tile_idx]
    n = keep.size
    return dict(
        sensor=_const("s2", n), product_id=ids, location=location, level=_const("L2A", n),
        datetime=_iso(sensed), baseline=_const("05.09", n), dn_offset=_const(1000, n),
        offset_rule=_const("sidecar BOA/RADIO_ADD_OFFSET", n), relative_orbit=r,
        orbit_direction=None, orbit_rule=None, mgrs_tile=name, cloud_percentage=np.round(cloud, 6),
        s1_unit=None, taxonomy=None, epsg=tiles["epsg"][tile_idx], bounds=tiles["bounds"][tile_idx], footprint=fp,
        paths=paths,
        nbytes=(rng.normal(1.05e9, 0.12e9, n).clip(2e8, 1.4e9)).astype(np.int64),
        sidecar=[f"{loc}/MTD_MSIL2A.xml" for loc in location], bands=bands,
    )


def _s2_absolute_orbit(sensed: np.ndarray, sat: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Absolute orbit numbers consistent with the relative ones (143 orbits per 10 days;
    relative = (absolute + shift) % 143 + 1, shift 2 for S2A, -27 for S2B)."""
    # references as in the demo catalog: S2A orbit 38058 and S2B orbit 33155 (both over R022)
    is_a = sat == "S2A"
    ref = np.where(is_a, np.datetime64("2022-10-05T11:54:11", "s"), np.datetime64("2023-07-16T10:10:29", "s"))
    days = (sensed - ref).astype(np.float64) / 86400
    approx = np.where(is_a, 38058, 33155) + np.round(days * 14.3).astype(np.int64)
    shift = np.where(is_a, 2, -27)
    delta = (rel - 1 - (approx + shift)) % 143
    return approx + np.where(delta > 71, delta - 143, delta)


def _s2_files(granule: list[str], prefix: list[str]) -> tuple[pa.Array, list[str]]:
    """(paths, bands JSON) of SAFE L2A products: one JPEG2000 file per band at its GSD."""
    bands = sorted((*L2A_BANDS, "SCL"))
    gsd = {b: 20 if b == "SCL" else int(S2_GSD[b]) for b in bands}
    files = {b: f"R{gsd[b]}m/@P@{('B' + b[1:].zfill(2)) if b[1:].isdigit() else b}_{gsd[b]}m.jp2" for b in bands}
    order = sorted(bands, key=lambda b: files[b])  # scan sorts a product's paths
    n = len(granule)
    g = pa.array(granule)
    p = pa.array(prefix)
    idx = np.repeat(np.arange(n), len(order))
    res = pa.array(np.tile([files[b].split("@P@")[0] for b in order], n))
    tail = pa.array(np.tile([files[b].split("@P@")[1] for b in order], n))
    flat = pc.binary_join_element_wise(g.take(idx), res, p.take(idx), tail, "")
    paths = pa.ListArray.from_arrays(pa.array(np.arange(0, n * len(order) + 1, len(order), dtype=np.int32)), flat)
    template = json.dumps({b: {"dtype": "uint8" if b == "SCL" else "uint16", "index": 1, "nodata": 0.0,
                               "path": "@G@" + files[b], "res": [float(gsd[b]), float(gsd[b])]} for b in bands},
                          sort_keys=True)
    table = [template.replace("@G@", gr).replace("@P@", pr) for gr, pr in zip(granule, prefix)]
    return paths, table


# ------------------------------------------------------------------ Sentinel-1


def _s1_rows(n_s2: int, s2_lon: np.ndarray, s2_lat: np.ndarray, rng: np.random.Generator,
             root: str) -> dict[str, Any]:
    """Scan's columns of the S1 products over the continent of the S2 tile centres given."""
    lon0, lat0 = CENTRE_LONLAT
    d_max = _ellipse_d(s2_lon, s2_lat).max() if s2_lon.size else 0.0
    slice_deg = S1_SLICE_KM / KM_PER_DEG_LAT
    half_lat = (d_max + 200) / KM_PER_DEG_LAT
    j = np.arange(-math.ceil(half_lat / slice_deg), math.ceil(half_lat / slice_deg) + 1)
    lat_max = min(lat0 + half_lat, 85.0)
    kmax = math.ceil(ASPECT * (d_max + 200) / (KM_PER_DEG_LON * math.cos(math.radians(lat_max))) / S1_TRACK_DEG) + 1
    k = np.arange(-kmax, kmax + 1)
    locs = []
    for direction, sign in (("descending", 1.0), ("ascending", -1.0)):
        anchor_day, anchor_rel, offset = S1_ANCHOR[direction]
        jj, kk = (a.ravel() for a in np.meshgrid(j, k))
        lat = lat0 + jj * slice_deg + (slice_deg / 2 if direction == "ascending" else 0.0)
        lon = lon0 + offset + kk * S1_TRACK_DEG + sign * TRACK_SLOPE * (lat - lat0)
        d = _ellipse_d(lon, lat)
        inside = d <= d_max
        inside[np.argmin(d)] = True  # a tiny continent still has one slice per direction
        locs.append((direction, kk[inside], jj[inside], lon[inside], lat[inside], anchor_day, anchor_rel, offset))
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("dir", "lon", "lat", "sensed", "abs")}
    for direction, kk, jj, lon, lat, anchor_day, anchor_rel, offset in locs:
        # Each orbit's track lies 12 tracks west of the one before, so the track one east is
        # flown 102 orbits later (12 x 102 = 7 x 175 - 1), m x 12/175 days to the nearest day.
        m = (102 * kk) % 175
        rel = (anchor_rel - 1 + m) % 175 + 1
        first = ((anchor_day - np.datetime64(f"{YEAR}-01-01")).astype(int) + (m * 12 + 87) // 175) % 12
        n_pass = (_DAYS - first + 11) // 12
        idx = np.repeat(np.arange(kk.size), n_pass)
        day = first[idx] + 12 * (np.arange(idx.size) - np.repeat(np.cumsum(n_pass) - n_pass, n_pass))
        track_lon = lon0 + offset + kk[idx] * S1_TRACK_DEG
        # the pass enters the continent at its north (descending) or south (ascending) end
        nth = (jj.max() - jj[idx]) if direction == "descending" else (jj[idx] - jj.min())
        tod = np.round((S1_LOCAL_H[direction] - track_lon / 15.0) * 3600).astype(np.int64)
        sensed = _T0 + (day * 86400 + tod + S1_SLICE_S * nth).astype("timedelta64[s]")
        cols["dir"].append(np.full(idx.size, direction))
        cols["lon"].append(lon[idx])
        cols["lat"].append(lat[idx])
        cols["sensed"].append(sensed)
        cols["abs"].append(_s1_absolute_orbit(sensed, rel[idx]))
    c = {k: np.concatenate(v) for k, v in cols.items()}
    target = round(n_s2 * S1_PER_S2)
    keep = np.arange(c["lon"].size)
    if keep.size > target:  # acquisition gaps
        keep = np.sort(rng.choice(keep.size, target, replace=False))
    c = {k: v[keep] for k, v in c.items()}
    n = keep.size
    start, stop = _compact(c["sensed"]), _compact(c["sensed"] + np.timedelta64(25, "s"))
    datatake = (0x05F0C5 + np.round(8.3 * (c["abs"] - 49393)).astype(np.int64)) & 0xFFFFFF
    uid = rng.integers(0, 0x10000, n)
    ids = [f"S1A_IW_GRDH_1SDV_{a}_{b}_{o:06d}_{dt:06X}_{u:04X}" for a, b, o, dt, u
           in zip(start, stop, c["abs"].tolist(), datatake.tolist(), uid.tolist())]
    order = np.array(sorted(range(n), key=ids.__getitem__), dtype=np.int64)  # scan's order (see _s2_rows)
    ids = [ids[i] for i in order]
    c = {k: v[order] for k, v in c.items()}
    half_w = S1_SIZE_KM[0] / 2 / (KM_PER_DEG_LON * np.cos(np.radians(c["lat"])))
    half_h = S1_SIZE_KM[1] / 2 / KM_PER_DEG_LAT
    box = np.column_stack([c["lon"] - half_w, c["lat"] - half_h, c["lon"] + half_w, c["lat"] + half_h])
    location = [f"{root}/s1/{i}.tif" for i in ids]
    res = 8.983152841195215e-05  # 10 m in degrees
    template = json.dumps({b: {"dtype": "float32", "index": i, "nodata": float("nan"), "path": "@P@",
                               "res": [res, res]} for b, i in (("VV", 1), ("VH", 2))}, sort_keys=True)
    return dict(
        sensor=_const("s1", n), product_id=ids, location=location, level=None, datetime=_iso(c["sensed"]),
        baseline=None, dn_offset=np.zeros(n, np.int64), offset_rule=None, relative_orbit=None,
        orbit_direction=c["dir"].tolist(), orbit_rule=_const("metadata", n), mgrs_tile=None, cloud_percentage=None,
        s1_unit=_const("db", n), taxonomy=None, epsg=np.full(n, 4326), bounds=box,
        footprint=_footprints_wkb(box, np.full(n, 4326)), paths=pa.array([[p] for p in location]),
        nbytes=(rng.normal(1.7e9, 0.15e9, n).clip(5e8, 2.5e9)).astype(np.int64), sidecar=None,
        bands=[template.replace("@P@", p) for p in location],
    )


def _s1_absolute_orbit(sensed: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """S1A absolute orbits consistent with the relative ones (175 orbits per 12 days,
    relative = (absolute - 73) % 175 + 1; orbit 49393 on 2023-07-14 05:29:47)."""
    days = (sensed - np.datetime64("2023-07-14T05:29:47", "s")).astype(np.float64) / 86400
    approx = 49393 + np.round(days * 175 / 12).astype(np.int64)
    delta = (rel - 1 - (approx - 73)) % 175
    return approx + np.where(delta > 87, delta - 175, delta)


# ------------------------------------------------------------------ the table


def _const(value: str | int, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value), n)


def _compact(t: np.ndarray) -> list[str]:
    """``20230105T103421`` per datetime64[s]."""
    return [s.replace("-", "").replace(":", "") for s in np.datetime_as_string(t, unit="s").tolist()]


def _iso(t: np.ndarray) -> list[str]:
    """``2023-01-05T10:34:21Z`` (scan's ``iso()``) per datetime64[s]."""
    return [s + "Z" for s in np.datetime_as_string(t, unit="s").tolist()]


def _column(values: object, n: int, type_: pa.DataType) -> pa.Array:
    if values is None:
        return pa.nulls(n, type_)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_)
    if isinstance(values, np.ndarray) and values.ndim == 2:  # bounds
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1]).cast(type_)
    return pa.array(values, type=type_)


def _table(parts: dict[str, Any], n: int) -> pa.Table:
    epsg = np.asarray(parts["epsg"])
    wkts = {int(e): _crs_wkt(int(e)) for e in np.unique(epsg)}
    codes = np.array(sorted(wkts))
    crs = pa.array([wkts[int(e)] for e in codes]).take(pa.array(np.searchsorted(codes, epsg)))
    cols = {f.name: _column(parts.get(f.name), n, f.type) for f in SCENES_SCHEMA if f.name not in ("crs_wkt", "scene")}
    cols["crs_wkt"] = crs
    cols["from_item"] = pa.array(np.zeros(n, dtype=bool))  # scene headers, as scan makes them from files
    return pa.table({f.name: cols[f.name] for f in SCENES_SCHEMA if f.name != "scene"})


def synthetic_scenes(n_s2: int, seed: int = 0, *, root: str = "/archive") -> pa.Table:
    """Scene headers of a synthetic archive (see the module docstring), as scan's table.

    Args:
        n_s2: Sentinel-2 L2A products (exactly); tiles = ``round(n_s2 / 60)``. Sentinel-1
            products: about ``n_s2 / 4`` (at most ``round(n_s2 / 4)``).
        seed: seed of the dates dropped, cloud cover, sizes and product-id suffixes.
        root: folder the fake paths start with (``ROOT/s2/<product>.SAFE/…``, ``ROOT/s1/<product>.tif``).

    Returns:
        One row per scene with scan's columns (:data:`~eoforge.ingest.scene.SCENES_SCHEMA`), S1 first then S2, each
        sorted by location as scan's grouping sorts them; ``scene`` = row number.
        ``footprint``: WKB lon/lat polygon (EPSG:4326 degrees); ``bounds``: in the scene's
        CRS (``epsg``; UTM metres for S2, degrees for S1); ``datetime``: UTC ISO ``…Z``.
    """
    if n_s2 < 1:
        raise ValueError(f"n_s2 must be >= 1, not {n_s2}")
    rng = np.random.default_rng([seed, 20230101])
    s2 = _s2_rows(n_s2, rng, root.rstrip("/"))
    lon, lat = _s2_centres(s2)
    s1 = _s1_rows(n_s2, lon, lat, rng, root.rstrip("/"))
    table = pa.concat_tables([_table(s1, len(s1["product_id"])), _table(s2, len(s2["product_id"]))])
    return table.append_column("scene", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _s2_centres(s2: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the distinct S2 tile centres (the continent the S1 slices cover)."""
    bounds = np.asarray(s2["bounds"])
    epsg = np.asarray(s2["epsg"])
    _, first = np.unique(np.asarray(s2["mgrs_tile"]), return_index=True)
    b, e = bounds[first], epsg[first]
    lon, lat = np.empty(len(first)), np.empty(len(first))
    for code in np.unique(e):
        sel = e == code
        lon[sel], lat[sel] = _to_lonlat(int(code)).transform((b[sel, 0] + b[sel, 2]) / 2, (b[sel, 1] + b[sel, 3]) / 2)
    return lon, lat


def write_synthetic_catalog(out_dir: str | Path, n_s2: int, seed: int = 0) -> Path:
    """Write ``OUT/scenes.parquet`` (scan's table for :func:`synthetic_scenes`); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scenes.parquet"
    write_parquet_atomic(synthetic_scenes(n_s2, seed), path, fsync=False)
    return path


if __name__ == "__main__":  # pragma: no cover - ``python -m eoforge.ingest.synthetic_catalog``
    from eoforge.ingest.synth_cli import synth_catalog

    synth_catalog()
