"""The sample schema: band tables, member specs and land-cover taxonomies.

Everything that crosses the shard boundary is described here once; the writer
validates against it, the reader and ``verify`` check against it, and ingest and
training take band orders and class lists from it.

A sample is one grid tile with ``T >= 1`` time steps, all on the tile's 10 m grid:

======================  ========  ===================  ==========================================
member                  dtype     shape                meaning
======================  ========  ===================  ==========================================
``<key>.s2.npy``        uint16    ``[T, 13, H, W]``    S2 DN in :data:`S2_BANDS` order, harmonised
                                                       to ``reflectance = DN / 10000`` (0 = nodata)
``<key>.s1.npy``        float16   ``[T, 2, H, W]``     S1 backscatter in dB, (VV, VH); NaN where
                                                       ``s1valid`` is False
``<key>.s1valid.npy``   bool      ``[T, H, W]``        True where both VV and VH hold data
``<key>.scl.npy``       uint8     ``[T, H, W]``        S2 L2A scene classification (optional)
``<key>.lc.npy``        uint8     ``[T or 1, H, W]``   class codes of ``labels.taxonomy`` (land
                                                       cover, or a segmentation label such as
                                                       Sen1Floods11 water; optional)
``<key>.json``          JSON      --                   :class:`~eoforge.shards.meta.SampleMeta`
======================  ========  ===================  ==========================================

Array members are stored as ``.npy`` bytes, optionally zstd-compressed (``.npy.zst``);
see :mod:`eoforge.shards.encoding` for the measured choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class Band:
    """One spectral or polarisation channel.

    Attributes:
        name: canonical name (``"B8A"``, ``"VV"``).
        wavelength_nm: centre wavelength in nanometres (0 for SAR).
        gsd_m: native ground sampling distance in metres.
        in_l1c: present in S2 Level-1C products.
        in_l2a: present in S2 Level-2A products (L2A has no B10).
    """

    name: str
    wavelength_nm: int
    gsd_m: int
    in_l1c: bool = True
    in_l2a: bool = True


#: Sentinel-2 MSI bands in the canonical 13-band order (SSL4EO-S12, SoftCon, GEE).
S2_BANDS: tuple[Band, ...] = (
    Band("B1", 443, 60),
    Band("B2", 490, 10),
    Band("B3", 560, 10),
    Band("B4", 665, 10),
    Band("B5", 705, 20),
    Band("B6", 740, 20),
    Band("B7", 783, 20),
    Band("B8", 842, 10),
    Band("B8A", 865, 20),
    Band("B9", 945, 60),
    Band("B10", 1375, 60, in_l2a=False),
    Band("B11", 1610, 20),
    Band("B12", 2190, 20),
)
S2_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S2_BANDS)
#: Index of B10 in :data:`S2_BANDS`; L2A stacks store zeros there (and say so in the JSON).
S2_B10_INDEX = S2_BAND_NAMES.index("B10")

#: Sentinel-1 GRD polarisations, in stored order.
S1_BANDS: tuple[Band, ...] = (Band("VV", 0, 10), Band("VH", 0, 10))
S1_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S1_BANDS)

#: S2 radiometric rule stored in every sample: reflectance = (DN - S2_DN_OFFSET) / S2_DN_SCALE
#: with S2_DN_OFFSET = 0. Products of processing baseline >= 04.00 carry +1000 in their DN
#: (BOA_ADD_OFFSET / RADIO_ADD_OFFSET = -1000); ingest subtracts it (clipping at 1 so valid
#: dark pixels never become nodata) and records ``s2_offset_removed`` per time step.
S2_DN_SCALE = 10000.0
S2_NODATA = 0
S2_SATURATED = 65535


def canonical_s2_band(name: str) -> str:
    """Normalise a band label from file names or band descriptions: ``"B02"`` -> ``"B2"``.

    Raises:
        ValueError: when ``name`` is not a Sentinel-2 MSI band.
    """
    n = name.strip().upper()
    if n.startswith("B") and n[1:].isdigit():
        n = f"B{int(n[1:])}"
    elif n in {"B8A", "B08A"}:
        n = "B8A"
    if n not in S2_BAND_NAMES:
        raise ValueError(f"not a Sentinel-2 band: {name!r}")
    return n


def s2_file_label(name: str) -> str:
    """Band label as S2 file names spell it (the inverse of :func:`canonical_s2_band`):
    ``"B2"`` -> ``"B02"``, ``"B8A"`` stays."""
    return name if name == "B8A" else f"B{int(name[1:]):02d}"


# ---------------------------------------------------------------------- land cover


@dataclass(frozen=True)
class Taxonomy:
    """A land-cover class list.

    Attributes:
        name: ``"worldcover"`` or ``"dynamic_world"``.
        codes: raster values of the classes, in label-vector order.
        names: class names, same order.
        nodata: raster value that means "no label" (never a class).
        single_label: every sample has exactly one class (scene classification, e.g.
            EuroSAT); otherwise labels are multi-label (multi-hot).
    """

    name: str
    codes: tuple[int, ...]
    names: tuple[str, ...]
    nodata: int | None
    single_label: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.codes)

    def lookup(self) -> np.ndarray:
        """A 256-entry table mapping raster value -> class index (-1 for nodata/unknown)."""
        table = np.full(256, -1, dtype=np.int16)
        for i, code in enumerate(self.codes):
            table[code] = i
        return table


#: ESA WorldCover 10 m (2020 v100, 2021 v200); 0 is nodata.
WORLDCOVER = Taxonomy(
    name="worldcover",
    codes=(10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
    names=(
        "tree_cover",
        "shrubland",
        "grassland",
        "cropland",
        "built_up",
        "bare_sparse_vegetation",
        "snow_and_ice",
        "permanent_water",
        "herbaceous_wetland",
        "mangroves",
        "moss_and_lichen",
    ),
    nodata=0,
)

#: Dynamic World V1 labels; exports mark missing pixels with a mask, stored here as 255.
DYNAMIC_WORLD = Taxonomy(
    name="dynamic_world",
    codes=(0, 1, 2, 3, 4, 5, 6, 7, 8),
    names=(
        "water",
        "trees",
        "grass",
        "flooded_vegetation",
        "crops",
        "shrub_and_scrub",
        "built",
        "bare",
        "snow_and_ice",
    ),
    nodata=255,
)

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (WORLDCOVER, DYNAMIC_WORLD)}

# Class lists of the reference datasets that eval adapters turn into labelled shards. They are
# not land-cover rasters for ingest (hence not in TAXONOMIES); codes are label-vector indices,
# except SEN1FLOODS11, whose codes are the values of the ``lc`` member (LabelHand: -1 ignore ->
# 255, 0 dry, 1 water).

#: EuroSAT-MS (Helber et al. 2019): one class per 64x64 patch, the dataset's folder names.
EUROSAT = Taxonomy(
    name="eurosat",
    codes=tuple(range(10)),
    names=(
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ),
    nodata=None,
    single_label=True,
)

#: BigEarthNet 19-class nomenclature (Sumbul et al. 2020), multi-label, official order.
BIGEARTHNET19 = Taxonomy(
    name="bigearthnet19",
    codes=tuple(range(19)),
    names=(
        "Urban fabric",
        "Industrial or commercial units",
        "Arable land",
        "Permanent crops",
        "Pastures",
        "Complex cultivation patterns",
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
        "Agro-forestry areas",
        "Broad-leaved forest",
        "Coniferous forest",
        "Mixed forest",
        "Natural grassland and sparsely vegetated areas",
        "Moors, heathland and sclerophyllous vegetation",
        "Transitional woodland, shrub",
        "Beaches, dunes, sands",
        "Inland wetlands",
        "Coastal wetlands",
        "Inland waters",
        "Marine waters",
    ),
    nodata=None,
)

#: Sen1Floods11 hand labels as stored in ``lc``: 0 dry, 1 water, 255 no label (source -1).
SEN1FLOODS11 = Taxonomy(name="sen1floods11", codes=(0, 1), names=("dry", "water"), nodata=255)

DATASET_TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (EUROSAT, BIGEARTHNET19, SEN1FLOODS11)}
#: Every class list a sample's ``labels.taxonomy`` may name.
ALL_TAXONOMIES: dict[str, Taxonomy] = {**TAXONOMIES, **DATASET_TAXONOMIES}

#: WorldCover code -> Dynamic World code (SoftCon's mapping, ingest/SENTINEL.md#land-cover).
WORLDCOVER_TO_DYNAMIC_WORLD: dict[int, int] = {
    80: 0,  # permanent water -> water
    10: 1,  # tree cover -> trees
    30: 2,  # grassland -> grass
    100: 2,  # moss and lichen -> grass
    90: 3,  # herbaceous wetland -> flooded vegetation
    95: 3,  # mangroves -> flooded vegetation
    40: 4,  # cropland -> crops
    20: 5,  # shrubland -> shrub and scrub
    50: 6,  # built-up -> built
    60: 7,  # bare / sparse vegetation -> bare
    70: 8,  # snow and ice -> snow and ice
}


def worldcover_to_dynamic_world(classes: np.ndarray) -> np.ndarray:
    """Map a WorldCover class raster (uint8) to Dynamic World codes; unknown -> 255."""
    table = np.full(256, DYNAMIC_WORLD.nodata, dtype=np.uint8)
    for wc, dw in WORLDCOVER_TO_DYNAMIC_WORLD.items():
        table[wc] = dw
    return table[np.asarray(classes, dtype=np.uint8)]


#: Label-vector conversions between taxonomies: ``(from, to) -> {from index: to index}``.
LABEL_MAPPINGS: dict[tuple[str, str], dict[int, int]] = {
    ("worldcover", "dynamic_world"): {
        WORLDCOVER.codes.index(wc): DYNAMIC_WORLD.codes.index(dw) for wc, dw in WORLDCOVER_TO_DYNAMIC_WORLD.items()
    },
}


def convert_label_vector(values: np.ndarray, source: str, target: str, threshold: float | None = None) -> np.ndarray:
    """A label vector (or ``[..., K]`` stack) of taxonomy ``source`` in taxonomy ``target``.

    ``values`` are multi-hot 0/1 (merged classes: their OR) or, with ``threshold``, class
    fractions: merged classes add up, and the result is multi-hot ``fraction >= threshold``
    (and > 0), the rule raster labels use. The same taxonomy returns ``values`` as float32.

    Raises:
        ValueError: no mapping from ``source`` to ``target`` (:data:`LABEL_MAPPINGS`).
    """
    # fractions add up in float64, so 0.006 + 0.004 meets a threshold of 0.01
    values = np.asarray(values, dtype=np.float32 if threshold is None else np.float64)
    if source == target:
        return values if threshold is None else ((values >= threshold) & (values > 0)).astype(np.float32)
    mapping = LABEL_MAPPINGS.get((source, target))
    if mapping is None:
        known = ", ".join(f"{a} -> {b}" for a, b in LABEL_MAPPINGS)
        raise ValueError(f"no label mapping from {source!r} to {target!r} (known: {known})")
    out = np.zeros((*values.shape[:-1], len(ALL_TAXONOMIES[target].names)), dtype=values.dtype)
    for i, j in mapping.items():
        if threshold is None:
            np.maximum(out[..., j], values[..., i], out=out[..., j])
        else:
            out[..., j] += values[..., i]
    if threshold is not None:
        return ((out >= threshold) & (out > 0)).astype(np.float32)
    return out


# ------------------------------------------------------------------------ members


@dataclass(frozen=True)
class MemberSpec:
    """What one array member must look like.

    Attributes:
        name: member name between the key and the file extension (``"s2"``).
        dtypes: allowed numpy dtypes (first one is what ingest writes).
        dims: dimension names; ``T`` time, ``C`` channel, ``H``/``W`` pixels.
        channels: required size of ``C``, if the member has one.
        required: every sample must carry this member.
    """

    name: str
    dtypes: tuple[str, ...]
    dims: tuple[str, ...]
    channels: int | None = None
    required: bool = False


MEMBERS: dict[str, MemberSpec] = {
    m.name: m
    for m in (
        MemberSpec("s2", ("uint16",), ("T", "C", "H", "W"), channels=len(S2_BANDS)),
        MemberSpec("s1", ("float16", "float32"), ("T", "C", "H", "W"), channels=len(S1_BANDS)),
        MemberSpec("s1valid", ("bool",), ("T", "H", "W")),
        MemberSpec("scl", ("uint8",), ("T", "H", "W")),
        MemberSpec("lc", ("uint8",), ("T", "H", "W")),
    )
}
#: Name of the JSON metadata member (``<key>.json``).
META_MEMBER = "json"
#: Order in which members are written into a tar (deterministic bytes; JSON last so a
#: streaming reader has seen every array when it meets the metadata).
MEMBER_ORDER: tuple[str, ...] = ("s2", "s1", "s1valid", "scl", "lc", META_MEMBER)


class SchemaError(ValueError):
    """A sample does not match the schema; the message names the key and the member."""


def check_arrays(key: str, arrays: dict[str, np.ndarray]) -> None:
    """Check member names, dtypes and shapes of one sample.

    Rules: every member is known; dtypes match; ``C`` matches the band table; all members
    share ``H`` and ``W``; members with a ``T`` axis agree on it, except ``lc`` which may
    have ``T == 1`` (one static map); ``s1valid`` goes with ``s1``; at least one image
    modality (``s2`` or ``s1``) is present.

    Raises:
        SchemaError: naming the key, the member and what is wrong.
    """
    if not arrays.keys() & {"s2", "s1"}:
        raise SchemaError(f"{key}: a sample needs an 's2' or 's1' member, got {sorted(arrays)}")
    if ("s1" in arrays) != ("s1valid" in arrays):
        raise SchemaError(f"{key}: 's1' and 's1valid' go together, got {sorted(arrays)}")
    hw: tuple[int, int] | None = None
    steps: int | None = None
    for name, arr in arrays.items():
        spec = MEMBERS.get(name)
        if spec is None:
            raise SchemaError(f"{key}: unknown member {name!r} (known: {sorted(MEMBERS)})")
        if not isinstance(arr, np.ndarray):
            raise SchemaError(f"{key}.{name}: expected a numpy array, got {type(arr).__name__}")
        if arr.dtype.name not in spec.dtypes:
            raise SchemaError(f"{key}.{name}: dtype {arr.dtype} not in {spec.dtypes}")
        if arr.ndim != len(spec.dims):
            raise SchemaError(
                f"{key}.{name}: shape {arr.shape} does not have dims {''.join(spec.dims)}"
            )
        if spec.channels is not None and arr.shape[1] != spec.channels:
            raise SchemaError(
                f"{key}.{name}: {arr.shape[1]} channels, expected {spec.channels}"
            )
        if hw is None:
            hw = arr.shape[-2:]
        elif arr.shape[-2:] != hw:
            raise SchemaError(f"{key}.{name}: H, W {arr.shape[-2:]} differ from {hw}")
        if arr.shape[0] < 1:
            raise SchemaError(f"{key}.{name}: no time steps")
        if name == "lc" and arr.shape[0] == 1:
            continue
        if steps is None:
            steps = arr.shape[0]
        elif arr.shape[0] != steps:
            raise SchemaError(f"{key}.{name}: {arr.shape[0]} time steps, others have {steps}")
