"""``eoforge ingest``: scan -> plan -> materialize -> finalize, resumable.

The dataset folder records the job in ``DS/ingest.json`` (inputs, config and a
fingerprint of the plan). Rerunning the same command re-scans and re-plans (cheap,
metadata only); when the plan's fingerprint matches, finished shards (those with a task
report) are skipped and unfinished ones are rewritten, so an interrupted run ends with
the same bytes as an uninterrupted one. A different plan over existing shards is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from eoforge import __version__
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.engine import Engine
from eoforge.ingest.materialize import TASK_REPORTS, materialize_shard, task_stats_path
from eoforge.ingest.plan import plan_ingest, plan_shards
from eoforge.ingest.report import build_report, write_errors, write_report
from eoforge.ingest.scan import scan
from eoforge.shards.manifest import merge_parts, read_manifest, write_parquet_atomic
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
    errors: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    write_parquet_atomic(pa.Table.from_pylist([_flat(r) for r in rows]) if rows else pa.table({}), path)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Nested values (band tables) as JSON text so the table stays flat and queryable."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()}


def plan_fingerprint(rows: list[dict[str, Any]]) -> str:
    text = json.dumps(rows, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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
               strict: bool = False, progress: bool = True, engine: Engine | None = None) -> IngestResult:
    """Run the whole ingest; see the module docstring. ``engine`` reuses a running one."""
    config = config or IngestConfig()
    landcover = list(landcover or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    own_engine = engine is None
    engine = engine or Engine(scheduler=scheduler, workers=workers, progress=progress)
    if own_engine:
        engine.__enter__()
    try:
        t0 = time.perf_counter()
        scanned = scan(inputs, landcover, config, engine)
        errors = list(scanned.errors)
        _write_table(scanned.scenes, out / "scenes.parquet")
        timings["scan"] = time.perf_counter() - t0
        if strict and errors:
            write_errors(out, errors)
            raise IngestError(f"{errors[0]['path']}: {errors[0]['reason']} (--strict stops at the first error)")

        t0 = time.perf_counter()
        plan = plan_ingest(scanned.scenes, config)
        errors += plan.errors
        _write_table(plan.rows, out / "plan.parquet")
        job = {"eoforge": __version__, "inputs": [str(i) for i in inputs], "landcover": landcover,
               "config": config.to_dict(), "plan_sha256": plan_fingerprint(plan.rows)}
        _check_job(out, job)
        tmp = out / (JOB_NAME + ".tmp")
        tmp.write_text(json.dumps(job, indent=2) + "\n")
        os.replace(tmp, out / JOB_NAME)
        timings["plan"] = time.perf_counter() - t0
        if strict and errors:
            write_errors(out, errors)
            raise IngestError(f"{errors[0]['path']}: {errors[0]['reason']} (--strict stops at the first error)")

        t0 = time.perf_counter()
        by_scene = {s["scene"]: s for s in scanned.scenes}
        jobs = plan_shards(plan.rows)
        payloads = []
        for j in jobs:
            needed = {int(r[k]) for rows in j["tiles"] for r in rows for k in ("s2_scene", "s1_scene") if r[k] is not None}
            needed |= {i for rows in j["tiles"] for i in rows[0]["landcover_scenes"]}
            payloads.append((j, {i: by_scene[i] for i in sorted(needed)}))
        task = partial(_materialize_payload, config=config.to_dict(), out=str(out.resolve()))
        reports: list[dict[str, Any]] = []
        for index, result in engine.as_completed(task, payloads, desc="materialize", unit="shard",
                                                 key_prefix="materialize"):
            j = jobs[index]
            if isinstance(result, BaseException):
                errors.append({"path": str(shard_path(out, j["split"], j["shard"])), "stage": "materialize",
                               "reason": f"shard task failed: {type(result).__name__}: {result}", "product_id": None})
                if strict:
                    write_errors(out, errors)
                    raise IngestError(f"{errors[-1]['path']}: {errors[-1]['reason']}")
                continue
            reports.append(result)
            errors += result["errors"]
            if strict and result["errors"]:
                write_errors(out, errors)
                e = result["errors"][0]
                raise IngestError(f"{e['path']}: {e['reason']} (--strict stops at the first error)")
        reports.sort(key=lambda r: (r["split"] != "train", r["shard"]))
        timings["materialize"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        merge_parts(out, extra_metadata={"eoforge_ingest": {"plan_sha256": job["plan_sha256"],
                                                            "config": config.to_dict()}})
        manifest = read_manifest(out)
        train_stats = DatasetStats()
        for r in reports:
            if r["split"] == "train":
                train_stats.merge(DatasetStats.load(task_stats_path(out, r["split"], r["shard"])))
        write_stats(out, train_stats, "train")
        write_errors(out, errors)
        timings["finalize"] = time.perf_counter() - t0
        report = build_report(inputs=[str(i) for i in inputs] + [f"--landcover {p}" for p in landcover],
                              engine=engine.description, config=config.to_dict(), files_seen=scanned.files_seen,
                              scenes=scanned.scenes, plan=plan, task_reports=reports, errors=errors,
                              manifest=manifest, timings_s=timings)
        write_report(out, report, manifest)
        return IngestResult(out, manifest.num_rows, sum(1 for r in reports if r["samples"]), errors, report)
    finally:
        if own_engine:
            engine.__exit__(None, None, None)


def _materialize_payload(payload: tuple[dict[str, Any], dict[int, dict[str, Any]]], config: dict[str, Any],
                         out: str) -> dict[str, Any]:
    job, scenes = payload
    return materialize_shard(job, scenes, config, out)
