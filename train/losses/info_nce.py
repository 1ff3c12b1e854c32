"""InfoNCE over a batch gathered from every rank: the contrastive primitive SoftCon and the dual
encoder share.

Each rank scores its own ``N`` queries against the keys of every rank (``W * N`` columns, rank-major,
so the positive of local row ``i`` is column ``rank * N + i``), as MoCo v3 does
(``moco/builder.py``: ``concat_all_gather`` + ``labels = arange(N) + N * rank``). The loss of a
rank is the mean over its rows; DDP averages the ranks' gradients, so the update is that of the
mean over the global batch. A term whose rows do not all count (a soft term of labelled rows
only) divides by the global count of counted rows instead (:func:`global_mean`), so one process
with ``2N`` rows and two with ``N`` each give the same number.

Logits are float32 cosine similarities divided by the temperature, whatever autocast does to the
features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eoforge.train import distributed as D


def cosine_logits(query: Tensor, keys: Tensor, temperature: float | Tensor) -> Tensor:
    """``q̂ · k̂ᵀ / τ`` in float32: ``query`` ``[N, D]``, ``keys`` ``[M, D]`` -> ``[N, M]``."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=-1)
        k = F.normalize(keys.float(), dim=-1)
        return q @ k.t() / temperature


def positive_columns(rows: int, device: torch.device) -> Tensor:
    """Column of each local row's positive among the gathered keys: ``arange(rows) + rank * rows``."""
    return torch.arange(rows, device=device) + D.get_rank() * rows


def info_nce(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows of ``-log softmax(logits)[i, positives[i]]`` (cross-entropy with one positive)."""
    return F.cross_entropy(logits, positives)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row ``-Σ_j targets_ij · log softmax(logits)_ij``: ``[N]`` (rows of ``targets`` sum to 1 or are 0)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def global_mean(values: Tensor, counted: Tensor) -> Tensor:
    """This rank's share of the mean of ``values`` over the counted entries of every rank.

    ``Σ_local values[counted] / (C / W)`` with ``C`` the all-reduced count and ``W`` the world size:
    the mean over ranks of these shares is the global mean, whatever each rank counts. 0 (still
    attached to the graph) when no rank counts anything.
    """
    counted = counted.to(values.dtype)
    total = (values * counted).sum()
    count = counted.sum().detach().reshape(1)
    D.all_reduce_sum(count)
    return total * D.get_world_size() / count.clamp_min(1.0).squeeze(0)


__all__ = ["cosine_logits", "global_mean", "info_nce", "positive_columns", "soft_cross_entropy"]
