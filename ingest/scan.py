"""Stage 1, scan: find the input rasters, read their headers, group them into scenes.

Headers only, in parallel (one Dask task per file, then one small probe per scene): CRS,
bounds, resolution per band, dtype, nodata, band descriptions and tags, plus what names
and sidecars say (product id, time, processing baseline, orbit, cloud cover). Output:

- one row per scene (an S2 product, an S1 product, a land-cover raster) for
  ``scenes.parquet``; the bands of a scene may be separate files or one multiband file;
- one row per input that cannot be used, with the reason, for ``errors.parquet``.

The probe checks that every file holds the bytes its header promises (a truncated
download; header bytes only for local GeoTIFF and JPEG 2000, else its last block is
decoded), takes a coarse look at S2 B1 (all-nodata scenes) and a grid of small
windows of S1 (dB or linear, all-NaN). Nothing else touches pixels before materialize.

A rerun into the same dataset folder reads again only the headers of files whose size or
mtime changed and probes only the scenes those files belong to; the rest comes from the
scan inventory the last run left (``DS/scan-inventory.parquet``, :mod:`.inventory`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer

from eoforge.ingest.blocks import PROFILE_BINS, decode_estimate, inspect_blocks
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.errors import ErrorRow
from eoforge.ingest.inventory import ScanInventory, Stat, file_stat, probe_key
from eoforge.ingest.names import NameInfo, canonical_band, iso, parse_file_name, parse_product_name, parse_time
from eoforge.ingest.scene import BandFile, FileHeader, Scene
from eoforge.ingest.stac import ItemError, ItemProduct, is_item_source, item_product, iter_items, signed
from eoforge.shards.schema import S2_BANDS

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
#: Processing baseline from which L1C/L2A DN carry the +1000 offset (ingest/SENTINEL.md#sentinel-2-dn-offset).
OFFSET_BASELINE = "04.00"
#: First sensing day of baseline 04.00 products (used only when no baseline is known).
OFFSET_SINCE = datetime(2022, 1, 25)
#: Up to this many header reads / probes run on the client in threads (see ``Engine.map``):
#: a few files are scanned before a LocalCluster would have started.
INLINE_HEADERS = 64
INLINE_PROBES = 8
L2A_BANDS = tuple(b.name for b in S2_BANDS if b.in_l2a)
L1C_BANDS = tuple(b.name for b in S2_BANDS)
S2_GSD = {**{b.name: b.gsd_m for b in S2_BANDS}, "SCL": 20.0}


@dataclass
class ScanResult:
    """Scene rows, error rows, raster files found, and how many of those files' headers
    and of the scenes' probes this scan ran (the rest came from the scan inventory or, for
    STAC items, from the items); warnings: rows like error rows for what is used but
    worth a look (a band delivered coarser than its native pixel size)."""

    scenes: list[Scene]
    errors: list[ErrorRow]
    files_seen: int
    headers_read: int = 0
    probes_run: int = 0
    items: int = 0
    warnings: list[ErrorRow] = field(default_factory=list)


# ------------------------------------------------------------------ discovery


def gdal_path(location: str) -> str:
    """A path or URL as GDAL opens it: ``s3://b/k`` -> ``/vsis3/b/k``, ``https://…`` -> ``/vsicurl/https://…``."""
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if location.startswith(scheme):
            return prefix + location[len(scheme):]
    if location.startswith(("http://", "https://")):
        return "/vsicurl/" + location
    return location


def _is_raster(name: str) -> bool:
    return name.lower().endswith(RASTER_SUFFIXES)


def _stem(name: str) -> str:
    """File name without its raster suffix (``T32TQR_…_B02_10m.jp2`` -> ``T32TQR_…_B02_10m``)."""
    return re.sub(r"\.(tif|tiff|jp2|vrt)$", "", name, flags=re.I)


def discover(inputs: Iterable[str]) -> tuple[list[str], list[ErrorRow]]:
    """Raster files under the given folders, files and URLs (sorted, unique), and error rows
    for inputs that do not exist or cannot be listed."""
    found: set[str] = set()
    errors: list[ErrorRow] = []
    for item in inputs:
        item = str(item)
        if "://" in item:
            if _is_raster(item):
                found.add(item)
                continue
            try:
                import fsspec

                fs, root = fsspec.core.url_to_fs(item)
                protocol = item.split("://", 1)[0]
                found.update(f"{protocol}://{p}" for p in fs.find(root) if _is_raster(p))
            except Exception as err:  # noqa: BLE001 - any listing failure is an input error
                errors.append(ErrorRow(item, "scan", f"cannot list {item}: {err}"))
            continue
        path = Path(item)
        if path.is_file():
            found.add(str(path))
        elif path.is_dir():
            found.update(str(p) for p in path.rglob("*") if p.is_file() and _is_raster(p.name))
        else:
            errors.append(ErrorRow(item, "scan", "no such file or folder"))
    return sorted(found), errors


# ------------------------------------------------------------------ headers (worker)


def footprint_wkb(crs_wkt: str, bounds: tuple[float, float, float, float]) -> bytes:
    """The raster's bounding box as a lon/lat polygon (edges densified), WKB."""
    box = shapely.segmentize(shapely.box(*bounds), max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / 16)
    to_lonlat = Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)
    xs, ys = np.asarray(box.exterior.coords).T
    lon, lat = to_lonlat.transform(xs, ys)
    return shapely.to_wkb(shapely.make_valid(shapely.Polygon(np.column_stack([lon, lat]))))


def read_header(path: str, signer: str | None = None) -> FileHeader:
    """Everything scan needs from one raster file, or why it cannot be used. ``signer``:
    the href signing function (``IngestConfig.href_signer``) for STAC asset URLs."""
    import rasterio
    from rasterio.errors import RasterioError

    out: dict[str, Any] = {"path": path, "error": None}
    try:
        with rasterio.open(gdal_path(signed(path, signer))) as src:
            if src.crs is None:
                gcps, _ = src.gcps
                out["error"] = (
                    "georeferenced by ground control points only (a raw GRD?); terrain-correct it "
                    "to a map projection first (SNAP, GEE or an RTC product)" if gcps else
                    "no CRS: the raster is not georeferenced"
                )
                return FileHeader.from_dict(out)
            out.update(
                crs_wkt=src.crs.to_wkt(), epsg=src.crs.to_epsg(), transform=tuple(src.transform)[:6],
                width=src.width, height=src.height, count=src.count, dtypes=list(src.dtypes),
                nodata=src.nodata, descriptions=[d or "" for d in src.descriptions],
                tags={k: v for k, v in src.tags().items() if len(v) < 2000},
                res=tuple(src.res), bounds=tuple(src.bounds),
            )
            out["footprint"] = footprint_wkb(out["crs_wkt"], out["bounds"])
    except (RasterioError, OSError) as err:
        out["error"] = f"unreadable raster: {_gdal_reason(err)}"
    except Exception as err:  # noqa: BLE001 - e.g. PROJ failures on odd CRSs
        out["error"] = f"unreadable raster: {type(err).__name__}: {err}"
    try:
        out["size"] = os.path.getsize(path) if "://" not in path else None
    except OSError:
        out["size"] = None
    return FileHeader.from_dict(out)


# ------------------------------------------------------------------ sidecars


def _xml_value(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}[^>]*>\s*([^<]+?)\s*</{tag}>", text)
    return m.group(1) if m else None


def _safe_metadata(safe: Path) -> dict[str, Any]:
    """Baseline, offset, cloud cover and start time from a SAFE's ``MTD_MSIL*.xml``."""
    for name in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml"):
        path = safe / name
        if path.is_file():
            text = path.read_text(errors="replace")
            meta: dict[str, Any] = {"sidecar": str(path)}
            if v := _xml_value(text, "PROCESSING_BASELINE"):
                meta["baseline"] = v
            offset = re.search(r"<(?:BOA|RADIO)_ADD_OFFSET[^>]*>\s*(-?\d+)", text)
            meta["dn_offset"] = -int(offset.group(1)) if offset else 0
            if v := _xml_value(text, "Cloud_Coverage_Assessment"):
                meta["cloud_percentage"] = float(v)
            if v := _xml_value(text, "PRODUCT_START_TIME"):
                meta["datetime"] = parse_time(v)
            return meta
    return {}


def _stac_metadata(folder: Path, stem: str | None = None) -> dict[str, Any]:
    """Time, baseline, cloud cover and offset from a STAC item JSON beside the files."""
    candidates = [folder / f"{stem}.json"] if stem else sorted(folder.glob("*.json"))
    for path in candidates:
        try:
            item = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(item, dict) or "properties" not in item:
            continue
        p = item["properties"]
        meta: dict[str, Any] = {"sidecar": str(path)}
        if p.get("datetime"):
            meta["datetime"] = parse_time(p["datetime"])
        if p.get("s2:processing_baseline"):
            meta["baseline"] = p["s2:processing_baseline"]
        if p.get("eo:cloud_cover") is not None:
            meta["cloud_percentage"] = float(p["eo:cloud_cover"])
        if p.get("s2:product_uri"):
            meta["product_id"] = str(p["s2:product_uri"]).removesuffix(".SAFE")
        if p.get("sat:orbit_state"):
            meta["orbit_direction"] = str(p["sat:orbit_state"]).lower()
        if "earthsearch:boa_offset_applied" in p:
            meta["offset_applied"] = bool(p["earthsearch:boa_offset_applied"])
        return meta
    return {}


def _tag_time(tags: Mapping[str, str]) -> datetime | None:
    for key in ("SENSING_START", "ACQUISITION_START_TIME", "datetime", "DATETIME_UTC"):
        if tags.get(key):
            try:
                return parse_time(tags[key])
            except ValueError:
                pass
    if tags.get("system:time_start", "").isdigit():  # GEE exports: ms since the epoch
        return datetime.utcfromtimestamp(int(tags["system:time_start"]) / 1000)
    return None


def _tag_orbit(tags: Mapping[str, str]) -> str | None:
    for key in ("ORBIT_DIRECTION", "orbitProperties_pass", "sat:orbit_state", "PASS"):
        v = tags.get(key, "").strip().lower()
        if v in ("ascending", "descending"):
            return v
    return None


def orbit_from_solar_time(when: datetime, lon: float) -> str:
    """S1 flies a dawn-dusk orbit: descending passes near 06:00 local solar time,
    ascending near 18:00; the pass follows from the local solar time."""
    local_hours = (when.hour + when.minute / 60 + lon / 15.0) % 24
    return "descending" if local_hours < 12 else "ascending"


# ------------------------------------------------------------------ grouping (driver)


@dataclass(frozen=True, slots=True)
class ProductKey:
    """Which product a file belongs to: files with equal keys form one scene.

    Attributes:
        sensor: ``"s2"``, ``"s1"`` or ``"landcover"``.
        location: the product's SAFE folder, multiband file, STAC item (``file#id``) or the
            folder its band files share.
        product: the product id within ``location`` (band files of several products may
            share a folder); empty when ``location`` is the product.
    """

    sensor: str
    location: str
    product: str = ""

    @property
    def sort_key(self) -> str:
        """Products are numbered in this order (as eoforge always has: plan fingerprints of
        existing datasets stay valid)."""
        return "|".join(p for p in (self.sensor, self.location, self.product) if p)


def _identify(header: FileHeader, landcover: set[str]) -> tuple[NameInfo, ProductKey | None, str | None]:
    """(name info, the product the file belongs to (None: skip it), error) for one readable file."""
    path = header.path
    parts = PurePosixPath(path.replace("\\", "/")).parts
    stem = _stem(parts[-1])
    folder = parts[-2] if len(parts) > 1 else None
    safe = next((i for i in range(len(parts) - 1, -1, -1) if parts[i].endswith(".SAFE")), None)
    if path in landcover:
        info = parse_product_name(stem)
        info = NameInfo(sensor="landcover", product_id=stem, taxonomy=info.taxonomy, band="class",
                        datetime=info.datetime)
        return info, ProductKey("landcover", path), None
    info = parse_file_name(stem, folder=parts[safe] if safe is not None else folder)
    if info.band == "skip":
        return info, None, None
    if safe is not None and info.sensor == "s2":
        product = parse_product_name(parts[safe])
        if product.sensor == "s2":
            info = NameInfo(**{**product.__dict__, "band": info.band, "resolution_m": info.resolution_m})
            return info, ProductKey("s2", str(PurePosixPath(*parts[: safe + 1]))), None
    bands = [canonical_band(d) for d in header.descriptions]
    if info.sensor in ("s1", "s2") and info.band is None and header.count > 1:
        if None in bands:
            return info, None, (f"multiband {info.sensor.upper()} file without band descriptions "
                                f"({header.count} bands)")
        return info, ProductKey(info.sensor, path), None
    if info.sensor is None:
        if header.count > 1 and None not in bands and set(bands) <= set(L1C_BANDS) | {"SCL"}:
            info = NameInfo(sensor="s2", product_id=stem, level="L1C" if "B10" in bands else "L2A")
        elif header.count >= 1 and set(bands) == {"VV", "VH"}:
            info = NameInfo(sensor="s1", product_id=stem)
        elif header.count == 1 and bands[0] in ("VV", "VH"):
            info = NameInfo(sensor="s1", product_id=stem, band=bands[0])
        else:
            dtypes = ",".join(sorted(set(header.dtypes)))
            return info, None, (
                f"not recognised as Sentinel-1, Sentinel-2 or land cover ({header.count} band(s) {dtypes}, "
                f"descriptions {[d for d in header.descriptions if d] or 'none'}, no Sentinel product name); "
                "pass class rasters with --landcover"
            )
        if info.sensor in ("s1", "s2") and header.count > 1:
            return info, ProductKey(info.sensor, path), None
    if info.sensor == "landcover":
        return NameInfo(**{**info.__dict__, "band": "class"}), ProductKey("landcover", path), None
    if info.band is None:
        if info.sensor == "s1" and header.count == 1 and bands[0] in ("VV", "VH"):
            info = NameInfo(**{**info.__dict__, "band": bands[0]})
        else:
            return info, None, f"cannot tell which band this {str(info.sensor).upper()} file holds"
    shared_folder = str(PurePosixPath(*parts[:-1])) if len(parts) > 1 else "."
    return info, ProductKey(str(info.sensor), shared_folder, info.product_id or folder or stem), None


def product_path(key: ProductKey, paths: list[str]) -> str:
    """Where a product's error row points: its SAFE folder, its one file, or the folder its
    files share (an Earth Search item folder, a BigEarthNet patch). One row per product:
    a SAFE without B08 is one problem, not 13."""
    location = key.location
    if location.endswith(".SAFE") or "#" in location:  # a SAFE folder; a STAC item (file#id)
        return location
    if len(paths) == 1:
        return paths[0]
    if any("://" in p for p in paths):
        return os.path.dirname(paths[0])
    return os.path.commonpath(paths)


def _pick_bands(files: list[tuple[NameInfo, FileHeader]]) -> dict[str, BandFile]:
    """Band -> where it is read from; per band the file at its native GSD, else the finest
    resolution delivered."""
    bands: dict[str, list[tuple[float, BandFile]]] = defaultdict(list)
    for info, h in files:
        names = [info.band] if info.band else [canonical_band(d) for d in h.descriptions]
        for i, band in enumerate(names):
            if band is None:
                continue
            res = float(abs(h.res[0]))
            nodata = None if h.nodata is None else float(h.nodata)  # a STAC record may say 0, GDAL 0.0
            entry = BandFile(h.path, i + 1, (float(h.res[0]), float(h.res[1])), nodata, h.dtypes[i])
            native = S2_GSD.get(band)
            rank = 0.0 if native is not None and math.isclose(res, native) else 1.0 + res
            bands[band].append((rank, entry))
    return {b: min(c, key=lambda x: (x[0], x[1].path))[1] for b, c in sorted(bands.items())}


def group_scenes(headers: list[FileHeader], landcover: Iterable[str],
                 config: IngestConfig) -> tuple[list[Scene], list[ErrorRow]]:
    """Group file headers into scenes (without probe results) and error rows."""
    errors: list[ErrorRow] = []
    groups: dict[ProductKey, list[tuple[NameInfo, FileHeader]]] = defaultdict(list)
    lc = set(landcover)
    for h in headers:
        if h.error:
            product_id = parse_file_name(_stem(PurePosixPath(h.path).name)).product_id
            errors.append(ErrorRow(h.path, "scan", h.error, product_id))
            continue
        info, key, err = _identify(h, lc)
        if err:
            errors.append(ErrorRow(h.path, "scan", err, info.product_id))
        elif key is not None:
            groups[key].append((info, h))
    scenes = []
    for key in sorted(groups, key=lambda k: k.sort_key):
        files = groups[key]
        row, err = _scene_row(key, files, config)
        if err:
            errors.append(ErrorRow(product_path(key, [h.path for _, h in files]), "scan", err,
                                   row.get("product_id")))
        else:
            scenes.append(Scene.from_row(row))
    return scenes, errors


def _scene_row(key: ProductKey, files: list[tuple[NameInfo, FileHeader]], config: IngestConfig,
               side: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """The scene of one product's files, as a :meth:`.Scene.from_row` row still being built,
    or the reason it cannot be one. ``side``: the product's metadata when it came as a STAC
    item (:mod:`.stac`); else the SAFE or STAC sidecar beside the files is looked up."""
    info = files[0][0]
    first = files[0][1]
    sensor = info.sensor or ""
    location = key.location
    row: dict[str, Any] = {
        "sensor": sensor, "product_id": info.product_id or Path(first.path).stem, "location": location,
        "level": info.level, "datetime": None, "baseline": info.baseline, "dn_offset": 0, "offset_rule": None,
        "relative_orbit": info.relative_orbit, "orbit_direction": None, "orbit_rule": None,
        "mgrs_tile": info.mgrs_tile, "cloud_percentage": None, "s1_unit": None, "taxonomy": None,
        "crs_wkt": first.crs_wkt, "epsg": first.epsg, "bounds": list(first.bounds),
        "footprint": first.footprint, "paths": sorted({h.path for _, h in files}),
        "nbytes": sum(h.size or 0 for _, h in files), "sidecar": None, "from_item": False, "source_id": None,
    }
    wkts = {h.crs_wkt for _, h in files}  # parse only when the texts differ (13 bands: one CRS)
    crss = {CRS.from_wkt(w) for w in wkts} if len(wkts) > 1 else wkts
    if len(crss) > 1:
        return row, f"files of one product are in different CRSs ({len(crss)})"
    bands = _pick_bands(files)
    row["bands"] = bands
    # The scene's extent: the 10 m bands define it when present (20/60 m files may pad).
    ref = next((h for _, h in files if "B2" in bands and h.path == bands["B2"].path), first)
    row["bounds"], row["footprint"] = list(ref.bounds), ref.footprint
    when = info.datetime
    if sensor == "landcover":
        row["taxonomy"] = (side or {}).get("taxonomy") or info.taxonomy or config.label_taxonomy
        when = (side or {}).get("datetime") or when
        row["datetime"] = iso(when) if when else None
        return row, None
    tags = first.tags
    if sensor == "s2":
        if side is not None:
            pass
        elif location.endswith(".SAFE"):
            side = _safe_metadata(Path(location))
        elif len(files) > 1 or info.band:
            side = _stac_metadata(Path(location))
        else:
            side = _stac_metadata(Path(first.path).parent, Path(first.path).stem)
        row["sidecar"] = side.get("sidecar")
        if side.get("product_id"):
            row["source_id"], row["product_id"] = row["product_id"], side["product_id"]
            name = parse_product_name(side["product_id"])
            row["relative_orbit"] = row["relative_orbit"] or name.relative_orbit
            row["baseline"] = row["baseline"] or name.baseline
        when = side.get("datetime") or when or _tag_time(tags)
        row["baseline"] = side.get("baseline") or row["baseline"]
        row["cloud_percentage"] = side.get("cloud_percentage")
        level = row["level"] or ("L1C" if "B10" in bands else "L2A")
        row["level"] = level
        need = L2A_BANDS if level == "L2A" else L1C_BANDS
        missing = [b for b in need if b not in bands]
        if missing:
            return row, (f"S2 {level} product without band(s) {', '.join(missing)}: every sample needs all "
                         f"{len(need)} {level} bands")
        if when is None:
            return row, "no acquisition time (not in the name, the tags or a STAC/SAFE sidecar)"
        row["datetime"] = iso(when)
        if side.get("offset_applied"):
            row["dn_offset"], row["offset_rule"] = 0, "sidecar: offset already applied"
        elif "dn_offset" in side:
            row["dn_offset"] = side["dn_offset"]
            row["offset_rule"] = side.get("offset_rule", "sidecar BOA/RADIO_ADD_OFFSET")
        elif row["baseline"]:
            row["dn_offset"] = 1000 if row["baseline"] >= OFFSET_BASELINE else 0
            row["offset_rule"] = f"baseline {row['baseline']}"
        else:
            row["dn_offset"] = 1000 if when >= OFFSET_SINCE else 0
            row["offset_rule"] = "sensing date (no baseline known)"
        return row, None
    # Sentinel-1
    if not {"VV", "VH"} <= set(bands):
        return row, f"S1 product without {' and '.join(sorted({'VV', 'VH'} - set(bands)))}: samples need VV and VH"
    side = side or {}
    when = side.get("datetime") or when or _tag_time(tags)
    if when is None:
        return row, "no acquisition time (not in the name, the tags or a sidecar)"
    row["datetime"] = iso(when)
    direction = side.get("orbit_direction") or _tag_orbit(tags)
    if direction:
        row["orbit_direction"], row["orbit_rule"] = direction, "metadata"
    else:
        lon = shapely.from_wkb(row["footprint"]).centroid.x
        row["orbit_direction"], row["orbit_rule"] = orbit_from_solar_time(when, lon), "local solar time"
    units = (tags.get("UNITS") or "").lower()
    row["s1_unit"] = side.get("s1_unit") or ("db" if "db" in units else "linear" if "linear" in units else None)
    return row, None


# ------------------------------------------------------------------ probe (worker)


def _gdal_reason(err: BaseException) -> str:
    """rasterio's message plus GDAL's underlying one (which names the file and the block)."""
    cause = err.__cause__ or err.__context__
    return f"{err}: {cause}" if cause is not None and str(cause) not in str(err) else str(err)


def probe_scene(scene: Scene, signer: str | None = None) -> dict[str, Any]:
    """A few pixel reads per scene: truncation, all-nodata (and for S2 the valid profile of its
    coarse B1 read, and, from the headers of its local band files, their block rows' decoding
    time), S1 unit. Returns updates, or ``{"error": reason, "error_paths": [...]}`` when the
    scene cannot be used.

    A scene made from a STAC item that gave every file's grid (``scene.from_item``)
    is only probed for its S1 unit when the item did not state it: the item is trusted for
    the rest, and a damaged file shows when its pixels are read."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    out: dict[str, Any] = {}
    # S2: where decoding the band files ingest reads will be slow, for balanced read parts
    decode: list[tuple[float, float, float]] | None = [] if scene.sensor == "s2" else None
    band_paths = {b.path for b in scene.bands.values()}
    for path in [] if scene.from_item else scene.paths:
        try:
            with rasterio.open(gdal_path(signed(path, signer))) as src:
                reason, layout = inspect_blocks(src, path)  # one walk of the headers for both
                if reason is None:  # not a local GeoTIFF or JPEG 2000: decode the last block
                    bh, bw = src.block_shapes[0]
                    win = Window(max(0, src.width - bw), max(0, src.height - bh), min(bw, src.width), min(bh, src.height))
                    src.read(1, window=win)
                elif reason:
                    return {"error": f"truncated file: {reason}; product {scene.product_id} skipped",
                            "error_paths": [path]}
                if decode is not None and path in band_paths:
                    decode = None if layout is None else decode + decode_estimate(layout, src.height)
        except (RasterioError, OSError) as err:
            return {"error": f"unreadable pixels (truncated or corrupt file?): {_gdal_reason(err)}; "
                             f"product {scene.product_id} skipped", "error_paths": [path]}
    try:
        if scene.sensor == "s2":
            b = scene.bands["B1"]
            with rasterio.open(gdal_path(signed(b.path, signer))) as src:
                scale = max(1, max(src.width, src.height) // 256)
                data = src.read(b.index, out_shape=(max(1, src.height // scale), max(1, src.width // scale)))
            valid = data != 0
            if not valid.any():
                return {"error": "no valid pixels: every S2 value is nodata (0)"}
            out["valid_profile"] = valid_profile(valid)
            if decode is not None and not scene.from_item:
                out["decode_rows"] = np.asarray(decode, np.float32).tobytes()
        elif scene.sensor == "s1":
            values = {pol: _s1_probe(scene.bands[pol], signer) for pol in ("VV", "VH")}
            empty = [pol for pol, v in values.items() if v.size == 0]
            if empty:
                return {"error": f"no valid pixels: every S1 {' and '.join(empty)} value is NaN or 0 (nodata)",
                        "error_paths": sorted({scene.bands[pol].path for pol in empty})}
            if scene.s1_unit is None:
                out["s1_unit"] = "db" if (values["VV"] < 0).any() else "linear"
    except (RasterioError, OSError) as err:
        return {"error": f"unreadable pixels (truncated or corrupt file?): {_gdal_reason(err)}"}
    return out


def valid_profile(valid: np.ndarray, bins: int = PROFILE_BINS) -> bytes:
    """Percent of valid pixels in each of ``bins`` equal bands of rows of a (coarse) validity
    mask, north to south, one byte each: where a scene has data, known before its pixels
    are read (read planning balances the parts of a split scene with it)."""
    edges = np.linspace(0, valid.shape[0], bins + 1).round().astype(int)
    fractions = [valid[a:b].mean() if b > a else valid[min(a, valid.shape[0] - 1)].mean()
                 for a, b in zip(edges[:-1], edges[1:])]
    return bytes(int(round(100 * f)) for f in fractions)



def _s1_probe(band: BandFile, signer: str | None = None) -> np.ndarray:
    """Finite, non-zero values from an 8 x 8 grid of small windows (then the whole band,
    decimated, if the grid found nothing)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(gdal_path(signed(band.path, signer))) as src:
        chunks = []
        for fy in np.linspace(0, 1, 8, endpoint=False) + 1 / 16:
            for fx in np.linspace(0, 1, 8, endpoint=False) + 1 / 16:
                w = Window(int(fx * src.width), int(fy * src.height), min(16, src.width), min(16, src.height))
                chunks.append(src.read(band.index, window=w).ravel())
        values = np.concatenate(chunks).astype(np.float64)
        values = values[np.isfinite(values) & (values != 0)]
        if band.nodata is not None:  # e.g. -32768 in Planetary Computer's RTC
            values = values[values != band.nodata]
        if values.size == 0:
            scale = max(1, max(src.width, src.height) // 512)
            data = src.read(band.index, out_shape=(max(1, src.height // scale), max(1, src.width // scale)))
            values = data[np.isfinite(data) & (data != 0)].astype(np.float64)
    return values


# ------------------------------------------------------------------ the stage


def scan(inputs: Iterable[str], landcover: Iterable[str], config: IngestConfig, engine: Any,
         inventory: str | os.PathLike[str] | None = None) -> ScanResult:
    """Discover, read headers and probe in parallel on ``engine``; group into scenes.

    ``inventory``: the scan inventory file (``DS/scan-inventory.parquet``, :mod:`.inventory`).
    Headers of files whose size and mtime are those it recorded, and probes of scenes whose
    files and bands are unchanged, are taken from it instead of read again; at the end it is
    rewritten (atomically) with what this scan found. None: everything is read, nothing kept.
    """
    inputs, landcover = list(inputs), list(landcover)
    item_inputs = [i for i in inputs if is_item_source(i)]
    lc_item_inputs = [i for i in landcover if is_item_source(i)]
    files, errors = discover([i for i in inputs if i not in item_inputs])
    lc_files, lc_errors = discover([i for i in landcover if i not in lc_item_inputs])
    errors += lc_errors
    products, item_errors = read_items(item_inputs, lc_item_inputs, config)
    errors += item_errors
    # asset files whose header the item does not give are read like any other file
    item_files = {href for p in products for _, record, href in p.files if record is None}
    all_files = sorted(set(files) | set(lc_files) | item_files)
    old = ScanInventory.load(inventory) if inventory is not None else ScanInventory()
    new = ScanInventory()
    # stat before reading: a file changed while it is read is newer than its recorded stat
    stats = {path: file_stat(path) for path in all_files}
    # the files of S1 items without a stated unit are probed: their stats key the probe inventory
    stats.update({href: file_stat(href) for p in products if p.sensor == "s1" and "s1_unit" not in p.metadata
                  for _, _, href in p.files})
    headers, headers_read = _headers(all_files, stats, old, new, engine, config.href_signer)
    listed = set(files) | set(lc_files)
    scenes, group_errors = group_scenes([h for h in headers if h.path in listed], lc_files, config)
    errors += group_errors
    item_scenes, item_group_errors = group_items(products, dict(zip(all_files, headers)), config)
    errors += item_group_errors
    scenes += sorted(item_scenes, key=lambda s: (s.sensor, s.location))
    probes, probes_run = _probes(scenes, stats, old, new, engine, config.href_signer)
    kept: list[Scene] = []
    for scene, probe in zip(scenes, probes):
        if probe.get("error"):
            # a file's problem names the file; a product's (no valid pixel anywhere) the product
            key = ProductKey(scene.sensor, scene.location)
            paths = probe.get("error_paths") or [product_path(key, list(scene.paths))]
            errors.extend(ErrorRow(p, "scan", probe["error"], scene.product_id) for p in paths)
            continue
        kept.append(scene.replace(**probe, number=len(kept)))
    if inventory is not None:
        new.save(inventory)
    n_files = len(listed | {href for p in products for _, _, href in p.files})
    return ScanResult(kept, errors, n_files, headers_read, probes_run, items=len(products),
                      warnings=coarse_band_warnings(kept, config))


def read_items(inputs: list[str], landcover: list[str],
               config: IngestConfig) -> tuple[list[ItemProduct], list[ErrorRow]]:
    """The products of the STAC items in ``inputs`` (and ``landcover``: items of class
    rasters), and one error row per item or source that cannot be one."""
    products: list[ItemProduct] = []
    errors: list[ErrorRow] = []
    seen: set[str] = set()
    for source, is_landcover in [(i, False) for i in inputs] + [(i, True) for i in landcover]:
        for item, location, base in iter_items(source):
            if item is None:
                errors.append(ErrorRow(location, "scan", base))
                continue
            if location in seen:
                continue
            seen.add(location)
            try:
                products.append(item_product(item, location, base, landcover=is_landcover,
                                             label_taxonomy=config.label_taxonomy))
            except ItemError as err:
                errors.append(ErrorRow(location, "scan", f"STAC item {item['id']}: {err}", str(item["id"])))
    return products, errors


def group_items(products: list[ItemProduct], headers: dict[str, FileHeader],
                config: IngestConfig) -> tuple[list[Scene], list[ErrorRow]]:
    """Scenes of STAC products (``headers``: the records of asset files the items did
    not describe, by path), and one error row per product that cannot be a scene."""
    scenes: list[Scene] = []
    errors: list[ErrorRow] = []
    for product in products:
        meta = product.metadata
        base = NameInfo(sensor=product.sensor, product_id=product.item_id, level=meta.get("level"),
                        datetime=meta.get("datetime"), baseline=meta.get("baseline"),
                        relative_orbit=meta.get("relative_orbit"), mgrs_tile=meta.get("mgrs_tile"),
                        taxonomy=meta.get("taxonomy"))
        files: list[tuple[NameInfo, FileHeader]] = []
        failed = None
        for band, record, href in product.files:
            header = record if record is not None else headers[href]
            if header.error:
                failed = f"asset {href}: {header.error}"
                break
            files.append((dataclasses.replace(base, band=band), header))
        row: dict[str, Any] = {}
        if failed is None:
            row, failed = _scene_row(ProductKey(product.sensor, product.location), files, config, side=meta)
        if failed is not None:
            errors.append(ErrorRow(product.location, "scan", f"STAC item {product.item_id}: {failed}",
                                   meta.get("product_id") or product.item_id))
            continue
        if product.footprint:  # the provider's valid-data outline, finer than the raster's box
            row["footprint"] = shapely.to_wkb(shapely.make_valid(shapely.geometry.shape(product.footprint)))
        elif row["footprint"] is None:
            row["footprint"] = footprint_wkb(row["crs_wkt"], tuple(row["bounds"]))
        row["from_item"] = all(record is not None for _, record, _ in product.files)
        scenes.append(Scene.from_row(row))
    return scenes, errors


def coarse_band_warnings(scenes: list[Scene], config: IngestConfig) -> list[ErrorRow]:
    """A warning row per S2 band delivered coarser than its native pixel size (a decimated
    or overview copy: B02 at 100 m), which ingest upsamples to the grid."""
    warnings = []
    for scene in scenes:
        if scene.sensor != "s2":
            continue
        for band, entry in scene.bands.items():
            native = S2_GSD.get(band)
            res = max(abs(entry.res[0]), abs(entry.res[1]))
            if native is not None and res > native * 1.01 and res > config.resolution_m * 1.01:
                warnings.append(ErrorRow(
                    entry.path, "scan", f"band {band} at {res:g} m, native {native:g} m (a decimated or "
                    f"overview copy?): upsampled to the {config.resolution_m:g} m grid", scene.product_id))
    return warnings


def _headers(files: list[str], stats: dict[str, Stat | None], old: ScanInventory, new: ScanInventory,
             engine: Any, signer: str | None = None) -> tuple[list[FileHeader], int]:
    """Header records of ``files`` in order: from ``old`` where the file's stat is unchanged,
    else read on ``engine``; every record that can be kept goes into ``new``. Returns
    (records, headers read)."""
    headers = [old.header(path, stats[path]) for path in files]
    todo = [i for i, h in enumerate(headers) if h is None]
    for i, h in zip(todo, engine.map(partial(read_header, signer=signer), [files[i] for i in todo],
                                        desc="scan headers", unit="file",
                                        inline_below=INLINE_HEADERS)):
        if isinstance(h, BaseException):  # the task raised (a dead worker?): not the file's fault, not kept
            h = FileHeader(files[i], error=f"unreadable raster: {h}")
        else:
            new.keep_header(files[i], stats[files[i]], h)
        headers[i] = h
    for i in sorted(set(range(len(files))) - set(todo)):
        new.carry_header(old, files[i])
    return headers, len(todo)  # type: ignore[return-value]  # every None was filled


def _probes(scenes: list[Scene], stats: dict[str, Stat | None], old: ScanInventory,
            new: ScanInventory, engine: Any, signer: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Probe results of ``scenes`` in order: from ``old`` where the scene's :func:`probe_key`
    is unchanged, else probed on ``engine``; every result that can be kept goes into ``new``.
    Returns (results, probes run)."""
    keys = [probe_key(scene, stats) for scene in scenes]
    # a STAC scene whose item described every file is not probed, unless its S1 unit is unknown
    trusted = [s.from_item and not (s.sensor == "s1" and s.s1_unit is None) for s in scenes]
    probes = [{} if t else old.probe(key) for t, key in zip(trusted, keys)]
    todo = [i for i, p in enumerate(probes) if p is None]
    for i, p in zip(todo, engine.map(partial(probe_scene, signer=signer), [scenes[i] for i in todo],
                                        desc="scan probe", unit="scene", inline_below=INLINE_PROBES)):
        if isinstance(p, BaseException):  # the task raised: not kept, probed again next time
            p = {"error": f"probe failed: {p}"}
        else:
            new.keep_probe(keys[i], p)
        probes[i] = p
    for i in sorted(set(range(len(scenes))) - set(todo) - {i for i, t in enumerate(trusted) if t}):
        new.carry_probe(old, keys[i])  # type: ignore[arg-type]  # found under this key, so not None
    return probes, len(todo)  # type: ignore[return-value]  # every None was filled
