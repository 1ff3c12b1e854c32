"""Summarise a dataset from its manifest alone (no tar is opened).

:func:`summarize` returns plain dicts (``--json``); :func:`format_summary` renders them as
the text ``eoforge shards inspect`` prints.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eoforge.shards.manifest import read_manifest

QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
_QA_COLUMNS = ("s2_valid_fraction", "cloud_fraction", "s1_valid_fraction", "dt_days")


def _quantiles(values: pa.Array, absolute: bool = False) -> dict[str, float] | None:
    v = np.asarray(values.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
    if absolute:
        v = np.abs(v)
    if v.size == 0:
        return None
    return {f"q{int(q * 100):02d}": float(np.quantile(v, q)) for q in QUANTILES}


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts per split, modality presence, time steps, labels and QA quantiles."""
    out: dict[str, Any] = {"samples": table.num_rows}
    out["shards"] = len(set(table.column("shard").to_pylist()))
    out["bytes"] = int(pc.sum(table.column("nbytes")).as_py() or 0)
    out["splits"] = dict(sorted(Counter(table.column("split").to_pylist()).items()))
    out["modalities"] = {
        m: int(pc.sum(table.column(f"has_{m}").cast(pa.int64())).as_py() or 0) for m in ("s2", "s1", "scl", "lc")
    }
    out["time_steps"] = {int(k): v for k, v in sorted(Counter(table.column("num_time_steps").to_pylist()).items())}
    dts = pc.list_flatten(table.column("datetimes"))
    out["time_range"] = (
        [str(pc.min(dts).as_py()), str(pc.max(dts).as_py())] if len(dts) else None
    )
    out["qa"] = {
        col: _quantiles(pc.list_flatten(table.column(col)), absolute=(col == "dt_days")) for col in _QA_COLUMNS
    }
    out["labels"] = label_distribution(table)
    return out


LABEL_COLUMNS = ["split", "label_taxonomy", "labels", "label_fractions"]


def label_distribution(table: pa.Table | Iterable[pa.Table]) -> dict[str, Any] | None:
    """Per taxonomy: samples with each class present (per split) and mean class fraction.
    ``table``: the manifest (its :data:`LABEL_COLUMNS`), or batches of it (memory: one batch)."""
    present: dict[str, dict[str, Counter[str]]] = {}
    fraction_sum: dict[str, np.ndarray] = {}
    fraction_n: Counter[str] = Counter()
    for batch in [table] if isinstance(table, pa.Table) else table:
        for r in batch.select(LABEL_COLUMNS).to_pylist():
            tax = r["label_taxonomy"]
            if not tax:
                continue
            present.setdefault(tax, {}).setdefault(r["split"], Counter()).update(r["labels"] or [])
            if r["label_fractions"]:
                f = np.asarray(r["label_fractions"], dtype=np.float64)
                fraction_sum[tax] = fraction_sum[tax] + f if tax in fraction_sum else f
                fraction_n[tax] += 1
    return {tax: {"present": {s: dict(c.most_common()) for s, c in sorted(present[tax].items())},
                  "mean_fraction": (fraction_sum[tax] / fraction_n[tax]).round(4).tolist() if fraction_n[tax] else None}
            for tax in sorted(present)}


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"samples     {s['samples']}  in {s['shards']} shards, {s['bytes'] / 1e6:.1f} MB",
        "splits      " + "  ".join(f"{k}: {v}" for k, v in s["splits"].items()),
        "modalities  " + "  ".join(f"{k}: {v}" for k, v in s["modalities"].items()),
        "time steps  " + "  ".join(f"T={k}: {v}" for k, v in s["time_steps"].items()),
    ]
    if s["time_range"]:
        lines.append(f"dates       {s['time_range'][0]} .. {s['time_range'][1]}")
    lines.append("QA          " + "  ".join(f"{'q' + str(int(q * 100)):>6s}" for q in QUANTILES))
    for col, q in s["qa"].items():
        name = "|dt_days|" if col == "dt_days" else col
        vals = "  ".join(f"{v:6.3f}" for v in q.values()) if q else "   (none)"
        lines.append(f"  {name:<18s}{vals}")
    if s["labels"]:
        for tax, d in s["labels"].items():
            lines.append(f"labels ({tax}): samples with the class present")
            for split, counts in d["present"].items():
                lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def inspect_dataset(root: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any]]:
    table = read_manifest(root)
    return table, summarize(table)
