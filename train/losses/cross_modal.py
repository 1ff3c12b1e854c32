"""The dual encoder's loss: symmetric cross-modal InfoNCE (CLIP form) over the global batch,
optionally plus an intra-modal SimCLR term per sensor.

Jain et al. 2022 ("Self-supervised Learning for Invariant Representations from Multi-spectral
and SAR Images", arXiv 2209.02329): S1 and S2 of one place at nearby dates are each other's
positives. With ``a`` = S2 embeddings and ``b`` = S1 embeddings of the same ``N`` places per rank,
gathered from every rank with gradient (both sides are trainable; see
:func:`eoforge.train.distributed.all_gather_with_grad`)::

    L_cross = ½ [CE(â_i · b̂ᵀ / τ, i) + CE(b̂_i · âᵀ / τ, i)]

τ is fixed, or learnable as CLIP's logit scale (``log(1/τ)`` a parameter, 1/τ clamped to 100).

The optional intra-modal term is SimCLR's NT-Xent (Chen et al. 2020), the baseline the paper
beats: two augmented views of each sensor's image, each view's positive the other view, every
other view of the global batch a negative (self-similarity excluded); averaged over the two
sensors and weighted by ``intra_weight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eoforge.train import distributed as D
from eoforge.train.losses.info_nce import cosine_logits, info_nce, positive_columns

#: CLIP's cap on the learned logit scale 1/τ
MAX_LOGIT_SCALE = 100.0


@dataclass
class CrossModalTerms:
    """Terms of one step (float32 scalars; ``total`` requires grad)."""

    total: Tensor
    cross: Tensor
    intra: Tensor
    temperature: Tensor


def nt_xent(view1: Tensor, view2: Tensor, temperature: float | Tensor) -> Tensor:
    """SimCLR's NT-Xent of two views ``[N, D]`` of the same ``N`` images, negatives gathered from every rank."""
    n = view1.shape[0]
    local = torch.cat([view1, view2])                        # [2N]: rows i and N + i are positives
    keys = D.all_gather_with_grad(local)                     # [W·2N], rank-major blocks of [view1; view2]
    logits = cosine_logits(local, keys, temperature)
    own = positive_columns(2 * n, local.device)              # column of each row itself
    logits = logits.scatter(1, own[:, None], float("-inf"))  # a view is not its own negative
    positives = torch.cat([own[n:], own[:n]])
    return info_nce(logits, positives)


class CrossModalInfoNCE(nn.Module):
    """Symmetric cross-modal InfoNCE, fixed or learnable temperature, optional intra-modal term.

    Args:
        temperature: τ (0.1), the initial value when learnable.
        learn_temperature: learn ``log(1/τ)`` (CLIP); it is then a parameter of this module.
        intra_weight: weight of the intra-modal NT-Xent term (0: off).
    """

    def __init__(self, temperature: float = 0.1, learn_temperature: bool = False, intra_weight: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0 or intra_weight < 0:
            raise ValueError("temperature must be > 0 and intra_weight >= 0")
        self.intra_weight = intra_weight
        scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_logit_scale", scale)

    def temperature(self) -> Tensor:
        """Current τ = 1 / clamp(exp(log_logit_scale), max 100)."""
        return 1.0 / self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, a: Tensor, b: Tensor, a_views: tuple[Tensor, Tensor] | None = None,
                b_views: tuple[Tensor, Tensor] | None = None) -> CrossModalTerms:
        """``a`` ``[N, D]`` (S2) and ``b`` ``[N, D]`` (S1) embeddings of the same places, row by row;
        ``a_views`` / ``b_views``: two views per sensor for the intra-modal term (when it is on)."""
        tau = self.temperature().float()
        positives = positive_columns(a.shape[0], a.device)
        a_all, b_all = D.all_gather_with_grad(a), D.all_gather_with_grad(b)
        cross = 0.5 * (info_nce(cosine_logits(a, b_all, tau), positives)
                       + info_nce(cosine_logits(b, a_all, tau), positives))
        intra = cross.new_zeros(())
        if self.intra_weight > 0:
            if a_views is None or b_views is None:
                raise ValueError("the intra-modal term needs two views of each sensor")
            intra = 0.5 * (nt_xent(*a_views, tau) + nt_xent(*b_views, tau))
        total = cross + self.intra_weight * intra
        return CrossModalTerms(total=total, cross=cross.detach(), intra=intra.detach(), temperature=tau.detach())


__all__ = ["CrossModalInfoNCE", "CrossModalTerms", "MAX_LOGIT_SCALE", "nt_xent"]
