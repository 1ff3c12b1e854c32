"""Pretraining methods side by side, one file each; ``create_method`` builds one by name.

``METHODS`` maps a registry name to its :class:`~eoforge.train.methods.base.Method` class;
each class names its config dataclass in ``config_class``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from eoforge.shards.config import build_section
from eoforge.train.methods.base import Method, MethodOutput
from eoforge.train.methods.cmid import Cmid, CmidConfig
from eoforge.train.methods.dualenc import Dualenc, DualencConfig
from eoforge.train.methods.pera import PerA, PeraConfig
from eoforge.train.methods.softcon import Softcon, SoftconConfig
from eoforge.train.models import ModelConfig

METHODS: dict[str, type[Method]] = {"pera": PerA, "softcon": Softcon, "dualenc": Dualenc, "cmid": Cmid}


def _as_config(cls: type, value: Any, section: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        # a method section may carry its registry name (YAML ``method.name``): not a config field
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in value.items() if k in fields or k != "name"}
        return build_section(cls, values, cls.__name__, section)
    raise TypeError(f"{section}: expected {cls.__name__} or a mapping, got {type(value).__name__}")


def create_method(name: str, method_cfg: Any, model_cfg: ModelConfig | Mapping[str, Any] | None, *,
                  in_chans: int, total_steps: int, world_size: int = 1) -> Method:
    """Build method ``name`` with its config (dataclass, mapping or ``None`` for defaults).

    Args:
        name: registry name (``"pera"``).
        method_cfg: the method's config (``PeraConfig``) or a mapping of its fields.
        model_cfg: ``ModelConfig`` or a mapping of its fields.
        in_chans: input bands of the data (13 S2, 2 S1, 15 S1+S2).
        total_steps: optimiser steps of the run.
        world_size: number of ranks.

    Raises:
        ValueError: unknown method or config keys.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {sorted(METHODS)})")
    cls = METHODS[name]
    return cls(_as_config(cls.config_class, method_cfg, "method"), _as_config(ModelConfig, model_cfg, "model"),
               in_chans=in_chans, total_steps=total_steps, world_size=world_size)


__all__ = ["METHODS", "Cmid", "CmidConfig", "Dualenc", "DualencConfig", "Method", "MethodOutput", "PerA", "PeraConfig", "Softcon", "SoftconConfig", "create_method"]
