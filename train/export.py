"""A training run -> a plain timm backbone: ``MODEL.safetensors`` + ``MODEL.json``.

``export_run(RUN, "model.safetensors")`` rebuilds the method from ``RUN/config.yaml``, loads
the latest checkpoint, takes ``method.export_backbone(branch)`` (PerA: the EMA teacher; SoftCon:
the online encoder; the dual encoder: its ``s2`` encoder, or ``s1`` with ``branch="s1"``) and
writes its state dict with safetensors. A branch's MODEL.json lists only the bands and the
normalisation of the modalities that encoder reads. ``MODEL.json`` beside it says how to use it::

    {"timm_model": "vit_small_patch16_224",      # timm.create_model name
     "timm_kwargs": {"in_chans": 13, "num_classes": 0, "img_size": 224},
     "in_chans": 13, "img_size": 224,
     "bands": ["B1", ..., "B12"],                # input channel order
     "normalization": {"mode": "minmax2sigma", "bands": [...], "offset": [...], "scale": [...], "mean": [...], "std": [...],
                       "lo": [...], "hi": [...], ...}  # no lo/hi for "zscore"
     "method": "pera", "branch": "main", "step": 1000, "config": {...the run's PretrainConfig...},
     "manifest_sha256": "…",                     # sha256 of the dataset's manifest.parquet bytes
     "data": "/path/to/DS", "run": "/path/to/RUN"}

``MODEL.stac.json`` beside them is the same model as a STAC item in the Machine Learning
Model extension (:mod:`eoforge.train.mlm_item`), for catalogs and tools that read MLM, and
``MODEL.terratorch.yaml`` the backbone block a TerraTorch config takes
(:mod:`eoforge.train.terratorch_block`).

Loading it back needs only timm::

    meta = json.load(open("model.json"))
    model = timm.create_model(meta["timm_model"], **meta["timm_kwargs"])
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

or ``model, info = eoforge.train.model_format.load_backbone("model.safetensors")``, which also
builds the tiny demo ViT from plain timm names (:mod:`eoforge.train.model_format`, the one
reader and writer of these files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eoforge.shards.atomic import write_text_atomic
from eoforge.train.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from eoforge.train.config import PretrainConfig
from eoforge.train.mlm_item import mlm_item, stac_item_path
from eoforge.train.model_format import write_backbone
from eoforge.train.terratorch_block import write_terratorch_block


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        weights: the ``.safetensors`` file (timm state dict of the backbone).
        meta: the ``.json`` file beside it.
        checkpoint: the checkpoint exported.
        num_tensors: tensors in the state dict.
        num_params: scalar weights in the state dict.
        branch: the encoder exported (``"main"`` for one-encoder methods).
        branches: every branch the method has (the first is the default).
    """

    weights: Path
    meta: Path
    checkpoint: Path
    num_tensors: int
    num_params: int
    branch: str = "main"
    branches: tuple[str, ...] = ("main",)


def timm_kwargs(model: Any, in_chans: int, backbone: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments of ``timm.create_model`` that rebuild the exported backbone's shapes
    (``model``: the ``ModelConfig`` that built it)."""
    from eoforge.train.models import is_swin, is_vit

    kwargs: dict[str, Any] = {**model.timm_kwargs, "in_chans": in_chans, "num_classes": 0}
    if is_vit(backbone) or is_swin(backbone):
        kwargs["img_size"] = model.img_size_px
        if model.patch_size_px is not None:
            kwargs["patch_size"] = model.patch_size_px
    return kwargs


def branch_inputs(facts: dict[str, Any], modalities: tuple[str, ...] | None) -> tuple[list[str], dict[str, Any]]:
    """The bands and the normalisation record of ``RUN/dataset.json`` restricted to ``modalities``
    (None: all), per-band lists filtered alike."""
    bands = list(facts.get("bands") or [])
    norm = dict(facts.get("normalization") or {})
    if modalities is None:
        return bands, norm
    n = len(norm.get("modality") or [])
    keep = [i for i, m in enumerate(norm.get("modality") or []) if m in modalities]
    for key, value in list(norm.items()):
        if isinstance(value, list) and len(value) == n:
            norm[key] = [value[i] for i in keep]
    return [bands[i] for i in keep], norm


def export_run(run: str | os.PathLike[str], out: str | os.PathLike[str],
               checkpoint: str | os.PathLike[str] | None = None, branch: str | None = None) -> ExportResult:
    """Export the backbone of a training run as a timm state dict plus metadata.

    Args:
        run: the run folder written by :func:`eoforge.train.engine.train`.
        out: the ``.safetensors`` file to write; the metadata goes to the same name with
            ``.json``.
        checkpoint: a specific checkpoint (default: ``RUN/checkpoints/latest``).
        branch: which encoder of a several-encoder method (the dual encoder: ``"s2"``, the
            default, or ``"s1"``); None: the method's first.

    Raises:
        FileNotFoundError: the run has no config or no checkpoint.
        ValueError: ``branch`` is not one of the method's.
    """

    from eoforge.train.methods import create_method

    run = Path(run)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run / CHECKPOINT_DIR)
    if ckpt is None or not ckpt.is_file():
        raise FileNotFoundError(f"{run}: no checkpoint in {run / CHECKPOINT_DIR} (has the run saved one yet?)")
    state = load_checkpoint(ckpt)
    # the checkpoint carries its config: it is the truth even if RUN/config.yaml was edited
    cfg = PretrainConfig.from_dict(state["config"], source=f"{ckpt} (config)")
    facts_path = run / "dataset.json"
    if not facts_path.is_file():
        raise FileNotFoundError(f"{run}: no dataset.json (written at the start of training)")
    facts = json.loads(facts_path.read_text())

    method = create_method(cfg.method_name, cfg.method, cfg.model, in_chans=int(facts["in_chans"]),
                           total_steps=cfg.engine.steps, world_size=1)
    branches = tuple(method.branches)
    branch = branch or branches[0]
    if branch not in method.branches:
        raise ValueError(f"{run}: method {cfg.method_name} has the branches {list(branches)}, not {branch!r}")
    method.load_state_dict(state["model"])
    backbone = method.export_backbone(branch)
    model_cfg = method.branch_model(branch)
    bands, normalization = branch_inputs(facts, method.branches[branch])
    in_chans = len(bands)
    weights = backbone.state_dict()
    meta: dict[str, Any] = {
        "format": "eoforge-backbone/1",
        "timm_model": model_cfg.name,
        "timm_kwargs": timm_kwargs(model_cfg, in_chans, backbone),
        "in_chans": in_chans,
        "img_size": model_cfg.img_size_px,
        "bands": bands,
        "normalization": normalization,
        "method": cfg.method_name,
        "branch": branch,
        "step": int(state["step"]),
        "config": cfg.to_dict(),
        "manifest_sha256": facts.get("manifest_sha256"),
        "data": facts.get("data"),
        "run": str(run.resolve()),
        "checkpoint": ckpt.name,
    }
    _, meta_path = write_backbone(weights, out, meta,
                                  metadata={"timm_model": model_cfg.name, "method": cfg.method_name, "branch": branch})
    num_params = int(sum(t.numel() for t in weights.values()))
    data = facts.get("data")
    manifest = Path(data) / "manifest.parquet" if isinstance(data, str) and "://" not in data else None
    item = mlm_item(meta, out, meta_path, num_features=int(getattr(backbone, "num_features", 0)),
                    num_params=num_params, manifest=manifest)
    write_text_atomic(stac_item_path(out), json.dumps(item, indent=2) + "\n")
    write_terratorch_block(meta, out)
    return ExportResult(weights=out, meta=meta_path, checkpoint=ckpt, num_tensors=len(weights),
                        num_params=num_params, branch=branch, branches=branches)
