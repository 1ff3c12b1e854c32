"""``eoforge ingest --dry-run`` and the scan inventory, on the demo scenes and a real Dask cluster.

- A dry run writes the plan and ``dry-run.json`` / ``.md`` and no pixels: no shard, no
  staging, no job record. Its counts are the plan's, and the real run that follows writes
  what they say minus the steps and tiles its QA drops (counted in report.json), with the
  bytes of a run that never saw a dry run, without reading a header again.
- The scan inventory: a rerun reads the header of exactly the file that changed and probes
  only its scene; the scene and error rows equal a fresh scan's, bad inputs included.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import DEMO_INGEST

from eoforge.cli import main
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.dryrun import region_id
from eoforge.ingest.inventory import INVENTORY_NAME, decode_record, encode_record
from eoforge.ingest.pipeline import run_ingest
from eoforge.ingest.scene import FileHeader
from eoforge.shards import read_manifest
from eoforge.shards.keys import TileId

pytestmark = pytest.mark.slow

CONFIG = IngestConfig(**DEMO_INGEST)


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One loopback 2-worker cluster for the runs of this file (each skips starting its own)."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_inventory_records_round_trip_with_their_types() -> None:
    record = {"path": "a.tif", "transform": (10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0), "nodata": float("nan"),
              "footprint": b"\x01\x03\x00\x00\x00", "tags": {"__tuple__": "a raster tag"}, "dtypes": ["uint16"],
              "epsg": None, "res": (10.0, 10.0), "nested": [{"__bytes__": "x", "k": (1, 2)}], "size": 123}
    back = decode_record(encode_record(record))
    assert json.dumps(back, default=repr) == json.dumps(record, default=repr)  # NaN != NaN, so compare text
    assert type(back["transform"]) is tuple and type(back["dtypes"]) is list and type(back["footprint"]) is bytes
    assert back["tags"] == {"__tuple__": "a raster tag"} and back["nested"][0] == {"__bytes__": "x", "k": (1, 2)}
    assert math.isnan(back["nodata"])
    header = FileHeader("a.tif", crs_wkt="EPSG:32632", epsg=32632, transform=(10.0, 0.0, 399960.0, 0.0, -10.0, 5e6),
                        width=3, height=2, count=1, dtypes=("uint16",), nodata=0.0, descriptions=("B02",),
                        tags={"UNITS": "dB"}, res=(10.0, 10.0), bounds=(0.0, 1.0, 2.0, 3.0), footprint=b"\x01", size=9)
    assert FileHeader.from_dict(decode_record(encode_record(header.to_dict()))) == header


def test_region_ids_are_blocks_of_tiles_within_a_zone() -> None:
    assert region_id(TileId.parse("32n_00276_01913"), 64) == "32n_4_29"
    assert region_id(TileId.parse("32n_00255_01920"), 64) == "32n_3_30"
    assert region_id(TileId.parse("33s_00003_00070"), 8) == "33s_0_8"


def test_dry_run_reports_the_plan_and_a_real_run_follows(demo_raw: Path, demo_ingest, scheduler: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "ds"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ingest:\n" + "".join(f"  {k}: {v}\n" for k, v in DEMO_INGEST.items()))
    cli = CliRunner().invoke(main, ["ingest", str(demo_raw), "--out", str(out), "--config", str(recipe),
                                    "--scheduler", scheduler, "--dry-run", "--quiet"])
    assert cli.exit_code == 0, cli.output

    # Metadata only: the plan and the reports, no pixels, no job record.
    assert {p.name for p in out.iterdir()} == {"scenes.parquet", "plan.parquet", INVENTORY_NAME,
                                               "dry-run.json", "dry-run.md"}
    report = json.loads((out / "dry-run.json").read_text())
    plan = pq.read_table(out / "plan.parquet").to_pylist()
    steps_of = Counter(r["tile_id"] for r in plan)
    p = report["plan"]
    assert p["tiles"] == len(steps_of) > 40 and p["time_steps"] == len(plan)
    assert p["paired_steps"] == sum(r["s1_scene"] is not None for r in plan) > 0
    assert p["pairing_rate"] == pytest.approx(p["paired_steps"] / p["time_steps"])
    assert p["s2_scenes_used"] == len({r["s2_scene"] for r in plan})
    assert p["s1_scenes_used"] == len({r["s1_scene"] for r in plan} - {None})
    assert f"dry run: {p['tiles']} tiles, {p['time_steps']} time steps" in cli.output
    assert report["scan"]["headers_read"] == report["scan"]["files"] > 200

    # Splits: shards of samples_per_shard, as the plan deals them; regions: 64 x 64 tile blocks.
    for split, s in report["splits"].items():
        mine = [r for r in plan if r["split"] == split]
        tiles = {r["tile_id"] for r in mine}
        assert s["tiles"] == len(tiles) and s["time_steps"] == len(mine)
        assert s["shards"] == math.ceil(len(tiles) / CONFIG.samples_per_shard) == len({r["shard"] for r in mine})
    assert set(report["splits"]) == {"train", "val"}
    assert p["shards"] == sum(s["shards"] for s in report["splits"].values())
    regions = defaultdict(set)
    for t in steps_of:
        tile = TileId.parse(t)
        regions[f"{tile.zone:02d}{tile.hemisphere}_{tile.col // 64}_{tile.row // 64}"].add(t)
    assert {k: v["tiles"] for k, v in report["regions"].items()} == {k: len(v) for k, v in regions.items()}
    assert {k[:3] for k in regions} == {"32n", "33n"}  # the demo spans a zone edge
    assert sum(v["time_steps"] for v in report["regions"].values()) == p["time_steps"]

    # Raw bytes from the plan rows: S2 + SCL per step; S1 + s1valid per step of a paired tile; lc.
    px = CONFIG.tile_size_px ** 2
    paired_tiles = {r["tile_id"] for r in plan if r["s1_scene"] is not None}
    lc_tiles = {r["tile_id"] for r in plan if r["landcover_scenes"]}
    raw = sum(n * (13 * 2 + 1) * px + (t in paired_tiles) * n * (2 * 2 + 1) * px + (t in lc_tiles) * px
              for t, n in steps_of.items())
    assert p["raw_bytes"] == raw

    # The real run after it: the same plan, what the dry run said minus what QA dropped on the
    # pixels, the bytes of a run that never had a dry run, and not one header read again.
    real = run_ingest([str(demo_raw)], out, config=CONFIG, scheduler=scheduler, progress=False)
    assert real.exit_code == 0, real.errors
    stages = real.report["stages"]
    assert stages["plan"]["tiles"] == p["tiles"] and stages["plan"]["time_steps"] == p["time_steps"]
    assert stages["scan"]["headers_read"] == 0 and stages["scan"]["probes_run"] == 0
    assert stages["materialize"]["shards"] == p["shards"]
    m = stages["materialize"]
    manifest = read_manifest(out).select(["tile_id", "num_time_steps"]).to_pylist()
    written = {r["tile_id"]: r["num_time_steps"] for r in manifest}
    assert set(written) <= set(steps_of)
    assert all(n <= steps_of[t] for t, n in written.items())
    assert len(steps_of) - len(written) == m.get("tiles_dropped_no_valid_step", 0) > 0
    dropped = sum(v for k, v in m.items() if k.startswith("steps_dropped_"))
    assert p["time_steps"] - dropped == m["time_steps_written"] == sum(written.values())
    shard_bytes = sum(f.stat().st_size for f in (out / "shards").rglob("*.tar"))
    assert 0.5 * p["estimated_bytes"] < shard_bytes <= p["estimated_bytes"]  # the estimate is an upper bound
    assert not (out / "staging").exists()
    assert _tree(out / "shards") == _tree(demo_ingest.out / "shards")
    assert (out / "manifest.parquet").read_bytes() == (demo_ingest.out / "manifest.parquet").read_bytes()
    assert (out / "plan.parquet").read_bytes() == (demo_ingest.out / "plan.parquet").read_bytes()


def _touch(path: Path) -> None:
    """A new mtime (one second later), the same bytes."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _scan_outputs(out: Path) -> tuple[bytes, list[dict]]:
    report = json.loads((out / "dry-run.json").read_text())
    return (out / "scenes.parquet").read_bytes(), report["errors"]["rows"]


def test_a_rerun_reads_only_the_headers_and_probes_of_what_changed(demo_raw: Path, scheduler: str,
                                                                   tmp_path: Path) -> None:
    raw = Path(shutil.copytree(demo_raw, tmp_path / "raw"))
    # Bad inputs too, so cached error rows are checked: a header error and a probe error.
    (raw / "notes.tif").write_text("not a raster\n")
    s1 = raw / "s1" / "S1A_IW_GRDH_1SDV_20220610T052801_20220610T052826_043574_05341B_107D.tif"
    s1.write_bytes(s1.read_bytes()[: s1.stat().st_size // 2])
    out = tmp_path / "ds"

    def dry(folder: Path) -> dict:
        result = run_ingest([str(raw)], folder, config=CONFIG, scheduler=scheduler, progress=False, dry_run=True)
        assert result.exit_code == 1  # the two bad inputs
        return result.report

    first = dry(out)
    files = sorted(p for p in raw.rglob("*") if p.suffix.lower() in (".tif", ".jp2"))
    scenes = pq.read_table(out / "scenes.parquet").num_rows
    assert first["scan"]["headers_read"] == first["scan"]["files"] == len(files)
    assert first["scan"]["probes_run"] >= scenes > 20
    scenes_bytes, errors = _scan_outputs(out)
    assert {e["path"] for e in errors} >= {str(raw / "notes.tif"), str(s1)}

    unchanged = dry(out)
    assert unchanged["scan"]["headers_read"] == 0 and unchanged["scan"]["probes_run"] == 0
    assert _scan_outputs(out) == (scenes_bytes, errors)

    band = next((raw / "s2").rglob("*_B03_10m.*"))
    _touch(band)
    touched = dry(out)
    assert touched["scan"]["headers_read"] == 1 and touched["scan"]["probes_run"] == 1
    assert _scan_outputs(out) == (scenes_bytes, errors)
    rows = pq.read_table(out / "scenes.parquet").to_pylist()
    assert sum(str(band) in r["paths"] for r in rows) == 1

    fresh = dry(tmp_path / "fresh")  # no inventory: everything read again, the same rows
    assert fresh["scan"]["headers_read"] == len(files)
    assert _scan_outputs(tmp_path / "fresh") == (scenes_bytes, errors)
    assert fresh["plan"] == first["plan"] == touched["plan"]
    assert np.isclose(fresh["plan"]["estimated_bytes"], touched["plan"]["estimated_bytes"])
