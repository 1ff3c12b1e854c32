"""``eoforge ingest --dry-run``: what an archive will give, before any pixel moves.

A dry run scans and plans as a real run does (metadata and the scan probes only), then
stops before the read stage and writes ``DS/dry-run.json`` and ``DS/dry-run.md``: tiles,
time steps, S1-paired steps and the pairing rate, S2/S1 scenes used, shards and an estimate
of the bytes the shards will take, in total, per split and per plan region (a block of
``plan_region_tiles`` x ``plan_region_tiles`` grid tiles of one UTM zone).

The figures are those of the *plan*. A real run writes at most these tiles and steps: it
drops time steps whose pixels fail QA (``min_valid_fraction``, ``max_cloud_fraction``), S1
under ``min_valid_fraction`` and tiles left without a step, which only pixels can tell.

**Size estimate**: :func:`eoforge.ingest.sizes.estimate_tile_bytes` (its module says the rule).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.errors import ErrorRow
from eoforge.ingest.plan import Region
from eoforge.ingest.sizes import JSON_BYTES, TAR_SHARD_BYTES, ZSTD_RATIO, estimate_tile_bytes
from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.keys import TileId

DRY_RUN_JSON = "dry-run.json"
DRY_RUN_MD = "dry-run.md"

def region_id(tile: TileId, region_tiles: int) -> str:
    """The plan region of a tile: ``{zone:02d}{hemi}_{col // R}_{row // R}`` (R = ``region_tiles``),
    the regions the planner plans one by one (:class:`~eoforge.ingest.plan.Region`)."""
    return str(Region.of(tile, region_tiles))


def plan_table(rows: pa.Table | list[dict[str, Any]]) -> pa.Table:
    """Plan rows as a table of plain columns (the planner's table keeps repeated strings as
    dictionaries, which Arrow's group-by does not take as keys)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    return table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                 for f in table.schema]))


def tile_table(plan: pa.Table, config: IngestConfig) -> pa.Table:
    """One row per planned tile: ``tile_id``, ``split``, ``region``, ``time_steps``,
    ``paired_steps``, ``raw_bytes``, ``estimated_bytes``."""
    paired = pc.cast(pc.is_valid(plan["s1_scene"]), pa.int64())
    has_lc = (pc.cast(pc.greater(pc.list_value_length(plan["landcover_scenes"]), 0), pa.int64())
              if "landcover_scenes" in plan.column_names else pa.repeat(0, plan.num_rows))
    rows = pa.table({"tile_id": plan["tile_id"], "split": plan["split"], "paired": paired, "lc": has_lc})
    tiles = rows.group_by(["tile_id", "split"], use_threads=False).aggregate(  # paired_count: rows = steps
        [("paired", "count"), ("paired", "sum"), ("lc", "max")]).sort_by("tile_id")
    raw, est = estimate_tile_bytes(tiles["paired_count"].to_numpy(), tiles["paired_sum"].to_numpy(),
                                   tiles["lc_max"].fill_null(0).to_numpy() > 0, config)
    ids = tiles["tile_id"].to_pylist()
    return pa.table({
        "tile_id": tiles["tile_id"], "split": tiles["split"],
        "region": [region_id(TileId.parse(t), config.plan_region_tiles) for t in ids],
        "time_steps": tiles["paired_count"], "paired_steps": tiles["paired_sum"],
        "raw_bytes": pa.array(raw, pa.int64()), "estimated_bytes": pa.array(est, pa.int64()),
    })


def _group(rows: pa.Table, tiles: pa.Table, key: list[str]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Counts per value of ``key`` ([] : one group, the whole plan)."""
    t = tiles.group_by(key, use_threads=False).aggregate(
        [("tile_id", "count"), ("time_steps", "sum"), ("paired_steps", "sum"), ("raw_bytes", "sum"),
         ("estimated_bytes", "sum")]).to_pylist()
    s = rows.group_by(key, use_threads=False).aggregate(
        [("s2_scene", "count_distinct"), ("s1_scene", "count_distinct")]).to_pylist()
    scenes = {tuple(r[k] for k in key): r for r in s}
    out = {}
    for r in t:
        k = tuple(r[c] for c in key)
        steps, paired = r["time_steps_sum"] or 0, r["paired_steps_sum"] or 0
        out[k] = {
            "tiles": r["tile_id_count"], "time_steps": steps, "paired_steps": paired,
            "pairing_rate": paired / steps if steps else None,
            "s2_scenes_used": scenes[k]["s2_scene_count_distinct"],
            "s1_scenes_used": scenes[k]["s1_scene_count_distinct"],
            "raw_bytes": r["raw_bytes_sum"] or 0, "estimated_bytes": r["estimated_bytes_sum"] or 0,
        }
    return out


def summarize_plan(plan_rows: pa.Table | list[dict[str, Any]], config: IngestConfig) -> dict[str, Any]:
    """``{"total", "splits", "regions"}`` of a plan (rows with ``tile_id``, ``split``, ``step``,
    ``s2_scene``, ``s1_scene`` (null: unpaired), optionally ``landcover_scenes``).

    Splits get ``shards`` = ceil(tiles / ``samples_per_shard``) (the plan deals each split's
    tiles to that many shards) and the shards' tar ends in their bytes; regions do not,
    their tiles are spread over every shard of their split."""
    plan = plan_table(plan_rows)
    empty = {"tiles": 0, "time_steps": 0, "paired_steps": 0, "pairing_rate": None, "s2_scenes_used": 0,
             "s1_scenes_used": 0, "raw_bytes": 0, "estimated_bytes": 0}
    if plan.num_rows == 0:
        return {"total": {**empty, "shards": 0}, "splits": {}, "regions": {}}
    tiles = tile_table(plan, config)
    tile_index = pc.index_in(plan["tile_id"], value_set=tiles["tile_id"].combine_chunks())
    rows = pa.table({
        "split": plan["split"], "region": pc.take(tiles["region"], tile_index),
        "s2_scene": pc.cast(plan["s2_scene"], pa.int64()), "s1_scene": pc.cast(plan["s1_scene"], pa.int64()),
    })
    splits = {k[0]: v for k, v in _group(rows, tiles, ["split"]).items()}
    for s in splits.values():
        s["shards"] = math.ceil(s["tiles"] / config.samples_per_shard)
        s["estimated_bytes"] += s["shards"] * TAR_SHARD_BYTES
    regions = {k[0]: v for k, v in sorted(_group(rows, tiles, ["region"]).items())}
    by_split = tiles.group_by(["region", "split"], use_threads=False).aggregate([("tile_id", "count")]).to_pylist()
    for r in by_split:
        regions[r["region"]].setdefault("tiles_by_split", {})[r["split"]] = r["tile_id_count"]
    total = _group(rows, tiles, [])[()]
    total["shards"] = sum(s["shards"] for s in splits.values())
    total["estimated_bytes"] = sum(s["estimated_bytes"] for s in splits.values())
    order = sorted(splits, key=lambda s: (s != "train", s))
    return {"total": total, "splits": {s: splits[s] for s in order}, "regions": regions}


def build_dry_run_report(*, inputs: list[str], config: IngestConfig, scanned: Any, plan: Any,
                         errors: list[ErrorRow], plan_sha256: str, shards_written: int) -> dict[str, Any]:
    """Everything ``dry-run.json`` holds: the inputs, the scan's counts, the plan's summary
    (:func:`summarize_plan`), what planning removed, the estimate's rule and the errors."""
    from eoforge.ingest.report import error_reason_class

    summary = summarize_plan(plan.rows, config)
    return {
        "inputs": inputs,
        "plan_sha256": plan_sha256,
        "scan": {"files": scanned.files_seen, "headers_read": scanned.headers_read, "probes_run": scanned.probes_run,
                 "scenes": dict(sorted(Counter(s.sensor for s in scanned.scenes).items())),
                 "errors": sum(e.stage == "scan" for e in errors), "stac_items": scanned.items,
                 "warnings": [w.to_dict() for w in scanned.warnings]},
        "plan": summary["total"],
        "splits": summary["splits"],
        "regions": summary["regions"],
        "removed": {reason: len(items) for reason, items in sorted(plan.removed.items())},
        "shards_written": shards_written,
        "estimate": {"codec": config.codec, "zstd_ratio": ZSTD_RATIO, "json_bytes": list(JSON_BYTES),
                     "rule": "planned steps; raw member bytes x zstd ratio (S2, S1 measured; SCL, s1valid, lc 1.0) "
                             "+ sample JSON + npy headers + tar framing (ingest/sizes.py)"},
        "errors": {"count": len(errors),
                   "by_reason": dict(sorted(Counter(error_reason_class(e.reason) for e in errors).items())),
                   "rows": [e.to_dict() for e in sorted(errors, key=lambda e: (e.path, e.stage, e.reason))]},
        "config": config.to_dict(),
    }


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _rate(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1%}"


def _table_row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {s['tiles']} | {s['time_steps']} | {s['paired_steps']} | {_rate(s['pairing_rate'])} | "
            f"{s['s2_scenes_used']} | {s['s1_scenes_used']} | {_mb(s['estimated_bytes'])} |")


def format_dry_run(report: dict[str, Any], max_regions: int = 20) -> str:
    """``dry-run.md``: totals, one table row per split and per region (the largest
    ``max_regions``; every region is in ``dry-run.json``)."""
    p, sc = report["plan"], report["scan"]
    scenes = ", ".join(f"{n} {s}" for s, n in sc["scenes"].items()) or "no"
    lines = ["# eoforge ingest: dry run", "",
             f"Inputs: {', '.join(f'`{i}`' for i in report['inputs'])}. Nothing was read beyond headers and probes; "
             "no shard was written.", "",
             f"- scan: {sc['files']} raster files" + (f" of {sc['stac_items']} STAC items" if sc.get("stac_items") else "")
             + f" ({sc['headers_read']} headers read, {sc['probes_run']} scenes probed, the rest from the scan "
             f"inventory or the items) -> {scenes} scenes, {sc['errors']} errors, {len(sc.get('warnings', []))} warnings",
             f"- plan: **{p['tiles']} tiles, {p['time_steps']} time steps**, {p['paired_steps']} with S1 (pairing rate "
             f"{_rate(p['pairing_rate'])}), from {p['s2_scenes_used']} S2 and {p['s1_scenes_used']} S1 scenes",
             f"- output: **{p['shards']} shards, ~{_mb(p['estimated_bytes'])}** (raw pixels {_mb(p['raw_bytes'])}; "
             f"{report['shards_written']} shards already written here are kept by a real run)",
             f"- errors: {report['errors']['count']}" + "".join(
                 f"; {n} x {r}" for r, n in report["errors"]["by_reason"].items())]
    lines += [f"- warning: `{w['path']}` ({w['product_id']}): {w['reason']}" for w in sc.get("warnings", [])[:20]]
    if len(sc.get("warnings", [])) > 20:
        lines.append(f"- … {len(sc['warnings']) - 20} more warnings in dry-run.json")
    lines.append("")
    head = "| tiles | steps | paired | pairing | S2 scenes | S1 scenes | est. size |"
    lines += ["## Splits", "", "| split " + head + " shards |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["splits"].items():
        lines.append(_table_row(name, s) + f" {s['shards']} |")
    regions = sorted(report["regions"].items(), key=lambda kv: (-kv[1]["tiles"], kv[0]))
    lines += ["", f"## Plan regions ({len(regions)}, {report['config']['plan_region_tiles']}² tiles each)", "",
              "| region " + head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in regions[:max_regions]:
        lines.append(_table_row(name, s))
    if len(regions) > max_regions:
        lines.append(f"| … {len(regions) - max_regions} more in dry-run.json | | | | | | | |")
    lines += ["", f"Size estimate: {report['estimate']['rule']}. A real run writes at most these tiles and steps: "
              "steps failing QA on their pixels are dropped then.", ""]
    return "\n".join(lines)


def write_dry_run(out: Path, report: dict[str, Any]) -> None:
    """Write ``dry-run.json`` and ``dry-run.md`` (each whole or not at all)."""
    write_text_atomic(out / DRY_RUN_JSON, json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(out / DRY_RUN_MD, format_dry_run(report))
