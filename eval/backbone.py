"""Load an exported backbone (``MODEL.safetensors`` + ``MODEL.json``) and build its random-init twin.

``eoforge export`` writes a timm state dict plus a JSON beside it (same name, ``.json``; a
``MODEL.json`` in the same folder is accepted too)::

    {"timm_model": "vit_small_patch16_224", "timm_kwargs": {"in_chans": 13, "num_classes": 0, "img_size": 224},
     "in_chans": 13, "img_size": 224, "bands": ["B1", ..., "B12"],
     "normalization": {"mode": "minmax2sigma", "bands": [...], "lo": [...], "hi": [...]},
     "method": "pera", "config": {...}, "manifest_sha256": "..."}

The model is rebuilt with ``timm.create_model(timm_model, pretrained=False, **timm_kwargs)``
(without ``timm_kwargs``: ``in_chans``, ``num_classes=0`` and, for ViTs, ``img_size``) and the
weights are loaded with ``strict=True``. ``eoforge.train.models`` is imported first when it
exists: it registers the tiny demo ViT's name with timm. Nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eoforge.shards.digest import file_sha256


class ModelFormatError(ValueError):
    """The weights or their JSON are missing or do not fit together; the message names the file."""


@dataclass(frozen=True)
class ModelInfo:
    """What ``MODEL.json`` says about an exported backbone.

    Attributes:
        weights: the ``.safetensors`` file.
        meta_path: the JSON file read.
        timm_model: timm model name.
        timm_kwargs: keyword arguments of ``timm.create_model`` (``in_chans``, ``num_classes=0``, ...).
        in_chans: input channels.
        img_size: ViT input size in pixels (None for CNNs / unknown).
        bands: input channel names in order (``"B1".."B12"``, ``"VV"``, ``"VH"``); None if unknown.
        normalization: the normalisation the model was trained with (see :mod:`eoforge.eval.inputs`).
        method: pretraining method name.
        manifest_sha256: sha256 of the training dataset's manifest.
        weights_sha256: sha256 of the ``.safetensors`` bytes (identifies the weights in reports).
        meta: the whole JSON.
    """

    weights: Path
    meta_path: Path
    timm_model: str
    timm_kwargs: dict[str, Any]
    in_chans: int
    img_size: int | None
    bands: tuple[str, ...] | None
    normalization: dict[str, Any] | None
    method: str | None
    manifest_sha256: str | None
    weights_sha256: str
    meta: dict[str, Any] = field(repr=False)


def _register_project_models() -> None:
    """Import ``eoforge.train.models`` (registers the tiny ViT with timm) when it exists."""
    try:
        importlib.import_module("eoforge.train.models")
    except ModuleNotFoundError as err:
        if err.name not in ("eoforge.train.models", "eoforge.train"):
            raise


def read_model_info(weights: str | os.PathLike[str]) -> ModelInfo:
    """Read the JSON beside ``weights``.

    Raises:
        ModelFormatError: no weights file, no JSON, or a JSON without ``timm_model`` / ``in_chans``.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ModelFormatError(f"{weights}: no such weights file")
    candidates = [weights.with_suffix(".json"), weights.parent / "MODEL.json"]
    meta_path = next((p for p in candidates if p.is_file()), None)
    if meta_path is None:
        raise ModelFormatError(f"{weights}: no {candidates[0].name} beside it (written by `eoforge export`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFormatError(f"{meta_path}: not valid JSON: {err}") from err
    missing = [k for k in ("timm_model", "in_chans") if k not in meta]
    if missing:
        raise ModelFormatError(f"{meta_path}: missing key(s) {missing}")
    in_chans = int(meta["in_chans"])
    img_size = meta.get("img_size")
    kwargs = dict(meta.get("timm_kwargs") or {})
    kwargs.setdefault("in_chans", in_chans)
    kwargs["num_classes"] = 0
    bands = meta.get("bands")
    if bands is not None and len(bands) != in_chans:
        raise ModelFormatError(f"{meta_path}: {len(bands)} bands for in_chans={in_chans}")
    return ModelInfo(
        weights=weights,
        meta_path=meta_path,
        timm_model=str(meta["timm_model"]),
        timm_kwargs=kwargs,
        in_chans=in_chans,
        img_size=int(img_size) if img_size else None,
        bands=tuple(bands) if bands is not None else None,
        normalization=meta.get("normalization"),
        method=meta.get("method"),
        manifest_sha256=meta.get("manifest_sha256"),
        weights_sha256=file_sha256(weights),
        meta=meta,
    )


def create_backbone(info: ModelInfo, seed: int | None = None) -> nn.Module:
    """A randomly initialised backbone of ``info``'s architecture (seeded, global RNG untouched)."""
    import timm

    _register_project_models()
    kwargs = dict(info.timm_kwargs)
    if "timm_kwargs" not in info.meta and info.img_size is not None:
        kwargs["img_size"] = info.img_size  # ViTs need it; CNNs reject it (retried below)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = timm.create_model(info.timm_model, pretrained=False, **kwargs)
        except TypeError:
            if "img_size" not in kwargs or "timm_kwargs" in info.meta:
                raise
            kwargs.pop("img_size")
            if seed is not None:
                torch.manual_seed(seed)
            model = timm.create_model(info.timm_model, pretrained=False, **kwargs)
    return model.eval()


def load_backbone(weights: str | os.PathLike[str]) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the exported backbone and load its weights (strict); return it in eval mode.

    Raises:
        ModelFormatError: the state dict does not fit the architecture the JSON names.
    """
    from safetensors.torch import load_file

    info = read_model_info(weights)
    model = create_backbone(info, seed=0)
    state = load_file(str(info.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFormatError(
            f"{info.weights}: weights do not fit {info.timm_model} {info.timm_kwargs}: {err}") from err
    return model.eval(), info


def write_backbone(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict as safetensors plus ``meta`` as the JSON beside it.

    The same format as ``eoforge export``; for tests and for wrapping third-party timm weights.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
