"""Evaluation metrics: hand-computed cases and agreement with scikit-learn (test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eoforge.eval import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_top1_accuracy_by_hand():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert metrics.top1_accuracy(scores, [1, 0, 0, 0]) == 0.75
    assert metrics.top1_accuracy(np.array([2, 1, 0]), np.array([2, 1, 1])) == pytest.approx(2 / 3)
    assert metrics.top1_accuracy(torch.tensor([[0.0, 1.0]]), torch.tensor([1])) == 1.0


def test_average_precision_by_hand():
    # ranks: +, -, +, -  ->  precision at the positives 1/1 and 2/3, each worth half the recall
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # tied scores form one threshold: at 0.5 P = 1/2, R = 1/2; at 0.2 P = 2/3, R = 1
    assert metrics.average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert metrics.average_precision([0.1, 0.2, 0.3], [0, 0, 1]) == 1.0
    assert math.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        target = rng.integers(0, 2, n)
        target[0] = 1
        scores = np.round(rng.random(n), 1)  # many ties
        assert metrics.average_precision(scores, target) == pytest.approx(
            sklearn_metrics.average_precision_score(target, scores), abs=1e-12)


def test_multilabel_micro_macro_and_per_class_match_sklearn():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 2, (40, 6))
    target[:6] = np.eye(6, dtype=int)  # every class has a positive
    scores = rng.random((40, 6)) + 0.5 * target
    out = metrics.multilabel_average_precision(scores, target)
    assert out["micro_ap"] == pytest.approx(sklearn_metrics.average_precision_score(target, scores, average="micro"))
    assert out["macro_ap"] == pytest.approx(sklearn_metrics.average_precision_score(target, scores, average="macro"))
    per_class = sklearn_metrics.average_precision_score(target, scores, average=None)
    assert out["per_class_ap"] == pytest.approx(list(per_class))


def test_macro_ap_leaves_out_classes_without_positives():
    target = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.6, 0.9]])
    out = metrics.multilabel_average_precision(scores, target)
    assert out["per_class_ap"][:2] == [1.0, 1.0] and math.isnan(out["per_class_ap"][2])
    assert out["macro_ap"] == 1.0


def test_iou_by_hand_with_ignore():
    target = np.array([[0, 0, 1], [1, -1, 1]])
    pred = np.array([[0, 1, 1], [1, 0, 0]])
    cm = metrics.confusion_matrix(pred, target, 2, ignore_index=-1)
    assert cm.tolist() == [[1, 1], [1, 2]]  # the ignored pixel (pred 0) is not counted
    out = metrics.iou_from_confusion(cm)
    assert out["per_class_iou"] == pytest.approx([1 / 3, 2 / 4])
    assert out["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)


def test_iou_matches_sklearn_jaccard():
    rng = np.random.default_rng(2)
    target = rng.integers(-1, 4, (3, 16, 16))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, target.shape)).clip(0, 3)
    keep = target >= 0
    out = metrics.segmentation_iou(torch.from_numpy(pred), torch.from_numpy(target), 4)
    want = sklearn_metrics.jaccard_score(target[keep], pred[keep], average=None, labels=[0, 1, 2, 3])
    assert out["per_class_iou"] == pytest.approx(list(want))
    assert out["miou"] == pytest.approx(want.mean())
    assert metrics.confusion_matrix(pred, target, 4).tolist() == \
        sklearn_metrics.confusion_matrix(target[keep], pred[keep], labels=[0, 1, 2, 3]).tolist()


def test_iou_of_an_absent_class_is_nan_and_left_out():
    out = metrics.segmentation_iou(np.array([0, 0, 1]), np.array([0, 0, 1]), 3)
    assert out["per_class_iou"][:2] == [1.0, 1.0] and math.isnan(out["per_class_iou"][2])
    assert out["miou"] == 1.0


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="shape"):
        metrics.average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix([0, 3], [0, 1], 2)
