"""DINO cross-entropy on CLS-token prototype scores, with the teacher centre it owns.

Caron et al. 2021 (DINO) and Oquab et al. 2023 (DINOv2, ``dinov2/loss/dino_clstoken_loss.py``):

- teacher targets ``p_t = softmax((t − c) / τ_t)`` (centring then sharpening, no gradient);
- loss ``−Σ_k p_t,k · log softmax(s / τ_s)_k``, averaged over the rows given;
- centre ``c ← m·c + (1 − m)·mean(t)``, the mean taken over the global batch (all-reduced when
  ``torch.distributed`` is initialised), after the targets of the step are computed.

The teacher temperature follows a linear warm-up (:func:`teacher_temperature`). Rows are any
paired outputs: PerA's CLS tokens of the same crop, CMID's student and teacher cells that cover the
same ground.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear warm-up of the teacher temperature: ``start`` at step 0, ``end`` from ``warmup_steps`` on.

    ``τ(step) = start + (end − start) · min(step, W) / W`` (``W = 0``: always ``end``).
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / warmup_steps)


class DINOClsLoss(nn.Module):
    """Cross-entropy between student and teacher prototype distributions; owns the centre.

    Args:
        out_dim: number of prototypes ``K``.
        student_temp: ``τ_s`` (0.1).
        center_momentum: ``m`` of the centre EMA (0.9).

    Buffers:
        center: float32 ``[1, K]``, the running mean of teacher logits.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred, sharpened teacher targets: ``softmax((t − c) / τ_t)``, float32 ``[N, K]``."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
        """Mean over rows of ``−Σ_k p_t · log softmax(s / τ_s)``.

        Row ``i`` of ``student_logits`` ``[N, K]`` is paired with row ``i`` of ``teacher_probs``
        ``[N, K]`` only (PerA: the same crop); returns a float32 scalar.
        """
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        return -(teacher_probs * log_p).sum(dim=-1).mean()

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """``c ← m·c + (1 − m)·mean(t)`` over all rows of all ranks; ``teacher_logits`` ``[N, K]``."""
        logits = teacher_logits.float()
        # the row sums and the row count in one tensor: one all-reduce, no host sync
        stats = torch.cat([logits.sum(dim=0), logits.new_full((1,), float(logits.shape[0]))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        self.center.mul_(self.center_momentum).add_(stats[None, :-1] / stats[-1], alpha=1.0 - self.center_momentum)
