"""Per-band statistics over valid pixels, streamed from the shards -> ``DS/stats.json``.

Training normalises with these (mean ± 2σ -> [0, 1], or z-score). Pixels count only where
they hold data: S2 DN != 0 (per band; the zero B10 placeholder of L2A gets no statistics),
S1 where ``s1valid`` is True. Statistics are exact: S2 uses a full 65 536-bin histogram per
band (uint16 DN), S1 a 0.01 dB histogram plus float64 sums, so the mean, standard deviation
and percentiles do not depend on shard order or on how the work was split.

``stats.json``::

    {"s2": {"bands": [...13], "unit": "DN (reflectance * 10000)",
            "mean": [...], "std": [...], "p01": [...], "p99": [...], "count": [...]},
     "s1": {"bands": ["VV", "VH"], "unit": "dB", ...},
     "split": "train", "num_samples": N}
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from eoforge.shards.reader import read_samples, shard_urls
from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES

STATS_NAME = "stats.json"
S1_DB_MIN, S1_DB_MAX, S1_DB_STEP = -60.0, 30.0, 0.01
_S1_BINS = int(round((S1_DB_MAX - S1_DB_MIN) / S1_DB_STEP))


@dataclass
class BandAccumulator:
    """Mergeable per-band histogram + sums."""

    bins: int
    nbands: int
    hist: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.hist = np.zeros((self.nbands, self.bins), dtype=np.int64)
        self.total = np.zeros(self.nbands, dtype=np.float64)
        self.total_sq = np.zeros(self.nbands, dtype=np.float64)

    def add(self, band: int, bin_index: np.ndarray, values: np.ndarray) -> None:
        self.hist[band] += np.bincount(bin_index, minlength=self.bins)
        v = values.astype(np.float64)
        self.total[band] += v.sum()
        self.total_sq[band] += np.square(v).sum()

    def merge(self, other: "BandAccumulator") -> None:
        self.hist += other.hist
        self.total += other.total
        self.total_sq += other.total_sq

    def summary(self, bin_value: np.ndarray) -> dict[str, list[float | int | None]]:
        count = self.hist.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.total / count
            var = np.maximum(self.total_sq / count - mean**2, 0.0)
        out: dict[str, list[Any]] = {"count": count.tolist(), "mean": [], "std": [], "p01": [], "p99": []}
        for b in range(self.nbands):
            if count[b] == 0:
                for k in ("mean", "std", "p01", "p99"):
                    out[k].append(None)
                continue
            cdf = np.cumsum(self.hist[b]) / count[b]
            out["mean"].append(float(mean[b]))
            out["std"].append(float(np.sqrt(var[b])))
            out["p01"].append(float(bin_value[np.searchsorted(cdf, 0.01)]))
            out["p99"].append(float(bin_value[np.searchsorted(cdf, 0.99)]))
        return out


def _shard_stats(url: str) -> tuple[int, BandAccumulator, BandAccumulator]:
    s2 = BandAccumulator(1 << 16, len(S2_BAND_NAMES))
    s1 = BandAccumulator(_S1_BINS, len(S1_BAND_NAMES))
    n = 0
    for sample in read_samples([url]):
        n += 1
        if "s2" in sample:
            arr = sample["s2"]
            for b in range(arr.shape[1]):
                v = arr[:, b][arr[:, b] != 0]
                s2.add(b, v, v)
        if "s1" in sample:
            arr, valid = sample["s1"], sample["s1valid"]
            for b in range(arr.shape[1]):
                v = arr[:, b][valid].astype(np.float32)
                v = v[np.isfinite(v)]
                idx = np.clip(((v - S1_DB_MIN) / S1_DB_STEP).astype(np.int64), 0, _S1_BINS - 1)
                s1.add(b, idx, v)
    return n, s2, s1


def compute_stats(
    root: str | os.PathLike[str], split: str = "train", workers: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Compute per-band statistics of ``split`` and write ``DS/stats.json``; return them."""
    urls = shard_urls(root, split)
    if not urls:
        raise ValueError(f"{root}: no shards in split {split!r}")
    s2 = BandAccumulator(1 << 16, len(S2_BAND_NAMES))
    s1 = BandAccumulator(_S1_BINS, len(S1_BAND_NAMES))
    total = 0
    workers = max(1, min(workers or os.cpu_count() or 1, len(urls)))
    bar = tqdm(total=len(urls), unit="shard", desc="stats", disable=not progress)
    if workers == 1:
        parts = map(_shard_stats, urls)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        parts = pool.map(_shard_stats, urls)
    try:
        for n, a2, a1 in parts:
            total += n
            s2.merge(a2)
            s1.merge(a1)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    out: dict[str, Any] = {"split": split, "num_samples": total}
    if s2.hist.any():
        out["s2"] = {"bands": list(S2_BAND_NAMES), "unit": "DN (reflectance * 10000)",
                     **s2.summary(np.arange(1 << 16, dtype=np.float64))}
    if s1.hist.any():
        centres = S1_DB_MIN + (np.arange(_S1_BINS) + 0.5) * S1_DB_STEP
        out["s1"] = {"bands": list(S1_BAND_NAMES), "unit": "dB", **s1.summary(centres)}
    path = Path(root) / STATS_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    return out
