"""KoLeo regulariser: spread features by maximising the log distance to the nearest neighbour.

Sablayrolles et al. 2019 ("Spreading vectors for similarity search"), as DINOv2
(``dinov2/loss/koleo_loss.py``): features are L2-normalised, each row's nearest other row is
found by the largest dot product, and ``L = −mean_i log(‖x_i − x_nn(i)‖ + ε)``. Computed per
rank (no gather), in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    """``−mean_i log(min_{j≠i} ‖x̂_i − x̂_j‖ + ε)`` over the rows of ``x`` ``[N, D]`` (x̂ = x / ‖x‖).

    Returns a float32 scalar; 0 (still attached to the graph) when ``N < 2``.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] < 2:
            return x.float().sum() * 0.0
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
                nn_index = dots.argmax(dim=1)
            # same form as torch's PairwiseDistance (DINOv2): ‖a − b + ε‖
            distances = F.pairwise_distance(x, x[nn_index], p=2, eps=self.eps)
            return -torch.log(distances + self.eps).mean()
