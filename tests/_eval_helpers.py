"""Helpers of the eval tests: tiny exported timm backbones written like ``eoforge export`` does."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.train.model_format import write_backbone

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=0)


def export_tiny_vit(path: Path, in_chans: int = 13, seed: int = 1, normalization: dict | None = None) -> Path:
    """A 2-block ViT (patch 8, 32 px) as ``path`` (.safetensors) + ``.json``, with a model normalisation."""
    bands = list(S2_BAND_NAMES) if in_chans == 13 else list(S1_BAND_NAMES)
    if normalization is None:
        normalization = ({"mode": "minmax2sigma", "bands": bands, "lo": [0.0] * 13, "hi": [4000.0] * 13}
                         if in_chans == 13 else
                         {"mode": "zscore", "bands": bands, "mean": [-12.5, -20.0], "std": [5.0, 6.0]})
    kwargs = {**TINY_VIT, "in_chans": in_chans}
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    meta = {"format": "eoforge-backbone/1", "timm_model": "vit_tiny_patch16_224", "timm_kwargs": kwargs,
            "in_chans": in_chans, "img_size": 32, "bands": bands, "normalization": normalization,
            "method": "test", "config": {}, "manifest_sha256": None}
    return write_backbone(model, path, meta)[0]
