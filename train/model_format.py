"""The exported-backbone files: ``MODEL.safetensors`` + ``MODEL.json``, written here, read here.

One module for the format ``eoforge export`` writes (:func:`write_backbone`) and everything
downstream reads (:func:`read_model_info`, :func:`load_backbone`, :func:`random_init_backbone`:
eval's probes and random-init twin, ``eoforge embed``, ``eoforge compare``, tests). The JSON
beside the weights (same name, ``.json``; a ``MODEL.json`` in the same folder is accepted too)::

    {"timm_model": "vit_small_patch16_224", "timm_kwargs": {"in_chans": 13, "num_classes": 0, "img_size": 224},
     "in_chans": 13, "img_size": 224, "bands": ["B1", ..., "B12"],
     "normalization": {"mode": "minmax2sigma", "bands": [...], "offset": [...], "scale": [...], "mean": [...], "std": [...],
                       "lo": [...], "hi": [...], ...},
     "method": "pera", "config": {...}, "manifest_sha256": "..."}

``normalization`` is the record training writes (``describe_dataset`` in
:mod:`eoforge.train.engine`: per band ``offset``/``scale`` and the ``mean``/``std`` they come
from, ``lo``/``hi`` for ``minmax2sigma``, ``value_min``/``value_max`` where values are clipped);
readers turn it into inputs with :func:`eoforge.shards.normalize.norm_from_record`.

The model is rebuilt with ``timm.create_model(timm_model, pretrained=False, **timm_kwargs)``
(without ``timm_kwargs``: ``in_chans``, ``num_classes=0`` and, for ViTs, ``img_size``) and the
weights are loaded with ``strict=True``. A name only eoforge registers (the demo's
``vit_pico_patch8``) is built as the plain timm model with the same shapes
(:data:`PORTABLE_NAMES`), so reading needs no eoforge model code. Nothing is fetched from a hub.
Both files are written whole or not at all (:mod:`eoforge.shards.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eoforge.shards.atomic import atomic_path, write_text_atomic
from eoforge.shards.digest import file_sha256

#: eoforge-registered timm names -> (a plain timm name, the arguments that give the same shapes)
PORTABLE_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_pico_patch8": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4,
                                                 "num_heads": 2}),
}


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


def portable_timm_model(name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A timm name and kwargs plain timm builds (no eoforge import) for the same module."""
    if name in PORTABLE_NAMES:
        base, shape = PORTABLE_NAMES[name]
        return base, {**shape, **kwargs}
    return name, dict(kwargs)


def _create_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):  # eoforge's own names, when eoforge.train.models is not imported
        name, kwargs = portable_timm_model(name, kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


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


def random_init_backbone(info: ModelInfo, seed: int | None = None) -> nn.Module:
    """A randomly initialised backbone of ``info``'s architecture (seeded, global RNG untouched):
    eval's random-init twin, and the module :func:`load_backbone` loads the weights into."""
    kwargs = dict(info.timm_kwargs)
    if "timm_kwargs" not in info.meta and info.img_size is not None:
        kwargs["img_size"] = info.img_size  # ViTs need it; CNNs reject it (retried below)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = _create_model(info.timm_model, kwargs)
        except TypeError:
            if "img_size" not in kwargs or "timm_kwargs" in info.meta:
                raise
            kwargs.pop("img_size")
            if seed is not None:
                torch.manual_seed(seed)
            model = _create_model(info.timm_model, kwargs)
    return model.eval()


def load_backbone(weights: str | os.PathLike[str]) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the exported backbone and load its weights (strict); return it in eval mode.

    Raises:
        ModelFormatError: the state dict does not fit the architecture the JSON names.
    """
    from safetensors.torch import load_file

    info = read_model_info(weights)
    model = random_init_backbone(info, seed=0)
    state = load_file(str(info.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFormatError(
            f"{info.weights}: weights do not fit {info.timm_model} {info.timm_kwargs}: {err}") from err
    return model.eval(), info


def write_backbone(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike[str],
                   meta: dict[str, Any], metadata: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write a state dict (or ``model``'s) as ``path`` (safetensors, ``metadata`` in its header)
    and ``meta`` as the JSON beside it, each whole or not at all; return both paths.

    What ``eoforge export`` writes; also for tests and for wrapping third-party timm weights."""
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # safetensors refuses shared storage: every tensor into its own contiguous CPU buffer
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    meta_path = write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path, meta_path
