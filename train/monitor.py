"""Collapse monitor: is the network giving every image the same embedding?

Self-distillation can collapse to a constant output (every image maps to one point) or to a few
dimensions. Cheap figures on a batch of embeddings ``z`` (``[B, D]``, L2 normalised per row):

- ``embed_std``: the standard deviation of ``z`` over the batch, per dimension, averaged over
  dimensions. For directions spread uniformly on the sphere it is ``1/sqrt(D)``; a collapsed
  output gives 0. ``embed_std_norm = embed_std * sqrt(D)`` puts it on a 0..1 scale (1 =
  isotropic, 0 = collapsed), whatever the embedding width.
- ``embed_mean_cos``: the mean cosine similarity over all pairs ``i != j``; ~0 for spread
  embeddings, 1 for a collapsed output.
- ``embed_rank``: the effective rank (Roy & Vetterli 2007: the exponential of the entropy
  of the normalised singular values) of the batch-centred ``z``: how many directions the
  images' differences use (1 .. ``min(B - 1, D)``).

:class:`CollapseMonitor` flags collapse when the normalised std is below a floor (the output is
nearly the same for every image) or the effective rank is below 2 (the images differ along a
single direction) for ``patience`` consecutive checks (random-init networks start with
similar outputs, so one bad check early on is not collapse), and warns once per episode.

The mean cosine is logged but is no default trigger (``max_mean_cos`` 1.0): it measures how
concentrated the features are, and healthy pooled features are concentrated. Measured on demo
tiles: random-init timm models give a mean cosine of 0.89-0.94 (ViT [CLS] after LayerNorm) and
0.96-0.99 (ResNet: non-negative features after ReLU and average pooling), and SoftCon's backbone
(a MoCo v3 BatchNorm projector behind it, blind to a component every image shares) reaches
0.98-0.99 with an effective rank (7 of 63 on a batch of 64) above PerA's (6). A constant output
with float noise has a normalised std of ~1e-5; variation along one direction an effective rank
of ~1.
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
        ``{"embed_std", "embed_std_norm", "embed_mean_cos", "embed_rank"}`` as Python
        floats (NaN when B < 2).
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
    b, d = embeddings.shape
    if b < 2:
        nan = float("nan")
        return {"embed_std": nan, "embed_std_norm": nan, "embed_mean_cos": nan, "embed_rank": nan}
    z = F.normalize(embeddings.detach().float(), dim=1)
    std = z.std(dim=0, unbiased=True).mean().item()
    gram = z @ z.T
    mean_cos = ((gram.sum() - gram.diagonal().sum()) / (b * (b - 1))).item()
    return {"embed_std": std, "embed_std_norm": std * math.sqrt(d), "embed_mean_cos": mean_cos,
            "embed_rank": effective_rank(z - z.mean(dim=0))}


def effective_rank(x: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p`` the singular values of ``x`` ``[B, D]`` normalised to sum 1 (Roy & Vetterli
    2007): 1 for a rank-1 matrix, ``r`` for ``r`` equal singular values; 0 for a zero matrix."""
    s = torch.linalg.svdvals(x.double().cpu())
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


@dataclass
class CollapseMonitor:
    """Stateful collapse check over the logged steps.

    Attributes:
        min_std_norm: collapse when ``embed_std_norm`` is below this (0..1 scale).
        max_mean_cos: collapse when ``embed_mean_cos`` is above this (1.0: never; module docstring).
        min_rank: collapse when ``embed_rank`` is below this (effective directions).
        patience: consecutive collapsed checks before ``collapsed`` is reported.
    """

    min_std_norm: float = 0.05
    max_mean_cos: float = 1.0
    min_rank: float = 2.0
    patience: int = 3
    _streak: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False)

    def update(self, embeddings: torch.Tensor, step: int) -> dict[str, float | bool]:
        """Figures for this batch plus ``collapsed`` (bool); warns (:class:`CollapseWarning`) when collapse starts."""
        figures: dict[str, float | bool] = dict(embedding_figures(embeddings))
        std_norm, mean_cos, rank = figures["embed_std_norm"], figures["embed_mean_cos"], figures["embed_rank"]
        # a batch of B rows spans at most B - 1 centred directions: the rank says something
        # only when there is room for twice the floor; NaN compares False
        room = min(embeddings.shape[0] - 1, embeddings.shape[1])
        low_rank = rank < self.min_rank and room >= 2 * self.min_rank
        bad = std_norm < self.min_std_norm or mean_cos > self.max_mean_cos or low_rank
        self._streak = self._streak + 1 if bad else 0
        collapsed = self._streak >= self.patience
        if collapsed and not self._warned:
            warnings.warn(
                f"step {step}: embeddings look collapsed for {self._streak} checks (std*sqrt(D)={std_norm:.4f}, "
                f"effective rank={rank:.2f}, mean cosine={mean_cos:.4f}); check the teacher temperature, centring "
                "and learning rate",
                CollapseWarning, stacklevel=2,
            )
            self._warned = True
        if not bad:
            self._warned = False
        figures["collapsed"] = collapsed
        return figures
