"""What file and product names say: sensor, product id, time, baseline, band.

Pure string parsing, no I/O. Recognised conventions (ingest/SENTINEL.md#sentinel-2-product-and-file-names):

- S2 product names ``S2A_MSIL2A_20230715T101031_N0509_R022_T32TQM_20230715T153045``
  (SAFE folders, with or without ``.SAFE``); per-band SAFE files
  ``T32TQM_20230715T101031_B02_10m.jp2`` (L2A) / ``…_B02.jp2`` (L1C); BigEarthNet patches
  ``S2A_MSIL2A_20170617T113321_4_55_B02.tif``; Earth Search ids ``S2A_33TTL_20221014_0_L2A``
  with bare band files ``B02.tif`` / ``SCL.tif`` (or common names ``blue.tif``).
- S1 names ``S1A_IW_GRDH_1SDV_20230715T053015_20230715T053040_049422_05F1B7_6C1A`` (full)
  or BigEarthNet's ``S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55``, with an optional
  ``_VV`` / ``_VH`` suffix for per-band files.
- ESA WorldCover ``ESA_WorldCover_10m_2021_v200_N48E009_Map``; Dynamic World exports carry
  ``dynamicworld`` / ``dynamic_world`` in the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from eoforge.shards.schema import S2_BAND_NAMES

S2_PRODUCT_RE = re.compile(
    r"(?P<mission>S2[A-D])_MSI(?P<level>L1C|L2A)_(?P<time>\d{8}T\d{6})"
    r"(?:_N(?P<baseline>\d{4})_R(?P<orbit>\d{3})_T(?P<mgrs>\d{2}[A-Z]{3})_(?P<generated>\d{8}T\d{6}))?"
)
EARTH_SEARCH_RE = re.compile(r"^(?P<mission>S2[A-D])_(?P<mgrs>\d{2}[A-Z]{3})_(?P<date>\d{8})_(?P<seq>\d+)_(?P<level>L1C|L2A)$")
SAFE_BAND_FILE_RE = re.compile(r"^T(?P<mgrs>\d{2}[A-Z]{3})_(?P<time>\d{8}T\d{6})_(?P<band>[A-Z0-9]{3})(?:_(?P<res>\d{2})m)?$")
S1_PRODUCT_RE = re.compile(
    r"(?P<mission>S1[A-D])_(?P<mode>IW|EW|SM)_GRD(?P<resclass>[HMF])_(?P<nlevel>\d)S(?P<pol>[DS][HV])_"
    r"(?P<start>\d{8}T\d{6})(?:_(?P<stop>\d{8}T\d{6})_(?P<orbit>\d{6})_(?P<datatake>[0-9A-F]{6})_(?P<uid>[0-9A-F]{4}))?"
)
WORLDCOVER_RE = re.compile(r"ESA_WorldCover_10m_(?P<year>\d{4})_v(?P<version>\d{3})_(?P<tile>[NS]\d{2}[EW]\d{3})_Map", re.I)
DYNAMIC_WORLD_RE = re.compile(r"dynamic[_-]?world", re.I)
#: File-name band tokens (``B02``, ``B8A``, ``SCL``), also Earth Search's common names.
BAND_TOKEN_RE = re.compile(r"(?:^|_)(?P<band>B\d{1,2}|B8A|SCL|VV|VH)(?:_(?P<res>\d{2})m)?$", re.I)
COMMON_NAMES = {
    "coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "rededge1": "B5", "rededge2": "B6",
    "rededge3": "B7", "nir": "B8", "nir08": "B8A", "nir09": "B9", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12", "scl": "SCL",
}
#: Per-band files inside SAFE folders that are not bands (true colour, aerosol, water vapour).
SKIP_TOKENS = {"TCI", "AOT", "WVP", "CLD", "SNW", "PVI"}
#: Files that come with S2 products but hold no band eoforge reads: true colour (``TCI``,
#: Earth Search's ``visual``), aerosol and water vapour (``AOT``, ``WVP``), previews and
#: thumbnails (``L2A_PVI``, ``preview``, ``thumbnail``, ``overview``) as Earth Search and
#: Planetary Computer name their assets, and the SAFE's QI_DATA masks (``MSK_CLDPRB_20m``,
#: ``MSK_DETFOO_B02``, …; the latter would otherwise read as band B02).
AUXILIARY_RE = re.compile(
    r"(?:^|[_.-])(?:TCI|visual|AOT|WVP|CLD|SNW|PVI|preview|thumbnail|overview)(?:_\d{2}m)?$|^MSK_", re.IGNORECASE)


def is_auxiliary(stem: str) -> bool:
    """Whether a raster file stem names an auxiliary file of a product (skipped, not an error)."""
    return AUXILIARY_RE.search(stem) is not None

_ISO = "%Y-%m-%dT%H:%M:%SZ"


def iso(t: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` (the shards' time format)."""
    return t.astimezone(timezone.utc).strftime(_ISO) if t.tzinfo else t.strftime(_ISO)


def parse_time(text: str) -> datetime:
    """``20230715T101031`` or an ISO string (any fraction, ``Z`` or offset) -> naive UTC."""
    text = text.strip()
    if re.fullmatch(r"\d{8}T\d{6}", text):
        return datetime.strptime(text, "%Y%m%dT%H%M%S")
    if re.fullmatch(r"\d{8}", text):
        return datetime.strptime(text, "%Y%m%d")
    t = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def canonical_band(token: str) -> str | None:
    """``B02``/``b2``/``blue``/``SCL``/``vv`` -> ``B2``/``B2``/``B2``/``SCL``/``VV``; None if not a band."""
    t = token.strip()
    low = t.lower()
    if low in COMMON_NAMES:
        return COMMON_NAMES[low]
    up = t.upper()
    if up in ("SCL", "VV", "VH"):
        return up
    m = re.fullmatch(r"B0?(\d{1,2}|8A)", up)
    if m:
        name = "B" + m.group(1)
        return name if name in S2_BAND_NAMES else None
    return None


@dataclass(frozen=True)
class NameInfo:
    """What a file or folder name says (fields None when the name does not say).

    Attributes:
        sensor: ``"s2"``, ``"s1"`` or ``"landcover"``.
        product_id: the product the file belongs to (files of one product share it).
        band: canonical band of a per-band file (``"B2"``, ``"SCL"``, ``"VV"``).
        level: S2 ``"L1C"``/``"L2A"``.
        datetime: acquisition start (UTC, naive).
        baseline: S2 processing baseline ``"05.09"``.
        relative_orbit: S2 relative orbit.
        mgrs_tile: S2 MGRS tile ``"32TQR"``.
        taxonomy: land-cover taxonomy.
        resolution_m: resolution in the file name (``_20m``).
    """

    sensor: str | None = None
    product_id: str | None = None
    band: str | None = None
    level: str | None = None
    datetime: datetime | None = None
    baseline: str | None = None
    relative_orbit: int | None = None
    mgrs_tile: str | None = None
    taxonomy: str | None = None
    resolution_m: float | None = None


def _band_suffix(stem: str) -> tuple[str, str | None, float | None]:
    """Split ``PREFIX_B02_10m`` into (``PREFIX``, ``B2``, 10.0); no band -> (stem, None, None)."""
    m = BAND_TOKEN_RE.search(stem)
    if not m:
        return stem, None, None
    band = canonical_band(m["band"])
    return stem[: m.start()].rstrip("_"), band, float(m["res"]) if m["res"] else None


def parse_product_name(name: str) -> NameInfo:
    """Parse a product / folder name (no band token)."""
    name = name.removesuffix(".SAFE")
    if m := S2_PRODUCT_RE.match(name):
        baseline = m["baseline"]
        return NameInfo(
            sensor="s2", product_id=name, level=m["level"], datetime=parse_time(m["time"]),
            baseline=f"{baseline[:2]}.{baseline[2:]}" if baseline else None,
            relative_orbit=int(m["orbit"]) if m["orbit"] else None, mgrs_tile=m["mgrs"],
        )
    if m := EARTH_SEARCH_RE.match(name):
        return NameInfo(sensor="s2", product_id=name, level=m["level"], datetime=parse_time(m["date"]), mgrs_tile=m["mgrs"])
    if m := S1_PRODUCT_RE.match(name):
        return NameInfo(sensor="s1", product_id=name, datetime=parse_time(m["start"]))
    if m := WORLDCOVER_RE.search(name):
        return NameInfo(sensor="landcover", product_id=name, taxonomy="worldcover",
                        datetime=datetime(int(m["year"]), 1, 1))
    if DYNAMIC_WORLD_RE.search(name):
        return NameInfo(sensor="landcover", product_id=name, taxonomy="dynamic_world")
    return NameInfo()


def parse_file_name(stem: str, folder: str | None = None) -> NameInfo:
    """Parse a raster file stem, using its folder's name when the file name alone is bare.

    Examples: ``T32TQR_20210721T101027_B02_10m`` inside a SAFE folder, ``S1A_…_VV``,
    ``S2A_MSIL2A_20170617T113321_4_55_B02`` (BigEarthNet), ``B02`` inside an Earth Search
    item folder, ``vv`` inside an S1 product folder.
    """
    if is_auxiliary(stem):
        return NameInfo(band="skip")
    prefix, band, res = _band_suffix(stem)
    if band is None and stem.lower() in COMMON_NAMES:
        prefix, band = "", COMMON_NAMES[stem.lower()]
    info = parse_product_name(prefix) if prefix else NameInfo()
    if info.sensor is None and (m := SAFE_BAND_FILE_RE.match(stem)):
        if m["band"] in SKIP_TOKENS:
            return NameInfo(band="skip")
        info = NameInfo(sensor="s2", datetime=parse_time(m["time"]), mgrs_tile=m["mgrs"])
    if info.sensor is None and folder:
        info = parse_product_name(folder)
    if info.sensor is None and not prefix and band is None:
        info = parse_product_name(stem)
    if band is not None:
        info = NameInfo(**{**info.__dict__, "band": band, "resolution_m": res})
    return info
