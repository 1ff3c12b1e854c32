"""Collapse monitor: is the network giving every image the same embedding?

Self-distillation can collapse to a constant output (every image maps to one point) or
to a few dimensions. Two cheap figures on a batch of embeddings ``z`` (``[B, D]``, L2
normalised per row) show it:

- ``embed_std``: the standard deviation of ``z`` over the batch, per dimension, averaged
  over dimensions. For directions spread uniformly on the sphere it is ``1/sqrt(D)``; a
  collapsed output gives 0. ``embed_std_norm = embed_std * sqrt(D)`` puts it on a 0..1 scale
  (1 = isotropic, 0 = collapsed), whatever the embedding width.
- ``embed_mean_cos``: the mean cosine similarity over all pairs ``i != j``; ~0 for spread
  embeddings, 1 for a collapsed output.

:class:`CollapseMonitor` flags collapse when the normalised std is below a floor or the
mean cosine above a ceiling for ``patience`` consecutive checks (random-init networks
start with similar outputs, so one bad check early on is not collapse), and warns once per
episode.

The two default thresholds agree: for L2-normalised rows the per-dimension variances sum to
``1 - |mean|²`` ≈ ``1 - mean cosine``, so a mean cosine of 0.99 is a normalised std of about
0.1. Pooled features of healthy networks are far from isotropic: random-init timm models
give a mean cosine of 0.89-0.94 (ViT [CLS] after LayerNorm) and 0.96 (ResNet: non-negative
features after ReLU and average pooling) on demo tiles (measured), so a ceiling of 0.95
would flag every ResNet from its first step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F



class CollapseWarning(RuntimeWarning):
    """The embeddings of a batch have (nearly) no spread any more."""


@torch.no_grad()
def embedding_figures(embeddings: torch.Tensor) -> dict[str, float]:
    """Spread of a batch of embeddings.

    Args:
        embeddings: float ``[B, D]`` (any dtype/device), one row per image; ``B >= 2``.

    Returns:
        ``{"embed_std", "embed_std_norm", "embed_mean_cos"}`` as Python floats (NaN when B < 2).
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
    b, d = embeddings.shape
    if b < 2:
        nan = float("nan")
        return {"embed_std": nan, "embed_std_norm": nan, "embed_mean_cos": nan}
    z = F.normalize(embeddings.detach().float(), dim=1)
    std = z.std(dim=0, unbiased=True).mean().item()
    gram = z @ z.T
    mean_cos = ((gram.sum() - gram.diagonal().sum()) / (b * (b - 1))).item()
    return {"embed_std": std, "embed_std_norm": std * math.sqrt(d), "embed_mean_cos": mean_cos}


@dataclass
class CollapseMonitor:
    """Stateful collapse check over the logged steps.

    Attributes:
        min_std_norm: collapse when ``embed_std_norm`` is below this (0..1 scale).
        max_mean_cos: collapse when ``embed_mean_cos`` is above this.
        patience: consecutive collapsed checks before ``collapsed`` is reported.
    """

    min_std_norm: float = 0.05
    max_mean_cos: float = 0.99
    patience: int = 3
    _streak: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False)

    def update(self, embeddings: torch.Tensor, step: int) -> dict[str, float | bool]:
        """Figures for this batch plus ``collapsed`` (bool); warns (:class:`CollapseWarning`) when collapse starts."""
        figures: dict[str, float | bool] = dict(embedding_figures(embeddings))
        std_norm, mean_cos = figures["embed_std_norm"], figures["embed_mean_cos"]
        bad = (std_norm < self.min_std_norm) or (mean_cos > self.max_mean_cos)  # NaN compares False
        self._streak = self._streak + 1 if bad else 0
        collapsed = self._streak >= self.patience
        if collapsed and not self._warned:
            warnings.warn(
                f"step {step}: embeddings look collapsed for {self._streak} checks (std*sqrt(D)={std_norm:.4f}, "
                f"mean cosine={mean_cos:.4f}); check the teacher temperature, centring and learning rate",
                CollapseWarning, stacklevel=2,
            )
            self._warned = True
        if not bad:
            self._warned = False
        figures["collapsed"] = collapsed
        return figures
