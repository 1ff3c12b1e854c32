"""The TerraTorch backbone block of an exported backbone (``MODEL.terratorch.yaml``).

``eoforge export`` writes it beside ``MODEL.safetensors`` and ``MODEL.json`` so the backbone
loads in TerraTorch (and so in GEO-Bench / PANGAEA pipelines built on it) with no eoforge
code at run time. TerraTorch builds ``backbone: timm_<name>`` through its timm registry as
``timm.create_model(<name>, features_only=True, **backbone_<kwargs>)``; the block gives:

- ``model_args``: ``backbone`` (a name plain timm knows: the demo's ``vit_pico_patch8``,
  registered by eoforge, becomes ``vit_tiny_patch16_224`` with its shape arguments), the
  shape arguments of MODEL.json's ``timm_kwargs`` as ``backbone_*`` (``in_chans``,
  ``img_size``, ``patch_size``, ResNet ``channels``…), and the weights as
  ``backbone_pretrained: true`` with ``backbone_pretrained_cfg_overlay: {file: …}``: timm
  loads the safetensors file itself. The overlay also sets ``first_conv: null`` (else timm,
  seeing ``in_chans != 3``, would try to adapt the patch embedding of an RGB checkpoint and
  drop ours) and ``num_classes: 0`` (no classifier in the file);
- ``data``: the bands in channel order and the normalisation as the ``means`` / ``stds``
  TerraTorch's datamodules apply (``(x - mean) / std``), from MODEL.json's
  ``(x - offset) * scale``: ``mean = offset``, ``std = 1 / scale``. What that form cannot say
  is in ``notes``: a band with no statistics (scale 0) gets ``std`` 1e12 (≈ 0 after
  normalisation), eoforge's clipping (the dual encoder's S1 dB range, SoftCon's [0, 1]) is
  not applied, and no-data pixels (S2 DN 0, S1 NaN) must be 0 after normalisation.

Paste ``model_args`` under ``model.init_args.model_args`` of a TerraTorch task config (any
decoder; ViT backbones usually want a ``necks`` entry ``ReshapeTokensToImage``) and ``data``
into the datamodule's ``means`` / ``stds`` / ``bands``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from eoforge.shards.atomic import write_text_atomic
from eoforge.train.model_format import portable_timm_model

#: ``std`` of a band without statistics: (x - mean) / std ≈ 0 as eoforge's scale 0 gives.
NO_STATS_STD = 1e12


def terratorch_block_path(weights: str | Path) -> Path:
    """``MODEL.terratorch.yaml`` beside ``MODEL.safetensors``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".terratorch.yaml")


def terratorch_block(meta: dict[str, Any], weights: str | Path) -> dict[str, Any]:
    """The block for MODEL.json's ``meta`` and its weights file (written with an absolute path)."""
    name, kwargs = portable_timm_model(meta["timm_model"], meta["timm_kwargs"])
    kwargs.pop("num_classes", None)  # features_only: no classifier
    model_args: dict[str, Any] = {
        "backbone": f"timm_{name}",
        "backbone_pretrained": True,
        "backbone_pretrained_cfg_overlay": {"file": str(Path(weights).resolve()), "first_conv": None,
                                            "num_classes": 0},
        **{f"backbone_{k}": _plain(v) for k, v in sorted(kwargs.items())},
    }
    norm = meta.get("normalization") or {}
    means, stds, notes = [], [], []
    for band, offset, scale in zip(meta["bands"], norm.get("offset") or [], norm.get("scale") or []):
        offset, scale = float(offset or 0.0), float(scale or 0.0)
        means.append(offset)
        if scale == 0.0 or not math.isfinite(scale):
            stds.append(NO_STATS_STD)
            notes.append(f"{band} has no statistics (eoforge maps it to 0): std {NO_STATS_STD:g}")
        else:
            stds.append(1.0 / scale)
    lows, highs = norm.get("value_min") or [], norm.get("value_max") or []
    clipped = [b for b, lo, hi in zip(meta["bands"], lows or [None] * len(highs), highs or [None] * len(lows))
               if lo is not None or hi is not None]
    if clipped:
        notes.append(f"eoforge clips {', '.join(clipped)} to [value_min, value_max] before normalising; TerraTorch "
                     f"does not: value_min {lows}, value_max {highs}")
    if norm.get("clip"):
        notes.append("eoforge clips the normalised values to [0, 1]; TerraTorch does not")
    notes.append("no-data pixels (S2 DN 0, S1 NaN) are 0 after eoforge's normalisation; set them so in your data")
    return {
        "model_args": model_args,
        "data": {"bands": list(meta["bands"]), "means": means, "stds": stds, "img_size": meta.get("img_size")},
        "notes": notes,
        "source": {"eoforge_format": meta.get("format"), "method": meta.get("method"), "branch": meta.get("branch"),
                   "step": meta.get("step"), "timm_model": meta["timm_model"]},
    }


def write_terratorch_block(meta: dict[str, Any], weights: str | Path) -> Path:
    """Write ``MODEL.terratorch.yaml`` (tmp file, then a rename) and return its path."""
    text = ("# TerraTorch backbone block of this eoforge export (train/terratorch_block.py).\n"
            "# model_args -> model.init_args.model_args of a TerraTorch task; data -> the datamodule.\n"
            + yaml.safe_dump(terratorch_block(meta, weights), sort_keys=False, width=120))
    return write_text_atomic(terratorch_block_path(weights), text)


def _plain(value: Any) -> Any:
    """YAML-safe: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
