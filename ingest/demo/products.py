"""Writing the demo world as provider-style raw products.

Each writer takes one catalog entry (:mod:`eoforge.ingest.demo.catalog`), renders its
pixels from the :class:`~eoforge.ingest.demo.landscape.Landscape` on the product's own grid
and writes files laid out as the provider delivers them:

* Sentinel-2 L2A/L1C: SAFE folders with per-band GeoTIFFs (Planetary Computer style),
  ``MTD_MSIL2A.xml``/``MTD_MSIL1C.xml`` and ``MTD_TL.xml``; one Earth Search COG folder
  with its STAC item. Grids are crops of the real MGRS tile grid (same origin, 10/20/60 m).
* Sentinel-1 GRD, analysis-ready, EPSG:4326: GEE multiband dB, per-band dB, RTC linear.
* ESA WorldCover 2021 v200: full-size sparse 3°×3° tiles.

Every file is a deterministic function of (seed, extent): random numbers come from
generators keyed on the product id, and no creation time is written anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window

from eoforge.ingest.demo.catalog import (
    MgrsTile,
    S1Product,
    S2Product,
    default_catalog,
)
from eoforge.ingest.demo.landscape import (
    SPECTRA,
    WATER,
    DemoArea,
    Ground,
    Landscape,
    speckle,
    stable_key,
)
from eoforge.shards.schema import S2_BAND_NAMES, S2_BANDS, WORLDCOVER, s2_file_label

#: GDAL settings while writing: no side-car .aux.xml files.
_GDAL_ENV = {"GDAL_PAM_ENABLED": "NO"}
#: Sentinel-1 geographic pixel size in degrees (~7.8 m E-W, 11 m N-S at 45.6°N).
S1_PIXEL_DEG = 1e-4
#: WorldCover pixel size in degrees and tile size in pixels.
WC_PIXEL_DEG = 1.0 / 12000.0
WC_TILE_PX = 36000

# L1C top-of-atmosphere additions (path radiance, mostly blue) per band.
_PATH_RADIANCE = np.array(
    [0.075, 0.050, 0.030, 0.016, 0.012, 0.009, 0.008, 0.007, 0.007, 0.004, 0.0, 0.002, 0.001],
    dtype=np.float32,
)
_B = {n: i for i, n in enumerate(S2_BAND_NAMES)}


# ------------------------------------------------------------------ grids


@dataclass(frozen=True)
class RasterGrid:
    """A product's north-up pixel grid (not the global tile grid of :mod:`eoforge.ingest.grid`).

    Attributes:
        crs: ``"EPSG:xxxx"``.
        transform: affine pixel -> map transform (pixel corners).
        width, height: size in pixels.
    """

    crs: str
    transform: Affine
    width: int
    height: int

    def coarsen(self, factor: int) -> RasterGrid:
        """The grid with ``factor`` × larger pixels over the same area (size must divide)."""
        assert self.width % factor == 0 and self.height % factor == 0
        return RasterGrid(self.crs, self.transform @ Affine.scale(factor), self.width // factor, self.height // factor)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of pixel centres, float64 ``[H, W]`` each."""
        t = self.transform
        xs = t.c + t.a * (np.arange(self.width) + 0.5)
        ys = t.f + t.e * (np.arange(self.height) + 0.5)
        return np.meshgrid(xs, ys)

    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 lon/lat (degrees) of pixel centres, float64 ``[H, W]`` each."""
        x, y = self.centres()
        if self.crs == "EPSG:4326":
            return x, y
        tr = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        return tr.transform(x, y)

    def footprint_lonlat(self) -> list[tuple[float, float]]:
        """Corner ring (lon, lat) of the grid's outer edge, closed."""
        t = self.transform
        corners = [(0, 0), (self.width, 0), (self.width, self.height), (0, self.height), (0, 0)]
        pts = [t @ c for c in corners]
        if self.crs == "EPSG:4326":
            return [(float(x), float(y)) for x, y in pts]
        tr = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        return [tuple(map(float, tr.transform(x, y))) for x, y in pts]  # type: ignore[misc]


def s2_grid(tile: MgrsTile, area: DemoArea, lon_lo: float, lon_hi: float) -> RasterGrid:
    """10 m grid over ``[lon_lo, lon_hi]`` × the area's latitudes, on ``tile``'s grid.

    The box is snapped outwards to 60 m steps from the tile origin, so the 10, 20 and 60 m
    grids share their origin as in a real tile.
    """
    _, lat_min, _, lat_max = area.bounds
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{tile.epsg}", always_xy=True)
    t = np.linspace(0.0, 1.0, 21)
    lons = np.concatenate([lon_lo + (lon_hi - lon_lo) * t, np.full(21, lon_hi), lon_lo + (lon_hi - lon_lo) * t, np.full(21, lon_lo)])
    lats = np.concatenate([np.full(21, lat_min), lat_min + (lat_max - lat_min) * t, np.full(21, lat_max), lat_min + (lat_max - lat_min) * t])
    e, n = tr.transform(lons, lats)
    x0 = tile.ulx + math.floor((e.min() - tile.ulx) / 60.0) * 60.0
    x1 = tile.ulx + math.ceil((e.max() - tile.ulx) / 60.0) * 60.0
    y1 = tile.uly - math.floor((tile.uly - n.max()) / 60.0) * 60.0
    y0 = tile.uly - math.ceil((tile.uly - n.min()) / 60.0) * 60.0
    return RasterGrid(f"EPSG:{tile.epsg}", Affine(10.0, 0.0, x0, 0.0, -10.0, y1), round((x1 - x0) / 10), round((y1 - y0) / 10))


def s1_grid(area: DemoArea, margin_deg: float = 0.002) -> RasterGrid:
    """EPSG:4326 grid of :data:`S1_PIXEL_DEG` over the area plus ``margin_deg``."""
    lon_min, lat_min, lon_max, lat_max = area.bounds
    k = 1.0 / S1_PIXEL_DEG
    x0 = math.floor((lon_min - margin_deg) * k) / k
    x1 = math.ceil((lon_max + margin_deg) * k) / k
    y0 = math.floor((lat_min - margin_deg) * k) / k
    y1 = math.ceil((lat_max + margin_deg) * k) / k
    return RasterGrid("EPSG:4326", Affine(S1_PIXEL_DEG, 0.0, x0, 0.0, -S1_PIXEL_DEG, y1),
                round((x1 - x0) * k), round((y1 - y0) * k))


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f`` × ``f`` pixel blocks of the last two axes (float32)."""
    if f == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-1, -3), dtype=np.float32)


def wedge_mask(grid: RasterGrid, full: RasterGrid, corner: str) -> np.ndarray:
    """True inside the swath-edge nodata triangle at ``corner`` (``"ne"`` or ``"sw"``).

    The triangle is defined on the product's full 10 m extent ``full`` in map coordinates
    and evaluated at ``grid``'s pixel centres, so every resolution agrees.
    """
    t = full.transform
    x0, y1 = t.c, t.f
    x1, y0 = x0 + full.width * t.a, y1 + full.height * t.e
    wm, hm = x1 - x0, y1 - y0
    if corner == "ne":
        c, p, q = (x1, y1), (x0 + 0.55 * wm, y1), (x1, y1 - 0.7 * hm)
    else:
        c, p, q = (x0, y0), (x0 + 0.45 * wm, y0), (x0, y0 + 0.6 * hm)
    x, y = grid.centres()

    def side(px: np.ndarray | float, py: np.ndarray | float) -> np.ndarray:
        return np.asarray((q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0]))

    return np.sign(side(x, y)) == np.sign(side(*c))


def _write_tif(path: Path, arrays: np.ndarray, grid: RasterGrid, *, nodata: float | None, tags: dict[str, str] | None = None,
               descriptions: tuple[str, ...] | None = None, blocksize: int = 512, driver: str = "GTiff",
               extra: dict[str, Any] | None = None) -> None:
    """Write ``arrays`` ``[C, H, W]`` (or ``[H, W]``) as a tiled DEFLATE GeoTIFF."""
    arr = arrays if arrays.ndim == 3 else arrays[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    predictor = 3 if arr.dtype.kind == "f" else 2
    profile: dict[str, Any] = dict(
        driver=driver, width=grid.width, height=grid.height, count=arr.shape[0], dtype=arr.dtype.name,
        crs=grid.crs, transform=grid.transform, nodata=nodata, compress="deflate", predictor=predictor,
    )
    if driver == "COG":
        profile.update(blocksize=blocksize, overview_resampling="nearest")
    else:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    profile.update(extra or {})
    with rasterio.Env(**_GDAL_ENV), rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if tags:
            dst.update_tags(**tags)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)


def _rng(seed: int, *key: object) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, stable_key(*key)])


# ------------------------------------------------------------------ Sentinel-2


@dataclass
class S2Render:
    """Rendered pixels of one S2 product.

    Attributes:
        dn: band name -> uint16 DN at native resolution ``[H_r, W_r]`` (0 = nodata).
        scl: uint8 scene classification at 20 m (L2A only).
        cloud_fraction: share of SCL {3, 8, 9, 10} among valid 20 m pixels.
        valid_fraction: share of valid 20 m pixels.
    """

    dn: dict[str, np.ndarray]
    scl: np.ndarray | None
    cloud_fraction: float
    valid_fraction: float


def render_s2(land: Landscape, prod: S2Product, grid: RasterGrid, g: Ground, seed: int) -> S2Render:
    """Render one S2 product on its 10 m ``grid`` from the sampled ground ``g``."""
    surf = land.reflectance(g, prod.acq.when)  # [13, H, W] cloud-free BOA reflectance
    # Clouds are smooth at 10 m: evaluate at 20 m pixel centres and repeat.
    sky20 = land.sky(block_mean(g.x, 2), block_mean(g.y, 2), prod.acq.sky, prod.acq.key)
    c20, ci20 = sky20["cloud"], sky20["cirrus"]
    sh20 = sky20["shadow"] * (1.0 - c20)  # a cloud hides its neighbour's shadow

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)

    cloud, cirrus, shadow = up(c20), up(ci20), up(sh20)
    rng = _rng(seed, "s2", prod.product_id)
    dn: dict[str, np.ndarray] = {}
    for b in S2_BANDS:  # band by band: keeps temporaries 2-D
        if prod.level == "L2A" and not b.in_l2a:
            continue
        i = _B[b.name]
        obs = surf[i] * (1.0 - 0.6 * shadow)
        obs = obs * (1.0 - cirrus) + cirrus * SPECTRA["cirrus"][i]
        obs = obs * (1.0 - cloud) + cloud * SPECTRA["cloud"][i]
        if prod.level == "L1C":
            obs = 0.9 * obs + _PATH_RADIANCE[i]
            if b.name == "B10":
                obs = 0.002 + 0.30 * cloud + 0.25 * cirrus  # water vapour hides the ground
        f = b.gsd_m // 10
        obs = block_mean(obs, f)
        obs += rng.standard_normal(obs.shape, dtype=np.float32) * (0.001 + 0.006 * obs) / f
        d = np.clip(np.rint(obs * 10000.0) + prod.dn_offset, 1, 65534).astype(np.uint16)
        if prod.wedge:
            d[wedge_mask(grid.coarsen(f), grid, prod.wedge)] = 0
        dn[b.name] = d

    g20 = grid.coarsen(2)
    nod20 = wedge_mask(g20, grid, prod.wedge) if prod.wedge else np.zeros((g20.height, g20.width), bool)
    scl = None
    if prod.level == "L2A":
        s20 = block_mean(surf[[_B["B4"], _B["B8A"]]], 2)
        ndvi = (s20[1] - s20[0]) / np.maximum(s20[1] + s20[0], 1e-6)
        water = block_mean((g.cls == WATER).astype(np.float32), 2) > 0.5
        scl = np.where(water, 6, np.where(ndvi > 0.4, 4, 5)).astype(np.uint8)
        scl[sh20 > 0.25] = 3
        scl[(c20 > 0.12) & (c20 <= 0.25)] = 7  # cloud edges: unclassified
        scl[ci20 > 0.08] = 10
        scl[c20 > 0.25] = 8
        scl[c20 > 0.6] = 9
        scl[nod20] = 0
    valid = ~nod20
    n_valid = int(valid.sum())
    if scl is not None and n_valid:
        cf = float(np.isin(scl[valid], (3, 8, 9, 10)).sum()) / n_valid
    else:
        cf = float(c20[valid].mean()) if n_valid else 0.0
    return S2Render(dn, scl, round(cf, 4), round(n_valid / valid.size, 4))


def _granule_name(prod: S2Product) -> str:
    ds = prod.acq.when - timedelta(seconds=4)  # datastrip starts a few seconds earlier
    return f"{prod.level}_T{prod.tile.name}_A{prod.acq.absolute_orbit:06d}_{ds:%Y%m%dT%H%M%S}"


def s2_band_paths(prod: S2Product) -> dict[str, str]:
    """Band name -> path inside the SAFE (``GRANULE/…/IMG_DATA/R10m/T32TQR_…_B02_10m.tif``)."""
    base = f"GRANULE/{_granule_name(prod)}/IMG_DATA"
    stem = f"T{prod.tile.name}_{prod.acq.key}"
    out: dict[str, str] = {}
    for b in S2_BANDS:
        if prod.level == "L2A" and not b.in_l2a:
            continue
        lab = s2_file_label(b.name)
        out[b.name] = f"{base}/R{b.gsd_m}m/{stem}_{lab}_{b.gsd_m}m.tif" if prod.level == "L2A" else f"{base}/{stem}_{lab}.tif"
    if prod.level == "L2A":
        out["SCL"] = f"{base}/R20m/{stem}_SCL_20m.tif"
    return out


def _fmt_time(t: datetime, frac: str = ".024Z") -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac


def s2_product_xml(prod: S2Product, grid: RasterGrid, render: S2Render) -> str:
    """``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` text: the real schema's tags, trimmed to what a
    reader needs (identity, time, baseline, orbit, quantification, offsets, footprint, QI)."""
    l2a = prod.level == "L2A"
    acq = prod.acq
    gen = prod.generated or acq.when
    sat_name = "Sentinel-2A" if acq.sat == "S2A" else "Sentinel-2B"
    ns = "Level-2A_User_Product" if l2a else "Level-1C_User_Product"
    psd = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" if l2a else \
        "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
    files = "\n".join(f"                        <IMAGE_FILE>{p[:-4]}</IMAGE_FILE>" for p in s2_band_paths(prod).values())
    offs = ""
    if prod.dn_offset:
        tag, lst = ("BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST") if l2a else ("RADIO_ADD_OFFSET", "Radiometric_Offset_List")
        rows = "\n".join(f'                <{tag} band_id="{i}">-{prod.dn_offset}</{tag}>' for i in range(len(S2_BANDS)))
        offs = f"            <{lst}>\n{rows}\n            </{lst}>\n"
    quant = ('                <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
             '                <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
             '                <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>'
             if l2a else '                <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>')
    quant_list = "QUANTIFICATION_VALUES_LIST"
    spectral = "\n".join(
        f'                <Spectral_Information bandId="{i}" physicalBand="{b.name}">\n'
        f"                    <RESOLUTION>{b.gsd_m}</RESOLUTION>\n"
        f'                    <Wavelength><CENTRAL unit="nm">{b.wavelength_nm}</CENTRAL></Wavelength>\n'
        f"                </Spectral_Information>"
        for i, b in enumerate(S2_BANDS)
    )
    ring = grid.footprint_lonlat()
    pos = " ".join(f"{lat:.9f} {lon:.9f}" for lon, lat in ring)
    base = prod.baseline
    dt_id = f"G{acq.sat}_{acq.key}_{acq.absolute_orbit:06d}_N{base}"
    qi = (f"        <Cloud_Coverage_Assessment>{100 * render.cloud_fraction:.6f}</Cloud_Coverage_Assessment>\n"
          f"        <Image_Content_QI>\n"
          f"            <NODATA_PIXEL_PERCENTAGE>{100 * (1 - render.valid_fraction):.6f}</NODATA_PIXEL_PERCENTAGE>\n"
          f"        </Image_Content_QI>\n") if l2a else \
        f"        <Cloud_Coverage_Assessment>{100 * render.cloud_fraction:.6f}</Cloud_Coverage_Assessment>\n"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{ns} xmlns:n1="{psd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{psd}">
    <n1:General_Info>
        <Product_Info>
            <PRODUCT_START_TIME>{_fmt_time(acq.when)}</PRODUCT_START_TIME>
            <PRODUCT_STOP_TIME>{_fmt_time(acq.when)}</PRODUCT_STOP_TIME>
            <PRODUCT_URI>{prod.product_id}.SAFE</PRODUCT_URI>
            <PROCESSING_LEVEL>Level-{prod.level[1:]}</PROCESSING_LEVEL>
            <PRODUCT_TYPE>S2MSI{prod.level[1:]}</PRODUCT_TYPE>
            <PROCESSING_BASELINE>{base}</PROCESSING_BASELINE>
            <PRODUCT_DOI>https://doi.org/10.5270/S2_-{'znk9xsj' if l2a else '742ikth'}</PRODUCT_DOI>
            <GENERATION_TIME>{gen:%Y-%m-%dT%H:%M:%S}.000000Z</GENERATION_TIME>
            <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
            <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
            <Datatake datatakeIdentifier="{dt_id}">
                <SPACECRAFT_NAME>{sat_name}</SPACECRAFT_NAME>
                <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
                <DATATAKE_SENSING_START>{_fmt_time(acq.when)}</DATATAKE_SENSING_START>
                <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
                <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
            </Datatake>
            <Query_Options completeSingleTile="true">
                <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
            </Query_Options>
            <Product_Organisation>
                <Granule_List>
                    <Granule granuleIdentifier="{acq.sat}_OPER_MSI_{prod.level}_TL_{gen:%Y%m%dT%H%M%S}_A{acq.absolute_orbit:06d}_T{prod.tile.name}_N{base}" imageFormat="GeoTIFF">
{files}
                    </Granule>
                </Granule_List>
            </Product_Organisation>
        </Product_Info>
        <Product_Image_Characteristics>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <{quant_list}>
{quant}
            </{quant_list}>
{offs}            <Spectral_Information_List>
{spectral}
            </Spectral_Information_List>
        </Product_Image_Characteristics>
    </n1:General_Info>
    <n1:Geometric_Info>
        <Product_Footprint>
            <Product_Footprint>
                <Global_Footprint>
                    <EXT_POS_LIST>{pos} </EXT_POS_LIST>
                </Global_Footprint>
            </Product_Footprint>
            <RASTER_CS_TYPE>POINT</RASTER_CS_TYPE>
            <PIXEL_ORIGIN>1</PIXEL_ORIGIN>
        </Product_Footprint>
        <Coordinate_Reference_System>
            <GEO_TABLES version="1">EPSG</GEO_TABLES>
            <HORIZONTAL_CS_TYPE>GEOGRAPHIC</HORIZONTAL_CS_TYPE>
        </Coordinate_Reference_System>
    </n1:Geometric_Info>
    <n1:Quality_Indicators_Info>
{qi}    </n1:Quality_Indicators_Info>
</n1:{ns}>
"""


def s2_tile_xml(prod: S2Product, grid: RasterGrid) -> str:
    """``MTD_TL.xml``: the granule's CRS and geoposition per resolution (``Tile_Geocoding``)."""
    zone = prod.tile.zone
    sizes = "\n".join(
        f'            <Size resolution="{r}">\n                <NROWS>{grid.height * 10 // r}</NROWS>\n'
        f"                <NCOLS>{grid.width * 10 // r}</NCOLS>\n            </Size>" for r in (10, 20, 60))
    geo = "\n".join(
        f'            <Geoposition resolution="{r}">\n                <ULX>{grid.transform.c:.0f}</ULX>\n'
        f"                <ULY>{grid.transform.f:.0f}</ULY>\n                <XDIM>{r}</XDIM>\n"
        f"                <YDIM>-{r}</YDIM>\n            </Geoposition>" for r in (10, 20, 60))
    lvl = prod.level
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{lvl[1:]}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{lvl[1:]}_Tile_Metadata.xsd">
    <n1:General_Info>
        <TILE_ID>{prod.acq.sat}_OPER_MSI_{lvl}_TL_{(prod.generated or prod.acq.when):%Y%m%dT%H%M%S}_A{prod.acq.absolute_orbit:06d}_T{prod.tile.name}_N{prod.baseline}</TILE_ID>
        <SENSING_TIME>{_fmt_time(prod.acq.when - timedelta(seconds=4))}</SENSING_TIME>
    </n1:General_Info>
    <n1:Geometric_Info>
        <Tile_Geocoding metadataLevel="Brief">
            <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}N</HORIZONTAL_CS_NAME>
            <HORIZONTAL_CS_CODE>EPSG:{prod.tile.epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geo}
        </Tile_Geocoding>
    </n1:Geometric_Info>
</n1:Level-{lvl[1:]}_Tile_ID>
"""


def write_s2_safe(root: Path, prod: S2Product, grid: RasterGrid, render: S2Render) -> list[str]:
    """Write a SAFE folder; returns the paths written (relative to ``root``)."""
    safe = root / prod.relpath
    written = []
    for band, rel in s2_band_paths(prod).items():
        arr = render.scl if band == "SCL" else render.dn[band]
        assert arr is not None
        f = 2 if band == "SCL" else next(b.gsd_m for b in S2_BANDS if b.name == band) // 10
        _write_tif(safe / rel, arr, grid.coarsen(f), nodata=0)
        written.append(f"{prod.relpath}/{rel}")
    mtd = "MTD_MSIL2A.xml" if prod.level == "L2A" else "MTD_MSIL1C.xml"
    (safe / mtd).write_text(s2_product_xml(prod, grid, render))
    (safe / "GRANULE" / _granule_name(prod) / "MTD_TL.xml").write_text(s2_tile_xml(prod, grid))
    return written


_ES_ASSETS = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "rededge1", "B6": "rededge2",
    "B7": "rededge3", "B8": "nir", "B8A": "nir08", "B9": "nir09", "B11": "swir16", "B12": "swir22",
}


def write_earth_search(root: Path, prod: S2Product, grid: RasterGrid, render: S2Render) -> list[str]:
    """Write an Earth Search style item: ``B02.tif … B12.tif, SCL.tif`` COGs + STAC item JSON.

    DN are delivered as produced (baseline >= 04.00 keeps +1000), as Earth Search's
    ``sentinel-2-l2a`` does; the STAC ``raster:bands`` offset/scale say how to undo it.
    """
    folder = root / prod.relpath
    written: list[str] = []
    assets: dict[str, Any] = {}
    for band, arr in list(render.dn.items()) + [("SCL", render.scl)]:
        assert arr is not None
        res = 20 if band == "SCL" else next(b.gsd_m for b in S2_BANDS if b.name == band)
        g = grid.coarsen(res // 10)
        fname = f"{'SCL' if band == 'SCL' else s2_file_label(band)}.tif"
        _write_tif(folder / fname, arr, g, nodata=0, driver="COG")
        written.append(f"{prod.relpath}/{fname}")
        rb: dict[str, Any] = {"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16", "spatial_resolution": res}
        if band != "SCL":
            rb.update(scale=0.0001, offset=-prod.dn_offset / 10000.0)
        assets["scl" if band == "SCL" else _ES_ASSETS[band]] = {
            "href": f"./{fname}",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"] if band == "SCL" else ["data", "reflectance"],
            "proj:shape": [g.height, g.width],
            "proj:transform": list(g.transform)[:6],
            "raster:bands": [rb],
            **({} if band == "SCL" else {"eo:bands": [{"name": s2_file_label(band)}]}),
        }
    ring = grid.footprint_lonlat()
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    acq = prod.acq
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": prod.earth_search_id,
        "stac_extensions": [
            "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "geometry": {"type": "Polygon", "coordinates": [[[round(x, 7), round(y, 7)] for x, y in ring]]},
        "bbox": [round(min(lons), 7), round(min(lats), 7), round(max(lons), 7), round(max(lats), 7)],
        "properties": {
            "datetime": acq.when.strftime("%Y-%m-%dT%H:%M:%S") + ".024000Z",
            "platform": "sentinel-2a" if acq.sat == "S2A" else "sentinel-2b",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(100 * render.cloud_fraction, 4),
            "proj:epsg": prod.tile.epsg,
            "mgrs:utm_zone": prod.tile.zone,
            "mgrs:latitude_band": prod.tile.name[2],
            "mgrs:grid_square": prod.tile.name[3:],
            "sat:relative_orbit": 22,
            "sat:absolute_orbit": acq.absolute_orbit,
            "sat:orbit_state": "descending",
            "s2:product_uri": prod.product_id + ".SAFE",
            "s2:product_type": "S2MSI2A",
            "s2:processing_baseline": prod.baseline,
            "s2:nodata_pixel_percentage": round(100 * (1 - render.valid_fraction), 4),
            "s2:generation_time": (prod.generated or acq.when).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "earthsearch:boa_offset_applied": False,
            "processing:software": {"sentinel2-to-stac": "0.1.0"},
        },
        "links": [],
        "assets": assets,
        "collection": "sentinel-2-l2a",
    }
    (folder / f"{prod.earth_search_id}.json").write_text(json.dumps(item, indent=2) + "\n")
    return written


# ------------------------------------------------------------------ Sentinel-1


def render_s1(land: Landscape, prod: S1Product, g: Ground, seed: int) -> np.ndarray:
    """σ⁰ in LINEAR power with speckle, float32 ``[2, H, W]`` (VV, VH); no nodata yet."""
    db = land.backscatter_db(g, prod.start, prod.direction == "ASCENDING")
    lin = np.power(np.float32(10.0), db / np.float32(10.0))
    return lin * speckle(lin.shape, _rng(seed, "s1", prod.product_id))


def s1_strip_mask(grid: RasterGrid, prod: S1Product) -> np.ndarray:
    """True in the swath-edge strip (slanted, ~8-12 % of the width), per product side."""
    rows = np.arange(grid.height)[:, None] / grid.height
    cols = np.arange(grid.width)[None, :] / grid.width
    if prod.strip == "nan":  # west edge
        return cols < 0.12 - 0.06 * rows
    return cols > 0.88 + 0.05 * rows  # east edge


def write_s1(root: Path, prod: S1Product, grid: RasterGrid, lin: np.ndarray) -> list[str]:
    """Write one S1 scene in its packaging; returns the relative paths written."""
    abs_orbit, rel_orbit, _ = prod.orbit
    strip = s1_strip_mask(grid, prod) if prod.strip else np.zeros((grid.height, grid.width), bool)
    common = {
        "SENSING_START": prod.start.strftime("%Y-%m-%dT%H:%M:%S"),
        "MISSION": "SENTINEL-1" + prod.mission[-1],
        "ABSOLUTE_ORBIT": str(abs_orbit),
        "RELATIVE_ORBIT": str(rel_orbit),
        "PRODUCT_ID": prod.product_id,
    }
    # dB rounded to 1/1000 dB (far below speckle) so DEFLATE has something to work with.
    db = np.round(10.0 * np.log10(np.maximum(lin, 1e-6)), 3).astype(np.float32)
    if prod.packaging == "gee_db":
        fill = np.float32("nan") if prod.strip == "nan" else np.float32(0.0)
        db[:, strip] = fill
        tags = {
            "orbitProperties_pass": prod.direction,
            "relativeOrbitNumber_start": str(rel_orbit),
            "instrumentMode": "IW",
            "platform_number": prod.mission[-1],
            "transmitterReceiverPolarisation": "VV,VH",
            "resolution_meters": "10",
            "system:index": prod.product_id,
            "system:time_start": str(int((prod.start - datetime(1970, 1, 1)).total_seconds() * 1000)),
        }
        # GEE fills masked pixels with 0 unless told otherwise; NaN exports declare NaN.
        _write_tif(root / prod.relpath, db, grid, nodata=float("nan") if prod.strip == "nan" else None,
                   tags=tags, descriptions=("VV", "VH"))
        return [prod.relpath]
    if prod.packaging == "bands_db":
        db[:, strip] = np.nan
        out = []
        for i, pol in enumerate(("VV", "VH")):
            rel = f"s1/{prod.product_id}_{pol}.tif"
            _write_tif(root / rel, db[i], grid, nodata=float("nan"),
                       tags={**common, "ORBIT_DIRECTION": prod.direction, "POLARISATION": pol, "UNITS": "dB"},
                       descriptions=(pol,))
            out.append(rel)
        return out
    # RTC linear power, nodata 0 (values rounded to 5 significant digits, see above).
    lin = lin.copy()
    lin[:, strip] = 0.0
    lin = _round_sig(lin, 5)
    out = []
    for i, pol in enumerate(("vv", "vh")):
        rel = f"{prod.relpath}/{pol}.tif"
        _write_tif(root / rel, lin[i], grid, nodata=0.0,
                   tags={**common, "ORBIT_DIRECTION": prod.direction, "POLARISATION": pol.upper(),
                         "UNITS": "linear power (gamma0/sigma0)"},
                   descriptions=(pol.upper(),))
        out.append(rel)
    return out


def _round_sig(a: np.ndarray, digits: int) -> np.ndarray:
    """Round positive floats to ``digits`` significant digits (float32)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(a > 0, np.floor(np.log10(np.where(a > 0, a, 1.0))), 0.0)
        scale = np.power(10.0, digits - 1 - mag)
        return (np.round(a * scale) / scale).astype(np.float32)


# ------------------------------------------------------------------ WorldCover

_WC_COLOURS = {
    10: (0, 100, 0), 20: (255, 187, 34), 30: (255, 255, 76), 40: (240, 150, 255), 50: (250, 0, 0),
    60: (180, 180, 180), 70: (240, 240, 240), 80: (0, 100, 200), 90: (0, 150, 160), 95: (0, 207, 117),
    100: (250, 230, 160),
}


def worldcover_transform(name: str) -> Affine:
    """Affine of a WorldCover tile from its name (``…_N45E009_Map`` -> origin 9°E, 48°N)."""
    code = name.split("_")[-2]
    lat = int(code[1:3]) * (1 if code[0] == "N" else -1)
    lon = int(code[4:7]) * (1 if code[3] == "E" else -1)
    return Affine(WC_PIXEL_DEG, 0.0, float(lon), 0.0, -WC_PIXEL_DEG, float(lat + 3))


def write_worldcover(root: Path, name: str, land: Landscape, bbox: tuple[float, float, float, float]) -> tuple[str, int]:
    """Write one full-size sparse WorldCover tile with classes inside ``bbox`` (lon/lat).

    Only blocks over ``bbox`` are written (``SPARSE_OK``); the rest of the 36000² tile
    stays unwritten and reads as nodata 0. Returns (relative path, pixels written).
    """
    rel = f"worldcover/{name}.tif"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    t = worldcover_transform(name)
    c0 = max(0, math.floor((bbox[0] - t.c) / WC_PIXEL_DEG))
    c1 = min(WC_TILE_PX, math.ceil((bbox[2] - t.c) / WC_PIXEL_DEG))
    r0 = max(0, math.floor((t.f - bbox[3]) / WC_PIXEL_DEG))
    r1 = min(WC_TILE_PX, math.ceil((t.f - bbox[1]) / WC_PIXEL_DEG))
    code = name.split("_")[-2]
    profile = dict(
        driver="GTiff", width=WC_TILE_PX, height=WC_TILE_PX, count=1, dtype="uint8", crs="EPSG:4326",
        transform=t, nodata=0, tiled=True, blockxsize=1024, blockysize=1024, compress="deflate",
        sparse_ok=True,
    )
    tags = {
        "title": "ESA WorldCover product at 10m resolution for year 2021 (eoforge synthetic demo)",
        "product_tile": code, "product_version": "V2.0.0", "product_type": "LandCover Map",
        "product_crs": "EPSG:4326", "product_grid": "3x3 degree tiling grid",
        "time_start": "2021-01-01T00:00:00Z", "time_end": "2021-12-31T23:59:59Z",
        "legend": "".join(f"{c:<3} {n.replace('_', ' ').capitalize()}\n" for c, n in zip(WORLDCOVER.codes, WORLDCOVER.names)),
        "license": "CC-BY 4.0 - synthetic data generated by eoforge demo-data",
    }
    n = 0
    with rasterio.Env(**_GDAL_ENV), rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**tags)
        cmap = {i: (0, 0, 0, 255) for i in range(256)}
        cmap[0] = (0, 0, 0, 0)
        cmap.update({k: (*v, 255) for k, v in _WC_COLOURS.items()})
        dst.write_colormap(1, cmap)
        if c1 > c0 and r1 > r0:
            step = 1024
            for rs in range(r0, r1, step):
                re_ = min(r1, rs + step)
                win = Window(c0, rs, c1 - c0, re_ - rs)
                cols = t.c + (np.arange(c0, c1) + 0.5) * WC_PIXEL_DEG
                rows = t.f - (np.arange(rs, re_) + 0.5) * WC_PIXEL_DEG
                lon, lat = np.meshgrid(cols, rows)
                dst.write(land.classes(lon, lat)[None], window=win)
                n += lon.size
    return rel, n


# ------------------------------------------------------------------ orchestration


@dataclass
class DemoResult:
    """What :func:`generate_demo_data` wrote.

    Attributes:
        out: the output folder.
        truth: the ``truth.json`` content (products and their roles).
        n_files: number of files written.
        n_bytes: their total size in bytes.
    """

    out: Path
    truth: dict[str, Any]
    n_files: int
    n_bytes: int


def _folder_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def generate_demo_data(out: str | os.PathLike[str], seed: int = 0, extent_km: float = 20.0,
                       progress: bool = True, on_step: Callable[[str], None] | None = None,
                       threads: int | None = None) -> DemoResult:
    """Write the demo raw inputs (S2 L2A/L1C, S1 GRD, WorldCover) and ``truth.json`` to ``out``.

    Args:
        out: output folder (created; existing demo files are overwritten).
        seed: world and noise seed; the same (seed, extent_km) gives byte-identical files.
        extent_km: east-west extent of the area in km (north-south is 0.7 ×).
        progress: show a tqdm bar over products.
        on_step: optional callback with each product's relative path (for logging).
        threads: worker threads (default: up to 4, one per core); output does not depend on it.

    Returns:
        a :class:`DemoResult` with the truth table and file statistics.
    """
    from tqdm.auto import tqdm

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    area = DemoArea.from_extent(extent_km)
    land = Landscape(seed, area)
    cat = default_catalog(area)
    west, east = cat.tiles
    lon_min, lat_min, lon_max, lat_max = area.bounds
    boundary = west.zone * 6.0 - 180.0  # 12°E between zones 32 and 33
    ov = min(2.5, 0.2 * area.width_km) * 1000.0 / area.m_per_deg_lon
    grids = {west.name: s2_grid(west, area, lon_min, boundary + ov),
             east.name: s2_grid(east, area, boundary - ov, lon_max)}
    sgrid = s1_grid(area)
    ground_cache: dict[str, Ground] = {}

    def ground(key: str, grid: RasterGrid) -> Ground:
        if key not in ground_cache:
            ground_cache[key] = land.ground(*grid.lonlat())
        return ground_cache[key]

    records: list[dict[str, Any]] = []
    steps: list[tuple[str, Callable[[], None]]] = []

    def s2_step(prod: S2Product) -> None:
        grid = grids[prod.tile.name]
        render = render_s2(land, prod, grid, ground(prod.tile.name, grid), seed)
        writer = write_earth_search if prod.packaging == "earth_search" else write_s2_safe
        files = writer(root, prod, grid, render)
        rec: dict[str, Any] = {
            "path": prod.relpath, "files": files, "sensor": "S2", "level": prod.level,
            "packaging": prod.packaging,
            "product_id": prod.product_id, "datetime": prod.acq.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "generation_time": (prod.generated or prod.acq.when).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "season": prod.acq.season, "spacecraft": prod.acq.sat, "mgrs_tile": prod.tile.name,
            "crs": grid.crs, "epsg": prod.tile.epsg, "transform_10m": list(grid.transform)[:6],
            "shape_10m": [grid.height, grid.width], "footprint_lonlat": grid.footprint_lonlat(),
            "processing_baseline": prod.baseline, "dn_offset": prod.dn_offset,
            "relative_orbit": 22, "absolute_orbit": prod.acq.absolute_orbit, "orbit_direction": "DESCENDING",
            "datatake": f"{prod.acq.sat}_{prod.acq.key}", "cloud_fraction": render.cloud_fraction,
            "target_cloud_cover": prod.acq.sky.cloud_cover, "valid_fraction": render.valid_fraction,
            "nodata_wedge": prod.wedge, "role": prod.role,
        }
        if prod.packaging == "earth_search":
            rec["earth_search_id"] = prod.earth_search_id
        if prod.role == "reprocessed":
            orig = next(p for p in cat.s2 if p.acq is prod.acq and p.tile is prod.tile and p.role == "primary")
            rec["reprocessed_of"] = orig.product_id
        if prod.role == "l1c":
            rec["l2a_of_same_acquisition"] = next(p.product_id for p in cat.s2 if p.acq is prod.acq
                                                  and p.tile is prod.tile and p.level == "L2A")
        records.append(rec)

    def s1_step(prod: S1Product) -> None:
        lin = render_s1(land, prod, ground("s1", sgrid), seed)
        files = write_s1(root, prod, sgrid, lin)
        abs_orbit, rel_orbit, datatake = prod.orbit
        s2_times = sorted({p.acq.when for p in cat.s2})
        dt = min(abs((prod.start - t).total_seconds()) / 86400.0 for t in s2_times)
        records.append({
            "path": prod.relpath, "files": files, "sensor": "S1", "packaging": prod.packaging,
            "product_id": prod.product_id, "datetime": prod.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "crs": sgrid.crs, "epsg": 4326, "transform": list(sgrid.transform)[:6],
            "shape": [sgrid.height, sgrid.width], "units": "linear" if prod.packaging == "rtc_linear" else "dB",
            "nodata": {"gee_db": "nan" if prod.strip == "nan" else "0.0 dB (no nodata tag)",
                       "bands_db": "nan", "rtc_linear": "0"}[prod.packaging],
            "nodata_strip": prod.strip, "orbit_direction": prod.direction,
            "orbit_tag": "orbitProperties_pass" if prod.packaging == "gee_db" else "ORBIT_DIRECTION",
            "absolute_orbit": abs_orbit, "relative_orbit": rel_orbit, "datatake_id": f"{datatake:06X}",
            "nearest_s2_days": round(dt, 3), "far_in_time": prod.role == "far_in_time", "role": prod.role,
        })

    def mirror_step() -> None:
        src, dst = root / cat.mirror_of, root / "mirror" / cat.mirror_of
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        orig = next(r for r in records if r["path"] == cat.mirror_of)
        rec = {**orig, "path": f"mirror/{cat.mirror_of}", "role": "duplicate_copy",
               "duplicate_copy_of": cat.mirror_of,
               "files": [f"mirror/{f}" for f in orig["files"]]}
        records.append(rec)

    def wc_step(name: str) -> None:
        # Cover every product's footprint (S2 UTM boxes reach a little beyond the area).
        pts = [p for g in grids.values() for p in g.footprint_lonlat()] + sgrid.footprint_lonlat()
        bbox = (min(p[0] for p in pts) - 0.002, min(p[1] for p in pts) - 0.002,
                max(p[0] for p in pts) + 0.002, max(p[1] for p in pts) + 0.002)
        rel, n = write_worldcover(root, name, land, bbox)
        records.append({"path": rel, "files": [rel], "sensor": "WorldCover", "product_id": name,
                        "datetime": "2021-01-01T00:00:00Z", "crs": "EPSG:4326", "epsg": 4326,
                        "transform": list(worldcover_transform(name))[:6], "shape": [WC_TILE_PX, WC_TILE_PX],
                        "written_bbox_lonlat": list(bbox), "pixels_written": n, "role": "landcover",
                        "class_codes": sorted({int(c) for c in (10, 20, 30, 40, 50, 60, 80, 90)})})

    for p in cat.s2:
        steps.append((p.relpath, partial(s2_step, p)))
    steps.append((f"mirror/{cat.mirror_of}", mirror_step))
    for q in cat.s1:
        steps.append((q.relpath, partial(s1_step, q)))
    for name in cat.worldcover:
        steps.append((f"worldcover/{name}.tif", partial(wc_step, name)))

    # The three ground samplings are shared by many products: compute them first, then
    # render and write products on a few threads (numpy and GDAL release the GIL; every
    # product has its own RNG, so the bytes do not depend on scheduling).
    for key, grid in ((west.name, grids[west.name]), (east.name, grids[east.name]), ("s1", sgrid)):
        ground(key, grid)
    mirror = steps.pop(len(cat.s2))
    workers = max(1, min(4, os.cpu_count() or 1)) if threads is None else max(1, threads)
    bar = tqdm(total=len(steps) + 1, desc="demo-data", unit="product", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn): rel for rel, fn in steps}
        for fut in as_completed(futures):
            fut.result()
            bar.update(1)
            if on_step:
                on_step(futures[fut])
    mirror[1]()
    bar.update(1)
    bar.close()
    if on_step:
        on_step(mirror[0])

    truth = {
        "generator": "eoforge demo-data",
        "seed": seed,
        "extent_km": extent_km,
        "area": {"lon0": area.lon0, "lat0": area.lat0, "width_km": area.width_km, "height_km": area.height_km,
                 "bounds_lonlat": list(area.bounds)},
        "mgrs_tiles": {t.name: {"epsg": t.epsg, "tile_ulx": t.ulx, "tile_uly": t.uly,
                                "product_transform_10m": list(grids[t.name].transform)[:6],
                                "product_shape_10m": [grids[t.name].height, grids[t.name].width]}
                       for t in cat.tiles},
        "classes": {str(c): n for c, n in zip(WORLDCOVER.codes, WORLDCOVER.names)
                    if c in (10, 20, 30, 40, 50, 60, 80, 90)},
        "radiometry": {"s2_rule": "reflectance = (DN - dn_offset) / 10000; DN 0 = nodata",
                       "s1_db": "dB = 10*log10(linear)"},
        "products": sorted(records, key=lambda r: r["path"]),
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    from eoforge.ingest.demo.items import write_demo_items  # reads the files just written

    write_demo_items(root, truth)
    (root / "README.md").write_text(_readme(truth))
    n_files, n_bytes = _folder_stats(root)
    return DemoResult(root, truth, n_files, n_bytes)


def _readme(truth: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{r['path']}` | {r['sensor']} {r.get('level', '')} | {r['datetime'][:10]} | {r['crs']} "
        f"| {r.get('processing_baseline', r.get('orbit_direction', ''))} | {r['role']} |"
        for r in truth["products"])
    return f"""# eoforge demo raw data (synthetic)

Generated by `eoforge demo-data` (seed {truth['seed']}, extent {truth['extent_km']} km): a synthetic
landscape around 12°E {truth['area']['lat0']}°N, on the UTM 32N/33N boundary, delivered the way
providers deliver Sentinel data. Not real observations. `truth.json` lists every product with
its id, time, CRS, baseline / DN offset, orbit direction and role (duplicate copy,
reprocessed, far in time), for checking ingest dedup and pairing.

- `s2/` — Sentinel-2 L2A SAFE folders (GeoTIFF bands, 10/20/60 m; two MGRS tiles per
  datatake: 32TQR in EPSG:32632 and 33TTL in EPSG:32633; tiles are crops of the real MGRS
  grid), one L1C SAFE. Baselines < 04.00: reflectance = DN/10000; >= 04.00: (DN-1000)/10000.
- `s2_reprocessed/` — a 2021 acquisition re-delivered under baseline 05.00 (+1000 offset).
- `mirror/` — an exact copy of one S2 product (delivered twice).
- `earth_search/` — one L2A item as Earth Search COGs + STAC item JSON.
- `s1/` — Sentinel-1 IW GRDH VV+VH, EPSG:4326: GEE multiband dB, per-band dB, RTC linear.
- `worldcover/` — ESA WorldCover 2021 v200 3°×3° tiles (36000² px, sparse: only the demo
  area is written; elsewhere nodata 0).

| path | sensor | date | CRS | baseline / orbit | role |
|---|---|---|---|---|---|
{rows}
"""
