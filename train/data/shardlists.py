"""Which shards a DataLoader worker reads, and in what order.

Stages, each a plain function usable alone (webdataset style)::

    resolve_shards(data, split)          dataset folder / URL root / URL list -> ShardSource
    split_by_rank(urls, rank, world)     urls[rank::world]          (disjoint across ranks)
    split_by_worker(urls, worker, n)     urls[worker::n]            (disjoint across workers)
    resampled(urls, rng)                 endless stream of urls, drawn with replacement

``check_enough_shards`` fails at start-up, before any worker starts, when some worker would
get no shard at all (#shards < world_size x workers).

Data position: the seeded generators of a worker are derived from ``(seed, start_step, rank,
worker)`` with :func:`derive_seed`, never from the process, the clock or what ran before, so
a loader built for steps ``[start_step, start_step + num_steps)`` always yields the same
batches. The engine rebuilds the loader at every checkpoint boundary ("segment"); a run that
is interrupted and resumed at a boundary therefore sees exactly the batches of one that is not.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, uses_relative

import webdataset as wds

from eoforge.shards.digest import stable_hash
from eoforge.shards.manifest import MANIFEST_NAME, manifest_shards
from eoforge.shards.reader import is_url, shard_urls
from eoforge.shards.stats import STATS_NAME

@dataclass(frozen=True)
class ShardSource:
    """The shards of one split and where their normalisation statistics live.

    Attributes:
        name: what to call the dataset in messages (its root, or a summary of the URL list).
        split: the split asked for (``None`` for an explicit URL list, which *is* the split).
        urls: shard urls in manifest order (local paths, ``file:``, ``http(s)://``, ``pipe:``).
        stats: path or URL of the dataset's ``stats.json``; ``None`` for an explicit URL list.
    """

    name: str
    split: str | None
    urls: list[str]
    stats: str | None


def join_url(root: str, relative: str) -> str:
    """``root`` + ``/`` + ``relative`` for URL roots (``Path`` would turn ``https://`` into ``https:/``).

    Uses :func:`urllib.parse.urljoin` for schemes it knows (http, https, file, ...) and plain
    string joining for the others (``s3://``, ``gs://``), which ``urljoin`` does not resolve.
    """
    base = root if root.endswith("/") else root + "/"
    scheme = root.split("://", 1)[0]
    if scheme in uses_relative:
        return urljoin(base, relative)
    return base + relative


def _read_url(url: str) -> bytes:
    """Whole content of a URL through webdataset's opener (curl for http, ``pipe:`` commands)."""
    with wds.gopen(url) as stream:
        return stream.read()


def _remote_shard_urls(root: str, split: str | None) -> list[str]:
    """Shards of a remote dataset root, from its ``manifest.parquet``, joined onto the root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = join_url(root, MANIFEST_NAME)
    try:
        table = pq.read_table(pa.BufferReader(_read_url(url)), columns=["shard", "split"])
    except Exception as err:  # the opener raises IOError, ValueError or its own types
        raise ValueError(f"{url}: cannot read the dataset manifest: {err}") from err
    return [join_url(root, shard) for shard in manifest_shards(table, split)]


def resolve_shards(data: str | os.PathLike[str] | Sequence[str], split: str | None) -> ShardSource:
    """Turn what the user named into shard urls.

    ``data`` is one of:

    - a local dataset folder (``DS`` with ``manifest.parquet``): the shards of ``split``, in
      manifest order, via :func:`eoforge.shards.reader.shard_urls`; stats from ``DS/stats.json``;
    - a remote dataset root (``https://host/ds``, ``file:///ds``): its manifest is fetched and the
      shard paths are URL-joined onto the root; stats from ``<root>/stats.json``;
    - one shard URL or a webdataset brace pattern (``https://host/ds/train-{000000..000099}.tar``,
      ``pipe:...``, a local ``.tar``), or a list of shard urls: used as given (``split`` is
      ignored: the list *is* the split) and there is no default ``stats.json``.

    Raises:
        ValueError: naming ``data`` when it is none of these or the split has no shard.
    """
    if isinstance(data, (list, tuple)):
        urls = [str(u) for u in data]
        name = f"{len(urls)} shard urls ({urls[0]} ...)" if urls else "an empty shard list"
        source = ShardSource(name, None, urls, None)
    else:
        text = str(data)
        if is_url(text) and not _looks_like_shards(text):
            source = ShardSource(text, split, _remote_shard_urls(text, split), join_url(text, STATS_NAME))
        elif not is_url(text) and Path(text).is_dir():
            source = ShardSource(text, split, shard_urls(text, split), str(Path(text) / STATS_NAME))
        elif _looks_like_shards(text):
            urls = wds.shardlists.expand_urls(text)
            source = ShardSource(text, None, urls, None)
        else:
            raise ValueError(
                f"{text}: not a dataset folder, a dataset URL, a .tar shard URL or a list of shard URLs"
            )
    if not source.urls:
        where = f"split {source.split!r} of " if source.split is not None else ""
        raise ValueError(f"no shards in {where}{source.name}")
    return source


def _dataset_file(source: ShardSource, name: str) -> bytes | None:
    """A file at the dataset root (local folder or URL root), or None for shard lists / when absent."""
    if source.split is None:
        return None
    root = source.name
    try:
        if is_url(root):
            return _read_url(join_url(root, name))
        path = Path(root) / name
        return path.read_bytes() if path.is_file() else None
    except Exception:  # noqa: BLE001 - a remote file that is not there
        return None


def dataset_label_taxonomy(source: ShardSource) -> str | None:
    """The taxonomy of the dataset's labels, from its manifest (None: no labels, or a shard list).

    Raises:
        ValueError: the dataset mixes taxonomies (name one with ``data.label_taxonomy``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source.split is None:
        return None
    if is_url(source.name):  # a remote manifest is fetched whole
        raw = _dataset_file(source, MANIFEST_NAME)
        if raw is None:
            return None
        manifest: Any = pa.BufferReader(raw)
    else:  # a local one is read column by column from disk
        manifest = Path(source.name) / MANIFEST_NAME
        if not manifest.is_file():
            return None
    try:
        table = pq.ParquetFile(manifest).read(columns=["label_taxonomy"])
    except (OSError, KeyError, pa.ArrowInvalid):
        return None
    names = sorted({t for t in table.column("label_taxonomy").to_pylist() if t})
    if len(names) > 1:
        raise ValueError(f"{source.name}: samples are labelled in several taxonomies {names}; "
                         "choose one with data.label_taxonomy")
    return names[0] if names else None


def check_pairing_rule(source: ShardSource, max_dt_days: float) -> None:
    """Fail when ``max_dt_days`` is looser than the S1/S2 pairing rule the dataset was ingested with.

    The rule is in the dataset's ``report.json`` (``pairing.max_dt_days``); datasets without one
    (adapters, shard lists) are not checked. Training can only tighten the rule: pairs farther
    apart were never written.

    Raises:
        ValueError: naming both values and how to get looser pairs (re-ingest).
    """
    import json

    raw = _dataset_file(source, "report.json")
    if raw is None:
        return
    try:
        ingest_dt = json.loads(raw).get("pairing", {}).get("max_dt_days")
    except (ValueError, AttributeError):
        return
    if ingest_dt is not None and max_dt_days > float(ingest_dt):
        raise ValueError(
            f"data.max_dt_days={max_dt_days:g} is looser than the pairing rule of {source.name} "
            f"(|S1 - S2| <= {float(ingest_dt):g} days at ingest): training can only tighten it; "
            f"re-ingest with --max-dt-days {max_dt_days:g} for looser pairs"
        )


def _looks_like_shards(text: str) -> bool:
    """A shard URL or brace pattern rather than a dataset root."""
    return text.startswith("pipe:") or "{" in text or "::" in text or text.rstrip("/").endswith(".tar")


def split_by_rank(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's shards: ``urls[rank::world_size]`` (disjoint and covering across ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return list(urls[rank::world_size])


def split_by_worker(urls: Sequence[str], worker: int, num_workers: int) -> list[str]:
    """This DataLoader worker's shards out of its rank's: ``urls[worker::num_workers]``."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} outside 0..{num_workers - 1}")
    return list(urls[worker::num_workers])


def check_enough_shards(source: ShardSource, world_size: int, workers: int) -> None:
    """Fail at start-up when some DataLoader worker would have no shard of its own.

    Every worker of every rank reads a disjoint set of shards, so the dataset needs at least
    ``world_size * max(workers, 1)`` shards (``workers=0`` reads in the main process: one reader).

    Raises:
        ValueError: naming the dataset, the split, the shard count, ranks and workers.
    """
    readers = world_size * max(workers, 1)
    if len(source.urls) < readers:
        split = f" split {source.split!r}" if source.split is not None else ""
        raise ValueError(
            f"{source.name}{split}: {len(source.urls)} shards for {world_size} ranks x"
            f" {max(workers, 1)} DataLoader workers = {readers} readers; every reader needs at"
            f" least one shard of its own. Use fewer workers or ranks, or write the dataset in"
            f" more, smaller shards (ingest samples_per_shard)."
        )


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple such as ``(seed, start_step, rank, worker, "shards")``.

    A hash rather than arithmetic so nearby tuples give unrelated streams; stable across
    processes and Python runs (no ``hash()`` randomisation).
    """
    return stable_hash(*parts) >> 1


def resampled(urls: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Endless stream of shard urls drawn uniformly with replacement from ``urls``.

    The stream never ends, so every rank can take exactly the step count it is asked for,
    whatever the shard sizes (webdataset's ``ResampledShards``, with an explicit RNG). Each
    worker draws within its own subset, so when subsets differ in size (by at most one shard)
    or shards differ in length, samples are not exactly uniform over the dataset; with tens of
    shards per worker the difference is small.
    """
    if not urls:
        raise ValueError("no shards to resample from")
    urls = list(urls)
    while True:
        yield urls[rng.randrange(len(urls))]


__all__ = [
    "ShardSource", "check_enough_shards", "check_pairing_rule", "dataset_label_taxonomy", "derive_seed", "join_url", "resampled",
    "resolve_shards", "split_by_rank", "split_by_worker",
]
