"""Per-band statistics over valid pixels, streamed from the shards -> ``DS/stats.json``.

Training normalises with these (mean ± 2σ -> [0, 1], or z-score). Pixels count only where
they hold data: S2 DN != 0 (per band; the zero B10 placeholder of L2A gets no statistics),
S1 where ``s1valid`` is True. S2 uses a full 65 536-bin histogram per band (uint16 DN), S1 a
0.01 dB histogram plus float64 sums, so the mean, standard deviation and percentiles do not
depend on shard order or on how the work was split.

``pixel_stride`` s counts every s-th pixel of every s-th row (1: all pixels, exact). Ingest
takes its statistics with s = 2 (``IngestConfig.stats_pixel_stride``): a regular quarter of
every tile's pixels, which changes the figures in the third or fourth digit and halves the
histogram work (0.55 against 1.1-1.3 ms for a 13-band 264 px tile, measured; a COG read
task spends ~7 ms of CPU on such a tile). ``eoforge shards stats``
recounts with s = 1 unless told otherwise. ``stats.json`` records the stride.

``stats.json``::

    {"s2": {"bands": [...13], "unit": "DN (reflectance * 10000)",
            "mean": [...], "std": [...], "p01": [...], "p99": [...], "count": [...]},
     "s1": {"bands": ["VV", "VH"], "unit": "dB", ...},
     "split": "train", "num_samples": N, "pixel_stride": 1}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from eoforge.shards.atomic import atomic_path, write_text_atomic
from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES

STATS_NAME = "stats.json"
S1_DB_MIN, S1_DB_MAX, S1_DB_STEP = -60.0, 30.0, 0.01
_S1_BINS = int(round((S1_DB_MAX - S1_DB_MIN) / S1_DB_STEP))
#: S2 arrays counted per histogram call (see :meth:`DatasetStats.add_s2`)
S2_BATCH = 16
#: OpenCV counts in float32: exact up to 2**24 per bin, so at most that many pixels per call
_EXACT_COUNTS = 1 << 24


@dataclass
class BandAccumulator:
    """Mergeable per-band histogram + sums.

    With ``bins_are_values`` (S2: bin index == DN) the sums are exact functions of the
    histogram: fill it with ``add_counts`` and the sums are derived when summarising.
    """

    bins: int
    nbands: int
    bins_are_values: bool = False
    hist: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.hist = np.zeros((self.nbands, self.bins), dtype=np.int64)
        self.total = np.zeros(self.nbands, dtype=np.float64)
        self.total_sq = np.zeros(self.nbands, dtype=np.float64)

    def add_counts(self, band: int, counts: np.ndarray) -> None:
        """Add a histogram of ``band`` (``bins`` counts); only for ``bins_are_values``."""
        self.hist[band] += counts

    def add(self, band: int, bin_index: np.ndarray, values: np.ndarray) -> None:
        self.hist[band] += np.bincount(bin_index, minlength=self.bins)
        v = values.astype(np.float64)
        self.total[band] += v.sum()
        self.total_sq[band] += np.square(v).sum()

    def merge(self, other: BandAccumulator) -> None:
        self.hist += other.hist
        self.total += other.total
        self.total_sq += other.total_sq

    def summary(self, bin_value: np.ndarray) -> dict[str, list[float | int | None]]:
        count = self.hist.sum(axis=1)
        total, total_sq = self.total, self.total_sq
        if self.bins_are_values:
            total, total_sq = self.hist @ bin_value, self.hist @ np.square(bin_value)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            var = np.maximum(total_sq / count - mean**2, 0.0)
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


@dataclass
class DatasetStats:
    """Statistics being accumulated: sample count plus S2 and S1 band accumulators.

    Ingest adds each sample while it is in memory (no second pass over the shards),
    saves one ``.npz`` per shard and merges them; ``compute_stats`` streams existing shards.
    """

    num_samples: int = 0
    pixel_stride: int = 1
    s2: BandAccumulator = field(default_factory=lambda: BandAccumulator(1 << 16, len(S2_BAND_NAMES), True))
    s1: BandAccumulator = field(default_factory=lambda: BandAccumulator(_S1_BINS, len(S1_BAND_NAMES)))
    _batch: np.ndarray | None = field(default=None, repr=False, compare=False)  # [S2_BATCH, 13, h, w] uint16
    _filled: int = field(default=0, repr=False, compare=False)  # arrays in _batch

    def add_sample(self, arrays: dict[str, np.ndarray]) -> None:
        self.num_samples += 1
        if "s2" in arrays:
            self.add_s2(arrays["s2"])
        if "s1" in arrays:
            self.add_s1(arrays["s1"], arrays["s1valid"])

    def add_s2(self, arr: np.ndarray) -> None:
        """S2 DN ``[..., 13, H, W]`` (uint16; 0 is nodata and is not counted).

        Counted in batches of :data:`S2_BATCH` arrays: each array's counted pixels are copied
        into one buffer, and each band of a batch gets one histogram (OpenCV's ``calcHist``,
        exact while a call counts at most 2**24 pixels; 0.55 ms per 13-band 264 px tile at
        stride 2 against 0.9 for a ``bincount`` per band, which first widens every value to
        int64): the 65 536-bin histogram stays out of the per-tile cost."""
        k = self.pixel_stride
        entries = arr.reshape(-1, *arr.shape[-3:])
        counted = (entries.shape[1], -(-entries.shape[2] // k), -(-entries.shape[3] // k))
        if self._batch is None or self._batch.shape[1:] != counted:
            self._flush()
            rows = max(1, min(S2_BATCH, _EXACT_COUNTS // (counted[1] * counted[2])))
            self._batch = np.empty((rows, *counted), dtype=np.uint16)
        for entry in entries:
            self._batch[self._filled] = entry[:, ::k, ::k]
            self._filled += 1
            if self._filled == len(self._batch):
                self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        import cv2  # here: a training loader's processes import this module and need no OpenCV

        assert self._batch is not None
        batch, n = self._batch, self._filled
        self._filled = 0
        for b in range(batch.shape[1]):
            band = batch[:n, b].reshape(n, -1)  # a view: OpenCV takes rows at any stride
            if band.size <= _EXACT_COUNTS:
                counts = cv2.calcHist([band], [0], None, [1 << 16], [0, 1 << 16]).ravel().astype(np.int64)
            else:  # one array alone holds more pixels than float32 counts exactly
                counts = np.bincount(band.ravel(), minlength=1 << 16)
            counts[0] = 0  # 0 is nodata
            self.s2.add_counts(b, counts)

    def add_s1(self, arr: np.ndarray, valid: np.ndarray) -> None:
        """S1 dB ``[..., 2, H, W]`` where ``valid`` ``[..., H, W]`` is True."""
        k = self.pixel_stride
        for b in range(arr.shape[-3]):
            v = arr[..., b, ::k, ::k][valid[..., ::k, ::k]].astype(np.float32)
            v = v[np.isfinite(v)]
            idx = np.clip(((v - S1_DB_MIN) / S1_DB_STEP).astype(np.int64), 0, _S1_BINS - 1)
            self.s1.add(b, idx, v)

    def merge(self, other: DatasetStats) -> None:
        if other.pixel_stride != self.pixel_stride:
            raise ValueError(f"cannot merge statistics of pixel strides {self.pixel_stride} and {other.pixel_stride}")
        self._flush()
        other._flush()
        self.num_samples += other.num_samples
        self.s2.merge(other.s2)
        self.s1.merge(other.s1)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (``.npz``) atomically; non-zero histogram bins only."""
        self._flush()
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"num_samples": np.array(self.num_samples),
                                         "pixel_stride": np.array(self.pixel_stride)}
        for name, acc in (("s2", self.s2), ("s1", self.s1)):
            # an empty histogram (S2 in a shard task's file, S1 without S1 data) skips nonzero's
            # 2 ms scan of every bin: ingest saves one file per task
            band, bin_ = np.nonzero(acc.hist) if acc.hist.any() else (np.zeros(0, np.intp), np.zeros(0, np.intp))
            arrays.update({f"{name}_band": band, f"{name}_bin": bin_, f"{name}_count": acc.hist[band, bin_],
                           f"{name}_total": acc.total, f"{name}_total_sq": acc.total_sq})
        with atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DatasetStats:
        out = cls()
        with np.load(path) as z:
            out.num_samples = int(z["num_samples"])
            out.pixel_stride = int(z["pixel_stride"]) if "pixel_stride" in z else 1
            for name, acc in (("s2", out.s2), ("s1", out.s1)):
                acc.hist[z[f"{name}_band"], z[f"{name}_bin"]] = z[f"{name}_count"]
                acc.total[:] = z[f"{name}_total"]
                acc.total_sq[:] = z[f"{name}_total_sq"]
        return out

    def to_dict(self, split: str) -> dict[str, Any]:
        self._flush()
        out: dict[str, Any] = {"split": split, "num_samples": self.num_samples, "pixel_stride": self.pixel_stride}
        if self.s2.hist.any():
            out["s2"] = {"bands": list(S2_BAND_NAMES), "unit": "DN (reflectance * 10000)",
                         **self.s2.summary(np.arange(1 << 16, dtype=np.float64))}
        if self.s1.hist.any():
            centres = S1_DB_MIN + (np.arange(_S1_BINS) + 0.5) * S1_DB_STEP
            out["s1"] = {"bands": list(S1_BAND_NAMES), "unit": "dB", **self.s1.summary(centres)}
        return out


def write_stats(root: str | os.PathLike[str], stats: DatasetStats, split: str = "train") -> dict[str, Any]:
    """Write ``DS/stats.json`` from accumulated statistics; return its content."""
    out = stats.to_dict(split)
    write_text_atomic(Path(root) / STATS_NAME, json.dumps(out, indent=2) + "\n")
    return out


def _shard_stats(url: str, pixel_stride: int = 1) -> DatasetStats:
    from eoforge.shards.reader import read_samples

    stats = DatasetStats(pixel_stride=pixel_stride)
    for sample in read_samples([url]):
        stats.add_sample(sample)
    return stats


def compute_stats(
    root: str | os.PathLike[str], split: str = "train", workers: int | None = None, progress: bool = False,
    pixel_stride: int = 1,
) -> dict[str, Any]:
    """Compute per-band statistics of ``split`` from its shards and write ``DS/stats.json``; return them."""
    from eoforge.shards.reader import shard_urls

    urls = shard_urls(root, split)
    if not urls:
        raise ValueError(f"{root}: no shards in split {split!r}")
    if pixel_stride < 1:
        raise ValueError(f"pixel_stride must be >= 1, got {pixel_stride}")
    total = DatasetStats(pixel_stride=pixel_stride)
    count = partial(_shard_stats, pixel_stride=pixel_stride)
    workers = max(1, min(workers or os.cpu_count() or 1, len(urls)))
    bar = tqdm(total=len(urls), unit="shard", desc="stats", disable=not progress)
    parts: Iterator[DatasetStats]
    if workers == 1:
        parts = map(count, urls)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        parts = pool.map(count, urls)
    try:
        for part in parts:
            total.merge(part)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return write_stats(root, total, split)
