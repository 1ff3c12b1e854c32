"""The synthetic world behind ``eoforge demo-data``.

Everything here is a deterministic function of geographic position (WGS84 lon/lat,
degrees), the seed and the date, never of a raster grid. A Sentinel-2 product in
EPSG:32632, its twin in EPSG:32633, a Sentinel-1 export in EPSG:4326 and a WorldCover
tile all evaluate the same functions at their own pixel centres, so they agree on the
ground wherever they overlap, exactly as real products of one place do.

The world (:class:`Landscape`) has

* land cover in ESA WorldCover codes (:data:`eoforge.shards.schema.WORLDCOVER`): a
  meandering river and a lake (80) with reed belts (90), forest patches (10) with shrub
  edges (20), meadows (30), cropland parcels (40) with per-parcel crop calendars,
  built-up clusters (50) and gravel pits (60);
* surface reflectance per Sentinel-2 band (:meth:`Landscape.reflectance`), with
  phenology (crops and meadows green in summer, bare soil in winter; deciduous trees);
* radar backscatter per class in dB (:meth:`Landscape.backscatter_db`) that follows the
  same phenology, plus gamma speckle (:func:`speckle`);
* per-date cloud, cirrus and cloud-shadow fields (:meth:`Landscape.sky`).

Positions are handled in a local metric frame: ``x`` metres east and ``y`` metres north
of the area centre (equirectangular; the distortion over a few tens of km is far below a
pixel and, being a function of lon/lat, identical for every product).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist

import numpy as np

from eoforge.shards.schema import S2_BAND_NAMES, WORLDCOVER

# ------------------------------------------------------------------ classes

TREE, SHRUB, GRASS, CROP, BUILT, BARE, WATER, WETLAND = 10, 20, 30, 40, 50, 60, 80, 90
#: WorldCover codes the demo world uses (a subset of ``WORLDCOVER.codes``).
DEMO_CLASSES: tuple[int, ...] = (TREE, SHRUB, GRASS, CROP, BUILT, BARE, WATER, WETLAND)
assert set(DEMO_CLASSES) <= set(WORLDCOVER.codes)

#: Crop types of the cropland parcels (index stored per pixel).
CROP_TYPES: tuple[str, ...] = ("winter_cereal", "maize", "soybean", "alfalfa")

_M_PER_DEG_LAT = 111_132.0
_M_PER_DEG_LON_EQ = 111_320.0

# ------------------------------------------------------------------ spectra
# Surface reflectance (0..1) per band in S2_BAND_NAMES order:
#         B1     B2     B3     B4     B5     B6     B7     B8     B8A    B9     B10    B11    B12
_SPECTRA: dict[str, tuple[float, ...]] = {
    # full-cover green canopy: red ~0.035, NIR ~0.38, red edge rising through B5..B7
    "green": (0.030, 0.035, 0.070, 0.035, 0.100, 0.280, 0.350, 0.380, 0.395, 0.330, 0.004, 0.200, 0.095),
    # conifer / dense forest canopy: darker everywhere, NIR ~0.25
    "forest": (0.020, 0.024, 0.045, 0.024, 0.070, 0.180, 0.220, 0.245, 0.255, 0.210, 0.003, 0.125, 0.055),
    # leaf-off deciduous stand: branches over litter, brownish, NIR ~0.2
    "leafoff": (0.035, 0.040, 0.060, 0.070, 0.100, 0.150, 0.175, 0.190, 0.200, 0.175, 0.003, 0.230, 0.160),
    # ploughed soil: rises steadily into the SWIR
    "soil": (0.070, 0.080, 0.110, 0.140, 0.170, 0.190, 0.205, 0.220, 0.230, 0.210, 0.004, 0.320, 0.270),
    # stubble / dry senescent canopy
    "stubble": (0.060, 0.070, 0.100, 0.120, 0.160, 0.200, 0.225, 0.245, 0.255, 0.225, 0.004, 0.330, 0.250),
    # clear inland water: NIR < 0.03, SWIR ~0
    "water": (0.055, 0.052, 0.060, 0.035, 0.022, 0.012, 0.010, 0.008, 0.007, 0.005, 0.001, 0.004, 0.003),
    # roofs, asphalt, concrete: flat 0.12..0.2
    "built": (0.100, 0.110, 0.130, 0.145, 0.160, 0.170, 0.180, 0.190, 0.195, 0.175, 0.004, 0.210, 0.190),
    # terracotta roofs (north-east Italy): red above green
    "roof": (0.070, 0.075, 0.100, 0.180, 0.210, 0.220, 0.230, 0.240, 0.245, 0.220, 0.004, 0.280, 0.230),
    # gravel / quarry floor: bright, rising into the SWIR
    "gravel": (0.120, 0.140, 0.180, 0.215, 0.245, 0.265, 0.280, 0.290, 0.300, 0.270, 0.005, 0.380, 0.330),
    # opaque cloud top (TOA-like): bright, flat, dropping in the SWIR; high in B10
    "cloud": (0.560, 0.555, 0.550, 0.560, 0.570, 0.575, 0.575, 0.580, 0.575, 0.450, 0.300, 0.420, 0.300),
    # thin cirrus: visible in B10 and faintly elsewhere
    "cirrus": (0.180, 0.170, 0.160, 0.160, 0.160, 0.160, 0.160, 0.160, 0.160, 0.120, 0.200, 0.120, 0.090),
}
SPECTRA: dict[str, np.ndarray] = {k: np.asarray(v, dtype=np.float32) for k, v in _SPECTRA.items()}
assert all(len(v) == len(S2_BAND_NAMES) for v in SPECTRA.values())

#: Mean backscatter in dB (VV, VH) at zero and full vigour, per class. Crops and meadows
#: get brighter (mostly in VH, volume scattering) as biomass grows.
_SAR_DB: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    TREE: ((-8.0, -14.5), (-7.2, -13.0)),
    SHRUB: ((-10.0, -17.0), (-8.8, -15.0)),
    GRASS: ((-12.0, -20.5), (-10.5, -17.5)),
    CROP: ((-14.0, -24.5), (-9.5, -15.5)),
    BUILT: ((-4.5, -11.5), (-4.5, -11.5)),
    BARE: ((-12.5, -21.5), (-12.5, -21.5)),
    WATER: ((-21.5, -28.5), (-21.5, -28.5)),
    WETLAND: ((-15.5, -23.0), (-13.0, -19.5)),
}
#: Equivalent number of looks of Sentinel-1 IW GRDH (speckle strength).
S1_ENL = 4.4


# ------------------------------------------------------------------ helpers


def stable_key(*parts: object) -> int:
    """A 32-bit integer from ``parts`` that is the same in every process (unlike ``hash``)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def _hash01(*ints: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) values from integer arrays (splitmix64 finaliser, vectorised)."""
    h: np.ndarray = np.asarray(np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        for v in ints:
            z = (np.asarray(v).astype(np.int64).astype(np.uint64) + h) * np.uint64(0xBF58476D1CE4E5B9)
            z ^= z >> np.uint64(31)
            z *= np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(29))
    return np.asarray((h >> np.uint64(11)).astype(np.float64) / float(1 << 53))


class _Field:
    """Smooth random field of unit variance: a sum of plane waves (cheap, analytic, seeded).

    ``min_wl``/``max_wl`` are wavelengths in metres; with a dozen waves the values are close
    to standard normal, so ``NormalDist().inv_cdf`` gives thresholds for a target cover.
    """

    def __init__(self, key: int, min_wl: float, max_wl: float, n: int = 12) -> None:
        rng = np.random.default_rng(key)
        theta = rng.uniform(0, np.pi, n)
        wl = np.exp(rng.uniform(np.log(min_wl), np.log(max_wl), n))
        amp = np.sqrt(wl / wl.sum())  # longer waves carry more variance (red-ish noise)
        self.kx = (2 * np.pi * np.cos(theta) / wl).astype(np.float64)
        self.ky = (2 * np.pi * np.sin(theta) / wl).astype(np.float64)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = amp * math.sqrt(2.0 / float((amp**2).sum()))

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # float32 throughout: phases stay accurate to ~1e-3 rad over +-50 km and the
        # vectorised float32 cosine is several times faster than float64.
        x32 = np.asarray(x, dtype=np.float32)
        y32 = np.asarray(y, dtype=np.float32)
        out = np.zeros(x32.shape, dtype=np.float32)
        tmp = np.empty_like(out)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp):
            np.multiply(x32, np.float32(kx), out=tmp)
            tmp += y32 * np.float32(ky)
            tmp += np.float32(ph)
            np.cos(tmp, out=tmp)
            tmp *= np.float32(a)
            out += tmp
        return out


def _bump(doy: float | np.ndarray, peak: float | np.ndarray, width: float) -> np.ndarray:
    """Seasonal Gaussian bump in day-of-year, wrapping around the new year."""
    d = (np.asarray(doy) - peak + 182.5) % 365.0 - 182.5
    return np.exp(-0.5 * (d / width) ** 2)


def speckle(shape: tuple[int, ...], rng: np.random.Generator, looks: float = S1_ENL) -> np.ndarray:
    """Multiplicative SAR speckle: gamma distributed with mean 1 and ``looks`` looks (float32)."""
    return rng.gamma(looks, 1.0 / looks, size=shape).astype(np.float32)


# ------------------------------------------------------------------ data classes


@dataclass(frozen=True)
class DemoArea:
    """The rectangle the demo world is centred on (WGS84 degrees).

    Attributes:
        lon0, lat0: centre; the default sits on the UTM 32N/33N boundary (12°E).
        width_km, height_km: east-west and north-south extent in kilometres.
    """

    lon0: float = 12.0
    lat0: float = 45.6
    width_km: float = 20.0
    height_km: float = 14.0

    @classmethod
    def from_extent(cls, extent_km: float) -> DemoArea:
        """Area ``extent_km`` wide (E-W) and 0.7 × as tall, centred on 12°E 45.6°N."""
        return cls(width_km=float(extent_km), height_km=round(0.7 * float(extent_km), 3))

    @property
    def m_per_deg_lon(self) -> float:
        return _M_PER_DEG_LON_EQ * math.cos(math.radians(self.lat0))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(lon_min, lat_min, lon_max, lat_max) in degrees."""
        dlon = self.width_km * 500.0 / self.m_per_deg_lon
        dlat = self.height_km * 500.0 / _M_PER_DEG_LAT
        return (self.lon0 - dlon, self.lat0 - dlat, self.lon0 + dlon, self.lat0 + dlat)

    def to_local(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lon/lat (degrees) -> local metres east/north of the centre (float64)."""
        x = (np.asarray(lon, dtype=np.float64) - self.lon0) * self.m_per_deg_lon
        y = (np.asarray(lat, dtype=np.float64) - self.lat0) * _M_PER_DEG_LAT
        return x, y


@dataclass(frozen=True)
class Sky:
    """Atmospheric state of one acquisition date (what clouds the satellite sees).

    Attributes:
        cloud_cover: target share of the area under medium/high-probability cloud (0..1).
        cirrus_cover: target share under thin cirrus (0..1).
        shadow_az_deg: direction clouds throw their shadows, degrees clockwise from north.
    """

    cloud_cover: float
    cirrus_cover: float = 0.0
    shadow_az_deg: float = 330.0


@dataclass
class Ground:
    """Static ground properties sampled at a set of positions (any shape ``S``).

    Attributes:
        x, y: local metres east/north of the area centre, float64 ``S``.
        cls: WorldCover code, uint8 ``S``.
        crop: index into :data:`CROP_TYPES` (cropland pixels), int8 ``S``.
        shift: per-parcel phenology shift in days, float32 ``S``.
        soil: soil brightness factor (~0.8..1.25), float32 ``S``.
        decid: deciduous share of tree cover (0..1), float32 ``S``.
        texture: smooth multiplicative texture (~±5 %), float32 ``S``.
        roof: share of terracotta roofs in built-up pixels (0..1), float32 ``S``.
        scatterer: True on bright point scatterers (built-up corners), bool ``S``.
    """

    x: np.ndarray
    y: np.ndarray
    cls: np.ndarray
    crop: np.ndarray
    shift: np.ndarray
    soil: np.ndarray
    decid: np.ndarray
    texture: np.ndarray
    roof: np.ndarray
    scatterer: np.ndarray


# ------------------------------------------------------------------ the world


class Landscape:
    """A seeded synthetic landscape over a :class:`DemoArea`.

    Feature placement scales with the area (so a 6 km test area still holds every class)
    while textures, parcel sizes and river widths are in metres.

    Args:
        seed: world seed; the same seed gives the same world.
        area: the demo rectangle.
    """

    def __init__(self, seed: int = 0, area: DemoArea | None = None) -> None:
        self.seed = int(seed)
        self.area = area or DemoArea()
        rng = np.random.default_rng(stable_key("landscape", self.seed))
        w, h = self.area.width_km * 1000.0, self.area.height_km * 1000.0
        self._w, self._h = w, h
        k = lambda name: stable_key(name, self.seed)  # noqa: E731
        # River: runs north -> south across the zone boundary, meandering.
        self._river_x0 = rng.uniform(-0.12, 0.12) * w
        self._river_slope = rng.uniform(-0.35, 0.35)
        self._river_meander = _Field(k("river"), 0.3 * h, 1.5 * h, n=4)
        self._river_amp = 0.08 * w
        # Lake: an ellipse west of the boundary with a ragged shore.
        self._lake = (rng.uniform(-0.38, -0.22) * w, rng.uniform(-0.25, 0.25) * h,
                      rng.uniform(0.07, 0.10) * w, rng.uniform(0.08, 0.12) * h)
        # Towns: two or three clusters, one always near the boundary on the east side.
        n_towns = 3
        self._towns = [
            (rng.uniform(0.05, 0.38) * w * (1 if i != 1 else -1),
             rng.uniform(-0.35, 0.35) * h,
             rng.uniform(0.05, 0.085) * min(w, h) * (1.4 if i == 0 else 1.0))
            for i in range(n_towns)
        ]
        self._pit = (rng.uniform(0.2, 0.4) * w, rng.uniform(-0.4, -0.2) * h, 0.035 * min(w, h))
        self._forest = _Field(k("forest"), 0.15 * min(w, h), 0.7 * max(w, h))
        self._meadow = _Field(k("meadow"), 400.0, 2500.0)
        self._shore = _Field(k("shore"), 150.0, 900.0)
        self._decid = _Field(k("decid"), 500.0, 3000.0)
        self._texture = _Field(k("texture"), 25.0, 180.0)
        self._turbid = _Field(k("turbid"), 800.0, 5000.0)

    # -------------------------------------------------------------- sampling

    def ground(self, lon: np.ndarray, lat: np.ndarray) -> Ground:
        """Sample the static ground at WGS84 positions (degrees, any matching shapes)."""
        x, y = self.area.to_local(lon, lat)
        shape = x.shape
        cls = np.full(shape, CROP, dtype=np.uint8)

        # Cropland parcels: brick-pattern rows of ~160 m, cells ~240 m split in two.
        row = np.floor(y / 160.0).astype(np.int64)
        xo = x + _hash01(row, self.seed, 1) * 240.0
        col = np.floor(xo / 240.0).astype(np.int64)
        split = 0.3 + 0.4 * _hash01(row, col, self.seed, 2)
        half = ((xo / 240.0 - col) > split).astype(np.int64)
        pid_r = _hash01(row, col * 2 + half, self.seed, 3)
        crop = np.minimum((pid_r * 4.0).astype(np.int8), 3)  # 4 crop types, equal shares
        shift = ((_hash01(row, col * 2 + half, self.seed, 4) - 0.5) * 24.0).astype(np.float32)
        soil = (0.8 + 0.45 * _hash01(row, col * 2 + half, self.seed, 5)).astype(np.float32)

        meadow = self._meadow(x, y)
        cls[meadow > 1.0] = GRASS
        forest = self._forest(x, y)
        cls[(forest > 0.55) & (forest <= 0.75)] = SHRUB
        cls[forest > 0.75] = TREE

        # Built-up: noisy discs; gardens inside stay built-up at 10 m (WorldCover does too).
        shore = self._shore(x, y)
        for tx, ty, tr in self._towns:
            d = np.hypot(x - tx, y - ty) / tr
            town = d + 0.18 * shore < 1.0
            cls[town] = BUILT
            cls[(d + 0.18 * shore >= 1.0) & (d < 1.35) & (cls == CROP)] = GRASS  # town edge
        px, py, pr = self._pit
        cls[np.hypot(x - px, y - py) + 0.25 * pr * shore < pr] = BARE

        # Water: river (centre line meanders; width 45..80 m) and lake; reeds around them.
        rc = self._river_x0 + self._river_slope * y + self._river_amp * self._river_meander(0 * x, y)
        rw = 30.0 + 8.0 * (shore + 1.0)
        dr = np.abs(x - rc)
        lx, ly, la, lb = self._lake
        dl = np.hypot((x - lx) / la, (y - ly) / lb) + 0.08 * shore
        cls[(dr < rw + 90.0) & (cls != BUILT) & (shore > 0.2)] = WETLAND
        cls[(dr < rw + 40.0) & (cls == CROP)] = TREE  # riparian strip
        cls[(dl < 1.25) & (cls != BUILT)] = WETLAND
        cls[(dr >= rw) & (dr < rw + 30.0) & (shore < -1.3)] = BARE  # gravel bars
        cls[dr < rw] = WATER
        cls[dl < 1.0] = WATER

        tex = self._texture(x, y)
        texture = (1.0 + 0.045 * tex).astype(np.float32)
        decid = np.clip(0.5 + 0.45 * self._decid(x, y), 0.0, 1.0).astype(np.float32)
        # Roof mix follows the same fine texture (blocks of red roofs vs flat roofs).
        roof = np.clip(0.45 + 0.5 * tex, 0.0, 1.0).astype(np.float32)
        # Point scatterers: ~3 % of 10 m cells inside towns (corner reflections).
        cell = _hash01(np.floor(x / 10.0).astype(np.int64), np.floor(y / 10.0).astype(np.int64), self.seed, 6)
        scatterer = (cls == BUILT) & (cell < 0.03)
        return Ground(x, y, cls, crop, shift, soil, decid, texture, roof, scatterer)

    def classes(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """WorldCover class codes (uint8) at WGS84 positions (degrees)."""
        return self.ground(lon, lat).cls

    # -------------------------------------------------------------- phenology

    @staticmethod
    def vigour(g: Ground, when: datetime) -> np.ndarray:
        """Green-vegetation cover (0..1, float32) of every position on date ``when``.

        Winter cereals peak in late April and are harvested in early July; maize and
        soybean peak in late July / August; alfalfa and meadows stay green from spring to
        autumn; deciduous trees lose their leaves from November to March.
        """
        doy = float(when.timetuple().tm_yday)
        v = np.zeros(g.cls.shape, dtype=np.float32)
        peaks = np.array([118.0, 212.0, 228.0, 170.0], dtype=np.float32)[np.maximum(g.crop, 0)]
        widths = np.array([38.0, 30.0, 26.0, 80.0], dtype=np.float32)[np.maximum(g.crop, 0)]
        base = np.array([0.15, 0.0, 0.0, 0.35], dtype=np.float32)[np.maximum(g.crop, 0)]
        d = (doy - (peaks + g.shift) + 182.5) % 365.0 - 182.5
        crop_v = base + (0.92 - base) * np.exp(-0.5 * (d / widths) ** 2)
        # Winter cereal after harvest (early July .. sowing in October): stubble, not green.
        crop_v = np.where((g.crop == 0) & (d > 70) & (d < 175), 0.05, crop_v)
        v = np.where(g.cls == CROP, crop_v, v)
        season = float(_bump(doy, 170.0, 70.0))
        v = np.where(g.cls == GRASS, 0.35 + 0.5 * season, v)
        v = np.where(g.cls == SHRUB, 0.35 + 0.35 * season, v)
        v = np.where(g.cls == WETLAND, 0.25 + 0.55 * season, v)
        leaf = float(_bump(doy, 190.0, 62.0))
        v = np.where(g.cls == TREE, (1 - g.decid) * 0.9 + g.decid * (0.1 + 0.8 * leaf), v)
        v = np.where(g.cls == BUILT, 0.18, v)  # gardens and street trees
        return np.clip(v, 0.0, 1.0).astype(np.float32)

    # -------------------------------------------------------------- optics

    def reflectance(self, g: Ground, when: datetime) -> np.ndarray:
        """Cloud-free surface reflectance, float32 ``[13, *S]`` in :data:`S2_BAND_NAMES` order.

        Values are L2A bottom-of-atmosphere reflectance (0..1, unitless); B10 (cirrus) is
        near 0 at the surface and only meaningful for L1C.
        """
        shape = g.cls.shape
        cls = g.cls.ravel()
        v_all = self.vigour(g, when).ravel()
        doy = float(when.timetuple().tm_yday)
        out = np.empty((len(S2_BAND_NAMES), cls.size), dtype=np.float32)
        sp = {k: s[:, None] for k, s in SPECTRA.items()}
        # Per class, on that class's pixels only (the classes partition the ground).
        for code in DEMO_CLASSES:
            idx = np.flatnonzero(cls == code)
            if idx.size == 0:
                continue
            v = v_all[idx][None]
            if code in (CROP, GRASS, SHRUB):
                soil = g.soil.ravel()[idx][None]
                if code == CROP:
                    # Winter cereal stubble from harvest (early July) into autumn.
                    stub = ((g.crop.ravel()[idx] == 0) & (abs(doy - 230.0) < 70))[None]
                    bg = np.where(stub, sp["stubble"], sp["soil"]) * soil
                else:
                    bg = sp["stubble"] * soil
                r = v * sp["green"] + (1 - v) * bg
            elif code == TREE:
                d = g.decid.ravel()[idx][None]
                r = 0.85 * (d * (v * sp["green"] + (1 - v) * sp["leafoff"]) + (1 - d) * sp["forest"])
            elif code == BUILT:
                roof = g.roof.ravel()[idx][None]
                r = 0.82 * (roof * sp["roof"] + (1 - roof) * sp["built"]) + 0.18 * sp["green"]
            elif code == BARE:
                r = np.broadcast_to(sp["gravel"], (len(S2_BAND_NAMES), idx.size))
            elif code == WATER:
                turbid = np.clip(1.0 + 0.25 * self._turbid(g.x.ravel()[idx], g.y.ravel()[idx]), 0.6, 1.5)
                out[:, idx] = sp["water"] * turbid[None]
                continue  # water is smooth: no texture
            else:  # WETLAND: reeds over standing water
                r = 0.65 * (v * sp["green"] + (1 - v) * sp["stubble"]) + 0.35 * sp["water"]
            out[:, idx] = r * g.texture.ravel()[idx][None]
        return out.reshape((len(S2_BAND_NAMES),) + shape)

    def sky(self, x: np.ndarray, y: np.ndarray, sky: Sky, date_key: str) -> dict[str, np.ndarray]:
        """Cloud state at local positions ``x``, ``y`` (metres) for one acquisition.

        Returns float32 arrays of the positions' shape, all in 0..1: ``cloud`` (opacity of
        medium/thick cloud), ``cirrus`` (thin cirrus opacity) and ``shadow`` (cloud opacity
        of the cloud whose shadow falls here; 0 where none).
        """
        w, h = self._w, self._h
        scale = min(w, h)
        f = _Field(stable_key("cloud", self.seed, date_key), 0.12 * scale, 0.8 * scale)
        c = _Field(stable_key("cirrus", self.seed, date_key), 0.2 * scale, 1.2 * scale)
        out: dict[str, np.ndarray] = {}

        def opacity(field: _Field, cover: float, xx: np.ndarray, yy: np.ndarray, soft: float) -> np.ndarray:
            if cover <= 0:
                return np.zeros(np.shape(xx), dtype=np.float32)
            thr = NormalDist().inv_cdf(1.0 - min(cover, 0.999))
            return np.clip((field(xx, yy) - thr) / soft, 0.0, 1.0).astype(np.float32)

        out["cloud"] = opacity(f, sky.cloud_cover, x, y, 0.5)
        out["cirrus"] = opacity(c, sky.cirrus_cover, x, y, 2.5) * 0.6
        # Shadow: the cloud field seen from a point displaced towards the sun.
        dist = min(1500.0, scale / 7.0)
        az = math.radians(sky.shadow_az_deg)
        sx, sy = x - dist * math.sin(az), y - dist * math.cos(az)
        out["shadow"] = opacity(f, sky.cloud_cover, sx, sy, 0.5)
        return out

    # -------------------------------------------------------------- radar

    def backscatter_db(self, g: Ground, when: datetime, ascending: bool) -> np.ndarray:
        """Speckle-free σ⁰ in dB, float32 ``[2, *S]`` (VV, VH), for one acquisition.

        Ascending passes see slopes and rows from the other side: +0.5 dB in VV here.
        """
        v = self.vigour(g, when)
        vv = np.zeros(g.cls.shape, dtype=np.float32)
        vh = np.zeros(g.cls.shape, dtype=np.float32)
        for code, ((vv0, vh0), (vv1, vh1)) in _SAR_DB.items():
            m = g.cls == code
            vv = np.where(m, vv0 + (vv1 - vv0) * v, vv)
            vh = np.where(m, vh0 + (vh1 - vh0) * v, vh)
        # Wind roughens open water a little, differently each date.
        wind = _Field(stable_key("wind", self.seed, when.date()), 2000.0, 9000.0, n=6)(g.x, g.y)
        water = g.cls == WATER
        vv = np.where(water, vv + 1.2 * wind, vv)
        vh = np.where(water, vh + 0.8 * wind, vh)
        # Texture (±~1 dB on land), soil brightness, point scatterers in towns.
        tex_db = 20.0 * np.log10(g.texture)
        vv = np.where(water, vv, vv + tex_db + 1.5 * (g.soil - 1.0))
        vh = np.where(water, vh, vh + tex_db)
        vv = np.where(g.scatterer, vv + 9.0, vv)
        vh = np.where(g.scatterer, vh + 6.0, vh)
        if ascending:
            vv = vv + 0.5
        return np.stack([vv, vh]).astype(np.float32)
