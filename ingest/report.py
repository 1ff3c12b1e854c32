"""Stage 4 outputs a person reads: ``errors.parquet``, ``report.json``, ``report.md`` and
pictures (``report-dt.png``: S1-S2 Δt histogram; ``report-coverage.png``; ``report-labels.png``).

The report counts what happened at each stage (files, scenes, tiles, steps, samples),
the dedup removals by reason, the pairing match rate with its Δt histogram, the label
distribution and the errors by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from eoforge.ingest.errors import ERRORS_SCHEMA, ErrorRow
from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.manifest import manifest_rows, write_parquet_atomic

if TYPE_CHECKING:
    from eoforge.ingest.materialize import ShardReport
    from eoforge.ingest.pieces import ReadReport
    from eoforge.ingest.scene import Scene

ERRORS_NAME = "errors.parquet"


def write_errors(out: Path, errors: list[ErrorRow]) -> Path:
    """``DS/errors.parquet``: the distinct error rows, sorted."""
    rows = sorted(set(errors), key=lambda e: (e.path, e.stage, e.reason, e.product_id or ""))
    table = pa.Table.from_pylist([e.to_dict() for e in rows], schema=ERRORS_SCHEMA)
    write_parquet_atomic(table, out / ERRORS_NAME, fsync=False)  # rewritten by every run, as the manifest
    return out / ERRORS_NAME


def error_reason_class(reason: str) -> str:
    """A short class of an error reason, for counting (the text before the first colon/paren)."""
    return reason.split(":")[0].split("(")[0].strip()


def build_report(*, inputs: list[str], engine: str, config: dict[str, Any], files_seen: int,
                 scenes: list[Scene], plan: Any, task_reports: list[ShardReport],
                 read_reports: list[ReadReport], errors: list[ErrorRow], manifest: Path | None,
                 timings_s: dict[str, float], scan_counts: dict[str, int] | None = None,
                 waves: dict[str, Any] | None = None, warnings: list[ErrorRow] | None = None) -> dict[str, Any]:
    """``report.json``. ``scan_counts``: what the scan read rather than took from its
    inventory (``headers_read``, ``probes_run``, ``stac_items``); ``waves``: the staging record
    of the waves (:class:`~eoforge.ingest.pipeline.WaveLog`); ``warnings``: the scan's warning
    rows (used inputs worth a look: a band coarser than its native pixel size)."""
    pieces: Counter[str] = Counter()
    for r in read_reports:
        pieces.update({f"{r.kind}_{k}": v for k, v in r.counts.items()})
    counts: Counter[str] = Counter()
    for shard in task_reports:
        counts.update(shard.counts)
    written_steps = counts.get("time_steps_written", 0)
    labels: dict[str, Any] = {}
    samples = manifest_rows(manifest)
    if samples and manifest is not None:  # streamed from the manifest file: memory does not grow with the dataset
        from eoforge.shards.inspect import LABEL_COLUMNS, label_distribution
        from eoforge.shards.manifest import iter_manifest

        labels = label_distribution(iter_manifest(manifest, LABEL_COLUMNS)) or {}
    sensors = Counter(s.sensor for s in scenes)
    return {
        "inputs": inputs,
        "engine": engine,
        "stages": {
            "scan": {"files": files_seen, "scenes": dict(sorted(sensors.items())),
                     "errors": sum(e.stage == "scan" for e in errors), **(scan_counts or {})},
            "plan": {"tiles": plan.num_tiles, "time_steps": len(plan.rows),
                     "s2_scenes_used": plan.pairing.get("s2_scenes_used", 0)},
            "read": {"tasks": len(read_reports), "pieces": dict(sorted(pieces.items())),
                     "tasks_by_threads": {str(t): n for t, n in sorted(Counter(r.threads for r in read_reports).items())},
                     **(waves or {})},
            "materialize": {"shards": len(task_reports), **dict(sorted(counts.items()))},
            "finalize": {"samples": samples},
        },
        "dedup": {reason: {"count": r.count, "examples": r.examples[:5]} for reason, r in sorted(plan.removed.items())},
        "pairing": {
            "max_dt_days": config["max_dt_days"],
            "planned_steps": plan.pairing.get("steps", 0),
            "planned_paired_steps": plan.pairing.get("paired_steps", 0),
            "match_rate_planned": planned_match_rate(plan),
            "written_steps": written_steps,
            "written_paired_steps": counts.get("paired_steps_written", 0),
            "match_rate_written": (counts.get("paired_steps_written", 0) / written_steps) if written_steps else None,
            "dt_days_histogram": dt_histogram(plan, config["max_dt_days"]),
            "s1_scenes": plan.pairing.get("s1_scenes", 0), "s1_scenes_used": plan.pairing.get("s1_used", 0),
        },
        "labels": labels,
        "warnings": {"count": len(warnings or []), "rows": [w.to_dict() for w in (warnings or [])[:1000]]},
        "errors": {"count": len(errors),
                   "by_reason": dict(sorted(Counter(error_reason_class(e.reason) for e in errors).items())),
                   "by_stage": dict(sorted(Counter(e.stage for e in errors).items()))},
        "timings_s": {k: round(v, 3) for k, v in timings_s.items()},
        "config": config,
    }


def planned_match_rate(plan: Any) -> float | None:
    """The plan's time steps with an S1 partner, as a fraction (None without steps)."""
    return (plan.pairing["paired_steps"] / plan.pairing["steps"]) if plan.pairing.get("steps") else None


def dt_histogram(plan: Any, max_dt_days: float) -> dict[str, list[float] | list[int]]:
    """The planned pairs' Δt = S1 time - S2 time in 1-day bins centred on whole days, up to
    ``max_dt_days`` either way: ``{"bin_edges": [...], "counts": [...]}``."""
    dts = np.asarray(plan.pairing.get("dt_days", []), dtype=float)
    edges = np.arange(-np.ceil(max_dt_days) - 0.5, np.ceil(max_dt_days) + 1.0, 1.0)
    hist, _ = np.histogram(dts, bins=edges) if dts.size else (np.zeros(len(edges) - 1, int), edges)
    return {"bin_edges": edges.tolist(), "counts": hist.tolist()}


def write_pairing_figure(out: Path, plan: Any, max_dt_days: float) -> Path:
    """``report-dt.png``: the planned Δt histogram and match rate. It needs the plan alone,
    so the pipeline draws it while the read tasks run (the client is idle then)."""
    from eoforge.shards.plots import figure, save_figure

    p = dt_histogram(plan, max_dt_days)
    fig, ax = figure(figsize=(6, 3.2), dpi=120)
    centres = (np.asarray(p["bin_edges"][:-1]) + np.asarray(p["bin_edges"][1:])) / 2
    ax.bar(centres, p["counts"], width=0.9, color="tab:blue")
    ax.set_xlabel("Δt = S1 time - S2 time (days)")
    ax.set_ylabel("paired time steps (planned)")
    ax.set_title(f"S1/S2 pairing: match rate {planned_match_rate(plan) or 0:.0%}")
    return save_figure(fig, out / "report-dt.png")


def format_report(report: dict[str, Any]) -> str:
    st = report["stages"]
    p = report["pairing"]
    lines = ["# eoforge ingest report", ""]
    lines += [f"Inputs: {', '.join(f'`{i}`' for i in report['inputs'])}; engine: {report['engine']}.", ""]
    lines += ["## Stages", "", "| stage | counts |", "|---|---|"]
    scenes = ", ".join(f"{n} {s}" for s, n in st["scan"]["scenes"].items())
    reuse = (f" ({st['scan']['headers_read']} headers read, {st['scan']['probes_run']} scenes probed, the rest "
             "from the scan inventory)" if "headers_read" in st["scan"] else "")
    lines.append(f"| scan | {st['scan']['files']} raster files{reuse} -> {scenes or 'no'} scenes, "
                 f"{st['scan']['errors']} errors |")
    lines.append(f"| plan | {st['plan']['tiles']} tiles, {st['plan']['time_steps']} time steps from "
                 f"{st['plan']['s2_scenes_used']} S2 scenes |")
    pieces = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in st["read"]["pieces"].items())
    r = st["read"]
    staging = (f"; {r['waves']} wave(s), staging high-water {r['staging_high_water_bytes'] / 1e6:.1f} MB of a "
               f"{r['staging_budget_bytes'] / 1e9:g} GB budget, {r['bytes_written_per_output_byte']} bytes written "
               "per shard byte" if r.get("waves") and r.get("bytes_written_per_output_byte") else "")
    threaded = {int(t): n for t, n in r.get("tasks_by_threads", {}).items() if int(t) > 1}
    threads = "".join(f", {n} of them with {t} threads" for t, n in sorted(threaded.items()))
    lines.append(f"| read | {r['tasks']} tasks (one per source, wave and band of tile rows{threads}), pieces: "
                 f"{pieces or 'none'}{staging} |")
    m = st["materialize"]
    lines.append(f"| materialize | {m['shards']} shards, {m.get('samples_written', 0)} samples, "
                 f"{m.get('time_steps_written', 0)} time steps; dropped: "
                 f"{m.get('steps_dropped_low_valid_fraction', 0)} steps under min valid fraction, "
                 f"{m.get('steps_dropped_cloudy', 0)} cloudy steps, {m.get('steps_dropped_read_failed', 0)} steps "
                 f"whose read failed, {m.get('s1_dropped_low_valid_fraction', 0)} S1 under min valid fraction, "
                 f"{m.get('tiles_dropped_no_valid_step', 0)} tiles without a valid step |")
    lines.append(f"| finalize | {st['finalize']['samples']} samples in the manifest |")
    lines += ["", "## Dedup and selection", "", "| reason | removed | example |", "|---|---|---|"]
    for reason, d in report["dedup"].items():
        ex = d["examples"][0] if d["examples"] else {}
        what = ex.get("tile_id") or ex.get("product_id") or ""
        lines.append(f"| {reason} | {d['count']} | `{what}`: {ex.get('why', '')} |")
    lines += ["", "## S1/S2 pairing", ""]
    rate = p["match_rate_written"]
    lines.append(f"{p['written_paired_steps']} of {p['written_steps']} written time steps have an S1 pair "
                 f"(match rate {'n/a' if rate is None else f'{rate:.1%}'}, |Δt| <= {p['max_dt_days']:g} days); "
                 f"{p['s1_scenes_used']} of {p['s1_scenes']} S1 scenes used.")
    lines += ["", "| Δt (days, S1 - S2) | planned pairs |", "|---|---|"]
    edges, counts = p["dt_days_histogram"]["bin_edges"], p["dt_days_histogram"]["counts"]
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        lines.append(f"| {lo:+.1f} .. {hi:+.1f} | {c} |")
    lines += ["", "![Δt histogram](report-dt.png)", "![coverage](report-coverage.png)"]
    if report["labels"]:
        lines += ["", "## Labels (samples with the class present)", "", "![labels](report-labels.png)", ""]
        for tax, d in report["labels"].items():
            for split, present in sorted(d["present"].items()):
                lines.append(f"- {tax}, {split}: " + ", ".join(f"{k} {v}" for k, v in present.items() if v))
    w = report.get("warnings", {"count": 0, "rows": []})
    if w["count"]:
        lines += ["", f"## Warnings ({w['count']})", ""]
        lines += [f"- `{r['path']}` ({r['product_id']}): {r['reason']}" for r in w["rows"][:20]]
        if w["count"] > 20:
            lines.append(f"- … {w['count'] - 20} more in report.json")
    e = report["errors"]
    lines += ["", f"## Errors ({e['count']}, details in `errors.parquet`)", ""]
    for reason, n in e["by_reason"].items():
        lines.append(f"- {n} x {reason}")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any], manifest: Path | None) -> None:
    """``report.json``, ``report.md`` and the pictures of the samples written (coverage,
    labels); ``report-dt.png`` is :func:`write_pairing_figure`'s."""
    from eoforge.shards.plots import coverage_map, label_histogram

    if manifest_rows(manifest):
        coverage_map(manifest, out / "report-coverage.png")
    if report["labels"]:
        label_histogram(report["labels"], out / "report-labels.png")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(out / "report.md", format_report(report))
