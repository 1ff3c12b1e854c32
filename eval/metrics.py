"""Evaluation metrics, in plain numpy (no scikit-learn at run time).

- :func:`top1_accuracy`: single-label classification.
- :func:`average_precision`: area under the precision-recall curve of one binary problem, as
  scikit-learn's ``average_precision_score`` computes it (step-wise, no interpolation:
  ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds, ties as one step).
- :func:`multilabel_average_precision`: per-class AP, their macro mean, and micro AP (all
  (sample, class) pairs pooled into one binary problem: the BigEarthNet convention).
- :func:`confusion_matrix` / :func:`iou_from_confusion`: segmentation IoU per class and mIoU,
  with an ignore value for unlabelled pixels.

Classes with no positive sample in the evaluation set have an undefined AP (no recall); they
get NaN per class and are left out of the macro mean (scikit-learn would warn and count them).
Classes that are absent from both prediction and target get NaN IoU and are left out of mIoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _np(x: Any) -> np.ndarray:
    """numpy view of a numpy array or a (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def top1_accuracy(scores_or_pred: Any, target: Any) -> float:
    """Share of samples whose predicted class is the target class.

    Args:
        scores_or_pred: class scores ``[N, C]`` (argmax is the prediction) or predicted class
            indices ``[N]``.
        target: class indices ``[N]`` (int).

    Returns:
        accuracy in [0, 1]; NaN for N = 0.
    """
    s, t = _np(scores_or_pred), _np(target).astype(np.int64)
    pred = s.argmax(axis=1) if s.ndim == 2 else s.astype(np.int64)
    if pred.shape != t.shape:
        raise ValueError(f"predictions {pred.shape} and targets {t.shape} differ in shape")
    return float((pred == t).mean()) if t.size else float("nan")


def average_precision(scores: Any, target: Any) -> float:
    """Average precision of one binary problem (scikit-learn's definition).

    Args:
        scores: float ``[N]``, higher = more likely positive.
        target: ``[N]`` of 0/1 (bool or int).

    Returns:
        AP in [0, 1]; NaN when ``target`` has no positive.
    """
    s = _np(scores).astype(np.float64).ravel()
    t = _np(target).astype(bool).ravel()
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} differ in shape")
    positives = int(t.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    # last index of each run of equal scores: one threshold per distinct score
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_average_precision(scores: Any, target: Any) -> dict[str, Any]:
    """Micro, macro and per-class AP of multi-label scores.

    Args:
        scores: float ``[N, C]`` per-class scores (any monotone scale: logits, probabilities,
            kNN votes).
        target: ``[N, C]`` multi-hot 0/1.

    Returns:
        ``{"micro_ap": float, "macro_ap": float, "per_class_ap": [C floats, NaN where the class
        has no positive]}``.
    """
    s, t = _np(scores).astype(np.float64), _np(target).astype(bool)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and targets {t.shape} must both be [N, C]")
    per_class = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1])]
    defined = [v for v in per_class if not np.isnan(v)]
    return {
        "micro_ap": average_precision(s.ravel(), t.ravel()),
        "macro_ap": float(np.mean(defined)) if defined else float("nan"),
        "per_class_ap": per_class,
    }


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Pixel confusion matrix ``[C, C]`` (rows: target class, columns: predicted class), int64.

    Args:
        pred: predicted class indices, any shape (int).
        target: target class indices, same shape; ``ignore_index`` pixels are not counted.
        num_classes: C.
        ignore_index: target value of unlabelled pixels.
    """
    p, t = _np(pred).astype(np.int64).ravel(), _np(target).astype(np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} differ in size")
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"class indices outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """IoU per class, mIoU and pixel accuracy from a confusion matrix.

    ``IoU_c = TP / (TP + FP + FN)``; NaN for a class absent from both target and prediction.

    Returns:
        ``{"per_class_iou": [C], "miou": float, "pixel_accuracy": float}``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    return {
        "per_class_iou": iou.tolist(),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
    }


def segmentation_iou(pred: Any, target: Any, num_classes: int, ignore_index: int = -1) -> dict[str, Any]:
    """:func:`iou_from_confusion` of :func:`confusion_matrix` (one call for a whole set)."""
    return iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))
