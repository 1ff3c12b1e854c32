"""Probe targets from labelled samples, and the seeded label-fraction draw.

- Image-level targets come from ``meta["labels"]["multi_hot"]`` (every labelled dataset has
  them: ingested land-cover fractions above τ, EuroSAT's one class, BigEarthNet-19). A
  taxonomy marked ``single_label`` (EuroSAT) gives class indices; anything else is multi-label.
- Segmentation targets come from the ``lc`` member (first map) through the taxonomy's code
  table (``Taxonomy.lookup``): class index per pixel, -1 where the code is nodata/unknown.
- :func:`label_fraction_subset` draws the labelled part of the training split (e.g. 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from eoforge.shards.schema import ALL_TAXONOMIES

LABEL_MODES = ("auto", "single", "multi")


class LabelError(ValueError):
    """Samples whose labels cannot serve as probe targets (mixed taxonomies, no code table)."""


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a dataset's labels.

    Attributes:
        taxonomy: ``labels.taxonomy`` of the samples.
        names: class names, label-vector order.
        single_label: one class per sample (top-1 accuracy) or multi-label (AP).
    """

    taxonomy: str
    names: tuple[str, ...]
    single_label: bool

    @property
    def num_classes(self) -> int:
        return len(self.names)


def label_space(labels: dict[str, Any], mode: str = "auto") -> LabelSpace:
    """The label space of a sample's ``meta["labels"]``; ``mode`` forces single/multi-label."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    tax = ALL_TAXONOMIES.get(labels["taxonomy"])
    single = mode == "single" or (mode == "auto" and tax is not None and tax.single_label)
    return LabelSpace(labels["taxonomy"], tuple(labels["names"]), single)


def image_target(meta: dict[str, Any], space: LabelSpace) -> np.ndarray | int | None:
    """Multi-hot uint8 ``[C]`` (multi-label) or the class index (single-label) of a sample.

    Returns None when the sample has no labels, or (single-label) not exactly one class.

    Raises:
        LabelError: the sample's labels belong to another taxonomy than ``space``.
    """
    labels = meta.get("labels")
    if not labels:
        return None
    if labels["taxonomy"] != space.taxonomy or tuple(labels["names"]) != space.names:
        raise LabelError(f"{meta.get('key')}: labels of taxonomy {labels['taxonomy']!r}, "
                         f"the dataset's first labelled sample has {space.taxonomy!r}")
    hot = np.asarray(labels["multi_hot"], dtype=np.uint8)
    if space.single_label:
        (idx,) = np.nonzero(hot)
        return int(idx[0]) if idx.size == 1 else None
    return hot


def segmentation_target(sample: dict[str, Any], taxonomy: str) -> np.ndarray | None:
    """Per-pixel class index int16 ``[H, W]`` (-1 = no label) from ``lc[0]``; None without ``lc``.

    Raises:
        LabelError: the taxonomy has no code table (not in ``ALL_TAXONOMIES``).
    """
    if "lc" not in sample:
        return None
    tax = ALL_TAXONOMIES.get(taxonomy)
    if tax is None:
        raise LabelError(f"taxonomy {taxonomy!r} has no code table: cannot read the lc member as classes")
    return tax.lookup()[sample["lc"][0]]


def label_fraction_subset(targets: np.ndarray, fraction: float, seed: int, single_label: bool) -> np.ndarray:
    """Indices (sorted) of a seeded draw of ``fraction`` of the training samples.

    Stratified for single-label targets (``[N]`` class indices): each class keeps
    ``max(1, round(fraction * n_c))`` samples (rounding halves up). For multi-label targets (``[N, C]``) it is a
    covering draw: classes in order of rarity first get one random sample that has them
    (while the budget of ``max(1, round(fraction * N))`` lasts), then the rest is a random
    draw. ``fraction >= 1`` keeps everything.
    """
    n = len(targets)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1 or n == 0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if single_label:
        t = np.asarray(targets).astype(np.int64)
        chosen = []
        for c in np.unique(t):
            members = np.nonzero(t == c)[0]
            chosen.append(rng.choice(members, size=_count(fraction, members.size), replace=False))
        return np.sort(np.concatenate(chosen))
    t = np.asarray(targets).astype(bool)
    budget = _count(fraction, n)
    picked: list[int] = []
    covered = np.zeros(t.shape[1], dtype=bool)
    counts = t.sum(0)
    for c in np.argsort(counts, kind="stable"):
        if len(picked) >= budget:
            break
        if counts[c] == 0 or covered[c]:
            continue
        i = int(rng.choice(np.nonzero(t[:, c])[0]))
        picked.append(i)
        covered |= t[i]
    rest = np.setdiff1d(np.arange(n), picked)
    fill = rng.permutation(rest)[: budget - len(picked)]
    return np.sort(np.concatenate([np.asarray(picked, dtype=np.int64), fill]))


def _count(fraction: float, n: int) -> int:
    """``max(1, round(fraction * n))`` with halves rounded up (Python's ``round`` rounds to even)."""
    return max(1, int(np.floor(fraction * n + 0.5)))
