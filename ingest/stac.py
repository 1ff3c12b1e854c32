"""STAC items in: ItemCollections, item folders and stac-geoparquet files read as products.

What ``pystac-client``'s ``search.item_collection().save_object("items.json")`` writes,
a folder of item JSON files, or a stac-geoparquet file (one row per item) is read here
into one :class:`ItemProduct` per item: the sensor, the metadata the plan needs (time,
cloud cover, processing baseline and offset, orbit state, S1 unit, land-cover taxonomy)
and one file record per band asset. Publishers' conventions, as they are:

- **Sentinel-2 L2A / L1C**: Earth Search (``blue``, ``nir08``, ``scl``…, the same keys
  with ``-jp2`` for the JPEG 2000 copies, ``earthsearch:boa_offset_applied``) and
  Planetary Computer (``B02``, ``B8A``, ``SCL``…); ``s2:processing_baseline``,
  ``s2:product_uri``, ``eo:cloud_cover``, ``sat:relative_orbit``; the DN offset from
  ``earthsearch:boa_offset_applied``, else ``raster:bands`` offset / scale, else the
  baseline (ingest/SENTINEL.md#sentinel-2-dn-offset).
- **Sentinel-1 GRD / RTC**: ``vv`` and ``vh`` assets (or one asset whose bands are named
  VV and VH), ``sat:orbit_state``; the unit from the band's ``unit`` (``dB``), else linear
  for RTC collections (Planetary Computer's ``sentinel-1-rtc`` is γ⁰ linear power), else
  the scan probes the pixels.
- **Land cover**: ESA WorldCover (``map``), Dynamic World (``label``) or any class raster
  given with ``--landcover``.

Asset ``href`` may be relative to the item (its ``self`` link, else the file it came in),
absolute, ``file://``, ``https://`` or ``s3://`` (GDAL's ``/vsicurl/``, ``/vsis3/``).
Hrefs that need a signature (Planetary Computer's blob storage) go through the user's
signing function (``IngestConfig.href_signer``) each time a file is opened, so a token
never expires between scan and read.

When an asset carries its grid (``proj:code`` / ``proj:epsg`` / ``proj:wkt2`` and
``proj:transform`` / ``proj:bbox`` with ``proj:shape``, on the asset or the item), its file
record is made from the item and the scan opens no file; otherwise the file's header is
read as for any raster. Thumbnails, true colour, AOT / WVP and metadata assets are
skipped. An item that lacks what a scene needs is one error row naming the item id and
what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from eoforge.ingest.names import S1_PRODUCT_RE, S2_PRODUCT_RE, canonical_band, is_auxiliary, parse_time
from eoforge.ingest.scene import FileHeader
from eoforge.shards.config import load_callable

ITEM_SUFFIXES = (".json", ".geojson")
GEOPARQUET_SUFFIXES = (".parquet", ".geoparquet")
#: Asset roles and media types that never hold a band ingest reads.
SKIP_ROLES = {"thumbnail", "overview", "visual", "metadata", "rendered-preview", "tiles"}
IMAGE_TYPES = ("image/tiff", "image/jp2", "application/x-geotiff", "image/vnd.stac.geotiff")
#: Land-cover collections and the asset that holds their classes.
LANDCOVER_ASSETS = {"esa-worldcover": ("worldcover", "map"), "dynamic-world": ("dynamic_world", "label")}
#: S1 collections whose pixels are linear power when the item does not say (Planetary
#: Computer's sentinel-1-rtc: terrain-corrected γ⁰, float32).
LINEAR_S1_COLLECTIONS = ("sentinel-1-rtc",)
#: File record values the scan takes when neither item nor asset says (ingest/SENTINEL.md).
DEFAULT_DTYPE = {"s2": "uint16", "s1": "float32", "landcover": "uint8"}
DEFAULT_NODATA: dict[str, float | None] = {"s2": 0, "s1": None, "landcover": None}


@dataclass
class ItemProduct:
    """One STAC item as a product: what scan groups into a scene.

    Attributes:
        location: where the item came from, ``items.json#S2A_33TTL_20221014_0_L2A``.
        item_id: the item's id.
        sensor: ``"s2"``, ``"s1"`` or ``"landcover"``.
        metadata: the item's properties the scene row takes (same keys as a sidecar's:
            ``datetime``, ``baseline``, ``cloud_percentage``, ``product_id``,
            ``orbit_direction``, ``offset_applied``, ``dn_offset``, ``s1_unit``, ``taxonomy``,
            ``level``, ``mgrs_tile``, ``relative_orbit``).
        files: per asset file: (canonical band or None for a multiband asset, its header
            from the item or None when the file's header must be read, resolved href).
        footprint: the item's geometry (lon/lat GeoJSON) or None.
    """

    location: str
    item_id: str
    sensor: str
    metadata: dict[str, Any]
    files: list[tuple[str | None, FileHeader | None, str]] = field(default_factory=list)
    footprint: dict[str, Any] | None = None


class ItemError(ValueError):
    """An item that cannot become a product; the message names what is missing."""


# ------------------------------------------------------------------ which inputs are items


def is_item_source(location: str) -> bool:
    """Whether an input is read as STAC items: a ``.json`` / ``.geojson`` file (an Item or an
    ItemCollection), a stac-geoparquet file, or a folder holding item JSON files and no
    raster (a folder with rasters is read as rasters, its JSON files as their sidecars)."""
    name = location.split("?", 1)[0].lower()
    if name.endswith(ITEM_SUFFIXES + GEOPARQUET_SUFFIXES):
        return True
    path = Path(location)
    if "://" in location or not path.is_dir():
        return False
    from eoforge.ingest.scan import RASTER_SUFFIXES

    has_items = False
    for p in path.rglob("*"):
        low = p.name.lower()
        if low.endswith(RASTER_SUFFIXES):
            return False
        has_items = has_items or low.endswith(ITEM_SUFFIXES)
    return has_items


def iter_items(source: str) -> Iterator[tuple[dict[str, Any], str, str] | tuple[None, str, str]]:
    """``(item, location, base)`` for every item in ``source`` (base: what relative hrefs are
    relative to), or ``(None, location, reason)`` for what cannot be read as items."""
    name = source.split("?", 1)[0].lower()
    if name.endswith(GEOPARQUET_SUFFIXES):
        yield from _geoparquet_items(source)
        return
    path = Path(source)
    if "://" not in source and path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.name.lower().endswith(ITEM_SUFFIXES)):
            yield from _json_items(str(p))
        return
    yield from _json_items(source)


def _read_bytes(location: str) -> bytes:
    if "://" in location and not location.startswith("file://"):
        import fsspec

        with fsspec.open(location, "rb") as f:
            return f.read()
    return Path(_local_path(location)).read_bytes()


def _base_of(location: str) -> str:
    if "://" in location and not location.startswith("file://"):
        return location.rsplit("/", 1)[0] + "/"
    return str(Path(_local_path(location)).resolve().parent)


def _json_items(location: str) -> Iterator[tuple[dict[str, Any], str, str] | tuple[None, str, str]]:
    try:
        doc = json.loads(_read_bytes(location))
    except (OSError, ValueError) as err:
        yield None, location, f"cannot read STAC JSON: {err}"
        return
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        yield None, location, f"not a STAC Item or ItemCollection (type {kind!r})"
        return
    base = _base_of(location)
    del doc
    for i in range(len(features)):
        item, features[i] = features[i], None  # each item is freed once its product is made
        if not isinstance(item, dict) or not item.get("id"):
            yield None, f"{location}#{i}", "STAC item without an id"
            continue
        yield item, f"{location}#{item['id']}", _self_base(item) or base


def _geoparquet_items(location: str) -> Iterator[tuple[dict[str, Any], str, str] | tuple[None, str, str]]:
    """Items of a stac-geoparquet file (spec 1.0: one row per item, the properties as
    top-level columns, ``geometry`` as WKB), read a row group at a time."""
    import pyarrow.parquet as pq
    import shapely

    try:
        parquet = pq.ParquetFile(_local_path(location) if "://" not in location or location.startswith("file://")
                                 else _fsspec_file(location))
    except (OSError, ValueError) as err:
        yield None, location, f"cannot read stac-geoparquet: {err}"
        return
    top = {"type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links", "assets", "collection"}
    base = _base_of(location)
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            if not row.get("id"):
                yield None, location, "stac-geoparquet row without an id"
                continue
            geometry = row.get("geometry")
            item = {
                "type": "Feature", "id": row["id"], "collection": row.get("collection"),
                "geometry": shapely.geometry.mapping(shapely.from_wkb(geometry)) if geometry else None,
                "links": row.get("links") or [], "assets": _drop_nulls(row.get("assets") or {}),
                "properties": {k: _json_value(v) for k, v in row.items() if k not in top and v is not None},
            }
            yield item, f"{location}#{row['id']}", _self_base(item) or base


def _fsspec_file(location: str) -> Any:
    import fsspec

    return fsspec.open(location, "rb").open()


def _drop_nulls(value: Any) -> Any:
    """Arrow gives every asset struct every field of the column; a missing one is null."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _json_value(value: Any) -> Any:
    import datetime as dt

    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return _drop_nulls(value)


def _self_base(item: dict[str, Any]) -> str | None:
    for link in item.get("links") or []:
        href = link.get("href") or ""
        if link.get("rel") == "self" and ("://" in href or href.startswith("/")):
            return _base_of(href)
    return None


def _local_path(href: str) -> str:
    return unquote(urlparse(href).path) if href.startswith("file://") else href


def resolve_href(href: str, base: str) -> str:
    """An asset's href as a path or URL scan and GDAL open: ``file://`` -> a path, relative
    -> joined to ``base`` (the item's folder or URL), URLs kept."""
    if href.startswith("file://"):
        return _local_path(href)
    if "://" in href or href.startswith("/"):
        return href
    if "://" in base:
        return urljoin(base, href)
    return os.path.normpath(os.path.join(base, href))


# ------------------------------------------------------------------ signing


@lru_cache(maxsize=8)
def load_signer(spec: str | None) -> Callable[[str], str] | None:
    """The href signing function ``module:function`` or ``path/to/file.py:function``
    (Planetary Computer: ``planetary_computer:sign``); None when no signer is set."""
    return load_callable(spec, "href_signer") if spec else None


def signed(href: str, signer: str | None) -> str:
    """``href`` through the signing function named by ``signer`` (unchanged without one)."""
    fn = load_signer(signer)
    return fn(href) if fn is not None else href


# ------------------------------------------------------------------ item -> product


def item_product(item: dict[str, Any], location: str, base: str, *, landcover: bool = False,
                 label_taxonomy: str = "worldcover") -> ItemProduct:
    """The product an item describes; raises :class:`ItemError` naming what is missing.

    ``landcover``: the item came in through ``--landcover`` (any class raster)."""
    props = item.get("properties") or {}
    sensor = _sensor(item, props, landcover)
    meta = {**_metadata(item, props, sensor, label_taxonomy), "sidecar": location}
    product = ItemProduct(location, str(item["id"]), sensor, meta, footprint=item.get("geometry"))
    assets = _band_assets(item, sensor, meta)
    if not assets:
        keys = ", ".join(sorted(item.get("assets") or {})) or "none"
        raise ItemError(f"no band asset ingest can read (assets: {keys})")
    if sensor == "s1":  # the bands' own unit wins over the collection's default (linear RTC)
        units = {str(b.get("unit") or "").lower() for _, _, asset, _ in assets for b in _bands(asset)}
        if units and all(u in ("db", "decibel", "decibels") for u in units):
            meta["s1_unit"] = "db"
        elif units and all(u in ("linear", "1") for u in units):
            meta["s1_unit"] = "linear"
    for band, key, asset, raw_href in assets:
        href = resolve_href(raw_href, base)
        record = _record(item, asset, href, sensor, band)
        if "://" not in href:  # a local file: checked now (a stat, not an open)
            if not os.path.isfile(href):
                raise ItemError(f"asset {key!r}: file not found: {href}")
            if record is not None and record.size is None:
                record = dataclasses.replace(record, size=os.path.getsize(href))
        product.files.append((band, record, href))
    return product


def _sensor(item: dict[str, Any], props: dict[str, Any], landcover: bool) -> str:
    collection = str(item.get("collection") or "").lower()
    if landcover or any(collection.startswith(c) for c in LANDCOVER_ASSETS) or "esa_worldcover:product_version" in props:
        return "landcover"
    # "Sentinel-2A", "sentinel-2", "Sentinel 2", "sentinel2", "SENTINEL-1A": one spelling
    said = " ".join(re.sub(r"[\s_-]", "", str(v).lower())
                    for v in (props.get("platform"), props.get("constellation"), collection) if v)
    if "sentinel2" in said or S2_PRODUCT_RE.match(str(item["id"])) or any(k.startswith("s2:") for k in props):
        return "s2"
    if "sentinel1" in said or S1_PRODUCT_RE.match(str(item["id"])) \
            or any(k.startswith(("sar:", "s1:")) for k in props):
        return "s1"
    raise ItemError(f"not a Sentinel-1, Sentinel-2 or land-cover item (collection {collection or 'none'}, "
                    f"platform {props.get('platform') or 'none'}); pass class rasters with --landcover")


def _metadata(item: dict[str, Any], props: dict[str, Any], sensor: str, label_taxonomy: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"sidecar": None}
    when = props.get("datetime") or props.get("start_datetime")
    if when:
        try:
            meta["datetime"] = parse_time(str(when))
        except ValueError as err:
            raise ItemError(f"unreadable datetime {when!r}") from err
    elif sensor != "landcover":
        raise ItemError("no datetime (properties.datetime and start_datetime are null or absent)")
    item_id = str(item["id"])
    collection = str(item.get("collection") or "").lower()
    if props.get("sat:orbit_state"):
        meta["orbit_direction"] = str(props["sat:orbit_state"]).lower()
    if props.get("sat:relative_orbit") is not None:
        meta["relative_orbit"] = int(props["sat:relative_orbit"])
    if sensor == "s2":
        uri = str(props.get("s2:product_uri") or "").removesuffix(".SAFE")
        meta["product_id"] = uri or item_id
        baseline = props.get("s2:processing_baseline") or props.get("processing:version")  # CDSE: the latter
        if baseline and re.fullmatch(r"\d{2}\.\d{2}", str(baseline)):
            meta["baseline"] = str(baseline)
        if props.get("eo:cloud_cover") is not None:
            meta["cloud_percentage"] = float(props["eo:cloud_cover"])
        if "earthsearch:boa_offset_applied" in props:
            meta["offset_applied"] = bool(props["earthsearch:boa_offset_applied"])
        l1c = (props.get("s2:product_type") == "S2MSI1C" or "l1c" in collection
               or re.search(r"_(MSI)?L1C(_|$)", item_id) is not None)
        meta["level"] = "L1C" if l1c else "L2A"
        if not meta.get("offset_applied") and (offset := offset_from_raster_bands(item)) is not None:
            meta["dn_offset"], meta["offset_rule"] = offset, "STAC raster:bands offset / scale"
        tile = props.get("s2:mgrs_tile") or (
            f"{props['mgrs:utm_zone']}{props.get('mgrs:latitude_band', '')}{props.get('mgrs:grid_square', '')}"
            if props.get("mgrs:utm_zone") else None) or str(props.get("grid:code") or "").removeprefix("MGRS-") or None
        if tile:
            meta["mgrs_tile"] = str(tile)
    elif sensor == "s1":
        # Planetary Computer's ids end in _rtc (RTC) and drop the product's unique id
        meta["product_id"] = re.sub(r"_(rtc|cog)$", "", item_id, flags=re.IGNORECASE)
        if any(collection.startswith(c) for c in LINEAR_S1_COLLECTIONS):
            meta["s1_unit"] = "linear"
    else:
        taxonomy, _ = next((v for c, v in LANDCOVER_ASSETS.items() if collection.startswith(c)), (None, None))
        meta["taxonomy"] = taxonomy or ("dynamic_world" if "dynamic" in collection else label_taxonomy)
        meta["product_id"] = item_id
    return meta


def _band_assets(item: dict[str, Any], sensor: str,
                 meta: dict[str, Any]) -> list[tuple[str | None, str, dict[str, Any], str]]:
    """(band or None for a multiband asset, asset key, asset, href) of the assets to read.

    Of several assets with one band, the one at the band's native pixel size (CDSE's
    ``B01_60m`` over ``B01_20m``), else the finest, and a COG over a JPEG 2000 copy (Earth
    Search's ``blue`` over ``blue-jp2``)."""
    from eoforge.ingest.scan import S2_GSD

    chosen: dict[str, tuple[tuple[float, int], str, dict[str, Any]]] = {}
    multiband: list[tuple[str, dict[str, Any]]] = []
    assets = item.get("assets") or {}
    for key, asset in sorted(assets.items()):
        if not isinstance(asset, dict) or not asset.get("href") or not _is_data(key, asset):
            continue
        # "blue-jp2" (Earth Search), "B02_10m" (CDSE): the band is the key without the suffix
        name = re.sub(r"(-jp2|_\d{2}m)$", "", key.lower())
        jp2 = 1 if key.lower().endswith("-jp2") or "jp2" in str(asset.get("type", "")) else 0
        if sensor == "landcover":
            _, wanted = next((v for c, v in LANDCOVER_ASSETS.items()
                              if str(item.get("collection") or "").lower().startswith(c)), (None, None))
            if wanted is None or name == wanted or len(assets) == 1:
                chosen.setdefault("class", ((0.0, jp2), key, asset))
            continue
        band = canonical_band(name)
        names = [canonical_band(str(b.get("name") or b.get("eo:common_name") or b.get("common_name") or ""))
                 for b in _bands(asset)]
        if band is None and len(names) > 1 and None not in names:
            multiband.append((key, asset))
            continue
        if band is None and len(names) == 1:
            band = names[0]
        if band is None or (sensor == "s1") != (band in ("VV", "VH")):
            continue
        res, native = _pixel_size(key, asset), S2_GSD.get(band)
        rank = (0.0 if res is None or native is None or math.isclose(res, native) else 1.0 + res, jp2)
        if band not in chosen or rank < chosen[band][0]:
            chosen[band] = (rank, key, asset)
    out: list[tuple[str | None, str, dict[str, Any], str]] = [
        (band, key, asset, asset["href"]) for band, (_, key, asset) in sorted(chosen.items())]
    out += [(None, key, asset, asset["href"]) for key, asset in multiband]
    return out


def _pixel_size(key: str, asset: dict[str, Any]) -> float | None:
    """An asset's pixel size in metres as the item states it: ``gsd``, the band's
    ``spatial_resolution``, ``proj:transform``, or a ``_20m`` key suffix; None if it does not."""
    bands = _bands(asset)
    for value in (asset.get("gsd"), *(b.get("gsd") for b in bands), *(b.get("spatial_resolution") for b in bands)):
        if value:
            return float(value)
    transform = asset.get("proj:transform")
    if transform and abs(float(transform[0])) >= 1.0:  # metres (a pixel size in degrees is far below 1)
        return abs(float(transform[0]))
    m = re.search(r"_(\d{2})m$", key.lower())
    return float(m.group(1)) if m else None


def _is_data(key: str, asset: dict[str, Any]) -> bool:
    roles = {str(r).lower() for r in asset.get("roles") or []}
    media = str(asset.get("type") or "").lower()
    if roles & SKIP_ROLES and "data" not in roles:
        return False
    if media and not media.startswith(IMAGE_TYPES):
        return False
    return not is_auxiliary(key.removesuffix("-jp2")) and key.lower() not in ("tilejson", "rendered_preview")


def _bands(asset: dict[str, Any]) -> list[dict[str, Any]]:
    """The asset's band objects: STAC 1.1 ``bands``, else ``eo:bands`` merged with ``raster:bands``."""
    if asset.get("bands"):
        return list(asset["bands"])
    eo, raster = asset.get("eo:bands") or [], asset.get("raster:bands") or []
    return [{**(raster[i] if i < len(raster) else {}), **(eo[i] if i < len(eo) else {})}
            for i in range(max(len(eo), len(raster)))]


def _record(item: dict[str, Any], asset: dict[str, Any], href: str, sensor: str,
            band: str | None) -> FileHeader | None:
    """The file's header from the item, or None when the item does not give its CRS,
    transform and shape."""
    props = item.get("properties") or {}

    def proj(name: str) -> Any:
        return asset.get(name, props.get(name))

    crs = proj("proj:code") or (f"EPSG:{proj('proj:epsg')}" if proj("proj:epsg") else None) or proj("proj:wkt2")
    shape = proj("proj:shape")
    transform = proj("proj:transform")
    bbox = proj("proj:bbox")
    if not crs or not shape or not (transform or bbox):
        return None
    height, width = int(shape[0]), int(shape[1])
    if transform:
        a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    else:
        x0, y0, x1, y1 = (float(v) for v in bbox[:4])
        a, b, c, d, e, f = (x1 - x0) / width, 0.0, x0, 0.0, -(y1 - y0) / height, y1
    if b or d:
        return None  # a rotated grid: let GDAL read it
    bands = _bands(asset) or [{}]
    names = [canonical_band(str(x.get("name") or x.get("common_name") or "")) or "" for x in bands]
    nodata = bands[0].get("nodata", asset.get("nodata", DEFAULT_NODATA[sensor]))
    if isinstance(nodata, str):
        nodata = float(nodata)  # "nan", "inf", "-inf" (raster extension)
    xs, ys = (c, c + a * width), (f, f + e * height)
    return FileHeader(
        path=href, crs_wkt=crs_wkt(str(crs)), epsg=_epsg(str(crs)), transform=(a, b, c, d, e, f),
        width=width, height=height, count=len(bands),
        dtypes=tuple(str(x.get("data_type") or DEFAULT_DTYPE[sensor]) for x in bands),
        nodata=None if nodata is None else float(nodata),
        descriptions=tuple(names) if band is None else ("",) * len(bands),
        res=(abs(a), abs(e)), bounds=(min(xs), min(ys), max(xs), max(ys)), size=asset.get("file:size"),
    )


@lru_cache(maxsize=256)
def _epsg(crs: str) -> int | None:
    m = re.fullmatch(r"EPSG:(\d+)", crs.strip(), flags=re.I)
    if m:
        return int(m.group(1))
    from pyproj import CRS

    return CRS.from_user_input(crs).to_epsg()


def offset_from_raster_bands(item: dict[str, Any]) -> int | None:
    """The S2 DN offset the item's reflectance assets state in ``raster:bands`` (reflectance =
    DN x scale + offset), as a positive DN count: ``offset -0.1, scale 0.0001`` -> 1000,
    ``offset 0`` -> 0; None when no reflectance band states a scale."""
    for key, asset in sorted((item.get("assets") or {}).items()):
        if not isinstance(asset, dict) or canonical_band(key.lower().removesuffix("-jp2")) in (None, "SCL"):
            continue
        for b in _bands(asset):
            scale, offset = b.get("scale"), b.get("offset")
            if scale and offset is not None and not math.isclose(float(scale), 1.0):
                return int(round(-float(offset) / float(scale)))
    return None


@lru_cache(maxsize=256)
def crs_wkt(crs: str) -> str:
    """WKT of a ``proj:code`` / ``EPSG:n`` / WKT2 string (cached: items of an archive share a few CRSs)."""
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()
