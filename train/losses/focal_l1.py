"""Focal L1 on masked pixels: the spatial half of CMID's reconstruction loss.

From A2MIM (Li et al. 2023, "Architecture-Agnostic Masked Image Modeling", arXiv 2205.13943),
which CMID's official code (``models/loss_utils.py``, ``focal_l1_loss`` and ``MIMLossHead``)
reuses. Per value, with ``d = |pred − target|``::

    l = d · (2σ(α d) − 1)^γ        (α 0.2, γ 1)

``2σ(α d) − 1`` rises from 0 at ``d = 0`` towards 1, so small residuals are damped (roughly
``α d² / 2``) and large ones count like plain L1: the loss focuses on the pixels the model still
gets badly wrong. The mean is over the masked pixels and the channels only, ``Σ l · m / (Σ m · C)``
(``m`` = 1 on masked pixels): unmasked pixels are visible to the encoder and carry no loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def focal_l1(pred: Tensor, target: Tensor, alpha: float = 0.2, gamma: float = 1.0) -> Tensor:
    """Element-wise focal L1 ``d · (2σ(α d) − 1)^γ`` of two tensors of one shape, ``d = |pred − target|``."""
    d = (pred - target).abs()
    return d * (2.0 * torch.sigmoid(alpha * d) - 1.0).pow(gamma)


class MaskedFocalL1Loss(nn.Module):
    """Focal L1 averaged over masked pixels and channels.

    Args:
        alpha: α of the modulating factor (0.2).
        gamma: γ of the modulating factor (1.0).
    """

    def __init__(self, alpha: float = 0.2, gamma: float = 1.0) -> None:
        super().__init__()
        if alpha <= 0 or gamma <= 0:
            raise ValueError(f"focal L1 needs alpha > 0 and gamma > 0, got {alpha}, {gamma}")
        self.alpha, self.gamma = alpha, gamma

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """``pred``, ``target`` float ``[N, C, H, W]``; ``mask`` ``[N, 1, H, W]`` (1 = masked, 0 = seen).

        Returns a float32 scalar; 0 (still attached to ``pred``) when nothing is masked.
        """
        with torch.autocast(device_type=pred.device.type, enabled=False):
            loss = focal_l1(pred.float(), target.float(), self.alpha, self.gamma)
            mask = mask.float()
            return (loss * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1.0)


__all__ = ["MaskedFocalL1Loss", "focal_l1"]
