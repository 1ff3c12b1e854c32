"""Linear segmentation probe on frozen patch features (e.g. Sen1Floods11 water).

A 1x1 convolution (a linear map per patch token) turns the backbone's patch feature map
``[D, h, w]`` into class logits ``[C, h, w]``, which are upsampled bilinearly to the label size
``[H, W]`` and trained with per-pixel cross-entropy, ignoring unlabelled pixels (target -1).
Patch features are standardised with the training set's per-channel mean / std; the head starts
with small weights and the bias at the log pixel frequency of each class. Fixed setting:
AdamW (lr 1e-2, weight decay 1e-4), batches of 8 maps, cosine decay over ``max(epochs *
batches per epoch, min_steps)`` steps (30 epochs, at least 300 steps), seeded.
Metrics: IoU per class, mIoU, pixel accuracy, and the IoU of a class named ``"water"``
(Sen1Floods11's metric) when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.eval import metrics
from eoforge.eval.linear import feature_moments, intra_op_threads, minibatches, prior_bias, training_steps

IGNORE_INDEX = -1


@dataclass(frozen=True)
class SegmentationConfig:
    """Segmentation probe settings.

    Attributes:
        epochs: passes over the training feature maps.
        min_steps: fewest optimiser steps (more epochs when the training set is small).
        batch_size: feature maps per optimiser step.
        lr: AdamW peak learning rate (cosine decay to 0); higher than the linear probe's
            because it gets fewer steps (1e-3 leaves the head far from converged in 300 steps).
        weight_decay: AdamW weight decay.
    """

    epochs: int = 30
    min_steps: int = 300
    batch_size: int = 8
    lr: float = 1e-2
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.min_steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"invalid segmentation probe settings {self}")


class LinearSegmentationHead(nn.Module):
    """Standardise, 1x1 conv, bilinear upsampling.

    ``forward(features float [B, D, h, w], size (H, W)) -> logits float [B, C, H, W]``.
    """

    def __init__(self, dim: int, num_classes: int, mean: Tensor, std: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, dim, 1, 1))
        self.register_buffer("std", std.reshape(1, dim, 1, 1))
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)  # as the linear probe: small weights, prior bias
        with torch.no_grad():
            self.conv.bias.copy_(bias if bias is not None else torch.zeros(num_classes))

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        logits = self.conv((features - self.mean) / self.std)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _stack_targets(targets: Sequence[Tensor] | Tensor) -> Tensor:
    if isinstance(targets, Tensor):
        return targets
    sizes = {tuple(t.shape) for t in targets}
    if len(sizes) > 1:
        raise ValueError(f"segmentation labels of different sizes {sorted(sizes)}; tiles must share one size")
    return torch.stack(list(targets))


def train_segmentation(features: Tensor, targets: Sequence[Tensor] | Tensor, num_classes: int,
                       config: SegmentationConfig = SegmentationConfig(), seed: int = 0) -> LinearSegmentationHead:
    """Train the head.

    Args:
        features: float ``[N, D, h, w]`` patch feature maps.
        targets: int ``[N, H, W]`` class indices, -1 = ignore (any int dtype; int16 saves memory).
        num_classes: C.
        seed: initialisation and shuffling seed (global RNG untouched).
    """
    y = _stack_targets(targets)
    n, dim = features.shape[:2]
    if n == 0 or n != y.shape[0]:
        raise ValueError(f"{n} feature maps for {y.shape[0]} label maps")
    mean, std = feature_moments(features.float(), dim=(0, 2, 3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        labelled = y[y != IGNORE_INDEX].long()
        head = LinearSegmentationHead(dim, num_classes, mean, std, prior_bias(labelled, num_classes, True))
    opt = torch.optim.AdamW(head.conv.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = training_steps(n, config.batch_size, config.epochs, config.min_steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(seed)
    size = tuple(y.shape[-2:])
    head.train()
    with intra_op_threads(1):
        for idx in minibatches(n, config.batch_size, total, gen):
            target = y[idx].long()
            if (target != IGNORE_INDEX).any():  # else nothing is labelled in this batch
                loss = F.cross_entropy(head(features[idx].float(), size), target, ignore_index=IGNORE_INDEX)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def predict_segmentation(head: LinearSegmentationHead, features: Tensor, size: tuple[int, int],
                         batch_size: int = 8) -> Tensor:
    """Predicted class indices int64 ``[N, H, W]``."""
    return torch.cat([head(f.float(), size).argmax(1) for f in features.split(batch_size)])


def segmentation_probe(train_features: Tensor, train_targets: Sequence[Tensor] | Tensor, test_features: Tensor,
                       test_targets: Sequence[Tensor] | Tensor, class_names: Sequence[str],
                       config: SegmentationConfig = SegmentationConfig(), seed: int = 0) -> dict[str, Any]:
    """Train on the training maps, evaluate IoU on the test maps.

    Returns:
        ``{"miou", "pixel_accuracy", "per_class_iou", ["water_iou"]}``.
    """
    num_classes = len(class_names)
    head = train_segmentation(train_features, train_targets, num_classes, config, seed)
    y = _stack_targets(test_targets)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64).numpy()
    for f, t in zip(test_features.split(config.batch_size), y.split(config.batch_size)):
        pred = predict_segmentation(head, f, tuple(t.shape[-2:]))
        cm += metrics.confusion_matrix(pred, t, num_classes, IGNORE_INDEX)
    out = metrics.iou_from_confusion(cm)
    if "water" in class_names:
        out["water_iou"] = out["per_class_iou"][list(class_names).index("water")]
    return out
