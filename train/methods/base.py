"""The Method protocol: what the engine needs from a pretraining method.

A method is an ``nn.Module`` holding the student (trainable), any teacher (EMA, no grad) and the
loss buffers it owns. The engine (``eoforge.train.engine``) uses exactly this surface::

    method = create_method(name, method_cfg, model_cfg, in_chans=..., total_steps=..., world_size=...)
    loader = build_loader(..., views=method.make_views(), ...)   # views run in DataLoader workers
    out = ddp(batch, step=i)                 # MethodOutput; batch tensors already on the device
    out.loss.backward(); optimizer.step()
    method.update_teacher(momentum[i])
    export: method.export_backbone().state_dict()

Every trainable parameter must receive a gradient every step (DDP runs with
``find_unused_parameters=False``); losses needing cross-rank statistics all-reduce themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

Views = Callable[[dict, torch.Generator], dict]


@dataclass
class MethodOutput:
    """Result of one training forward.

    Attributes:
        loss: float32 scalar that requires grad (the total objective).
        logs: loss terms and schedule values of the step (e.g. ``{"dino": 9.1, "koleo": -1.2,
            "pixel": 3.4, "teacher_temp": 0.03}``), plain floats.
        embeddings: float ``[B, D]`` detached features (student CLS of the first view) for the
            engine's collapse monitor.
    """

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    embeddings: Tensor | None = None


class Method(nn.Module):
    """Base class of pretraining methods (see the module docstring for the call sequence).

    Class attributes:
        name: registry name (``"pera"``).
        config_class: the method's config dataclass (``PeraConfig``); ``create_method`` builds it
            from a mapping and the engine's config loader uses it to validate YAML keys.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def make_views(self) -> Views:
        """A small picklable callable (NOT the module) ``views(inputs, generator) -> dict of tensors``.

        Runs in DataLoader workers on one sample's ``inputs`` (``{"s2": float32 [13, H, W], ...}``,
        see ``eoforge.train.data``); the loader collates its outputs into the batch.
        """
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], step: int) -> MethodOutput:  # type: ignore[override]
        """One training forward on a collated batch at 0-based optimiser step ``step``."""
        raise NotImplementedError

    def update_teacher(self, momentum: float) -> None:
        """EMA of the student into the teacher after the optimiser step (no-op without a teacher)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Student parameters as ``[{"params": [...], "apply_weight_decay": bool}, ...]``."""
        raise NotImplementedError

    def export_backbone(self) -> nn.Module:
        """The timm backbone to export (its ``state_dict`` loads into ``timm.create_model``)."""
        raise NotImplementedError
