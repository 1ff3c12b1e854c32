"""Waves benchmark (``make bench``): an ingest of many small scenes under a staging budget that
forces several waves, then what the training loader makes of it.

- **scenes**: ``--scenes`` (48) small S2 L2A products (320 x 320 px at 10 m, 12 bands + SCL
  as COG-style GeoTIFFs named like the ingest bench's), each over its own place (a grid of
  places 5 km apart in UTM 32N) and date, cached under ``OUT/waves/raw``.
- **ingest**: ``run_ingest`` with 32 px tiles, 64 samples per shard and a staging budget of a
  fifth of the dataset's estimated size (so >= 4 waves); reported: waves, the staging
  high-water mark against the budget (+ the largest read task), bytes written per output
  byte, time.
- **loader**: distinct source S2 scenes per 256-sample batch of the training loader
  (:mod:`eoforge.train.data.diversity`, run as its own process: ingest and training share no
  code) with its default mixing (``open_shards``, shuffle buffer), against the bar
  0.9 x min(256, scenes).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
import rasterio
from affine import Affine

from eoforge.ingest.bench import scene_bands
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pipeline import run_ingest
from eoforge.shards.bench import write_results

SCENE_PX = 320  # 10 x 10 tiles of 32 px
PLACE_SPACING_M = 5000
ORIGIN = (500_000, 5_000_000)  # UTM 32N, metres (a multiple of the tile size)
TILE_PX = 32


def make_scenes(folder: Path, n_scenes: int) -> list[Path]:
    """``n_scenes`` small products, one per place and date (cached: ``.complete``)."""
    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n_scenes:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    cols = int(np.ceil(np.sqrt(n_scenes * 1.5)))
    for i in range(n_scenes):
        when = datetime(2023, 5, 1, 10, 10, 31) + timedelta(days=i)
        stamp = when.strftime("%Y%m%dT%H%M%S")
        product = f"S2A_MSIL2A_{stamp}_N0509_R022_T32TNR_{stamp[:8]}T120000"
        x0 = ORIGIN[0] + (i % cols) * PLACE_SPACING_M
        y0 = ORIGIN[1] + (i // cols) * PLACE_SPACING_M
        scene = folder / product
        scene.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        for band, label, gsd in scene_bands():  # the ingest bench's L2A files and names
            dtype = "uint8" if band is None else "uint16"
            n = SCENE_PX * 10 // gsd
            data = np.full((n, n), 4, np.uint8) if label == "SCL" else \
                (rng.normal(2500, 300, (n, n)) + 1000 * (i % 7) / 7).clip(1001, 60000).astype(np.uint16)
            profile = dict(driver="GTiff", width=n, height=n, count=1, dtype=dtype, crs="EPSG:32632", nodata=0,
                           transform=Affine(gsd, 0, x0, 0, -gsd, y0 + SCENE_PX * 10), tiled=True, blockxsize=256,
                           blockysize=256, compress="deflate")
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(scene / f"{product}_{label}.tif", "w",
                                                                   **profile) as dst:
                dst.write(data, 1)
    done.write_text(str(n_scenes))
    return sorted(p for p in folder.iterdir() if p.is_dir())


def run(out: Path, n_scenes: int, batches: int) -> dict[str, Any]:
    raw = out / "waves" / "raw"
    t0 = time.perf_counter()
    make_scenes(raw, n_scenes)
    generate_s = time.perf_counter() - t0
    # the budget: a fifth of the estimated size, from a dry run (metadata only)
    probe = out / "waves" / "dry"
    config = IngestConfig(tile_size_px=TILE_PX, samples_per_shard=64, val_fraction=0.0)
    dry = run_ingest([str(raw)], probe, config=config, workers=2, progress=False, dry_run=True)
    estimated = dry.report["plan"]["estimated_bytes"]
    config = config.replace(staging_budget_gb=estimated / 5 / 1e9)
    ds = out / "waves" / "ds"
    if ds.exists():
        import shutil

        shutil.rmtree(ds)
    t0 = time.perf_counter()
    result = run_ingest([str(raw)], ds, config=config, workers=2, progress=False)
    ingest_s = time.perf_counter() - t0
    read = result.report["stages"]["read"]
    reports = [json.loads(p.read_text()) for p in (ds / "task-reports" / "read").glob("*.json")]
    largest_task = max(r["frames_bytes"] + r["index_bytes"] for r in reports)
    proc = subprocess.run([sys.executable, "-m", "eoforge.train.data.diversity", str(ds), "--batch-size", "256",
                           "--batches", str(batches), "--workers", "2"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"diversity run failed:\n{proc.stderr[-3000:]}")
    diversity = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"scenes": n_scenes, "samples": result.samples, "shards": result.shards, "generate_seconds": generate_s,
            "ingest_seconds": ingest_s, "estimated_bytes": estimated, "read": read, "largest_read_task_bytes": largest_task,
            "diversity": diversity}


def markdown(r: dict[str, Any]) -> str:
    read, d = r["read"], r["diversity"]
    budget, high = read["staging_budget_bytes"], read["staging_high_water_bytes"]
    ok = "yes" if d["min"] >= d["target"] else "**no**"
    return "\n".join([
        "## Waves and batch diversity (`ingest/bench_waves.py`)", "",
        f"{r['scenes']} small S2 L2A scenes (one place and date each), {r['samples']:,} samples of 32 px in "
        f"{r['shards']} shards, ingested on 2 workers in {r['ingest_seconds']:.1f} s under a staging budget of "
        f"a fifth of the dry run's size estimate ({budget / 1e6:.1f} MB).", "",
        "| waves | staging high-water | budget + largest read task | bytes written per output byte "
        "| distinct S2 scenes per 256-sample batch (mean / min) | bar: 0.9 x min(256, scenes) | met |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {read['waves']} | {high / 1e6:.1f} MB | {(budget + r['largest_read_task_bytes']) / 1e6:.1f} MB "
        f"| {read['bytes_written_per_output_byte']} | {d['mean']:.1f} / {d['min']} | {d['target']:.1f} | {ok} |", "",
    ])


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--scenes", "n_scenes", type=click.IntRange(min=2), default=48, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=15, show_default=True,
              help="Loader batches measured (the loader's first epoch: 15 x 256 of 4800 samples).")
def main(out: Path, n_scenes: int, batches: int) -> None:
    """Ingest many small scenes in waves; print distinct source scenes per training batch."""
    r = run(out, n_scenes, batches)
    report = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", **r}
    md = markdown(r)
    write_results(out, "waves", report, md)
    click.echo(md)


if __name__ == "__main__":  # pragma: no cover
    main()
