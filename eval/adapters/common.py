"""What every adapter shares: split assignment, sample order, and writing a normal dataset folder.

An adapter turns a reference dataset's files into :class:`~eoforge.shards.sample.Sample`
objects; :func:`write_dataset` writes them through the same writer as ingest
(``ShardWriter`` per split -> ``merge_parts`` -> ``compute_stats``), so the result is an
ordinary dataset folder (``shards/``, ``manifest.parquet``, ``stats.json``) that
``eoforge shards verify`` accepts and the trainer and ``eoforge eval`` read. Bad inputs
become rows of ``errors.parquet`` (file and reason) and the run goes on; ``report.json``
counts samples per split and class.

Splits: the dataset's official split lists when given (``split_lists``, one name per line or
first CSV column; names not listed are left out), else a seeded hash of the sample name
(``val_fraction`` of names go to ``val``): stable when files are added or removed.
Samples are written in a seeded hash order rather than folder order, so every shard mixes
classes and places (streaming loaders read shards in sequence).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from eoforge.shards.digest import stable_hash
from eoforge.shards.manifest import merge_parts, write_parquet_atomic
from eoforge.shards.sample import Sample
from eoforge.shards.stats import compute_stats
from eoforge.shards.writer import ShardWriter

ERRORS_NAME = "errors.parquet"
REPORT_NAME = "report.json"


class AdapterError(ValueError):
    """A source file cannot become a sample; the message names the file and the reason."""


@dataclass
class AdaptResult:
    """What an adapter wrote.

    Attributes:
        out: the dataset folder.
        samples: samples written per split.
        classes: per split, samples having each class.
        errors: ``(path, reason)`` of inputs that failed (also in ``errors.parquet``).
        skipped: ``(name, reason)`` of inputs left out on purpose (not in a split list, no
            class after mapping, ...).
    """

    out: Path
    samples: dict[str, int] = field(default_factory=dict)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.samples.values())


def _unit_hash(text: str) -> float:
    return stable_hash(text) / 2**64


def hash_split(name: str, val_fraction: float, seed: int = 0) -> str:
    """``"val"`` for a seeded-hash ``val_fraction`` of names, else ``"train"``."""
    return "val" if _unit_hash(f"split:{seed}:{name}") < val_fraction else "train"


def mixed_order(names: Iterable[str], seed: int = 0) -> list[str]:
    """``names`` in a seeded hash order (deterministic, independent of folder order)."""
    return sorted(names, key=lambda n: (_unit_hash(f"order:{seed}:{n}"), n))


def read_split_lists(split_lists: dict[str, str | os.PathLike[str]],
                     normalise: Callable[[str], str]) -> dict[str, str]:
    """``{sample name: split}`` from files listing names (one per line or first CSV column).

    Args:
        split_lists: split name -> file (e.g. ``{"train": "train.csv", "val": "val.csv"}``).
        normalise: turns a listed entry (file name, path) into the adapter's sample name.

    Raises:
        AdapterError: a file is missing, or a name is listed in two splits.
    """
    out: dict[str, str] = {}
    for split, path in split_lists.items():
        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"{path}: split list for {split!r} not found")
        for line in path.read_text().splitlines():
            entry = line.split(",")[0].strip()
            if not entry or entry.startswith("#"):
                continue
            name = normalise(Path(entry).name)
            if out.get(name, split) != split:
                raise AdapterError(f"{path}: {name} is listed in splits {out[name]!r} and {split!r}")
            out[name] = split
    return out


class SplitRule:
    """The split of a sample name: from split lists when given, else :func:`hash_split`."""

    def __init__(self, val_fraction: float = 0.2, seed: int = 0, listed: dict[str, str] | None = None) -> None:
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction, self.seed, self.listed = val_fraction, seed, listed

    def __call__(self, name: str) -> str | None:
        """The split, or None when split lists are given and do not list ``name``."""
        if self.listed is not None:
            return self.listed.get(name)
        return hash_split(name, self.val_fraction, self.seed)

    def describe(self) -> dict[str, Any]:
        if self.listed is not None:
            return {"rule": "split lists", "listed": len(self.listed)}
        return {"rule": "sha256 hash of the sample name", "val_fraction": self.val_fraction, "seed": self.seed}


def _prepare_out(out: Path) -> None:
    if (out / "manifest.parquet").exists() or (out / "shards").exists() or (out / "manifest-parts").exists():
        raise AdapterError(f"{out}: already holds a dataset; write to a new folder (or delete it first)")
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: str | os.PathLike[str],
    samples: Iterable[tuple[str, Sample | AdapterError | None, str | None]],
    *,
    adapter: str,
    source: list[str],
    split_rule: SplitRule,
    samples_per_shard: int = 1000,
    stats_workers: int | None = 1,
    progress: bool = False,
) -> AdaptResult:
    """Write adapter output as a dataset folder.

    Args:
        out: a new (or empty) dataset folder.
        samples: ``(source name, sample or error or None, reason when None)`` in write order;
            None means "left out on purpose" (recorded as skipped with the reason).
        adapter: adapter name (recorded in the manifest metadata and ``report.json``).
        source: the source folders (recorded).
        split_rule: how splits were assigned (recorded).
        samples_per_shard: most samples per shard.
        stats_workers: processes for ``compute_stats``.

    Raises:
        AdapterError: ``out`` already holds a dataset, or no sample could be written.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    _prepare_out(out)
    result = AdaptResult(out)
    writers: dict[str, ShardWriter] = {}
    classes: dict[str, Counter[str]] = {}
    try:
        for name, item, reason in tqdm(samples, desc=adapter, unit="sample", disable=not progress):
            if item is None:
                result.skipped.append((name, reason or ""))
                continue
            if isinstance(item, AdapterError):
                result.errors.append((name, str(item)))
                continue
            split = item.meta.split
            if split not in writers:
                writers[split] = ShardWriter(out, split, max_samples=samples_per_shard)
            writers[split].write(item)
            result.samples[split] = result.samples.get(split, 0) + 1
            labels = item.meta.labels
            if labels is not None:
                counter = classes.setdefault(split, Counter())
                counter.update(n for n, h in zip(labels.names, labels.multi_hot) if h)
    except BaseException:
        for w in writers.values():
            w.__exit__(RuntimeError, None, None)  # removes the unfinished shard's .tmp
        raise
    for w in writers.values():
        w.close()
    result.classes = {s: dict(sorted(c.items())) for s, c in sorted(classes.items())}
    if result.errors:
        table = pa.table({"path": [p for p, _ in result.errors], "reason": [r for _, r in result.errors]})
        write_parquet_atomic(table, out / ERRORS_NAME)
    if not result.total:
        raise AdapterError(f"{out}: no sample written ({len(result.errors)} error(s), {len(result.skipped)} skipped)"
                           + (f"; first error: {result.errors[0][0]}: {result.errors[0][1]}" if result.errors else ""))
    facts = {"adapter": adapter, "source": source, "splits": split_rule.describe()}
    merge_parts(out, extra_metadata=facts)
    stats_split = "train" if "train" in result.samples else sorted(result.samples)[0]
    compute_stats(out, stats_split, workers=stats_workers)
    report = {**facts, "samples": result.samples, "classes": result.classes, "stats_split": stats_split,
              "errors": len(result.errors), "skipped": Counter(r for _, r in result.skipped)}
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return result


def iter_guarded(names: Iterable[str], make: Callable[[str], Sample | None | tuple[None, str]]) -> Iterator[
        tuple[str, Sample | AdapterError | None, str | None]]:
    """Call ``make(name)`` for each name; turn AdapterError / rasterio errors into error items.

    ``make`` returns a Sample, or ``(None, reason)`` to leave the name out on purpose.
    """
    from rasterio.errors import RasterioError

    for name in names:
        try:
            item = make(name)
        except AdapterError as err:
            yield name, err, None
            continue
        except (RasterioError, OSError, ValueError, KeyError) as err:
            yield name, AdapterError(f"{name}: {type(err).__name__}: {err}"), None
            continue
        if isinstance(item, tuple):
            yield name, None, item[1]
        else:
            yield name, item, None
