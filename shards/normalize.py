"""Per-band normalisation: stored values (S2 DN, S1 dB) -> model inputs, one rule for every reader.

Training (:mod:`eoforge.train.data.loader`), ``eoforge eval`` and ``eoforge embed`` all turn
samples into inputs through this module: the rule is part of what ``stats.json`` (the
dataset's statistics, :mod:`eoforge.shards.stats`) and an exported ``MODEL.json`` (its
``normalization`` record, :func:`norm_from_record`) promise.

Two modes, both an affine map per band, ``x_norm = (x - offset) * scale``:

- ``"minmax2sigma"`` (default): ``mean - 2σ -> 0`` and ``mean + 2σ -> 1``, i.e.
  ``offset = mean - 2σ``, ``scale = 1 / (4σ)``. Values beyond ±2σ land outside [0, 1]; with
  ``clip=True`` they are clipped to [0, 1] as SoftCon does (``clip((x - (μ - 2σ)) / 4σ, 0, 1)``).
  Not clipping keeps bright targets (cloud, snow, urban) distinguishable; the backbone does not
  need bounded inputs.
- ``"zscore"``: ``offset = mean``, ``scale = 1 / σ``.

Optionally, stored values are clipped to a per-band range first (``value_range``: the dual
encoder's S1 rule, VV [-25, 0] dB and VH [-32.5, 0] dB); NaN stays NaN (and becomes 0).

Units: S2 statistics and inputs are DN (reflectance x 10000, uint16), S1 statistics and inputs
are dB. Pixels without data are 0 after normalisation, in both modes: S2 DN 0 (the nodata value;
``stats.json`` excludes those pixels too) and S1 pixels where ``s1valid`` is False or the value is
not finite (stored NaN). A band with no statistics or a zero / non-finite σ (the zero-filled B10
placeholder of L2A) gets ``offset = scale = 0``: it normalises to 0 everywhere, never NaN/inf.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.shards.reader import is_url
from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES

NORMALIZATIONS = ("minmax2sigma", "zscore")


@dataclass(frozen=True)
class BandNorm:
    """Per-band affine normalisation of one modality.

    Attributes:
        modality: ``"s2"`` or ``"s1"``.
        bands: band names in channel order.
        offset: float32 ``[C]``, in the stored unit (DN or dB).
        scale: float32 ``[C]``, per stored unit; 0 for bands without usable statistics.
        mode: ``"minmax2sigma"`` or ``"zscore"``.
        clip: clip results to [0, 1] (``"minmax2sigma"`` only).
        value_min, value_max: float32 ``[C]`` range the stored values are clipped to before the
            affine map (in the stored unit), or None.
    """

    modality: str
    bands: tuple[str, ...]
    offset: np.ndarray
    scale: np.ndarray
    mode: str
    clip: bool = False
    value_min: np.ndarray | None = None
    value_max: np.ndarray | None = None

    def select(self, bands: tuple[str, ...] | list[str]) -> BandNorm:
        """The same normalisation for ``bands`` only, in that order (a model that reads a subset)."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise ValueError(f"{self.modality}: no statistics for band(s) {missing} (has {list(self.bands)})")
        idx = [self.bands.index(b) for b in bands]
        pick = (lambda a: None if a is None else a[idx])  # noqa: E731
        return BandNorm(self.modality, tuple(bands), self.offset[idx], self.scale[idx], self.mode, self.clip,
                        pick(self.value_min), pick(self.value_max))

    def apply(self, x: np.ndarray, valid: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Normalise ``x`` (``[..., C, H, W]``, any dtype) to float32 of the same shape.

        Args:
            x: stored values (uint16 DN, float16/32 dB); channel axis third from last.
            valid: bool, True where a value holds data: per pixel ``[..., H, W]`` (all bands) or
                per value (same shape as ``x``); None for "all". Values outside it, and any
                non-finite result, are set to 0.
            out: float32 array of ``x``'s shape to write into (a slot of a batch); default a new one.
        """
        shape = (-1, 1, 1)
        # float32 straight from the stored dtype (the in-place ops below are safe), no astype pass
        out = np.subtract(x, self.offset.reshape(shape), dtype=np.float32, out=out)
        if self.value_min is not None and self.value_max is not None:
            # clip(x, lo, hi) - offset == clip(x - offset, lo - offset, hi - offset); NaN passes through
            np.clip(out, (self.value_min - self.offset).reshape(shape), (self.value_max - self.offset).reshape(shape),
                    out=out)
        out *= self.scale.reshape(shape)
        if self.clip:
            np.clip(out, 0.0, 1.0, out=out)
        if valid is not None:
            mask = valid if valid.ndim == x.ndim else np.expand_dims(valid, -3)
            np.copyto(out, 0.0, where=~mask)
        if x.dtype.kind == "f":
            # stored NaN (S1 outside its footprint) or inf must not reach the model
            np.copyto(out, 0.0, where=~np.isfinite(out))
        return out


def read_stats(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``stats.json`` from a dataset folder, a file path or a URL (``http(s)://``, ``pipe:``).

    Raises:
        FileNotFoundError: when there is no ``stats.json`` (it says how to make one).
        ValueError: when it is not valid JSON.
    """
    text = str(source)
    if is_url(text) and not text.startswith("file:"):
        import webdataset as wds

        try:
            with wds.gopen(text) as stream:
                raw = stream.read()
        except Exception as err:
            raise FileNotFoundError(f"{text}: cannot read stats.json: {err}") from err
    else:
        path = Path(text.removeprefix("file://"))
        if path.is_dir():
            path = path / "stats.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no stats.json (normalisation needs it: run `eoforge shards stats DS`)"
            )
        raw = path.read_bytes()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{text}: stats.json is not valid JSON: {err}") from err


def band_norm(stats: dict[str, Any], modality: str, mode: str = "minmax2sigma", clip: bool = False,
              value_range: Any = None) -> BandNorm:
    """The normalisation of ``modality`` (``"s2"`` / ``"s1"``) from ``stats.json`` content.

    ``value_range``: one ``(lo, hi)`` per band in the stored unit, clipped before the affine
    map (None: no clipping).

    Raises:
        ValueError: unknown mode, or ``stats`` has no section for ``modality``.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r} (known: {NORMALIZATIONS})")
    section = stats.get(modality)
    if not section:
        raise ValueError(f"stats.json has no {modality!r} statistics (keys: {sorted(stats)})")
    bands = tuple(section["bands"])
    offset = np.zeros(len(bands), dtype=np.float64)
    scale = np.zeros(len(bands), dtype=np.float64)
    for b, (mean, std) in enumerate(zip(section["mean"], section["std"])):
        if not _usable(mean) or not _usable(std) or std <= 0:
            continue  # no data in this band (B10 in L2A): it maps to 0
        if mode == "minmax2sigma":
            offset[b], scale[b] = mean - 2.0 * std, 1.0 / (4.0 * std)
        else:
            offset[b], scale[b] = mean, 1.0 / std
    lo = hi = None
    if value_range is not None:
        if len(value_range) != len(bands):
            raise ValueError(f"{modality}: {len(value_range)} value ranges for {len(bands)} bands {bands}")
        lo = np.asarray([float(r[0]) for r in value_range], dtype=np.float32)
        hi = np.asarray([float(r[1]) for r in value_range], dtype=np.float32)
    return BandNorm(modality, bands, offset.astype(np.float32), scale.astype(np.float32), mode,
                    clip and mode == "minmax2sigma", lo, hi)


def _usable(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def normalize_s2(dn: np.ndarray, norm: BandNorm, out: np.ndarray | None = None) -> np.ndarray:
    """S2 DN uint16 ``[..., 13, H, W]`` -> float32 same shape (into ``out`` when given); DN 0 (nodata) -> 0."""
    out = norm.apply(dn, out=out)
    for b in range(dn.shape[-3]):
        band = dn[..., b, :, :]
        # a band without statistics (L2A's zero B10) is 0 already; most bands of most tiles
        # hold no nodata at all: a count is cheaper than building and applying the mask
        if norm.scale[b] == 0 or np.count_nonzero(band) == band.size:
            continue
        np.copyto(out[..., b, :, :], 0.0, where=band == 0)
    return out


def normalize_s1(db: np.ndarray, valid: np.ndarray, norm: BandNorm,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """S1 dB ``[..., 2, H, W]`` + ``s1valid`` bool ``[..., H, W]`` -> (float32 ``[..., 2, H, W]``, bool).

    The returned mask is ``s1valid`` and-ed with finiteness of both polarisations, so it is
    exactly the set of pixels that carry data after normalisation (the rest are 0). The
    values go into ``out`` when given.
    """
    valid = valid & np.isfinite(db).all(axis=-3)
    return norm.apply(db, valid, out=out), valid


# ------------------------------------------------------------- MODEL.json records


def norm_from_record(record: dict[str, Any], modality: str, bands: tuple[str, ...] | list[str]) -> BandNorm:
    """The :class:`BandNorm` of ``bands`` (all of ``modality``) from a ``normalization`` record.

    ``record`` is what ``MODEL.json`` carries (training writes per band ``offset``/``scale``,
    ``mean``/``std``, ``lo``/``hi`` and optional ``value_min``/``value_max``, with ``bands`` and
    ``modality`` lists) or a hand-written one: ``{"mode", "bands", "lo", "hi"}`` (lo -> 0,
    hi -> 1), ``{"mode", "bands", "mean", "std"}``, ``{"mode", "bands", "offset", "scale"}``,
    optionally ``"clip": true``, or such sections per modality (``{"s2": {...}, "s1": {...}}``;
    a section without ``bands`` covers all bands of its modality). A band whose values are
    missing or not finite gets ``scale = 0`` (input 0).

    Raises:
        ValueError: a record without usable fields, or without a band of ``bands``.
    """
    mode = record.get("mode")
    flat = any(k in record for k in ("lo", "mean", "offset"))
    sections = [record] if flat else [
        {**v, "bands": v.get("bands", list(S2_BAND_NAMES if k == "s2" else S1_BAND_NAMES))}
        for k, v in record.items() if k in ("s2", "s1") and isinstance(v, dict)
    ]
    if not sections:
        raise ValueError(f"normalization has no statistics (keys: {sorted(record)})")
    by_band: dict[str, tuple[float, float, float, float]] = {}
    clip = False
    for section in sections:
        names, offset, scale = _section_affine(section, mode)
        lo, hi = _value_range(section, len(offset))
        clip |= bool(section.get("clip", False))
        if names is None:
            if len(sections) > 1 or len(offset) != len(bands):
                raise ValueError("normalization without band names must have one value per model band")
            names = list(bands)
        if len(names) != len(offset):
            raise ValueError(f"normalization lists {len(names)} bands but {len(offset)} values")
        by_band.update({n: (o, s, a, b) for n, o, s, a, b in zip(names, offset, scale, lo, hi)})
        mode = mode or section.get("mode")
    missing = [b for b in bands if b not in by_band]
    if missing:
        raise ValueError(f"normalization has no statistics for band(s) {missing}")
    columns = np.asarray([by_band[b] for b in bands], np.float32).reshape(len(bands), 4).T
    value_min, value_max = columns[2], columns[3]
    if not np.isfinite(np.concatenate([value_min, value_max])).any():
        value_min = value_max = None
    mode = mode or "minmax2sigma"
    return BandNorm(modality, tuple(bands), columns[0], columns[1], mode, clip and mode == "minmax2sigma",
                    value_min, value_max)


def _section_affine(section: dict[str, Any], mode: str | None) -> tuple[list[str] | None, list[float], list[float]]:
    """(bands, offset, scale) of one record section; unusable bands get offset = scale = 0."""
    mode = section.get("mode", mode) or "minmax2sigma"
    conv: Callable[[float, float], tuple[float, float] | None]
    if "lo" in section and "hi" in section:
        pairs, conv = zip(section["lo"], section["hi"]), _from_lo_hi
    elif "offset" in section and "scale" in section:
        pairs, conv = zip(section["offset"], section["scale"]), _from_offset_scale
    elif "mean" in section and "std" in section:
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization mode {mode!r} (known: {NORMALIZATIONS})")
        pairs, conv = zip(section["mean"], section["std"]), (_from_zscore if mode == "zscore" else _from_2sigma)
    else:
        raise ValueError(f"normalization section needs lo/hi, mean/std or offset/scale, got keys {sorted(section)}")
    offset, scale = [], []
    for a, b in pairs:
        ab = conv(float(a), float(b)) if _usable(a) and _usable(b) else None
        offset.append(ab[0] if ab else 0.0)
        scale.append(ab[1] if ab else 0.0)
    return section.get("bands"), offset, scale


def _from_lo_hi(lo: float, hi: float) -> tuple[float, float] | None:
    return (lo, 1.0 / (hi - lo)) if hi > lo else None


def _from_offset_scale(offset: float, scale: float) -> tuple[float, float] | None:
    return offset, scale


def _from_zscore(mean: float, std: float) -> tuple[float, float] | None:
    return (mean, 1.0 / std) if std > 0 else None


def _from_2sigma(mean: float, std: float) -> tuple[float, float] | None:
    return (mean - 2.0 * std, 1.0 / (4.0 * std)) if std > 0 else None


def _value_range(section: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
    """Per-band clip range of stored values (``-inf``/``inf`` where a section gives none)."""
    out = []
    for key, default in (("value_min", -math.inf), ("value_max", math.inf)):
        values = section.get(key) or [None] * n
        out.append([float(v) if _usable(v) else default for v in values])
    return out[0], out[1]


__all__ = ["NORMALIZATIONS", "BandNorm", "band_norm", "norm_from_record", "normalize_s1", "normalize_s2",
           "read_stats"]
