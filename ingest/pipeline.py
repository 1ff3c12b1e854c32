"""``eoforge ingest``: scan -> plan -> read -> materialize -> finalize, resumable.

- scan and plan work on metadata (:mod:`.scan`, :mod:`.plan`: one Dask task per plan region);
- then wave by wave (the plan's ``wave`` column: tiles whose staged pieces fit
  ``staging_budget_gb``):

  - read: one Dask task per source scene, wave and band of tile rows reads its windows once,
    in raster order, into encoded per-tile pieces (:mod:`.pieces`);
  - materialize: one Dask task per shard assembles its samples, mixing the wave's places,
    from the pieces, without decoding pixels again (:mod:`.materialize`); it reads the
    piece indexes it needs from the staging folder itself;
  - the wave's staged pieces are deleted;
- finalize: manifest parts merged (streaming), statistics and reports written.

The dataset folder records the job in ``DS/ingest.json`` (inputs, config and a
fingerprint of the plan). Rerunning the same command re-scans and re-plans (cheap,
metadata only: the headers of unchanged files and the probes of unchanged scenes come from
``DS/scan-inventory.parquet``, :mod:`.inventory`); when the plan's fingerprint matches,
finished shards (those with a task report) are skipped, finished read tasks are reused and
the rest is redone, so an interrupted run ends with the same bytes as an uninterrupted one.
A different plan over existing shards is refused.

``--dry-run`` stops after the plan and reports what the archive will give
(:mod:`.dryrun`): ``DS/dry-run.json`` and ``DS/dry-run.md``.
"""

from __future__ import annotations

import hashlib
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from eoforge import __version__
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.dryrun import build_dry_run_report, write_dry_run
from eoforge.ingest.engine import Engine
from eoforge.ingest.errors import ErrorRow
from eoforge.ingest.inventory import INVENTORY_NAME
from eoforge.ingest.materialize import (
    TASK_REPORTS, ShardReport, finished_shard, materialize_shard, piece_key, task_stats_path,
)
from eoforge.ingest.pieces import (
    STAGING, ReadReport, file_size, finished_read, read_report_paths, read_source, released_tiles, remove_staged,
    staging_paths,
)
from eoforge.ingest.plan import (
    ReadTask, ShardJob, plan_ingest, plan_reads, plan_shards, shard_index, wave_rows, write_plan,
)
from eoforge.ingest.report import build_report, write_errors, write_pairing_figure, write_report
from eoforge.ingest.scan import scan
from eoforge.ingest.scene import Scene, scenes_table
from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.manifest import manifest_rows, merge_parts, write_parquet_atomic
from eoforge.shards.stats import DatasetStats, write_stats
from eoforge.shards.writer import shard_path

JOB_NAME = "ingest.json"


class IngestError(RuntimeError):
    """The ingest cannot go on (bad config, a changed job over existing shards, --strict)."""


@dataclass
class IngestResult:
    out: Path
    samples: int
    shards: int
    errors: list[ErrorRow] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def plan_fingerprint(rows: pa.Table) -> str:
    """sha256 of the plan rows (their Arrow IPC stream: the same rows, the same digest)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _check_job(out: Path, job: dict[str, Any]) -> None:
    """Refuse to mix two different jobs in one dataset folder."""
    path = out / JOB_NAME
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    started = (out / TASK_REPORTS).is_dir() and any((out / TASK_REPORTS).rglob("*.json"))
    if started and (old.get("plan_sha256") != job["plan_sha256"] or old.get("eoforge") != job["eoforge"]):
        changed = [k for k in ("eoforge", "inputs", "landcover", "config") if old.get(k) != job.get(k)] \
            or ["input contents"]
        raise IngestError(
            f"{out}: holds shards of a different ingest ({', '.join(changed).replace('eoforge', 'eoforge version')} "
            "changed); "
            "write to a new --out folder (or delete this one) to start over"
        )


def run_ingest(inputs: list[str], out: str | os.PathLike[str], *, landcover: list[str] | None = None,
               config: IngestConfig | None = None, scheduler: str | None = None, workers: int | None = None,
               strict: bool = False, progress: bool = True, engine: Engine | None = None,
               dry_run: bool = False) -> IngestResult:
    """Run the whole ingest; see the module docstring. ``engine`` reuses a running one.

    ``dry_run``: scan and plan only (``scenes.parquet``, ``plan.parquet``, the scan
    inventory), then write ``dry-run.json`` / ``dry-run.md`` (:mod:`.dryrun`) instead of
    reading any pixels; ``ingest.json`` is left as it is, so a later real run starts (or
    resumes) as if there had been no dry run. The result then has 0 samples and shards and
    the dry-run report as ``report``."""
    config = config or IngestConfig()
    landcover = list(landcover or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    own_engine = engine is None
    engine = engine or Engine(scheduler=scheduler, workers=workers, progress=progress)
    if own_engine:
        engine.start()  # the cluster starts while the client scans what it can itself
    background = _Background()
    try:
        t0 = time.perf_counter()
        scanned = scan(inputs, landcover, config, engine, inventory=out / INVENTORY_NAME)
        errors = list(scanned.errors)
        scenes = scenes_table(scanned.scenes)
        write_parquet_atomic(scenes, out / "scenes.parquet", fsync=False)  # rewritten by every run: no fsync
        timings["scan"] = time.perf_counter() - t0
        if strict and errors:
            write_errors(out, errors)
            raise IngestError(f"{errors[0].path}: {errors[0].reason} (--strict stops at the first error)")

        t0 = time.perf_counter()
        plan = plan_ingest(scenes, config, engine=engine)
        del scenes
        errors += plan.errors
        job: dict[str, Any] = {"eoforge": __version__, "inputs": [str(i) for i in inputs], "landcover": landcover,
               "config": config.to_dict(), "plan_sha256": plan_fingerprint(plan.rows)}
        _check_job(out, job)  # before plan.parquet: a refused run leaves the dataset's plan as it was
        write_plan(plan.rows, out / "plan.parquet")
        if not dry_run:
            write_text_atomic(out / JOB_NAME, json.dumps(job, indent=2) + "\n")
        timings["plan"] = time.perf_counter() - t0
        if strict and errors:
            write_errors(out, errors)
            raise IngestError(f"{errors[0].path}: {errors[0].reason} (--strict stops at the first error)")
        if dry_run:
            shards_written = sum(finished_shard(out, split, shard) is not None
                                 for split, shard, _ in shard_index(plan.rows))
            report = build_dry_run_report(
                inputs=[str(i) for i in inputs] + [f"--landcover {p}" for p in landcover], config=config,
                scanned=scanned, plan=plan, errors=errors, plan_sha256=job["plan_sha256"],
                shards_written=shards_written)
            report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
            write_dry_run(out, report)
            return IngestResult(out, 0, 0, errors, report)

        # The Δt figure needs only the plan: drawn (matplotlib imported, ~0.3 s) in the client's
        # idle time once the first read tasks are out, not while the cluster is still starting
        draw_pairing_figure = cache(
            lambda: background.run(write_pairing_figure, out, plan, config.max_dt_days))
        by_scene = {s.number: s for s in scanned.scenes}
        shards = shard_index(plan.rows)
        finished = {(split, shard): finished_shard(out, split, shard) for split, shard, _ in shards}
        reports = [r for r in finished.values() if r is not None]
        read_results: dict[str, ReadReport] = {}
        stats_tasks: list[str] = []  # read tasks whose S2 statistics go into stats.json
        waves = WaveLog(budget_bytes=round(config.staging_budget_gb * 1e9))
        failed = False
        timings["read"] = timings["materialize"] = 0.0
        for wave in sorted({w for _, _, w in shards}):
            # a wave: its reads, then its shards, then its staging deleted; only the wave's
            # plan rows are held as Python objects
            rows = wave_rows(plan.rows, wave)
            wave_jobs = plan_shards(rows)
            wave_reads = plan_reads(rows, config, workers=engine.task_slots, scenes=by_scene)
            del rows
            stats_tasks += [r.name for r in wave_reads if r.kind == "s2" and any(r.train)]
            pending = [j for j in wave_jobs if finished[(j.split, j.shard)] is None]
            t0 = time.perf_counter()
            results, failed_reads = _run_reads(engine, wave_reads, pending, by_scene, config, out, errors, strict,
                                               on_submit=draw_pairing_figure)
            read_results.update(results)
            waves.staged(out, wave_reads)
            timings["read"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            written, wave_failed = _run_shards(engine, pending, wave_reads, failed_reads, by_scene, config, out,
                                               errors, strict)
            reports += written
            waves.wrote(written)
            timings["materialize"] += time.perf_counter() - t0
            failed |= wave_failed
            if not wave_failed:  # every shard of the wave is written: its pieces are spent
                for r in wave_reads:
                    remove_staged(out, r.name)
        draw_pairing_figure()  # no-op unless nothing was read (every shard was done)
        reports.sort(key=lambda r: (r.split != "train", r.shard))
        if own_engine:  # no Dask work is left: the cluster stops while the client finalizes
            background.run(engine.__exit__, None, None, None)
            own_engine = False

        t0 = time.perf_counter()
        manifest = _finalize(out, job, config, stats_tasks, reports, errors)
        if not failed:  # every shard is written: the pieces are spent
            background.run(shutil.rmtree, out / STAGING, True)
        timings["finalize"] = time.perf_counter() - t0
        report = build_report(inputs=[str(i) for i in inputs] + [f"--landcover {p}" for p in landcover],
                              engine=engine.description, config=config.to_dict(), files_seen=scanned.files_seen,
                              scenes=scanned.scenes, plan=plan, task_reports=reports,
                              read_reports=list(read_results.values()), errors=errors, manifest=manifest,
                              timings_s=timings, waves=waves.summary(),
                              scan_counts={"headers_read": scanned.headers_read, "probes_run": scanned.probes_run,
                                           "stac_items": scanned.items},
                              warnings=scanned.warnings)
        write_report(out, report, manifest)
        background.join()
        return IngestResult(out, manifest_rows(manifest), sum(1 for r in reports if r.samples), errors, report)
    finally:
        background.join(raise_errors=False)
        if own_engine:
            engine.__exit__(None, None, None)


def _finalize(out: Path, job: dict[str, Any], config: IngestConfig, stats_tasks: list[str],
              reports: list[ShardReport], errors: list[ErrorRow]) -> Path:
    """Merge the manifest parts (streaming), write ``stats.json`` (S2 from the read tasks
    ``stats_tasks``, S1 and sample counts from the shard tasks) and ``errors.parquet``;
    return the manifest's path."""
    # no fsync: on a busy disk an ext4 fsync waits for the writeback of every shard before
    # it (0.5 s each, measured); the manifest is derived data, merged again by a rerun
    manifest = merge_parts(out, extra_metadata={"eoforge_ingest": {"plan_sha256": job["plan_sha256"], "config": config.to_dict()}},
                fsync=False)
    train_stats = DatasetStats(pixel_stride=config.stats_pixel_stride)
    for r in reports:
        if r.split == "train":
            train_stats.merge(DatasetStats.load(task_stats_path(out, r.split, r.shard)))
    for task in stats_tasks:
        stats_path = read_report_paths(out, task)[1]
        if stats_path.is_file():
            train_stats.merge(DatasetStats.load(stats_path))
    write_stats(out, train_stats, "train")
    write_errors(out, errors)
    return manifest


@dataclass
class WaveLog:
    """What the waves put on disk: each wave's staged pieces (measured on disk once its reads
    are done, its high-water mark: shards only read them), the shards written, and so the
    bytes written per byte of output (staging + shards over shards)."""

    budget_bytes: int
    staged_bytes: list[int] = field(default_factory=list)
    shard_bytes: int = 0

    def staged(self, out: Path, reads: list[ReadTask]) -> None:
        self.staged_bytes.append(sum(file_size(p) for r in reads for p in staging_paths(out, r.name)))

    def wrote(self, reports: list[ShardReport]) -> None:
        self.shard_bytes += sum(r.tar_bytes + r.part_bytes for r in reports)

    def summary(self) -> dict[str, Any]:
        staged = sum(self.staged_bytes)
        return {"waves": len(self.staged_bytes), "staging_budget_bytes": self.budget_bytes,
                "staging_high_water_bytes": max(self.staged_bytes, default=0), "staged_bytes": staged,
                "shard_bytes": self.shard_bytes,
                "bytes_written_per_output_byte": round((staged + self.shard_bytes) / self.shard_bytes, 3)
                if self.shard_bytes else None}


class _Background:
    """Work the client need not wait for (stopping the cluster, deleting staging files)
    in threads, joined before the run returns; both mostly wait on the OS."""

    def __init__(self) -> None:
        self._threads: list[tuple[threading.Thread, list[BaseException]]] = []

    def run(self, fn: Any, *args: Any) -> None:
        failure: list[BaseException] = []

        def target() -> None:
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001 - re-raised by join
                failure.append(err)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append((thread, failure))

    def join(self, raise_errors: bool = True) -> None:
        threads, self._threads = self._threads, []
        for thread, _ in threads:
            thread.join()
        failures = [err for _, failure in threads for err in failure]
        if failures and raise_errors:
            raise failures[0]


def _run_reads(engine: Engine, reads: list[ReadTask], pending: list[ShardJob],
               scenes: dict[int, Scene], config: IngestConfig, out: Path, errors: list[ErrorRow],
               strict: bool, on_submit: Callable[[], None] | None = None) -> tuple[dict[str, ReadReport], set[str]]:
    """Run the read tasks that are not done and that a pending shard needs (or that left no
    report); load the others. Returns (task -> result, the tasks that failed: raised after
    their retries); the tasks' errors are appended to ``errors``. ``on_submit``: see
    :meth:`Engine.as_completed`."""
    needed_tiles = {rows[0].tile_id for j in pending for rows in j.tiles}
    results: dict[str, ReadReport] = {}
    todo = []
    for r in reads:
        needed = needed_tiles.intersection(r.tiles)
        if not needed and (report := finished_read(out, r, staged=False)) is not None:
            results[r.name] = report  # its pieces are in finished shards
        elif (done := finished_read(out, r)) is not None and not needed & released_tiles(out, r.name):
            results[r.name] = done
        else:  # not read yet, or a pending shard needs frames released after its first writing
            todo.append(dataclasses.replace(r, redo=True))
    failed: set[str] = set()
    task_fn = partial(_read_payload, config=config.to_dict(), out=str(out.resolve()))
    payloads = [(r, scenes[r.scene]) for r in todo]
    for index, result in engine.as_completed(task_fn, payloads, desc="read", unit="task", key_prefix="read",
                                             on_submit=on_submit):
        r = todo[index]
        if isinstance(result, BaseException):
            failed.add(r.name)
            scene = scenes[r.scene]
            result = ReadReport(r.name, r.kind, r.scene, (ErrorRow(
                scene.paths[0], "materialize", f"read task {r.name} failed: {type(result).__name__}: {result}",
                scene.product_id),), tiles=len(r.tiles), threads=r.threads)
        results[r.name] = result
        if strict and result.errors:
            write_errors(out, errors + list(result.errors))
            e = result.errors[0]
            raise IngestError(f"{e.path}: {e.reason} (--strict stops at the first error)")
    for r in reads:
        if r.name in results:
            errors += results[r.name].errors
    return results, failed


def _run_shards(engine: Engine, pending: list[ShardJob], reads: list[ReadTask], failed_reads: set[str],
                scenes: dict[int, Scene], config: IngestConfig, out: Path, errors: list[ErrorRow],
                strict: bool) -> tuple[list[ShardReport], bool]:
    """Write the pending shards of a wave from its read tasks' staged pieces. Returns (the
    reports of the shards written, whether any shard is left unwritten); failures are
    appended to ``errors``.

    A shard that needs the pieces of a read task that failed (raised, rather than met bad
    data) is not written: a rerun retries the read and then writes it. A shard task gets
    which task staged each of its pieces and reads their indexes itself: no per-tile state
    passes through the client."""
    piece_task = {(r.kind, r.scene, t): r.name for r in reads for t in r.tiles}
    reports: list[ShardReport] = []
    failed = False
    writable = []
    for j in pending:
        blocked = sorted({piece_task[key] for key in _piece_sources(j) if piece_task[key] in failed_reads})
        if blocked:
            failed = True
            errors.append(ErrorRow(str(shard_path(out, j.split, j.shard)), "materialize",
                                   f"shard not written: read task(s) {', '.join(blocked)} failed; rerun to retry"))
        else:
            writable.append(j)
    payloads = [(j, {piece_key(*key): piece_task[key] for key in _piece_sources(j)},
                 {i: scenes[i] for i in sorted({key[1] for key in _piece_sources(j)})}) for j in writable]
    task_fn = partial(_materialize_payload, config=config.to_dict(), out=str(out.resolve()))
    for index, result in engine.as_completed(task_fn, payloads, desc="write", unit="shard", key_prefix="materialize"):
        j = writable[index]
        if isinstance(result, BaseException):
            failed = True
            errors.append(ErrorRow(str(shard_path(out, j.split, j.shard)), "materialize",
                                   f"shard task failed: {type(result).__name__}: {result}"))
            if strict:
                write_errors(out, errors)
                raise IngestError(f"{errors[-1].path}: {errors[-1].reason}")
            continue
        reports.append(result)
    return reports, failed


def _piece_sources(job: ShardJob) -> Iterator[tuple[str, int, str]]:
    """(kind, scene, tile) of every piece the tiles of a shard job use."""
    for rows in job.tiles:
        tile = rows[0].tile_id
        for r in rows:
            yield "s2", r.s2_scene, tile
            if r.s1_scene is not None:
                yield "s1", r.s1_scene, tile
        for i in rows[0].landcover_scenes:
            yield "lc", i, tile


def _read_payload(payload: tuple[ReadTask, Scene], config: dict[str, Any], out: str) -> ReadReport:
    task, scene = payload
    return read_source(task, scene, config, out)


def _materialize_payload(payload: tuple[ShardJob, dict[str, str], dict[int, Scene]],
                         config: dict[str, Any], out: str) -> ShardReport:
    job, piece_tasks, scenes = payload
    return materialize_shard(job, piece_tasks, scenes, config, out)
