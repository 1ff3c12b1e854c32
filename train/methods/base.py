"""The Method protocol: what the engine needs from a pretraining method.

A method is an ``nn.Module`` holding the student (trainable), any teacher (EMA, no grad) and the
loss buffers it owns. The engine (``eoforge.train.engine``) uses exactly this surface::

    method = create_method(name, method_cfg, model_cfg, in_chans=..., total_steps=..., world_size=...)
    method.check_data(data_cfg)              # before any worker starts: a clear error, not a bad batch
    loader = build_loader(..., views=method.make_views(), ...)   # views run in DataLoader workers
    out = ddp(batch, step=i)                 # MethodOutput; batch tensors already on the device
    out.loss.backward(); optimizer.step()
    method.update_teacher(momentum[i])
    export: method.export_backbone(branch).state_dict()   # branch in method.branches

Every trainable parameter must receive a gradient every step (DDP runs with
``find_unused_parameters=False``); losses needing cross-rank statistics all-reduce themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eoforge.train.ema import ema_update

Views = Callable[[dict, torch.Generator], dict]

#: image modalities stacked along the band axis, in this order (``"s1s2"``: 13 S2 then 2 S1 bands)
IMAGE_KEYS = ("s2", "s1")
#: names excluded from weight decay besides biases and 1-D tensors (norms, weight-norm scales)
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


def stack_image(inputs: dict[str, Any]) -> Tensor:
    """The sample's image: the modalities present in ``IMAGE_KEYS`` order, stacked along the band
    axis, float32 ``[..., C, H, W]`` (a leading time axis, ``time_step: random_pair``, is kept)."""
    parts = [inputs[k] for k in IMAGE_KEYS if k in inputs]
    if not parts:
        raise KeyError(f"sample {inputs.get('__key__', '?')} has none of the image inputs {IMAGE_KEYS}")
    return torch.cat([torch.as_tensor(p, dtype=torch.float32) for p in parts], dim=-3)


def check_ranges(cfg: Any, *names: str, fractions: tuple[str, ...] = ()) -> None:
    """Config fields that are ``(low, high)`` pairs: YAML lists become tuples of floats, each must be
    two increasing positive numbers, and the ``fractions`` among them at most 1 (area fractions).

    Raises:
        ValueError: naming ``method.<field>`` and the value.
    """
    for name in names:
        value = tuple(float(v) for v in getattr(cfg, name))
        if len(value) != 2 or not 0 < value[0] <= value[1]:
            raise ValueError(f"method.{name} must be two increasing positive numbers, got {value}")
        if name in fractions and value[1] > 1:
            raise ValueError(f"method.{name} is an area fraction, at most 1, got {value}")
        object.__setattr__(cfg, name, value)  # frozen dataclasses


def check_probabilities(cfg: Any, *names: str) -> None:
    """Config fields that are probabilities (a number, or a tuple of numbers, each in [0, 1])."""
    for name in names:
        value = getattr(cfg, name)
        if not all(0.0 <= float(p) <= 1.0 for p in (value if isinstance(value, (list, tuple)) else (value,))):
            raise ValueError(f"method.{name} is a probability, got {value}")


def weight_decay_groups(named: Iterable[tuple[str, nn.Parameter]], lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters as AdamW groups: weights with decay, biases / norms / tokens without.

    ``lr_scale`` multiplies the scheduled learning rate of both groups (a pretrained backbone at 0.1x).
    """
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_weight_decay": True, "lr_scale": lr_scale},
            {"params": no_decay, "apply_weight_decay": False, "lr_scale": lr_scale}]


@dataclass
class MethodOutput:
    """Result of one training forward.

    Attributes:
        loss: float32 scalar that requires grad (the total objective).
        logs: loss terms and schedule values of the step (e.g. ``{"dino": 9.1, "koleo": -1.2,
            "pixel": 3.4, "teacher_temp": 0.03}``), floats or 0-d tensors (the engine reads all
            tensors of a step in one device-to-host copy).
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
    #: exportable encoders -> the input modalities each reads; the first is the default
    #: (one-encoder methods: ``{"main": None}``, the data set's modalities)
    branches: ClassVar[dict[str, tuple[str, ...] | None]] = {"main": None}

    def check_data(self, data: Any) -> None:
        """Raise ``ValueError`` when the data settings (``DataConfig``) cannot feed this method."""

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

    def export_backbone(self, branch: str | None = None) -> nn.Module:
        """The timm backbone of ``branch`` (default: the first of :attr:`branches`) to export
        (its ``state_dict`` loads into ``timm.create_model``)."""
        raise NotImplementedError

    def branch_model(self, branch: str | None = None) -> Any:
        """The ``ModelConfig`` that built ``branch``'s backbone (export names its timm model)."""
        return self.model_cfg  # type: ignore[attr-defined]


class EmaTeacherMethod(Method):
    """A method whose ``teacher`` is an EMA copy of its ``student`` (both ``nn.Module``s the
    subclass builds): PerA, SoftCon, CMID. Every parameter outside ``teacher`` trains."""

    student: nn.Module
    teacher: nn.Module

    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)

    def param_groups(self) -> list[dict[str, Any]]:
        return weight_decay_groups((n, p) for n, p in self.named_parameters() if not n.startswith("teacher."))
