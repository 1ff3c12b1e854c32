"""From a decoded sample to the backbone's input: band selection, normalisation, resizing.

A probe looks at one time step of a sample: the first, or for a model that reads S1 the first
whose S1 holds data (S1 is paired to only some steps; a step without it would be all zeros):

- channels in the model's band order (``MODEL.json`` ``bands``): S2 bands from ``s2[t]``
  (uint16 DN), ``VV``/``VH`` from ``s1[t]`` (dB) — a 13-band S2 model reads S2, an S1-branch
  model (``in_chans=2``) reads S1, a stacked model reads both;
- normalised per band with the same affine rule as training (``eoforge.train.data.normalize``):
  ``x' = (x - offset) * scale``, optionally clipped to [0, 1]; pixels without data (S2 DN 0,
  S1 outside ``s1valid`` or not finite) become 0, and so does every pixel of a band the model
  had no statistics for (``scale = 0``, e.g. the zero B10 placeholder of L2A training data,
  whatever the evaluation data holds there);
- resized (bilinear, antialiased) to the model's ``img_size`` when the tile size differs.

The normalisation comes from the model (``MODEL.json`` ``normalization``: what it was trained
with; default) or from the evaluation dataset's ``stats.json`` (``source="dataset"``). Accepted
``normalization`` forms: ``{"mode", "bands", "lo", "hi"}`` (lo -> 0, hi -> 1),
``{"mode", "bands", "mean", "std"}`` (``mode`` ``"minmax2sigma"`` or ``"zscore"``),
``{"mode", "bands", "offset", "scale"}``, optionally ``"clip": true`` and per band
``"value_min"``/``"value_max"`` (stored values clipped to that range first, e.g. S1 dB; ``None``
entries: no clip), or a dict of such sections per modality (``{"s2": {...}, "s1": {...}}``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.train.model_format import ModelInfo

NORMALIZATION_SOURCES = ("model", "dataset")


class MissingInput(ValueError):
    """A sample lacks the modality the model reads (e.g. no ``s1`` for an S1 model)."""


def default_bands(in_chans: int) -> tuple[str, ...]:
    """Band order for a model whose JSON does not list bands: 13 -> S2, 2 -> S1, 15 -> S2 + S1."""
    by_count = {len(S2_BAND_NAMES): S2_BAND_NAMES, len(S1_BAND_NAMES): S1_BAND_NAMES,
                len(S2_BAND_NAMES) + len(S1_BAND_NAMES): S2_BAND_NAMES + S1_BAND_NAMES}
    if in_chans not in by_count:
        raise ValueError(f"cannot guess the bands of a {in_chans}-channel model; its JSON must list them")
    return by_count[in_chans]


def _usable(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _value_range(section: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band clip range of stored values (``-inf``/``inf`` where a section gives none)."""
    out = []
    for key, default in (("value_min", -np.inf), ("value_max", np.inf)):
        values = section.get(key) or [None] * n
        out.append(np.asarray([default if not _usable(v) else float(v) for v in values], np.float32))
    return out[0], out[1]


def _section_affine(section: dict[str, Any], mode: str | None) -> tuple[list[str] | None, np.ndarray, np.ndarray, bool]:
    """(bands, offset, scale, clip) of one normalisation section; unusable bands get scale 0."""
    mode = section.get("mode", mode) or "minmax2sigma"
    bands = section.get("bands")
    clip = bool(section.get("clip", False))
    if "lo" in section and "hi" in section:
        pairs = zip(section["lo"], section["hi"])
        conv = lambda lo, hi: (lo, 1.0 / (hi - lo)) if hi > lo else None  # noqa: E731
    elif "offset" in section and "scale" in section:
        pairs = zip(section["offset"], section["scale"])
        conv = lambda o, s: (o, s)  # noqa: E731
    elif "mean" in section and "std" in section:
        pairs = zip(section["mean"], section["std"])
        if mode == "zscore":
            conv = lambda m, s: (m, 1.0 / s) if s > 0 else None  # noqa: E731
        elif mode == "minmax2sigma":
            conv = lambda m, s: (m - 2.0 * s, 1.0 / (4.0 * s)) if s > 0 else None  # noqa: E731
        else:
            raise ValueError(f"unknown normalization mode {mode!r} (known: minmax2sigma, zscore)")
    else:
        raise ValueError(f"normalization section needs lo/hi, mean/std or offset/scale, got keys {sorted(section)}")
    offset, scale = [], []
    for a, b in pairs:
        ab = conv(float(a), float(b)) if _usable(a) and _usable(b) else None
        offset.append(ab[0] if ab else 0.0)
        scale.append(ab[1] if ab else 0.0)
    return bands, np.asarray(offset, np.float32), np.asarray(scale, np.float32), clip


def _affine_for_bands(spec: dict[str, Any], bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, bool, str, np.ndarray,
                                                                           np.ndarray]:
    """Per-band (offset, scale, clip, mode, value_min, value_max) in ``bands`` order from a
    normalisation dict (flat or per modality)."""
    mode = spec.get("mode")
    sections = [spec] if any(k in spec for k in ("lo", "mean", "offset")) else [
        {**v, "bands": v.get("bands", list(S2_BAND_NAMES if k == "s2" else S1_BAND_NAMES))}
        for k, v in spec.items() if k in ("s2", "s1") and isinstance(v, dict)
    ]
    if not sections:
        raise ValueError(f"normalization has no statistics (keys: {sorted(spec)})")
    by_band: dict[str, tuple[float, float, float, float]] = {}
    clip = False
    for i, section in enumerate(sections):
        names, offset, scale, c = _section_affine(section, mode)
        lo, hi = _value_range(section, len(offset))
        clip |= c
        if names is None:
            if len(sections) > 1 or len(offset) != len(bands):
                raise ValueError("normalization without band names must have one value per model band")
            names = list(bands)
        if len(names) != len(offset):
            raise ValueError(f"normalization lists {len(names)} bands but {len(offset)} values")
        by_band.update({n: (float(o), float(s), float(a), float(b)) for n, o, s, a, b in zip(names, offset, scale, lo, hi)})
        mode = mode or section.get("mode")
    missing = [b for b in bands if b not in by_band]
    if missing:
        raise ValueError(f"normalization has no statistics for band(s) {missing}")
    columns = np.asarray([by_band[b] for b in bands], np.float32).T
    return columns[0], columns[1], clip, mode or "minmax2sigma", columns[2], columns[3]


@dataclass(frozen=True)
class InputSpec:
    """How samples become model inputs.

    Attributes:
        bands: channel names in model order.
        offset: float32 ``[C]`` in stored units (DN for S2, dB for S1).
        scale: float32 ``[C]``; 0 marks a band without statistics (input 0).
        clip: clip normalised values to [0, 1].
        mode: ``"minmax2sigma"`` or ``"zscore"`` (for the report).
        source: ``"model"`` (MODEL.json) or ``"dataset"`` (the dataset's stats.json).
        img_size: square input size in pixels, or None to keep the tile size.
        value_min, value_max: float32 ``[C]`` range stored values are clipped to before the
            affine map (``-inf``/``inf``: none), e.g. the dual encoder's S1 dB range.
    """

    bands: tuple[str, ...]
    offset: np.ndarray
    scale: np.ndarray
    clip: bool
    mode: str
    source: str
    img_size: int | None
    value_min: np.ndarray | None = None
    value_max: np.ndarray | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, names in (("s2", S2_BAND_NAMES), ("s1", S1_BAND_NAMES)) if set(self.bands) & set(names))

    def time_step(self, sample: dict[str, Any]) -> int:
        """The time step a probe reads: 0, or for a model that reads S1 the first with S1 data.

        Raises:
            MissingInput: a member the model reads is absent, or (S1) no step has S1 data.
        """
        key = sample.get("__key__")
        for m in self.modalities:
            if m not in sample:
                raise MissingInput(f"{key}: no {m} member (the model reads {', '.join(self.bands)})")
        if "s1" not in self.modalities:
            return 0
        with_s1 = np.flatnonzero(sample["s1valid"].reshape(len(sample["s1valid"]), -1).any(axis=1))
        if not len(with_s1):
            raise MissingInput(f"{key}: no time step with S1 data")
        return int(with_s1[0])

    def prepare(self, sample: dict[str, Any], t: int | None = None) -> torch.Tensor:
        """The model input of a decoded sample: float32 ``[C, S, S]`` (``S = img_size``).

        Args:
            sample: as :func:`eoforge.shards.reader.decode_sample` returns it (``s2`` uint16
                ``[T, 13, H, W]``, ``s1`` float ``[T, 2, H, W]`` dB, ``s1valid`` bool ``[T, H, W]``).
            t: time step to read (default: :meth:`time_step`, what the probes read).

        Raises:
            MissingInput: the sample has no member for a band the model reads, or (S1) no
                time step with S1 data (with ``t``: step ``t`` has none).
        """
        key = sample.get("__key__")
        if t is None:
            t = self.time_step(sample)
        else:
            for m in self.modalities:
                if m not in sample:
                    raise MissingInput(f"{key}: no {m} member (the model reads {', '.join(self.bands)})")
            if "s1" in self.modalities and not sample["s1valid"][t].any():
                raise MissingInput(f"{key}: no S1 data in time step {t}")
        channels = []
        for band in self.bands:
            if band in S2_BAND_NAMES:
                x = sample["s2"][t, S2_BAND_NAMES.index(band)]
                valid = x != 0
            else:
                x = sample["s1"][t, S1_BAND_NAMES.index(band)]
                valid = sample["s1valid"][t] & np.isfinite(x)
            channels.append((x, valid))
        x = np.stack([c for c, _ in channels]).astype(np.float32)
        valid = np.stack([v for _, v in channels])
        if self.value_min is not None and self.value_max is not None:
            np.clip(x, self.value_min[:, None, None], self.value_max[:, None, None], out=x)
        x -= self.offset[:, None, None]
        x *= self.scale[:, None, None]
        if self.clip:
            np.clip(x, 0.0, 1.0, out=x)
        x[~valid | ~np.isfinite(x)] = 0.0
        out = torch.from_numpy(x)
        if self.img_size is not None and tuple(out.shape[-2:]) != (self.img_size, self.img_size):
            out = F.interpolate(out[None], size=(self.img_size, self.img_size), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        return out

    def describe(self) -> dict[str, Any]:
        """The settings a report needs to reproduce the inputs."""
        step = "first with S1 data" if "s1" in self.modalities else "first"
        out = {"bands": list(self.bands), "time_step": step, "normalization": self.mode,
               "normalization_source": self.source, "clip": self.clip, "img_size": self.img_size,
               "offset": [round(float(v), 6) for v in self.offset],
               "scale": [float(f"{v:.6g}") for v in self.scale]}
        if self.value_min is not None and self.value_max is not None and np.isfinite(
                np.concatenate([self.value_min, self.value_max])).any():
            out["value_min"] = [float(v) if np.isfinite(v) else None for v in self.value_min]
            out["value_max"] = [float(v) if np.isfinite(v) else None for v in self.value_max]
        return out


def input_spec(info: ModelInfo, data: str | os.PathLike[str] | None = None, source: str = "model",
               img_size: int | None = None) -> InputSpec:
    """The :class:`InputSpec` of a model on a dataset.

    Args:
        info: the model's JSON.
        data: dataset folder (its ``stats.json`` is read when ``source="dataset"``, or when the
            model JSON carries no normalisation).
        source: ``"model"`` or ``"dataset"``.
        img_size: input size override (default: the model's ``img_size``).

    Raises:
        ValueError: no usable normalisation.
    """
    if source not in NORMALIZATION_SOURCES:
        raise ValueError(f"normalization source must be one of {NORMALIZATION_SOURCES}, got {source!r}")
    bands = info.bands or default_bands(info.in_chans)
    model_norm = info.normalization if isinstance(info.normalization, dict) else None
    if source == "model" and model_norm:
        offset, scale, clip, mode, vmin, vmax = _affine_for_bands(model_norm, bands)
        used = "model"
    else:
        if data is None:
            raise ValueError("no normalisation in the model JSON and no dataset to read stats.json from")
        path = Path(data) / "stats.json"
        if not path.is_file():
            raise ValueError(f"{path}: no stats.json (run `eoforge shards stats {data}`)")
        stats = json.loads(path.read_text())
        mode = (model_norm or {}).get("mode") or "minmax2sigma"
        spec = {"mode": mode, **{m: stats[m] for m in ("s2", "s1") if m in stats}}
        offset, scale, clip, mode, vmin, vmax = _affine_for_bands(spec, bands)
        if model_norm:  # the model's clipping rules hold whatever statistics are used
            _, _, _, _, vmin, vmax = _affine_for_bands(model_norm, bands)
        clip = bool((model_norm or {}).get("clip", False))
        used = "dataset"
    return InputSpec(bands=tuple(bands), offset=offset, scale=scale, clip=clip, mode=mode, source=used,
                     img_size=img_size if img_size is not None else info.img_size, value_min=vmin, value_max=vmax)
