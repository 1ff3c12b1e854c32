"""Evaluation results as ``results.json`` plus a Markdown table with the run settings.

The JSON is the record (every setting needed to reproduce the numbers, per-class values,
sample counts); the Markdown is for people: one row per (backbone, probe), the pretrained
model and its random-init twin side by side, then the settings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.meta import json_finite

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

# (metric key, column title, shown as percent)
_COLUMNS = (
    ("top1", "top-1 acc", True),
    ("micro_ap", "micro AP", True),
    ("macro_ap", "macro AP", True),
    ("miou", "mIoU", True),
    ("water_iou", "water IoU", True),
    ("pixel_accuracy", "pixel acc", True),
)


def _fmt(v: Any, percent: bool) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}" if percent else f"{v:.4g}"


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of result rows (``{"backbone", "probe", "metrics": {...}}``)."""
    cols = [c for c in _COLUMNS if any(c[0] in r["metrics"] for r in rows)]
    head = "| backbone | probe | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|---|---|" + "---:|" * len(cols)
    lines = [head, sep]
    for r in rows:
        vals = " | ".join(_fmt(r["metrics"].get(key), pct) for key, _, pct in cols)
        lines.append(f"| {r['backbone']} | {r['probe']} | {vals} |")
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    """The Markdown page of a report (see :func:`eoforge.eval.run.evaluate` for its fields)."""
    s = report["settings"]
    model, data, labels = s["model"], s["data"], s["labels"]
    inputs, probes = s["inputs"], s["probes"]
    lines = [
        f"# eoforge eval: {Path(model['weights']).name} on {Path(data['path']).name}",
        "",
        "Values in %. `random-init` is the same architecture with random weights (seed "
        f"{s['seed']}), evaluated identically.",
        "",
        results_table(report["results"]),
        "",
        "## Settings",
        "",
        f"- weights: `{model['weights']}` (sha256 {model['weights_sha256'][:12]}…), timm `{model['timm_model']}`, "
        f"method {model.get('method')}, trained on manifest {str(model.get('manifest_sha256'))[:12]}",
        f"- data: `{data['path']}`; train split `{data['train_split']}`: {data['train_labelled']} labelled of "
        f"{data['train_samples']} (label fraction {data['label_fraction']}, seed {s['seed']}); "
        f"eval split `{data['eval_split']}`: {data['eval_samples']} samples",
        f"- labels: {labels['taxonomy']}, {len(labels['names'])} classes, "
        f"{'single-label (top-1)' if labels['single_label'] else 'multi-label (AP)'}",
        f"- inputs: bands {','.join(inputs['bands'])}; time step {inputs['time_step']}; normalisation "
        f"{inputs['normalization']} from the {inputs['normalization_source']}{' (clipped)' if inputs['clip'] else ''}; "
        f"resized to {inputs['img_size']} px",
        f"- features: {s['features']} (dims {s.get('feature_dims')})",
    ]
    if "knn" in probes:
        lines.append(f"- kNN: cosine, k = {probes['knn']['k']}, temperature {probes['knn']['temperature']}")
    if "linear" in probes:
        p = probes["linear"]
        lines.append(f"- linear: AdamW lr {p['lr']}, weight decay {p['weight_decay']}, {p['epochs']} epochs, "
                     f"batch {p['batch_size']}, cosine decay, standardised features: {p['standardize']}")
    if "segmentation" in probes:
        p = probes["segmentation"]
        lines.append(f"- segmentation: 1x1 conv on patch features, bilinear upsampling, CE ignoring unlabelled "
                     f"pixels; AdamW lr {p['lr']}, {p['epochs']} epochs, batch {p['batch_size']}")
    skipped = {k: v for k, v in report.get("skipped", {}).items() if v}
    if skipped:
        lines.append(f"- samples skipped: {skipped}")
    lines.append(f"- eoforge {s.get('eoforge_version')}, torch {s.get('torch_version')}, timm {s.get('timm_version')}")
    return "\n".join(lines) + "\n"



def write_report(report: dict[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``out/results.json`` and ``out/results.md``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / RESULTS_JSON, out / RESULTS_MD
    write_text_atomic(json_path, json.dumps(json_finite(report), indent=2) + "\n")
    write_text_atomic(md_path, to_markdown(report))
    return json_path, md_path
