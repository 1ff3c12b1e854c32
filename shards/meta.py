"""The ``<key>.json`` member: everything about a sample that is not pixels.

The manifest is built from these records (one row per sample), so this dataclass is the
single place where per-sample metadata is defined. Times are ISO 8601 UTC strings
(``"2023-07-16T10:10:29Z"``), distances in metres, Δt in days (S1 minus S2, signed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from eoforge.shards.keys import check_key


@dataclass
class TimeStep:
    """One time step of a sample: the S2 acquisition and the S1 paired to it.

    Attributes:
        datetime: acquisition time (UTC) of the step's reference image (S2, else S1); None
            when the source does not say (reference datasets such as EuroSAT).
        s2_product_id: S2 product name, e.g. ``S2B_MSIL2A_20230716T101029_N0509_R022_T32TQR_…``.
        s2_level: ``"L2A"`` or ``"L1C"``.
        s2_processing_baseline: e.g. ``"05.09"``.
        s2_offset_removed: DN offset subtracted at ingest (1000 for baseline >= 04.00, else 0).
        s2_b10_zero: True when B10 is a zero-filled placeholder (L2A).
        s2_valid_fraction: share of pixels with data in every S2 band, 0..1.
        cloud_fraction: share of valid pixels that SCL marks cloud/shadow/cirrus, 0..1.
        s1_product_id: S1 product name paired to this step.
        s1_datetime: S1 acquisition time (UTC).
        s1_orbit_direction: ``"ascending"`` or ``"descending"``.
        s1_valid_fraction: share of pixels where ``s1valid`` is True, 0..1.
        s1_source_unit: ``"db"`` or ``"linear"`` (what the source file held; stored is dB).
        dt_days: S1 time minus S2 time, in days.
        relative_orbit: S2 relative orbit number.
    """

    datetime: str | None
    s2_product_id: str | None = None
    s2_level: str | None = None
    s2_processing_baseline: str | None = None
    s2_offset_removed: int = 0
    s2_b10_zero: bool = False
    s2_valid_fraction: float | None = None
    cloud_fraction: float | None = None
    s1_product_id: str | None = None
    s1_datetime: str | None = None
    s1_orbit_direction: str | None = None
    s1_valid_fraction: float | None = None
    s1_source_unit: str | None = None
    dt_days: float | None = None
    relative_orbit: int | None = None


@dataclass
class Labels:
    """Land-cover labels of a sample.

    Attributes:
        taxonomy: ``"worldcover"``, ``"dynamic_world"`` or another dataset's class list.
        names: class names in label-vector order.
        fractions: per-class pixel fractions over valid label pixels (sums to 1), or None
            for datasets with only image-level labels.
        multi_hot: 0/1 per class (fraction >= ``threshold`` for raster-derived labels).
        threshold: τ used for ``multi_hot``.
        source: where the labels came from (file name or dataset).
        per_step_multi_hot: one multi-hot row per time step (``T x K``) when the source labels
            each acquisition on its own (SSL4EO-S12's per-season labels, a class map per
            scene); an all-zero row is an unlabelled step. None (and absent from the JSON) when
            ``multi_hot`` holds for every step.
    """

    taxonomy: str
    names: list[str]
    multi_hot: list[int]
    fractions: list[float] | None = None
    threshold: float | None = None
    source: str | None = None
    per_step_multi_hot: list[list[int]] | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.multi_hot) != n or (self.fractions is not None and len(self.fractions) != n):
            raise ValueError(
                f"labels: {n} names but {len(self.multi_hot)} multi-hot"
                f" and {None if self.fractions is None else len(self.fractions)} fractions"
            )
        if self.per_step_multi_hot is not None and any(len(row) != n for row in self.per_step_multi_hot):
            raise ValueError(f"labels: per-step multi-hot rows must have {n} values each")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``per_step_multi_hot`` only when set (samples without it keep their bytes)."""
        out = dict(vars(self))
        if out["per_step_multi_hot"] is None:
            del out["per_step_multi_hot"]
        return out


@dataclass
class SampleMeta:
    """Metadata of one sample (one grid tile, ``T`` time steps).

    Attributes:
        key: sample key (``check_key`` rules); for grid tiles, the tile id.
        tile_id: grid tile id (``32n_00123_01234``) or None for non-grid datasets.
        epsg: CRS of the pixel grid (UTM zone for grid tiles).
        transform: the tile's affine in rasterio order ``(a, b, c, d, e, f)``, metres.
        width: pixels along x.
        height: pixels along y.
        split: ``"train"`` or ``"val"`` (or a dataset's own split name).
        time_steps: one :class:`TimeStep` per time index of the arrays.
        labels: land-cover labels, if any.
        grid: grid parameters, e.g. ``{"tile_size_px": 264, "resolution_m": 10.0}``.
        extra: anything dataset-specific (adapters), kept verbatim.
    """

    key: str
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    split: str
    time_steps: list[TimeStep]
    tile_id: str | None = None
    labels: Labels | None = None
    grid: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key(self.key)
        self.transform = tuple(float(v) for v in self.transform)  # type: ignore[assignment]
        if len(self.transform) != 6:
            raise ValueError(f"{self.key}: transform needs 6 numbers (a, b, c, d, e, f)")
        if not self.time_steps:
            raise ValueError(f"{self.key}: a sample needs at least one time step")
        per_step = self.labels.per_step_multi_hot if self.labels is not None else None
        if per_step is not None and len(per_step) != len(self.time_steps):
            raise ValueError(f"{self.key}: {len(per_step)} per-step label rows for {len(self.time_steps)} time steps")

    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the tile in its CRS (north-up grids)."""
        a, b, c, d, e, f = self.transform
        xs = (c, c + a * self.width + b * self.height)
        ys = (f, f + d * self.width + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def to_dict(self) -> dict[str, Any]:
        # json_finite rebuilds every dict and list, so nothing here aliases this object
        # (dataclasses.asdict deep-copies field by field: ~3x slower for a 4-step sample)
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["time_steps"] = [vars(t) for t in self.time_steps]
        out["labels"] = None if self.labels is None else self.labels.to_dict()
        return json_finite(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleMeta:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown metadata fields {sorted(unknown)}")
        d = dict(d)
        d["time_steps"] = [TimeStep(**t) for t in d["time_steps"]]
        if d.get("labels") is not None:
            d["labels"] = Labels(**d["labels"])
        d["transform"] = tuple(d["transform"])
        return cls(**d)


def json_finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None: JSON has no NaN and the manifest wants nulls."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj
