"""Weighted k-nearest-neighbour probe on frozen features (DINO's kNN, Caron et al. 2021).

Features are L2-normalised; each query takes its ``k`` most cosine-similar training samples,
each neighbour votes for its label(s) with weight ``exp(similarity / T)``, and the class score
is the weighted vote share::

    score[q, c] = Σ_{j ∈ topk(q)} exp(s_qj / T) · y_jc  /  Σ_{j ∈ topk(q)} exp(s_qj / T)

Single-label: ``y`` is one-hot and the prediction is the arg-max (top-1 accuracy).
Multi-label: ``y`` is multi-hot and the scores rank the (sample, class) pairs for average
precision. Defaults follow DINO: ``k = 20``, ``T = 0.07``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eoforge.eval import metrics


@dataclass(frozen=True)
class KNNConfig:
    """kNN probe settings.

    Attributes:
        k: neighbours per query (capped at the number of training samples).
        temperature: T of the ``exp(similarity / T)`` vote weight.
        chunk_size: queries per similarity matrix block (bounds memory: chunk x N floats).
    """

    k: int = 20
    temperature: float = 0.07
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        if self.k < 1 or self.temperature <= 0 or self.chunk_size < 1:
            raise ValueError(f"kNN needs k >= 1, temperature > 0 and chunk_size >= 1, got {self}")


def knn_scores(train_features: Tensor, train_targets: Tensor, query_features: Tensor,
               config: KNNConfig = KNNConfig()) -> Tensor:
    """Weighted vote shares of the ``k`` nearest training samples.

    Args:
        train_features: float ``[N, D]``.
        train_targets: float ``[N, C]`` one-hot or multi-hot.
        query_features: float ``[M, D]``.

    Returns:
        float32 ``[M, C]`` in [0, 1] (rows of single-label scores sum to 1).
    """
    if train_features.shape[0] != train_targets.shape[0] or train_features.shape[0] == 0:
        raise ValueError(f"{train_features.shape[0]} training features for {train_targets.shape[0]} targets")
    bank = F.normalize(train_features.float(), dim=1)
    targets = train_targets.float()
    k = min(config.k, bank.shape[0])
    out = []
    for q in F.normalize(query_features.float(), dim=1).split(config.chunk_size):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weight = (sim / config.temperature).exp()
        votes = (weight.unsqueeze(-1) * targets[idx]).sum(1)
        out.append(votes / weight.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.zeros(0, targets.shape[1])


def knn_probe(train_features: Tensor, train_targets: Tensor, test_features: Tensor, test_targets: Tensor,
              single_label: bool, num_classes: int, config: KNNConfig = KNNConfig()) -> dict[str, Any]:
    """Fit-free kNN evaluation.

    Args:
        train_targets / test_targets: int64 ``[N]`` class indices (single-label) or float
            ``[N, C]`` multi-hot (multi-label).

    Returns:
        ``{"top1": ...}`` (single-label) or ``{"micro_ap", "macro_ap", "per_class_ap"}``.
    """
    bank = F.one_hot(train_targets.long(), num_classes) if single_label else train_targets
    scores = knn_scores(train_features, bank, test_features, config)
    if single_label:
        return {"top1": metrics.top1_accuracy(scores, test_targets)}
    return metrics.multilabel_average_precision(scores, test_targets)
