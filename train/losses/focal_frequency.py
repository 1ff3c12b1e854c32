"""Focal frequency loss: the spectral half of CMID's reconstruction loss.

Jiang et al. 2021 ("Focal Frequency Loss for Image Reconstruction and Synthesis", ICCV,
arXiv 2012.12821), in the setting A2MIM and CMID's official code use (``models/loss_utils.py``,
``FocalFrequencyLoss`` built by ``MIMLossHead`` with ``fft_focal``): α 1, batch-averaged spectrum,
log weight matrix, weights normalised by their batch maximum.

For ``pred`` and ``target`` ``[N, C, H, W]``::

    F = FFT2(x) over (H, W), orthonormal                  complex [N, C, H, W]
    F̄ = mean over N of F                                  (ave_spectrum: one spectrum per band)
    e = |F̄_pred − F̄_target|                               spectral error per frequency
    w = log(1 + e^α) / max(log(1 + e^α))                  in [0, 1], no gradient
    L = mean(w · e²)

Frequencies the reconstruction gets wrong weigh more (``w``), so the model cannot settle for the
easy low frequencies; ``w`` is detached, as in the paper. ``L = 0`` exactly when the two
(batch-averaged) spectra agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FocalFrequencyLoss(nn.Module):
    """Focal frequency loss (module docstring).

    Args:
        alpha: exponent of the spectral error in the weight matrix (1.0).
        ave_spectrum: average the spectra over the batch before comparing them (True: CMID).
        log_matrix: weight matrix ``log(1 + e^α)`` instead of ``e^α`` (True: CMID).
        batch_matrix: normalise the weights by their maximum over everything (True: CMID) rather
            than per spectrum (per sample and band).
    """

    def __init__(self, alpha: float = 1.0, ave_spectrum: bool = True, log_matrix: bool = True,
                 batch_matrix: bool = True) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"focal frequency loss needs alpha > 0, got {alpha}")
        self.alpha, self.ave_spectrum = alpha, ave_spectrum
        self.log_matrix, self.batch_matrix = log_matrix, batch_matrix

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``pred``, ``target`` float ``[N, C, H, W]`` -> float32 scalar (FFT in float32 whatever autocast does)."""
        with torch.autocast(device_type=pred.device.type, enabled=False):
            f_pred = torch.fft.fft2(pred.float(), dim=(-2, -1), norm="ortho")
            f_target = torch.fft.fft2(target.float(), dim=(-2, -1), norm="ortho")
            if self.ave_spectrum:
                f_pred, f_target = f_pred.mean(dim=0, keepdim=True), f_target.mean(dim=0, keepdim=True)
            diff = f_pred - f_target
            distance = diff.real.square() + diff.imag.square()  # |ΔF|², [N or 1, C, H, W]
            with torch.no_grad():
                weight = distance.sqrt().pow(self.alpha)
                if self.log_matrix:
                    weight = torch.log1p(weight)
                peak = weight.amax() if self.batch_matrix else weight.amax(dim=(-2, -1), keepdim=True)
                # identical spectra: 0 / 0 in the paper's code, which sets the NaNs to 0
                weight = (weight / peak.clamp_min(torch.finfo(weight.dtype).tiny)).clamp(0.0, 1.0)
            return (weight * distance).mean()


__all__ = ["FocalFrequencyLoss"]
