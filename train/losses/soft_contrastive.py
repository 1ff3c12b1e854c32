"""SoftCon's loss: hard InfoNCE plus a soft term whose targets are land-cover label similarities.

Wang et al. 2024 ("Multi-Label Guided Soft Contrastive Learning for Efficient Earth Observation
Pretraining", arXiv 2405.20462). The authors released no pretraining code; this follows their
abstract and eoforge's train/METHODS.md#softcon, every choice they leave open being a config value.

For queries ``q`` (online branch, ``[N, D]`` per rank) and keys ``k`` (EMA branch, gathered from
every rank: ``[W·N, D]``), logits ``l_ij = q̂_i · k̂_j / τ``:

- hard term (MoCo v3): ``CE(l_i, j = i)`` averaged over rows, × 2τ;
- soft target ``s_ij = cos(y_i, y'_j)`` between the label vector ``y_i`` of query ``i``'s view and
  ``y'_j`` of key ``j``'s view (gathered with the keys); a zero label vector means "unlabelled"
  (SSL4EO-S12's empty label lists) and has similarity 0 with everything;
- soft term, two forms:

  - ``"r2"`` (default): soft-target InfoNCE, ``-Σ_j π_ij log softmax(l_i)_j`` with
    ``π_ij = s_ij / Σ_k s_ik``, × 2τ like the hard term, over rows with a labelled query and
    some positive similarity;
  - ``"r1"``: element-wise binary cross-entropy between ``σ(l_ij)`` and ``s_ij`` over the pairs
    whose query and key are both labelled.

  Rows (pairs) that do not count add nothing: unlabelled samples train with the hard term only.
  Their mean is over the counted rows (pairs) of all ranks (:func:`~eoforge.train.losses.info_nce.global_mean`).

Symmetrised as MoCo v3: ``loss(q1, k2) + loss(q2, k1)``; total ``hard + λ · soft`` (λ = 0: the
hard-only ablation). With identity label similarity (every sample its own class) ``π`` is the
identity, and the R2 soft term equals the hard term exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.train import distributed as D
from eoforge.train.losses.info_nce import cosine_logits, global_mean, info_nce, positive_columns, soft_cross_entropy

SOFT_FORMS = ("r2", "r1")


@dataclass
class SoftConTerms:
    """The terms of one symmetrised SoftCon loss (float32 scalars; ``total`` requires grad)."""

    total: Tensor
    hard: Tensor
    soft: Tensor
    labelled: Tensor  # share of this rank's query views with a label vector


def label_similarity(y_query: Tensor, y_keys: Tensor) -> Tensor:
    """``cos(y_i, y'_j)``: ``[N, K]`` x ``[M, K]`` -> float32 ``[N, M]``; 0 where either vector is 0."""
    a = F.normalize(y_query.float(), dim=-1)
    b = F.normalize(y_keys.float(), dim=-1)
    return a @ b.t()


class SoftContrastiveLoss(nn.Module):
    """Hard InfoNCE + λ × label-similarity soft term (module docstring).

    Args:
        temperature: τ (0.2).
        soft_weight: λ (1.0; 0 is the hard-only ablation).
        soft_form: ``"r2"`` (soft-target InfoNCE) or ``"r1"`` (element-wise BCE).
    """

    def __init__(self, temperature: float = 0.2, soft_weight: float = 1.0, soft_form: str = "r2") -> None:
        super().__init__()
        if soft_form not in SOFT_FORMS:
            raise ValueError(f"soft_form must be one of {SOFT_FORMS}, got {soft_form!r}")
        if temperature <= 0 or soft_weight < 0:
            raise ValueError("temperature must be > 0 and soft_weight >= 0")
        self.temperature, self.soft_weight, self.soft_form = temperature, soft_weight, soft_form

    def one_direction(self, q: Tensor, k: Tensor, y_q: Tensor, y_k: Tensor) -> tuple[Tensor, Tensor]:
        """(hard, soft) of queries ``q`` ``[N, D]`` against this rank's keys ``k`` ``[N, D]`` gathered.

        ``y_q``, ``y_k``: label vectors ``[N, K]`` of the query and key views (zeros: unlabelled).
        """
        k_all = D.all_gather(k.detach())
        y_all = D.all_gather(y_k.float())
        logits = cosine_logits(q, k_all, self.temperature)
        scale = 2.0 * self.temperature  # MoCo v3's × 2τ
        hard = info_nce(logits, positive_columns(q.shape[0], q.device)) * scale
        sim = label_similarity(y_q, y_all)
        labelled_q = y_q.float().abs().sum(dim=-1) > 0
        if self.soft_form == "r2":
            row_mass = sim.sum(dim=-1)
            counted = labelled_q & (row_mass > 0)
            targets = sim / row_mass.clamp_min(1e-12)[:, None]
            soft = global_mean(soft_cross_entropy(logits, targets), counted) * scale
        else:
            labelled_k = y_all.abs().sum(dim=-1) > 0
            pairs = labelled_q[:, None] & labelled_k[None, :]
            bce = F.binary_cross_entropy_with_logits(logits, sim, reduction="none")
            soft = global_mean(bce.flatten(), pairs.flatten())
        return hard, soft

    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, y1: Tensor, y2: Tensor) -> SoftConTerms:
        """Symmetrised loss of two views: ``q1``/``q2`` online predictions, ``k1``/``k2`` EMA
        projections (``[N, D]``), ``y1``/``y2`` the views' label vectors (``[N, K]``)."""
        hard_12, soft_12 = self.one_direction(q1, k2, y1, y2)
        hard_21, soft_21 = self.one_direction(q2, k1, y2, y1)
        hard, soft = hard_12 + hard_21, soft_12 + soft_21
        total = hard + self.soft_weight * soft if self.soft_weight > 0 else hard
        labelled = torch.cat([y1, y2]).float().abs().sum(dim=-1).gt(0).float().mean()
        return SoftConTerms(total=total, hard=hard.detach(), soft=soft.detach(), labelled=labelled)


__all__ = ["SOFT_FORMS", "SoftConTerms", "SoftContrastiveLoss", "label_similarity"]
