"""STAC items of the demo products (``OUT/items.json``), as catalogs publish such products.

One Item per distinct product (a mirror copy has its original's id, so a search returns it
once), in an ItemCollection with hrefs relative to the file. Conventions follow the
publishers eoforge reads: SAFE products as Planetary Computer's ``sentinel-2-l2a`` /
``-l1c`` items (``B02``…, ``SCL``; ``proj:code`` on the item, ``proj:shape`` /
``proj:transform`` per asset), the Earth Search COG folder as its own item, S1 exports as
``vv`` / ``vh`` assets (or one asset whose bands are named VV and VH) with their unit,
and ESA WorldCover tiles as ``esa-worldcover`` items (``map``).

As stactools does, the grid and ``raster:bands`` fields are read from the written files
and the times, baselines and cloud cover from the products' own metadata (the SAFE's
``MTD_MSIL*.xml``, the S1 files' tags), so ingesting the items gives the samples an ingest
of the folders gives.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import rasterio
import shapely

from eoforge.ingest.names import canonical_band
from eoforge.ingest.scan import footprint_wkb

STAC_VERSION = "1.0.0"
EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF = "image/tiff; application=geotiff"


def demo_item_collection(root: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """The ItemCollection (GeoJSON FeatureCollection) of the products in ``truth``, hrefs
    relative to ``root`` (where ``items.json`` is written)."""
    items = []
    for product in truth["products"]:
        if product.get("role") == "duplicate_copy":
            continue
        if product["sensor"] == "S2":
            items.append(_earth_search_item(root, product) if product.get("packaging") == "earth_search"
                         else _safe_item(root, product))
        elif product["sensor"] == "S1":
            items.append(_s1_item(root, product))
        else:
            items.append(_worldcover_item(root, product))
    return {"type": "FeatureCollection", "features": sorted(items, key=lambda i: i["id"])}


def write_demo_items(root: Path, truth: dict[str, Any]) -> Path:
    path = root / "items.json"
    path.write_text(json.dumps(demo_item_collection(root, truth), indent=1) + "\n")
    return path


# ------------------------------------------------------------------ per product kind


def _asset(root: Path, rel: str, *, bands: list[dict[str, Any]] | None = None, cog: bool = False,
           roles: tuple[str, ...] = ("data",)) -> tuple[dict[str, Any], Any]:
    """An asset for the file ``root/rel``: href, grid and ``raster:bands`` read from it."""
    with rasterio.open(root / rel) as src:
        nodata = src.nodata
        raster_bands = []
        for i in range(src.count):
            rb: dict[str, Any] = {"data_type": src.dtypes[i]}
            if nodata is not None:
                rb["nodata"] = "nan" if math.isnan(nodata) else nodata
            raster_bands.append({**rb, **((bands or [{}] * src.count)[i])})
        asset = {"href": f"./{rel}", "type": COG if cog else GEOTIFF, "roles": list(roles),
                 "proj:shape": [src.height, src.width], "proj:transform": list(src.transform)[:6],
                 "raster:bands": raster_bands}
        return asset, (src.crs.to_wkt(), tuple(src.bounds))


def _geometry(crs_wkt: str, bounds: tuple[float, float, float, float]) -> dict[str, Any]:
    """The item geometry ingest computes from a raster's box (exact floats: the same footprint)."""
    return shapely.geometry.mapping(shapely.from_wkb(footprint_wkb(crs_wkt, bounds)))


def _feature(item_id: str, collection: str, geometry: dict[str, Any], properties: dict[str, Any],
             assets: dict[str, Any], extensions: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [EXTENSIONS[e] for e in extensions],
            "id": item_id, "collection": collection, "geometry": geometry,
            "bbox": list(shapely.geometry.shape(geometry).bounds), "properties": properties,
            "links": [], "assets": assets}


def _safe_item(root: Path, product: dict[str, Any]) -> dict[str, Any]:
    """A SAFE product as Planetary Computer publishes its L2A / L1C products."""
    mtd = next((root / product["path"] / f"MTD_MSI{lvl}.xml" for lvl in ("L2A", "L1C")
                if (root / product["path"] / f"MTD_MSI{lvl}.xml").is_file()))
    xml = mtd.read_text()
    cloud = re.search(r"<Cloud_Coverage_Assessment>\s*([^<]+?)\s*<", xml)
    assets, footprint = {}, None
    for rel in product["files"]:
        token = re.search(r"_(B\d{2}|B8A|SCL)(?:_\d{2}m)?\.\w+$", rel)
        if token is None:
            continue
        asset, grid = _asset(root, rel)
        assets[token.group(1)] = asset
        if canonical_band(token.group(1)) == "B2":
            footprint = grid
    assert footprint is not None, f"{product['path']}: no B02"
    level = product["level"]
    props = {
        "datetime": product["datetime"], "platform": f"Sentinel-2{product['spacecraft'][-1]}",
        "constellation": "Sentinel 2", "instruments": ["msi"],
        "eo:cloud_cover": float(cloud.group(1)) if cloud else None,
        "s2:processing_baseline": product["processing_baseline"],
        "s2:product_type": "S2MSI2A" if level == "L2A" else "S2MSI1C",
        "s2:mgrs_tile": product["mgrs_tile"], "sat:relative_orbit": product["relative_orbit"],
        "sat:orbit_state": product["orbit_direction"].lower(), "proj:code": f"EPSG:{product['epsg']}",
    }
    return _feature(product["product_id"], f"sentinel-2-{level.lower()}", _geometry(*footprint),
                    {k: v for k, v in props.items() if v is not None}, assets, ("proj", "raster", "eo", "sat"))


def _earth_search_item(root: Path, product: dict[str, Any]) -> dict[str, Any]:
    """The Earth Search item written beside the COGs, its hrefs made relative to ``root``."""
    folder = root / product["path"]
    item = json.loads((folder / f"{product['earth_search_id']}.json").read_text())
    for asset in item["assets"].values():
        asset["href"] = f"./{product['path']}/{asset['href'].removeprefix('./')}"
    with rasterio.open(folder / "B02.tif") as src:
        item["geometry"] = _geometry(src.crs.to_wkt(), tuple(src.bounds))
    item["bbox"] = list(shapely.geometry.shape(item["geometry"]).bounds)
    return item


def _s1_item(root: Path, product: dict[str, Any]) -> dict[str, Any]:
    """An S1 export: ``vv`` / ``vh`` assets, or one ``data`` asset with bands VV and VH."""
    unit = "dB" if product["units"] == "dB" else None
    extra = {"unit": unit} if unit else {}
    assets, footprint = {}, None
    for rel in product["files"]:
        pol = re.search(r"(?:_|/)(VV|VH|vv|vh)\.tif$", rel)
        if pol:
            asset, grid = _asset(root, rel, bands=[{"name": pol.group(1).upper(), **extra}])
            assets[pol.group(1).lower()] = asset
        else:
            asset, grid = _asset(root, rel, bands=[{"name": "VV", **extra}, {"name": "VH", **extra}])
            assets["data"] = asset
        footprint = footprint or grid
    assert footprint is not None
    props = {
        "datetime": product["datetime"], "platform": f"SENTINEL-1{product['product_id'][2]}",
        "constellation": "Sentinel-1", "sar:instrument_mode": "IW", "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD", "sat:orbit_state": product["orbit_direction"].lower(),
        "sat:absolute_orbit": product["absolute_orbit"], "sat:relative_orbit": product["relative_orbit"],
        "proj:code": f"EPSG:{product['epsg']}",
    }
    # linear γ⁰ exports as Planetary Computer's RTC collection; dB exports say their unit per band
    collection = "sentinel-1-rtc" if unit is None else "sentinel-1-grd-db"
    return _feature(product["product_id"], collection, _geometry(*footprint), props, assets,
                    ("proj", "raster", "sar", "sat"))


def _worldcover_item(root: Path, product: dict[str, Any]) -> dict[str, Any]:
    asset, grid = _asset(root, product["path"], cog=True)
    year = product["datetime"][:4]
    props = {"datetime": None, "start_datetime": f"{year}-01-01T00:00:00Z", "end_datetime": f"{year}-12-31T23:59:59Z",
             "esa_worldcover:product_version": "2.0.0", "proj:code": "EPSG:4326"}
    return _feature(product["product_id"], "esa-worldcover", _geometry(*grid), props, {"map": asset},
                    ("proj", "raster"))
