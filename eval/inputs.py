"""From a shard sample to the backbone's input: time step, band selection, normalisation, resizing.

A probe looks at one time step of a sample: the first, or for a model that reads S1 the first
whose S1 holds data (S1 is paired to only some steps; a step without it would be all zeros).
:meth:`InputSpec.decode` decodes only that step of the members the model reads
(:func:`eoforge.shards.reader.decode_sample` with ``step=``), then :meth:`InputSpec.prepare`:

- channels in the model's band order (``MODEL.json`` ``bands``): S2 bands from ``s2``
  (uint16 DN), ``VV``/``VH`` from ``s1`` (dB) — a 13-band S2 model reads S2, an S1-branch
  model (``in_chans=2``) reads S1, a stacked model reads both;
- normalised by :mod:`eoforge.shards.normalize`, the code training runs: ``x' = (x - offset)
  * scale`` per band, optionally clipped to [0, 1]; pixels without data (S2 DN 0; S1 outside
  ``s1valid`` or with a non-finite polarisation) become 0, and so does every pixel of a band
  the model had no statistics for (``scale = 0``, e.g. the zero B10 placeholder of L2A
  training data, whatever the evaluation data holds there);
- resized (bilinear, antialiased) to the model's ``img_size`` when the tile size differs.

The normalisation comes from the model (``MODEL.json`` ``normalization``: what it was trained
with; default) or from the evaluation dataset's ``stats.json`` (``source="dataset"``, with the
model's mode, clipping and S1 value ranges). Record forms:
:func:`eoforge.shards.normalize.norm_from_record`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eoforge.shards.encoding import decode_array
from eoforge.shards.normalize import BandNorm, band_norm, norm_from_record, normalize_s1, normalize_s2, read_stats
from eoforge.shards.reader import decode_sample
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


def _modality_bands(bands: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The model's bands per modality, each in model order (``{"s2": (...), "s1": (...)}``)."""
    out = {m: tuple(b for b in bands if b in names) for m, names in (("s2", S2_BAND_NAMES), ("s1", S1_BAND_NAMES))}
    unknown = [b for b in bands if b not in S2_BAND_NAMES and b not in S1_BAND_NAMES]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown} (S2: {list(S2_BAND_NAMES)}, S1: {list(S1_BAND_NAMES)})")
    return {m: b for m, b in out.items() if b}


@dataclass(frozen=True)
class InputSpec:
    """How samples become model inputs.

    Attributes:
        bands: channel names in model order.
        norms: the normalisation per modality the model reads (``"s2"``, ``"s1"``), each over
            that modality's bands in model order.
        source: ``"model"`` (MODEL.json) or ``"dataset"`` (the dataset's stats.json).
        img_size: square input size in pixels, or None to keep the tile size.
    """

    bands: tuple[str, ...]
    norms: dict[str, BandNorm]
    source: str
    img_size: int | None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.norms)

    @property
    def members(self) -> frozenset[str]:
        """The tar members the model's inputs are made of."""
        return frozenset(n for m in self.modalities for n in (("s1", "s1valid") if m == "s1" else ("s2",)))

    def time_step(self, sample: dict[str, Any]) -> int:
        """The time step a probe reads: 0, or for a model that reads S1 the first with S1 data.

        ``sample`` is decoded (``s1valid`` an array) or raw (``s1valid.npy.zst`` bytes: only
        that small mask is decoded).

        Raises:
            MissingInput: a member the model reads is absent, or (S1) no step has S1 data.
        """
        if "time_step" in sample:  # decoded by :meth:`decode`: it holds that step only
            return int(sample["time_step"])
        return self._step(sample, self._s1_mask(sample))

    def decode(self, raw: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """A raw shard sample decoded for a probe: ``meta`` and, at :meth:`time_step` only, the
        members the model reads plus ``extra`` (e.g. ``("lc",)``), each with a time axis of 1.

        Raises:
            MissingInput: as :meth:`time_step`.
            DecodeError: a member does not decode.
        """
        valid = self._s1_mask(raw)
        step = self._step(raw, valid)
        members = self.members | set(extra)
        if valid is not None:  # decoded whole to find the step: not decoded again
            members -= {"s1valid"}
        sample = decode_sample(raw, members=members, step=step)
        if valid is not None:
            sample["s1valid"] = valid[step:step + 1]
        sample["time_step"] = step
        return sample

    def _s1_mask(self, sample: dict[str, Any]) -> np.ndarray | None:
        """The whole ``s1valid`` ``[T, H, W]`` of a decoded or raw sample, for a model that reads
        S1 (None for one that does not); checks the members the model reads are there."""
        key = sample.get("__key__")
        present = {name.partition(".")[0] for name in sample}
        for m in self.modalities:
            if m not in present:
                raise MissingInput(f"{key}: no {m} member (the model reads {', '.join(self.bands)})")
        if "s1" not in self.modalities:
            return None
        if "s1valid" in sample:
            return np.asarray(sample["s1valid"])
        ext = next((n for n in sample if n.partition(".")[0] == "s1valid"), None)
        if ext is None:
            raise MissingInput(f"{key}: no s1valid member")
        return decode_array(sample[ext], ext.partition(".")[2])

    @staticmethod
    def _step(sample: dict[str, Any], valid: np.ndarray | None) -> int:
        if valid is None:
            return 0
        with_s1 = np.flatnonzero(valid.reshape(len(valid), -1).any(axis=1))
        if not len(with_s1):
            raise MissingInput(f"{sample.get('__key__')}: no time step with S1 data")
        return int(with_s1[0])

    def prepare(self, sample: dict[str, Any], t: int | None = None) -> torch.Tensor:
        """The model input of a decoded sample: float32 ``[C, S, S]`` (``S = img_size``).

        Args:
            sample: as :func:`eoforge.shards.reader.decode_sample` returns it (``s2`` uint16
                ``[T, 13, H, W]``, ``s1`` float ``[T, 2, H, W]`` dB, ``s1valid`` bool ``[T, H, W]``).
            t: time step to read (default: :meth:`time_step`, what the probes read; 0 for a
                sample from :meth:`decode`, which holds that step only).

        Raises:
            MissingInput: the sample has no member for a band the model reads, or (S1) no
                time step with S1 data (with ``t``: step ``t`` has none).
        """
        key = sample.get("__key__")
        if "time_step" in sample:  # decoded by :meth:`decode`: index 0 is that step
            t = 0
        elif t is None:
            t = self.time_step(sample)
        else:
            for m in self.modalities:
                if m not in sample:
                    raise MissingInput(f"{key}: no {m} member (the model reads {', '.join(self.bands)})")
            if "s1" in self.modalities and not sample["s1valid"][t].any():
                raise MissingInput(f"{key}: no S1 data in time step {t}")
        parts: dict[str, np.ndarray] = {}
        if "s2" in self.norms:
            norm = self.norms["s2"]
            parts["s2"] = normalize_s2(sample["s2"][t, [S2_BAND_NAMES.index(b) for b in norm.bands]], norm)
        if "s1" in self.norms:
            norm = self.norms["s1"]
            parts["s1"], _ = normalize_s1(sample["s1"][t, [S1_BAND_NAMES.index(b) for b in norm.bands]],
                                          sample["s1valid"][t], norm)
        channel = {b: (m, i) for m, norm in self.norms.items() for i, b in enumerate(norm.bands)}
        x = np.stack([parts[channel[b][0]][channel[b][1]] for b in self.bands])
        out = torch.from_numpy(x)
        if self.img_size is not None and tuple(out.shape[-2:]) != (self.img_size, self.img_size):
            out = F.interpolate(out[None], size=(self.img_size, self.img_size), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        return out

    @property
    def mode(self) -> str:
        """``"minmax2sigma"`` or ``"zscore"``."""
        return next(iter(self.norms.values())).mode

    @property
    def clip(self) -> bool:
        """Normalised values are clipped to [0, 1]."""
        return next(iter(self.norms.values())).clip

    @property
    def offset(self) -> np.ndarray:
        """float32 ``[C]`` in model band order, stored units (S2 DN, S1 dB)."""
        return self._per_band("offset")

    @property
    def scale(self) -> np.ndarray:
        """float32 ``[C]`` in model band order; 0 for a band without statistics."""
        return self._per_band("scale")

    def _per_band(self, field: str) -> np.ndarray:
        by_band = {b: v for norm in self.norms.values() for b, v in zip(norm.bands, getattr(norm, field))}
        return np.asarray([by_band[b] for b in self.bands], np.float32)

    def describe(self) -> dict[str, Any]:
        """The settings a report needs to reproduce the inputs."""
        step = "first with S1 data" if "s1" in self.modalities else "first"
        out: dict[str, Any] = {
            "bands": list(self.bands), "time_step": step, "normalization": self.mode,
            "normalization_source": self.source, "clip": self.clip, "img_size": self.img_size,
            "offset": [round(float(v), 6) for v in self.offset],
            "scale": [float(f"{v:.6g}") for v in self.scale]}
        if any(n.value_min is not None for n in self.norms.values()):
            ranges = {b: (float(lo), float(hi)) for n in self.norms.values() if n.value_min is not None
                      for b, lo, hi in zip(n.bands, n.value_min, n.value_max)}  # type: ignore[arg-type]
            lows = [ranges.get(b, (-np.inf, np.inf))[0] for b in self.bands]
            highs = [ranges.get(b, (-np.inf, np.inf))[1] for b in self.bands]
            out["value_min"] = [v if np.isfinite(v) else None for v in lows]
            out["value_max"] = [v if np.isfinite(v) else None for v in highs]
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
    bands = tuple(info.bands or default_bands(info.in_chans))
    per_modality = _modality_bands(bands)
    record = info.normalization if isinstance(info.normalization, dict) else None
    if source == "model" and record:
        norms = {m: norm_from_record(record, m, b) for m, b in per_modality.items()}
        used = "model"
    else:
        if data is None:
            raise ValueError("no normalisation in the model JSON and no dataset to read stats.json from")
        try:
            stats = read_stats(Path(data))
        except FileNotFoundError as err:
            raise ValueError(str(err)) from err
        mode = (record or {}).get("mode") or "minmax2sigma"
        norms = {}
        for m, b in per_modality.items():
            # the model's rules (mode, [0, 1] clip, S1 value ranges) hold whatever statistics are used
            rules = norm_from_record(record, m, b) if record else None
            value_range = None
            if rules is not None and rules.value_min is not None and rules.value_max is not None:
                value_range = list(zip(rules.value_min, rules.value_max))
            full = band_norm(stats, m, mode, clip=bool((record or {}).get("clip", False)))
            norms[m] = _with_range(full.select(b), value_range)
        used = "dataset"
    return InputSpec(bands=bands, norms=norms, source=used,
                     img_size=img_size if img_size is not None else info.img_size)


def _with_range(norm: BandNorm, value_range: list[tuple[float, float]] | None) -> BandNorm:
    if value_range is None:
        return norm
    lo, hi = (np.asarray(v, np.float32) for v in zip(*value_range))
    return replace(norm, value_min=lo, value_max=hi)
