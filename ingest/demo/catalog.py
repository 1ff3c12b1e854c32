"""What the demo delivers: the list of products, their names, dates, orbits and roles.

Pure metadata, no pixels: :func:`default_catalog` decides which Sentinel-2 datatakes,
Sentinel-1 scenes and WorldCover tiles exist and how each is packaged, and the helpers
build provider-exact names (``S2B_MSIL2A_20230716T101029_N0509_R022_T32TQR_…``,
``S1A_IW_GRDH_1SDV_…``). :mod:`eoforge.ingest.demo.products` turns each entry into files.

Dates follow real orbit geometry: Sentinel-2 relative orbit R022 repeats every 10 days
per satellite, S2A and S2B 5 days apart; Sentinel-1 tracks repeat every 12 days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from eoforge.ingest.demo.landscape import DemoArea, Sky, stable_key

# ------------------------------------------------------------------ MGRS


_COL_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


@dataclass(frozen=True)
class MgrsTile:
    """A Sentinel-2 MGRS tile (109.8 km square, on its UTM zone's 10 m grid).

    Attributes:
        name: five-character id, e.g. ``"32TQR"``.
        epsg: EPSG code of the tile's UTM zone (326zz, northern hemisphere).
        ulx, uly: upper-left corner in metres (the real S2 tile origin: the 100 km square's
            west edge − 20 m, its north edge + 40 m... as ``MTD_TL.xml`` gives it).
    """

    name: str
    epsg: int
    ulx: float
    uly: float

    @property
    def zone(self) -> int:
        return int(self.name[:2])


def mgrs_tile(zone: int, easting: float, northing: float, lat: float) -> MgrsTile:
    """The MGRS 100 km square (as an S2 tile) holding a UTM position of zone ``zone`` (north).

    Column letters cycle in sets of 8 per zone (zone mod 3); row letters in a 20-letter
    cycle shifted by 5 for even zones (the AA lettering scheme of WGS84 MGRS).
    """
    col_letters = _COL_SETS[(zone - 1) % 3]
    col = col_letters[int(easting // 100_000) - 1]
    row_idx = int(northing // 100_000) + (5 if zone % 2 == 0 else 0)
    row = _ROW_LETTERS[row_idx % 20]
    band = _LAT_BANDS[int((lat + 80) // 8)]
    ulx = math.floor(easting / 100_000) * 100_000 - 20.0
    uly = (math.floor(northing / 100_000) + 1) * 100_000 + 40.0
    return MgrsTile(f"{zone:02d}{band}{col}{row}", 32600 + zone, ulx, uly)


# ------------------------------------------------------------------ orbits


_S2_ANCHOR = datetime(2023, 7, 16, 10, 10, 29)  # S2B over R022, 12°E 45.6°N
_S2_REL_ORBIT = 22
_S1_ANCHOR = datetime(2023, 7, 14, 5, 29, 47)  # S1A descending, absolute orbit 49393
_S1_ANCHOR_ORBIT = 49393
_S1_ANCHOR_DATATAKE = 0x05F0C5


def s2_pass(target: date) -> tuple[datetime, str]:
    """The R022 overpass nearest ``target``: (sensing start UTC, ``"S2A"``/``"S2B"``)."""
    days = (datetime.combine(target, _S2_ANCHOR.time()) - _S2_ANCHOR).days
    k = round(days / 5.0)
    when = _S2_ANCHOR + timedelta(days=5 * k)
    sat = "S2B" if k % 2 == 0 else "S2A"
    # Datatake start wanders by a few seconds from pass to pass.
    when += timedelta(seconds=(stable_key("s2time", when.date()) % 21) - 10)
    return when, sat


def s2_absolute_orbit(when: datetime, sat: str) -> int:
    """Absolute orbit number of a pass over relative orbit R022 (143 orbits per 10 days)."""
    ref = (datetime(2022, 10, 5, 11, 54, 11), 38058) if sat == "S2A" else (_S2_ANCHOR, 33155)
    approx = ref[1] + round((when - ref[0]).total_seconds() / 86400.0 * 14.3)
    shift = 2 if sat == "S2A" else -27  # relative = (absolute + shift) % 143 + 1
    for d in range(0, 143):
        for cand in (approx + d, approx - d):
            if (cand + shift) % 143 + 1 == _S2_REL_ORBIT:
                return cand
    raise AssertionError("unreachable")


def s1_orbit(when: datetime, mission: str) -> tuple[int, int, int]:
    """(absolute orbit, relative orbit, datatake id) of a Sentinel-1 acquisition."""
    per_day = 175.0 / 12.0
    if mission == "S1A":
        abs_orbit = _S1_ANCHOR_ORBIT + math.floor((when - _S1_ANCHOR).total_seconds() / 86400.0 * per_day + 0.5)
        rel = (abs_orbit - 73) % 175 + 1
        datatake = _S1_ANCHOR_DATATAKE + round(8.3 * (abs_orbit - _S1_ANCHOR_ORBIT))
    else:  # S1B, half a cycle behind on the same tracks
        ref = datetime(2021, 7, 20, 5, 29, 50)
        abs_orbit = 27_916 + math.floor((when - ref).total_seconds() / 86400.0 * per_day + 0.5)
        rel = (abs_orbit - 27) % 175 + 1
        datatake = 0x0354A2 + round(8.1 * (abs_orbit - 27_916))
    return abs_orbit, rel, datatake & 0xFFFFFF


# ------------------------------------------------------------------ entries


@dataclass(frozen=True)
class S2Acquisition:
    """One Sentinel-2 datatake over the area.

    Attributes:
        when: sensing start (UTC, naive datetime).
        sat: ``"S2A"`` or ``"S2B"``.
        baseline: processing baseline of the original delivery, ``"04.00"`` style.
        sky: clouds of this date.
        season: a label for people reading ``truth.json``.
    """

    when: datetime
    sat: str
    baseline: str
    sky: Sky
    season: str

    @property
    def absolute_orbit(self) -> int:
        return s2_absolute_orbit(self.when, self.sat)

    @property
    def key(self) -> str:
        return self.when.strftime("%Y%m%dT%H%M%S")


@dataclass(frozen=True)
class S2Product:
    """One Sentinel-2 product to write.

    Attributes:
        acq: the datatake.
        tile: MGRS tile (fixes CRS and grid origin).
        level: ``"L2A"`` or ``"L1C"``.
        baseline: processing baseline of this delivery.
        generated: generation (processing) time, the last field of the name.
        packaging: ``"safe"`` (Planetary-Computer-style SAFE with GeoTIFF bands) or
            ``"earth_search"`` (flat COG folder + STAC item).
        wedge: corner of the swath-edge nodata triangle (``"ne"``, ``"sw"``) or ``None``.
        role: ``"primary"``, ``"reprocessed"`` (same acquisition, newer baseline) or
            ``"l1c"``.
        subdir: folder under the output root.
    """

    acq: S2Acquisition
    tile: MgrsTile
    level: str = "L2A"
    baseline: str = ""
    generated: datetime | None = None
    packaging: str = "safe"
    wedge: str | None = None
    role: str = "primary"
    subdir: str = "s2"

    @property
    def dn_offset(self) -> int:
        """+1000 DN for processing baseline >= 04.00 (BOA/RADIO_ADD_OFFSET = -1000)."""
        return 1000 if float(self.baseline) >= 4.0 else 0

    @property
    def product_id(self) -> str:
        """``S2B_MSIL2A_20230716T101029_N0509_R022_T32TQR_20230716T131508``."""
        gen = self.generated or self.acq.when
        return (
            f"{self.acq.sat}_MSI{self.level}_{self.acq.key}_N{self.baseline.replace('.', '')}"
            f"_R{_S2_REL_ORBIT:03d}_T{self.tile.name}_{gen.strftime('%Y%m%dT%H%M%S')}"
        )

    @property
    def earth_search_id(self) -> str:
        """``S2A_33TTL_20221012_0_L2A`` (Earth Search item id)."""
        return f"{self.acq.sat}_{self.tile.name}_{self.acq.when:%Y%m%d}_0_{self.level}"

    @property
    def relpath(self) -> str:
        name = self.earth_search_id if self.packaging == "earth_search" else self.product_id + ".SAFE"
        return f"{self.subdir}/{name}"


@dataclass(frozen=True)
class S1Product:
    """One Sentinel-1 IW GRDH dual-pol (VV+VH) scene, analysis-ready in EPSG:4326.

    Attributes:
        mission: ``"S1A"`` or ``"S1B"``.
        start: acquisition start (UTC); the scene lasts 25 s.
        direction: ``"ASCENDING"`` or ``"DESCENDING"``.
        packaging: ``"gee_db"`` (multiband dB GeoTIFF, GEE export), ``"bands_db"``
            (``_VV.tif``/``_VH.tif`` in dB) or ``"rtc_linear"`` (Planetary-Computer-RTC-like
            ``vv.tif``/``vh.tif`` in linear power).
        strip: ``"nan"`` or ``"zero"`` swath-edge fill, or ``None``.
        role: ``"primary"`` or ``"far_in_time"`` (no S2 date within 10 days).
    """

    mission: str
    start: datetime
    direction: str
    packaging: str
    strip: str | None = None
    role: str = "primary"

    @property
    def orbit(self) -> tuple[int, int, int]:
        return s1_orbit(self.start, self.mission)

    @property
    def product_id(self) -> str:
        """``S1A_IW_GRDH_1SDV_20230714T052947_20230714T053012_049393_05F0C5_8A3F``."""
        abs_orbit, _, datatake = self.orbit
        stop = self.start + timedelta(seconds=25)
        uid = stable_key("s1uid", self.mission, self.start) & 0xFFFF
        return (
            f"{self.mission}_IW_GRDH_1SDV_{self.start:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}"
            f"_{abs_orbit:06d}_{datatake:06X}_{uid:04X}"
        )

    @property
    def relpath(self) -> str:
        if self.packaging == "gee_db":
            return f"s1/{self.product_id}.tif"
        if self.packaging == "bands_db":
            return f"s1/{self.product_id}_VV.tif"  # its VH twin sits beside it
        return f"s1/{self.product_id}"  # a folder with vv.tif and vh.tif


@dataclass
class Catalog:
    """Everything the demo writes (metadata only).

    Attributes:
        area: the demo rectangle.
        tiles: the two MGRS tiles, west (32N) then east (33N).
        s2: Sentinel-2 products (L2A, the L1C, reprocessed and Earth Search ones).
        s1: Sentinel-1 scenes.
        mirror_of: relpath of the S2 product that is delivered twice (byte copy).
        worldcover: WorldCover tile names (3°×3°, lower-left corner in the name).
    """

    area: DemoArea
    tiles: tuple[MgrsTile, MgrsTile]
    s2: list[S2Product] = field(default_factory=list)
    s1: list[S1Product] = field(default_factory=list)
    mirror_of: str = ""
    worldcover: list[str] = field(default_factory=list)


def worldcover_name(lon: float, lat: float) -> str:
    """``ESA_WorldCover_10m_2021_v200_N45E009_Map`` for the 3° tile holding lon/lat."""
    lo, la = int(math.floor(lon / 3.0) * 3), int(math.floor(lat / 3.0) * 3)
    ns, ew = ("N" if la >= 0 else "S"), ("E" if lo >= 0 else "W")
    return f"ESA_WorldCover_10m_2021_v200_{ns}{abs(la):02d}{ew}{abs(lo):03d}_Map"


def default_catalog(area: DemoArea) -> Catalog:
    """The default product list over ``area`` (see ``OUT/README.md`` for the table)."""
    from pyproj import Transformer

    tiles = []
    for zone in (32, 33):
        tr = Transformer.from_crs("EPSG:4326", f"EPSG:{32600 + zone}", always_xy=True)
        e, n = tr.transform(area.lon0, area.lat0)
        tiles.append(mgrs_tile(zone, e, n, area.lat0))
    west, east = tiles

    def acq(target: date, baseline: str, cloud: float, cirrus: float, season: str) -> S2Acquisition:
        when, sat = s2_pass(target)
        return S2Acquisition(when, sat, baseline, Sky(cloud, cirrus), season)

    def gen(a: S2Acquisition, hours: float = 0.0) -> datetime:
        # Generation a few hours after sensing, minutes drawn from the date (stable).
        return a.when + timedelta(hours=2 + hours, minutes=stable_key("gen", a.key) % 180,
                                  seconds=stable_key("gens", a.key) % 60)

    spring21 = acq(date(2021, 4, 15), "03.00", 0.10, 0.04, "spring")
    summer21 = acq(date(2021, 7, 20), "03.01", 0.005, 0.0, "summer")  # nearly clear
    autumn21 = acq(date(2021, 11, 5), "03.01", 0.35, 0.10, "autumn")  # quite cloudy
    winter22 = acq(date(2022, 2, 10), "04.00", 0.05, 0.03, "winter")
    autumn22 = acq(date(2022, 10, 12), "04.00", 0.12, 0.04, "autumn")
    spring23 = acq(date(2023, 4, 20), "05.09", 0.18, 0.06, "spring")
    summer23 = acq(date(2023, 7, 16), "05.09", 0.03, 0.01, "summer")

    s2: list[S2Product] = []
    for a, wedge_tile in ((spring21, east), (summer21, None), (autumn21, None), (winter22, None),
                          (spring23, west), (summer23, east)):
        for t in (west, east):
            wedge = ("ne" if t is east else "sw") if t is wedge_tile else None
            s2.append(S2Product(a, t, "L2A", a.baseline, gen(a), wedge=wedge))
    # Collection-1 style reprocessing of a 2021 acquisition: same pixels, +1000 offset.
    s2.append(S2Product(summer21, west, "L2A", "05.00",
                        datetime(2023, 3, 21, 9, 12, 33) + timedelta(minutes=stable_key("re", summer21.key) % 600),
                        role="reprocessed", subdir="s2_reprocessed"))
    # Level-1C of the latest summer date (top-of-atmosphere, all 13 bands).
    s2.append(S2Product(summer23, west, "L1C", summer23.baseline, gen(summer23, -1.0), role="l1c"))
    # One product as Earth Search delivers it: flat COG folder + STAC item.
    s2.append(S2Product(autumn22, east, "L2A", autumn22.baseline, gen(autumn22),
                        packaging="earth_search", subdir="earth_search"))
    mirror_of = next(p.relpath for p in s2 if p.acq is summer23 and p.tile is east and p.level == "L2A")

    # Sentinel-1: several tracks cross the area, so a pass 0-2 days from each S2 date
    # exists; descending passes at ~05:2x UTC, ascending at ~17:0x UTC.
    def s1_time(day: date, desc: bool = True) -> datetime:
        base = datetime.combine(day, (_S1_ANCHOR if desc else datetime(2000, 1, 1, 17, 5, 12)).time())
        return base + timedelta(seconds=(stable_key("s1t", day) % 240) - 120)

    s1 = [
        S1Product("S1A", s1_time(spring21.when.date() + timedelta(days=1)), "DESCENDING", "bands_db"),
        S1Product("S1B", s1_time(summer21.when.date()), "DESCENDING", "gee_db", strip="nan"),
        S1Product("S1A", s1_time(autumn22.when.date() - timedelta(days=1)), "DESCENDING", "rtc_linear",
                  strip="zero"),
        S1Product("S1A", s1_time(date(2022, 6, 10)), "DESCENDING", "gee_db", strip="nan", role="far_in_time"),
        S1Product("S1A", _S1_ANCHOR, "DESCENDING", "gee_db", strip="zero"),
        S1Product("S1A", s1_time(summer23.when.date(), desc=False), "ASCENDING", "bands_db"),
    ]
    lon_min, _, lon_max, _ = area.bounds
    wc = sorted({worldcover_name(lon, area.lat0) for lon in (lon_min, lon_max)})
    return Catalog(area, (west, east), s2, s1, mirror_of, wc)
