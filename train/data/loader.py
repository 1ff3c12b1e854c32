"""The training data path: shards -> decoded samples -> normalised inputs -> views -> batches.

One DataLoader worker runs this chain of generator stages (each a plain function you can
call alone on any iterator, webdataset style)::

    resampled(its shards, rng)            endless, seeded, with replacement   (shardlists.py)
      -> interleave(read_shard, k)         raw samples from k open shards, round-robin
      -> decode_inputs                     modality + time step, only that step decoded
      -> wds.shuffle(buffer, rng)          seeded shuffle buffer
      -> random_crops(crop_px, rng)        optional: one seeded window per sample, still stored dtype
      -> normalize_inputs                  float32 tensors, no-data pixels 0   (shards/normalize.py)
      -> apply_views                       views(inputs, generator) per sample
      -> batched                           default_collate + "__key__" list + skip count

With ``identity_views`` (no augmentation: feature extraction, probes, supervised training on
crops) the last three stages are one, :func:`normalized_batches`: each sample is normalised
straight into its slot of the batch, which in a DataLoader worker lives in shared memory.
The result is the same tensors; what it saves is a float32 copy of every sample and the
stacking copy (1.3-1.4x the samples/s, measured on 224 px crops of 264 px tiles).

Why the stages sit in this order:

- A crop (``crop_px``) is cut before normalisation, so everything after it works on the
  crop's pixels only.
- Only the members the modality needs are read out of the tar and decoded (``lc``/``scl`` and
  the other modality are skipped unread); the time step is drawn from the JSON first and of
  each ``[T, ...]`` stack only that step's zstd frame is decompressed, so the shuffle buffer
  holds one step at stored dtype (S2: 13 x H x W uint16, 1.8 MB at 264 px;
  ``shuffle_buffer=1000`` is ~1.8 GB per worker). Float conversion and the views run after the
  buffer, on the way out.
- The buffer spans many shards: each worker keeps ``open_shards`` shards open and takes
  samples from them in turn, so even the first ``shuffle_initial`` samples come from
  ``open_shards`` different shards, and a full buffer of N samples holds samples of about
  ``open_shards + N / samples_per_shard`` shards (an open shard is replaced by a freshly drawn
  one once read). Plain webdataset (one shard at a time) would fill the first N samples from
  ``N / samples_per_shard`` consecutive shards only.

Exactly ``num_steps`` batches: every worker's stream is endless (resampled shards), batches are
formed *inside* the workers (``DataLoader(batch_size=None)``), and the main process takes
``itertools.islice(loader, num_steps)``. The count therefore does not depend on shard sizes,
on the number of workers or on how many samples were skipped, so every rank takes the same
number of steps and DDP never waits on a rank that ran dry. (Batching in the main process or
counting samples per worker could not guarantee this: ``num_steps * batch_size`` is not a
multiple of the worker count in general.) The DataLoader hands out batches from its workers
strictly in turn (``in_order=True``), so batch ``i`` is batch ``i // workers`` of worker
``i % workers``: the sequence is deterministic for fixed (seed, start_step, rank) and prefixes
agree whatever ``num_steps`` is. Up to ``workers * prefetch_factor`` batches made ahead are
thrown away when the segment ends.

Data position (see :mod:`eoforge.train.data.shardlists`): every random choice of a worker
comes from generators seeded by ``(seed, start_step, rank, worker)`` and, for ``views``, by the
sample's index in the worker's output stream, so a loader built for ``[start_step, start_step
+ num_steps)`` yields the same batches whatever happened before.

Corrupt data: a member that does not decode, a sample without the modality asked for, or a
shard that cannot be opened or read to its end is skipped with a ``logging.warning`` naming the
shard url and the key, and counted. Each batch carries its worker's running count; the loader
adds them up (``batch["__skipped__"]`` and :attr:`ShardLoader.skipped`). A worker that meets
``max_consecutive_errors`` failures without one usable sample in between raises instead of
spinning forever on a broken dataset (the DataLoader re-raises it in the main process).
"""

from __future__ import annotations

import logging
import random
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from webdataset.tariterators import base_plus_ext

from eoforge.shards.encoding import DecodeError, decode_array, decode_entry, decode_json
from eoforge.shards.schema import ALL_TAXONOMIES, META_MEMBER, S1_BAND_NAMES, convert_label_vector
from eoforge.train.data.malloc import retain_freed_memory
from eoforge.shards.normalize import NORMALIZATIONS, BandNorm, band_norm, normalize_s1, normalize_s2, read_stats
from eoforge.train.data.shardlists import (
    check_enough_shards, check_pairing_rule, dataset_label_taxonomy, derive_seed, resampled, resolve_shards,
    split_by_rank, split_by_worker,
)

logger = logging.getLogger(__name__)

MODALITIES = ("s2", "s1", "s1s2")
TIME_STEPS = ("random", "first", "all", "random_pair")
#: Tar members each modality needs (plus the JSON metadata, for keys and labels).
MODALITY_MEMBERS: dict[str, frozenset[str]] = {
    "s2": frozenset({"s2", META_MEMBER}),
    "s1": frozenset({"s1", "s1valid", META_MEMBER}),
    "s1s2": frozenset({"s2", "s1", "s1valid", META_MEMBER}),
}

#: ``views(inputs, generator) -> dict of tensors``; must be picklable when workers use spawn.
Views = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]


@dataclass(frozen=True)
class DataConfig:
    """How the training data is read. Counts are per rank.

    Attributes:
        modality: ``"s2"``, ``"s1"`` or ``"s1s2"`` (both, same time step).
        split: dataset split to read (ignored for an explicit shard URL list).
        batch_size: samples per batch, per rank.
        workers: DataLoader worker processes per rank (0: read in the main process).
        shuffle_buffer: samples in each worker's shuffle buffer (memory: one time step of each
            sample at stored dtype, e.g. 1.8 MB per 264 px S2 sample); <= 1 disables shuffling.
        shuffle_initial: samples buffered before the first one is handed out.
        open_shards: shards each worker reads at once, taking samples from them in turn.
        normalization: ``"minmax2sigma"`` (mean ± 2σ -> [0, 1]) or ``"zscore"``.
        clip: clip ``minmax2sigma`` output to [0, 1] (SoftCon's convention).
        time_step: ``"random"`` (one of the T steps, seeded), ``"first"``, ``"all"`` (inputs
            keep the T axis: ``[T, C, H, W]``) or ``"random_pair"`` (two steps drawn
            independently, SSL4EO's two-season views: inputs ``[2, C, H, W]``, labels ``[2, K]``;
            a tile with one step gives that step twice).
        paired_only: draw only among time steps that carry both S2 and a paired S1 acquisition
            (``s1_product_id`` in the step's metadata, within ``max_dt_days``); tiles without
            one are passed over (not errors). For S1/S2 methods (the dual encoder).
        max_dt_days: with ``paired_only``, the largest |S1 time - S2 time| of a usable step, in
            days; None keeps every pair the dataset holds. It can only tighten the pairing rule
            the dataset was ingested with (a looser value is an error at start-up).
        label_taxonomy: the label vector's class list: ``"worldcover"``, ``"dynamic_world"``, ...
            Labels of another taxonomy are converted (WorldCover -> Dynamic World, SoftCon's
            mapping; merged classes by their summed fractions and the sample's threshold). None:
            the dataset's own (read from its manifest). Unlabelled samples get a zero vector.
        s1_clip_db: per S1 band ``[lo, hi]`` in dB, clipped before normalisation (the dual
            encoder's S1 rule: VV [-25, 0], VH [-32.5, 0]); None: no clipping.
        crop_px: cut a random ``crop_px`` x ``crop_px`` window of each sample (the same window
            for every member; uniform position, seeded) before normalisation and views; None
            keeps whole tiles. Tiles smaller than the crop are skipped and counted.
        stats: path or URL of ``stats.json``; default: the dataset's own (required for an
            explicit shard list).
        prefetch_factor: batches each worker makes ahead.
        pin_memory: pin batches in page-locked memory (for CUDA).
        worker_timeout_s: seconds to wait for a worker's batch before failing (never hang).
        max_consecutive_errors: skipped samples/shards in a row, with no usable sample in
            between, after which a worker gives up with an error.
    """

    modality: str = "s2"
    split: str = "train"
    batch_size: int = 64
    workers: int = 4
    shuffle_buffer: int = 1000
    shuffle_initial: int = 100
    open_shards: int = 4
    normalization: str = "minmax2sigma"
    clip: bool = False
    time_step: str = "random"
    paired_only: bool = False
    max_dt_days: float | None = None
    label_taxonomy: str | None = None
    s1_clip_db: tuple[tuple[float, float], ...] | None = None
    crop_px: int | None = None
    stats: str | None = None
    prefetch_factor: int = 2
    pin_memory: bool = False
    worker_timeout_s: float = 600.0
    max_consecutive_errors: int = 100

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"data.modality {self.modality!r} not in {MODALITIES}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"data.normalization {self.normalization!r} not in {NORMALIZATIONS}")
        if self.time_step not in TIME_STEPS:
            raise ValueError(f"data.time_step {self.time_step!r} not in {TIME_STEPS}")
        for name in ("batch_size", "open_shards", "prefetch_factor", "max_consecutive_errors"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")
        if self.crop_px is not None and self.crop_px < 1:
            raise ValueError(f"data.crop_px must be >= 1 or None, got {self.crop_px}")
        if self.max_dt_days is not None and (self.max_dt_days < 0 or not self.paired_only):
            raise ValueError("data.max_dt_days must be >= 0 and needs data.paired_only: true")
        if self.label_taxonomy is not None and self.label_taxonomy not in ALL_TAXONOMIES:
            raise ValueError(f"data.label_taxonomy {self.label_taxonomy!r} not in {sorted(ALL_TAXONOMIES)}")
        if self.s1_clip_db is not None:
            ranges = tuple(tuple(float(v) for v in r) for r in self.s1_clip_db)
            if len(ranges) != len(S1_BAND_NAMES) or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
                raise ValueError(f"data.s1_clip_db must be one increasing [lo, hi] pair per S1 band "
                                 f"{S1_BAND_NAMES}, got {self.s1_clip_db}")
            object.__setattr__(self, "s1_clip_db", ranges)


def identity_views(inputs: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Views that are the inputs themselves, no augmentation: every tensor of ``inputs``."""
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------------ skipping


class SkipCounter:
    """Logs and counts skipped samples of one worker; gives up on a dataset that yields nothing.

    ``count`` is cumulative for the worker's life (one loader segment); ``ok()`` marks a usable
    sample and resets the run of consecutive failures. ``filtered`` counts samples passed over
    on purpose (no time step the rule accepts): not errors, but a worker whose shards hold
    nothing usable still gives up, after ``FILTERED_PER_ERROR`` times as many in a row.
    """

    #: passed-over samples in a row worth one failure (a paired-only run over a sparsely paired dataset)
    FILTERED_PER_ERROR = 100

    def __init__(self, where: str = "", max_consecutive: int = 100) -> None:
        self.where = where
        self.max_consecutive = max_consecutive
        self.count = 0
        self.consecutive = 0
        self.filtered = 0
        self.filtered_consecutive = 0

    def filter(self, url: str | None, key: str | None, reason: str) -> None:
        self.filtered += 1
        self.filtered_consecutive += 1
        if self.filtered_consecutive >= self.max_consecutive * self.FILTERED_PER_ERROR:
            raise RuntimeError(
                f"{self.where or 'loader'}: {self.filtered_consecutive} samples in a row passed over without a"
                f" usable one, last in {url} key {key}: {reason}"
            )

    def skip(self, url: str | None, key: str | None, reason: str) -> None:
        self.count += 1
        self.consecutive += 1
        logger.warning("%sskipped %s key %s: %s (%d skipped so far)",
                       f"{self.where}: " if self.where else "", url, key, reason, self.count)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.where or 'loader'}: {self.consecutive} failures in a row without a usable"
                f" sample, last in {url} key {key}: {reason}"
            )

    def ok(self) -> None:
        self.consecutive = 0
        self.filtered_consecutive = 0


class NoUsableStep(ValueError):
    """A sample has no time step the selection accepts (e.g. none paired with S1): passed over."""


# -------------------------------------------------------------------------- stages


class MemberSelector:
    """``select_files`` predicate: keep tar members whose name (``key.<member>.<suffix>``) is in ``members``."""

    def __init__(self, members: Iterable[str]) -> None:
        self.members = frozenset(members)

    def __call__(self, fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        return key is not None and not key.startswith("__") and ext.split(".", 1)[0] in self.members


#: Read size of non-seekable tar streams: a multi-MB member is a few reads, not hundreds
#: (tarfile's default is 10 KiB); not larger, as tarfile copies the unread rest on each read.
READ_BUFFER_BYTES = 1 << 18


def read_shard(url: str, members: Iterable[str], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard in webdataset's format: ``{"__key__", "__url__", "s2.npy.zst": bytes, ...}``.

    Like webdataset's ``tarfile_to_samples`` for one url (opened with ``wds.gopen``: local
    paths, ``file:``, ``http(s)://``, ``pipe:``), with three differences: only members named in
    ``members`` are read (the others are skipped over unread); local files are read with seeks
    and one ``read()`` per member, streams in 256 KiB pieces (tarfile's default 10 KiB costs
    hundreds of calls per S2 member); and a shard that cannot be opened, or breaks off
    (truncated tar, I/O error), counts once: the sample being read when it broke is dropped
    with the rest of the shard, so no partial sample leaks into the next shard's samples. An
    empty shard counts too, so a worker never spins on shards that yield nothing.
    """
    select = members if isinstance(members, MemberSelector) else MemberSelector(members)
    try:
        stream = wds.gopen(url)
    except Exception as err:  # openers raise OSError, ValueError or their own types
        counter.skip(url, None, f"cannot open shard: {err}")
        return
    sample: dict[str, Any] | None = None
    failure: str | None = None
    try:
        # Local files are seekable: member data is then one read() each and skipped members
        # are a seek. Pipes and HTTP streams are read in READ_BUFFER_BYTES pieces.
        seekable = getattr(stream, "seekable", lambda: False)()
        mode = "r:*" if seekable else "r|*"
        with tarfile.open(fileobj=stream, mode=mode, bufsize=READ_BUFFER_BYTES) as tar:
            for info in tar:
                if not info.isreg() or not select(info.name):
                    continue
                key, ext = base_plus_ext(info.name)
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                sample[ext] = data
    except Exception as err:
        failure = f"shard unreadable from this sample on, rest skipped ({type(err).__name__}: {err})"
    finally:
        try:
            stream.close()
        except Exception:  # a pipe closed early reports its child's status; nothing to do
            pass
    if failure is not None:
        counter.skip(url, sample["__key__"] if sample is not None else None, failure)
    elif sample is None:
        counter.skip(url, None, "shard has no samples")
    else:
        yield sample


def interleave(urls: Iterator[str], read: Callable[[str], Iterator[dict]], open_shards: int) -> Iterator[dict]:
    """Samples from ``open_shards`` shards at a time, one from each in turn.

    When a shard is exhausted the next url of ``urls`` takes its place; ends when ``urls`` and
    every open shard are exhausted (never, for a resampled stream).
    """
    active: deque[Iterator[dict]] = deque(read(u) for u in islice(urls, open_shards))
    while active:
        shard = active.popleft()
        sample = next(shard, None)
        if sample is None:  # the next shard takes this one's turn
            nxt = next(urls, None)
            if nxt is not None:
                active.appendleft(read(nxt))
            continue
        yield sample
        active.append(shard)


def decode_inputs(
    src: Iterable[dict[str, Any]], modality: str, time_step: str, rng: random.Random, counter: SkipCounter, *,
    paired_only: bool = False, max_dt_days: float | None = None, label_taxonomy: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Raw samples -> the arrays of ``modality`` at the chosen time step(s), still at stored dtype.

    Yields ``{"__key__": str, "s2": uint16 [13, H, W], "s1": float16/32 [2, H, W] dB,
    "s1valid": bool [H, W], "labels": float32 [K]}`` (only the modalities asked for). With
    ``time_step="all"`` every (usable) step is kept: ``[T, ...]`` arrays, labels ``[T, K]``;
    with ``"random_pair"`` two independently drawn steps: ``[2, ...]``, labels ``[2, K]``.

    The JSON is decoded first and the step(s) drawn from ``rng`` among the usable steps (every
    step, or with ``paired_only`` those with a paired S1 acquisition within ``max_dt_days``;
    S1 and S2 share the step); of each image member only those steps are decoded
    (:func:`~eoforge.shards.encoding.decode_entry`: eoforge writes one zstd frame per time step,
    so one step of T costs 1 / T of a full decode), and a shuffle buffer holds only them.

    Labels: the step's own row where the sample has per-step labels
    (``labels.per_step_multi_hot``), else the sample's ``multi_hot``, converted to
    ``label_taxonomy`` when that is another class list; an unlabelled sample gets zeros (with
    ``label_taxonomy`` known) or an empty vector. Never unpickles. Samples lacking a member,
    with undecodable members or with shapes that disagree with their metadata are skipped and
    counted; samples without a usable step are passed over (``counter.filtered``).
    """
    want = tuple(m for m in ("s2", "s1", "s1valid") if m in MODALITY_MEMBERS[modality])
    for raw in src:
        try:
            out = _decode_selected(raw, want, time_step, rng, paired_only, max_dt_days, label_taxonomy)
        except NoUsableStep as err:
            counter.filter(raw.get("__url__"), raw.get("__key__"), str(err))
            continue
        except (DecodeError, KeyError, ValueError, TypeError, IndexError) as err:
            reason = str(err) if isinstance(err, DecodeError) else f"unusable sample: {err}"
            counter.skip(raw.get("__url__"), raw.get("__key__"), reason)
            continue
        counter.ok()
        yield out


def usable_steps(time_steps: list[dict[str, Any]], paired_only: bool, max_dt_days: float | None) -> list[int]:
    """Indices of the time steps a sample may be drawn at (all, or those paired with S1)."""
    if not paired_only:
        return list(range(len(time_steps)))
    usable = []
    for i, step in enumerate(time_steps):
        dt = step.get("dt_days")
        if not step.get("s2_product_id") or not step.get("s1_product_id") or dt is None:
            continue
        if max_dt_days is not None and abs(float(dt)) > max_dt_days:
            continue
        if step.get("s1_valid_fraction") == 0:
            continue
        usable.append(i)
    return usable


def label_vectors(meta: dict[str, Any], picks: list[int], taxonomy: str | None) -> np.ndarray:
    """Float32 ``[len(picks), K]`` label vectors of the picked steps (see :func:`decode_inputs`)."""
    labels = meta.get("labels") or {}
    source = labels.get("taxonomy")
    target = taxonomy or source
    width = len(ALL_TAXONOMIES[target].names) if target in ALL_TAXONOMIES else len(labels.get("multi_hot") or [])
    if not labels or not labels.get("multi_hot"):
        return np.zeros((len(picks), width), dtype=np.float32)
    per_step = labels.get("per_step_multi_hot")
    if per_step is not None:
        rows = np.asarray([per_step[p] for p in picks], dtype=np.float32)
        return convert_label_vector(rows, source, target) if source != target else rows
    if source != target and labels.get("fractions") is not None and labels.get("threshold") is not None:
        row = convert_label_vector(np.asarray(labels["fractions"], dtype=np.float64), source, target,
                                   threshold=float(labels["threshold"]))
    else:
        row = convert_label_vector(np.asarray(labels["multi_hot"], dtype=np.float32), source, target)
    return np.repeat(row[None].astype(np.float32), len(picks), axis=0)


def _decode_selected(raw: dict[str, Any], want: tuple[str, ...], time_step: str, rng: random.Random,
                     paired_only: bool = False, max_dt_days: float | None = None,
                     label_taxonomy: str | None = None) -> dict[str, Any]:
    key, url = raw.get("__key__"), raw.get("__url__")
    members = {ext.partition(".")[0]: ext for ext in raw if not ext.startswith("__")}  # "s2" -> "s2.npy.zst"
    if META_MEMBER not in members:
        raise KeyError(f"no {META_MEMBER} member")
    meta = decode_json(raw[members[META_MEMBER]])
    time_steps = meta.get("time_steps") or []
    steps = len(time_steps)
    if steps < 1:
        raise ValueError("metadata lists no time_steps")
    usable = usable_steps(time_steps, paired_only, max_dt_days)
    if not usable:  # before the members: a tile S1 never covered has no s1 member at all
        raise NoUsableStep("no time step paired with S1" + (f" within {max_dt_days:g} days" if max_dt_days is not None else ""))
    missing = [name for name in want if name not in members]
    if missing:
        raise KeyError(f"no {', '.join(missing)} member")
    if time_step == "all":
        picks = usable
    elif time_step == "random":
        picks = [usable[rng.randrange(len(usable))]]
    elif time_step == "random_pair":
        picks = [usable[rng.randrange(len(usable))], usable[rng.randrange(len(usable))]]
    else:
        picks = [usable[0]]
    single = time_step in ("random", "first")  # one step, no time axis
    out: dict[str, Any] = {"__key__": key}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in want:
        ext = members[name]
        suffix = ext.partition(".")[2]
        try:
            if time_step == "all" and len(picks) == steps:
                out[name] = decode_array(raw[ext], suffix)
                shapes[name] = out[name].shape
            else:
                decoded: dict[int, np.ndarray] = {}
                for p in dict.fromkeys(picks):
                    decoded[p], shapes[name] = decode_entry(raw[ext], suffix, p)
                if single:
                    out[name] = decoded[picks[0]]
                else:  # a new leading axis of the picked steps (one copy; a repeated step is copied twice)
                    out[name] = np.stack([decoded[p] for p in picks])
        except DecodeError as err:
            raise DecodeError(f"{url}: {key}.{ext}: {err}") from err
    ref = shapes["s2"] if "s2" in shapes else shapes["s1"]
    if len(ref) != 4:
        raise ValueError(f"image member has shape {ref}, expected [T, C, H, W]")
    hw = ref[-2:]
    expected = {"s2": (steps, 13, *hw), "s1": (steps, 2, *hw), "s1valid": (steps, *hw)}
    for name in want:
        if shapes[name] != expected[name]:
            raise ValueError(f"{name} has shape {shapes[name]}, expected {expected[name]}"
                             f" (the metadata lists {steps} time steps)")
    vectors = label_vectors(meta, picks, label_taxonomy)
    out["labels"] = vectors[0] if single else vectors
    return out


IMAGE_MEMBERS = ("s2", "s1", "s1valid")


def random_crops(src: Iterable[dict[str, Any]], size: int, rng: random.Random,
                 counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """A uniformly placed ``size`` x ``size`` window of each sample's image members (views of
    the stored arrays, the same window for every member; one ``rng`` draw per axis). A sample
    smaller than the window is skipped and counted."""
    for s in src:
        h, w = next(s[m] for m in IMAGE_MEMBERS if m in s).shape[-2:]
        if h < size or w < size:
            counter.skip(None, s["__key__"], f"{h} x {w} px, smaller than crop_px {size}")
            continue
        i, j = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
        out = dict(s)
        for m in IMAGE_MEMBERS:
            if m in s:
                out[m] = s[m][..., i:i + size, j:j + size]
        yield out


def normalize_inputs(src: Iterable[dict[str, Any]], norms: dict[str, BandNorm]) -> Iterator[dict[str, Any]]:
    """Stored arrays -> the ``inputs`` dict of the contract, as torch tensors.

    ``"s2"`` float32 ``[13, H, W]`` normalised (DN 0 -> 0); ``"s1"`` float32 ``[2, H, W]``
    normalised with invalid pixels 0; ``"s1valid"`` bool ``[H, W]`` (``s1valid`` and finite);
    ``"labels"`` float32 ``[K]`` multi-hot; ``"__key__"`` str.
    """
    for s in src:
        out: dict[str, Any] = {"__key__": s["__key__"], "labels": torch.from_numpy(s["labels"])}
        if "s2" in s:
            out["s2"] = torch.from_numpy(normalize_s2(s["s2"], norms["s2"]))
        if "s1" in s:
            s1, valid = normalize_s1(s["s1"], s["s1valid"], norms["s1"])
            out["s1"], out["s1valid"] = torch.from_numpy(s1), torch.from_numpy(valid)
        yield out


def apply_views(
    src: Iterable[dict[str, Any]], views: Views, seed_parts: Sequence[int | str]
) -> Iterator[dict[str, Any]]:
    """``views(inputs, generator)`` per sample; the generator is seeded by ``(*seed_parts, index)``.

    ``index`` counts samples in this stream (0, 1, ...), so augmentations are reproducible and
    independent of the process that runs them. The key is carried over as ``"__key__"``.
    """
    for index, inputs in enumerate(src):
        generator = torch.Generator()
        generator.manual_seed(derive_seed(*seed_parts, index))
        out = dict(views(inputs, generator))
        out["__key__"] = inputs["__key__"]
        yield out


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch tensor; in a DataLoader worker in shared memory, as ``default_collate``
    makes it (the batch then crosses to the main process without a copy)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def normalized_batches(src: Iterable[dict[str, Any]], norms: dict[str, BandNorm], batch_size: int,
                       counter: SkipCounter | None = None, worker: int = 0) -> Iterator[dict[str, Any]]:
    """``normalize_inputs`` + ``apply_views(identity_views)`` + ``batched`` in one stage: each
    sample's arrays are normalised straight into their slot of the batch tensors.

    Yields the same batches as the three stages would (``"s2"``, ``"s1"``, ``"s1valid"``,
    ``"labels"`` stacked, plus ``"__key__"``, ``"__skipped__"``, ``"__worker__"``); samples
    must agree on their members' shapes, as ``default_collate`` requires. A trailing partial
    batch is dropped.
    """
    it = iter(src)
    while True:
        items = list(islice(it, batch_size))
        if len(items) < batch_size:
            return
        first = items[0]
        batch: dict[str, Any] = {}
        if "s2" in first:
            batch["s2"] = _batch_tensor((batch_size, *first["s2"].shape), torch.float32)
            out = batch["s2"].numpy()
            for k, s in enumerate(items):
                normalize_s2(s["s2"], norms["s2"], out=out[k])
        if "s1" in first:
            batch["s1"] = _batch_tensor((batch_size, *first["s1"].shape), torch.float32)
            batch["s1valid"] = _batch_tensor((batch_size, *first["s1valid"].shape), torch.bool)
            out, valid = batch["s1"].numpy(), batch["s1valid"].numpy()
            for k, s in enumerate(items):
                _, valid[k] = normalize_s1(s["s1"], s["s1valid"], norms["s1"], out=out[k])
        batch["labels"] = torch.from_numpy(np.stack([s["labels"] for s in items]))
        batch["__key__"] = [s["__key__"] for s in items]
        batch["__skipped__"] = counter.count if counter is not None else 0
        batch["__worker__"] = worker
        yield batch


def batched(src: Iterable[dict[str, Any]], batch_size: int, counter: SkipCounter | None = None,
            worker: int = 0) -> Iterator[dict[str, Any]]:
    """Collate ``batch_size`` view dicts: tensors stacked by ``default_collate``, keys as a list.

    Adds ``"__key__"``: list[str], ``"__skipped__"``: int (the worker's running skip count) and
    ``"__worker__"``: int (consumed by :class:`ShardLoader`). A trailing partial batch is dropped.
    """
    it = iter(src)
    while True:
        items = list(islice(it, batch_size))
        if len(items) < batch_size:
            return
        keys = [item.pop("__key__") for item in items]
        batch = default_collate(items)
        batch["__key__"] = keys
        batch["__skipped__"] = counter.count if counter is not None else 0
        batch["__worker__"] = worker
        yield batch


# ---------------------------------------------------------------------- the stream


class ShardStream(IterableDataset):
    """The endless batch stream of one rank; in each DataLoader worker, that worker's share.

    Args:
        urls: this rank's shards (already split by rank).
        cfg: the data settings.
        norms: per-modality normalisation (``"s2"``, ``"s1"``).
        views: ``views(inputs, generator) -> dict of tensors``.
        seed, start_step, rank: the data position (see the module docstring).
        label_taxonomy: the label vectors' class list (default ``cfg.label_taxonomy``).
    """

    def __init__(self, urls: Sequence[str], cfg: DataConfig, norms: dict[str, BandNorm], views: Views,
                 *, seed: int, start_step: int, rank: int, label_taxonomy: str | None = None) -> None:
        super().__init__()
        self.label_taxonomy = label_taxonomy or cfg.label_taxonomy
        self.urls = list(urls)
        self.cfg = cfg
        self.norms = norms
        self.views = views
        self.seed, self.start_step, self.rank = seed, start_step, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            retain_freed_memory()  # per-sample MB buffers reuse pages instead of faulting in fresh ones
        return self.batches(worker, num_workers)

    def batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """The batches of worker ``worker`` of ``num_workers`` (callable without a DataLoader)."""
        cfg = self.cfg
        position = (self.seed, self.start_step, self.rank, worker)

        def rng(stage: str) -> random.Random:
            return random.Random(derive_seed(*position, stage))

        counter = SkipCounter(f"rank {self.rank} worker {worker}", cfg.max_consecutive_errors)
        urls = split_by_worker(self.urls, worker, num_workers)
        read = partial(read_shard, members=MemberSelector(MODALITY_MEMBERS[cfg.modality]), counter=counter)
        samples: Iterator[dict[str, Any]] = interleave(resampled(urls, rng("shards")), read, cfg.open_shards)
        samples = decode_inputs(samples, cfg.modality, cfg.time_step, rng("time_step"), counter,
                                paired_only=cfg.paired_only, max_dt_days=cfg.max_dt_days,
                                label_taxonomy=self.label_taxonomy)
        if cfg.shuffle_buffer > 1:
            samples = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_initial, rng=rng("shuffle"))(samples)
        if cfg.crop_px is not None:
            samples = random_crops(samples, cfg.crop_px, rng("crop"), counter)
        if self.views is identity_views:
            return normalized_batches(samples, self.norms, cfg.batch_size, counter, worker)
        samples = normalize_inputs(samples, self.norms)
        samples = apply_views(samples, self.views, (*position, "views"))
        return batched(samples, cfg.batch_size, counter, worker)


class ShardLoader:
    """Exactly ``num_steps`` batches of one rank. Iterating again replays the same batches.

    Each batch is the collated output of ``views`` plus ``"__key__"`` (list of sample keys) and
    ``"__skipped__"`` (int: samples/shards this rank skipped so far in this segment, the sum of
    its workers' counts as of their latest batch). :attr:`skipped` holds the same number after
    the loop; all-reduce it across ranks for a global figure.
    """

    def __init__(self, stream: ShardStream, num_steps: int) -> None:
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        self.stream = stream
        self.num_steps = num_steps
        self.skipped = 0

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = 0
        if self.num_steps == 0:
            return
        cfg = self.stream.cfg
        if cfg.workers == 0:
            source: Iterator[dict[str, Any]] = self.stream.batches(0, 1)
        else:
            loader = DataLoader(
                self.stream,
                batch_size=None,  # batches are made in the workers
                num_workers=cfg.workers,
                prefetch_factor=cfg.prefetch_factor,
                pin_memory=cfg.pin_memory,
                timeout=cfg.worker_timeout_s,
                in_order=True,
                # seeds torch/random/numpy inside the workers for views that use global RNGs
                generator=torch.Generator().manual_seed(
                    derive_seed(self.stream.seed, self.stream.start_step, self.stream.rank, "loader")
                ),
            )
            source = iter(loader)
        per_worker: dict[int, int] = {}
        try:
            for batch in islice(source, self.num_steps):
                per_worker[batch.pop("__worker__")] = batch["__skipped__"]
                self.skipped = sum(per_worker.values())
                batch["__skipped__"] = self.skipped
                yield batch
        finally:
            # stop the workers / close the open shards now, not when the garbage collector runs
            stop = getattr(source, "_shutdown_workers", None) or getattr(source, "close", None)
            if stop is not None:
                stop()
            del source


def build_loader(
    cfg: DataConfig,
    data: str | Path | list[str],
    views: Views,
    *,
    rank: int,
    world_size: int,
    seed: int,
    start_step: int,
    num_steps: int,
) -> ShardLoader:
    """The batches of steps ``[start_step, start_step + num_steps)`` for one rank.

    Args:
        cfg: data settings.
        data: a dataset folder, a dataset URL root, a shard URL / brace pattern, or a list of
            shard urls (see :func:`~eoforge.train.data.shardlists.resolve_shards`).
        views: ``views(inputs, generator) -> dict of tensors``, run per sample in the workers;
            ``inputs`` is described in :func:`normalize_inputs`.
        rank, world_size: this process in the data-parallel group.
        seed: run seed.
        start_step: first global step of this segment (the data position).
        num_steps: batches to yield.

    Returns:
        An iterable of exactly ``num_steps`` batches (``len()`` works).

    Raises:
        ValueError: fewer shards than ``world_size * workers``, bad settings, no shards.
        FileNotFoundError: no ``stats.json``.

    Example::

        cfg = DataConfig(batch_size=32, workers=2)
        for batch in build_loader(cfg, "demo/ds", identity_views, rank=0, world_size=1,
                                  seed=0, start_step=0, num_steps=100):
            x = batch["s2"]          # float32 [32, 13, H, W]
            keys = batch["__key__"]  # 32 sample keys
    """
    source = resolve_shards(data, cfg.split)
    check_enough_shards(source, world_size, cfg.workers)
    stats_at = cfg.stats or source.stats
    if stats_at is None:
        raise ValueError(f"{source.name}: an explicit shard list needs DataConfig.stats (path or URL of stats.json)")
    stats = read_stats(stats_at)
    norms = modality_norms(stats, cfg)
    if cfg.max_dt_days is not None:
        check_pairing_rule(source, cfg.max_dt_days)
    taxonomy = cfg.label_taxonomy or dataset_label_taxonomy(source)
    stream = ShardStream(split_by_rank(source.urls, rank, world_size), cfg, norms, views,
                         seed=seed, start_step=start_step, rank=rank, label_taxonomy=taxonomy)
    return ShardLoader(stream, num_steps)


def modality_norms(stats: dict[str, Any], cfg: DataConfig) -> dict[str, BandNorm]:
    """The per-modality normalisation ``cfg`` asks for, from ``stats.json`` content."""
    modalities = ("s2", "s1") if cfg.modality == "s1s2" else (cfg.modality,)
    return {m: band_norm(stats, m, cfg.normalization, cfg.clip, cfg.s1_clip_db if m == "s1" else None)
            for m in modalities}


__all__ = [
    "DataConfig", "MODALITIES", "NoUsableStep", "ShardLoader", "ShardStream", "SkipCounter", "Views", "apply_views", "batched",
    "build_loader", "decode_inputs", "identity_views", "interleave", "normalize_inputs", "normalized_batches",
    "modality_norms", "random_crops", "read_shard", "usable_steps",
]
