"""Ingest benchmark (``make bench``): ingest time against the read floor, worker scaling and
peak memory per worker, measured side by side in one run on one full-size S2 scene.

- **scene**: one generated 10980 x 10980 S2 L2A product (12 bands at 10/20/60 m + SCL,
  DEFLATE GeoTIFFs tiled 1024 like Earth Search / Planetary Computer COGs, baseline 05.09
  so the +1000 offset is removed, a nodata wedge like a swath edge), cached in
  ``build/bench/scene``.
- **read floor**: every pixel of every file read and decoded once with rasterio, block by
  block, by as many processes as the ingest has workers.
- **encoding**: the array members the ingest wrote, zstd-encoded again by as many processes
  (read back first, untimed): what writing the output costs at the least, for scale.
- **ingest**: ``run_ingest`` end to end (cluster start, scan, plan, read, materialize,
  finalize, reports, cluster stop) on a LocalCluster of 2 and of 1 worker; ratio = ingest /
  read floor on 2 workers, speed-up = time(1 worker) / time(2 workers). Next to it: the
  time of the parallel stages alone (read + materialize) and the CPU seconds the workers
  and the client spent (``getrusage``), so what the stages cost per tile and what the
  one-off parts (cluster start, scan, plan, reports) cost can be told apart.
- **memory**: peak RSS of each worker process (psutil, sampled every 50 ms).
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
import psutil
import rasterio
from affine import Affine
from rasterio.windows import Window

from eoforge.shards.bench import write_results
from eoforge.shards.schema import S2_BANDS

SCENE_PX = 10980
PRODUCT = "S2B_MSIL2A_20230716T101028_N0509_R022_T32TNR_20230716T140425"
# T32TNR's upper-left corner (EPSG:32632): mid-zone, so every tile is read on the scene's own
# grid (an edge tile such as T32TQR lies half in zone 33 and is mostly warped).
ORIGIN = (499980.0, 5100000.0)


def _field(rng: np.random.Generator, shape: tuple[int, int], y0: int, size: int, base: float) -> np.ndarray:
    """Smooth terrain-like values + texture for rows [y0, y0+shape[0]) of a size x size band."""
    yy = (np.arange(y0, y0 + shape[0])[:, None] / size) * 2 * np.pi
    xx = (np.arange(shape[1])[None, :] / size) * 2 * np.pi
    smooth = np.sin(3 * xx + 1.3) * np.cos(5 * yy) + 0.5 * np.sin(11 * xx + 7 * yy)
    return base * (1.0 + 0.35 * smooth) + rng.normal(0, 0.04 * base, shape)


def make_scene(folder: Path, size_px: int = SCENE_PX) -> Path:
    """Write one full S2 L2A scene as per-band GeoTIFFs (BigEarthNet-style names); cached."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for band in [*(b for b in S2_BANDS if b.in_l2a), None]:
        name, gsd = (band.name, band.gsd_m) if band else ("SCL", 20)
        n = size_px * 10 // gsd
        label = name if name == "SCL" else f"B{name[1:].zfill(2)}" if name != "B8A" else "B8A"
        profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint8" if band is None else "uint16",
                       crs="EPSG:32632", transform=Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1]), nodata=0,
                       tiled=True, blockxsize=1024, blockysize=1024, compress="deflate", predictor=2, zlevel=1)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(folder / f"{PRODUCT}_{label}.tif", "w", **profile) as dst:
            for y0 in range(0, n, 1024):
                h = min(1024, n - y0)
                cols = np.arange(n)[None, :]
                wedge = cols < (0.25 * n - 0.2 * (np.arange(y0, y0 + h)[:, None]))  # swath edge
                if band is None:
                    data = np.where(_field(rng, (h, n), y0, n, 5) > 6.2, 8, 4).astype(np.uint8)
                else:
                    data = (_field(rng, (h, n), y0, n, 1500 + band.wavelength_nm) + 1000).clip(1, 60000).astype(np.uint16)
                data[wedge] = 0
                dst.write(data, 1, window=Window(0, y0, n, h))
    done.touch()
    return folder


def _read_file(path: str) -> int:
    """Decode every block of a file once (the read floor's unit of work); returns pixels read."""
    with rasterio.open(path) as src:
        total = 0
        for _, window in src.block_windows(1):
            total += src.read(1, window=window).size
        return total


def warm_page_cache(folder: Path) -> None:
    """Read every input file's bytes once, so the floor and the ingest runs that follow all
    decode from the page cache (a cached scene from an earlier run may be on disk only)."""
    for path in folder.glob("*.tif"):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    os.sync()  # dirty pages of earlier runs written back now, not during the timed runs


def read_floor(folder: Path, processes: int) -> dict[str, float]:
    files = sorted(str(p) for p in folder.glob("*.tif"))
    files.sort(key=lambda p: -os.path.getsize(p))  # big files first: balanced processes
    t0 = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        pixels = sum(pool.map(_read_file, files))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pixels": pixels, "mpixels_per_s": pixels / seconds / 1e6}


def _encode_members(url: str) -> float:
    """Seconds to encode the array members of one written shard as ingest does (zstd, level 1);
    decoding them back first is not timed."""
    from eoforge.shards.encoding import encode_array
    from eoforge.shards.reader import read_samples
    from eoforge.shards.schema import MEMBERS

    arrays = [sample[m] for sample in read_samples([url]) for m in MEMBERS if m in sample]
    t0 = time.perf_counter()
    for arr in arrays:
        encode_array(arr)
    return time.perf_counter() - t0


def encode_floor(ds: Path, processes: int) -> dict[str, float]:
    """Time ``processes`` processes need just to encode the members an ingest wrote (its
    output's share of the floor: every ingest writing these members pays at least this)."""
    from eoforge.shards.reader import shard_urls

    with ProcessPoolExecutor(processes) as pool:
        seconds = list(pool.map(_encode_members, shard_urls(ds)))
    return {"seconds": sum(seconds) / processes, "cpu_seconds": sum(seconds)}


class PeakRSS:
    """Peak resident memory per descendant process, sampled in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    cmd = " ".join(p.cmdline()[-3:])
                except psutil.Error:
                    continue
                if rss > self.peaks.get(p.pid, ("", 0))[1]:
                    self.peaks[p.pid] = (cmd, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def workers_mb(self) -> list[float]:
        """Peaks of the Dask worker processes (spawned by the nanny-less LocalCluster)."""
        return sorted((rss / 2**20 for cmd, rss in self.peaks.values() if "multiprocessing" in cmd or "spawn" in cmd),
                      reverse=True)


def ingest_once(scene: Path, out: Path, workers: int, **settings: Any) -> dict[str, Any]:
    from eoforge.ingest.config import IngestConfig
    from eoforge.ingest.pipeline import run_ingest

    shutil.rmtree(out, ignore_errors=True)
    config = IngestConfig(**settings)
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = run_ingest([str(scene)], out, config=config, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
    me_after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    tars = list((out / "shards").rglob("*.tar"))
    stages = result.report["timings_s"]
    return {"workers": workers, "seconds": seconds, "samples": result.samples, "shards": len(tars),
            "tiles_planned": result.report["stages"]["plan"]["tiles"],
            "bytes_written": sum(p.stat().st_size for p in tars), "stage_seconds": stages,
            "parallel_stage_seconds": stages["read"] + stages["materialize"],
            # the LocalCluster's worker processes are this process's children, reaped when it closes
            "worker_cpu_seconds": _cpu(children_after) - _cpu(children),
            "client_cpu_seconds": _cpu(me_after) - _cpu(me),
            "peak_rss_per_worker_mb": mem.workers_mb(), "errors": len(result.errors)}


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--scene-px", type=int, default=SCENE_PX, show_default=True, help="Scene size (10 m pixels).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs of the floor and of each ingest, interleaved; the fastest of each counts (shared machines are noisy).")
def main(out: Path, scene_px: int, repeats: int) -> None:
    """Measure ingest against the read floor and write the 'ingest' benchmark section."""
    t0 = time.perf_counter()
    scene = make_scene(out / f"scene-{scene_px}", scene_px)
    click.echo(f"scene {scene} ready ({time.perf_counter() - t0:.0f} s)")
    warm_page_cache(scene)
    floors, twos, ones = [], [], []
    for run in range(repeats):
        floors.append(read_floor(scene, 2))
        click.echo(f"run {run + 1}: read floor (2 processes): {floors[-1]['seconds']:.1f} s")
        twos.append(ingest_once(scene, out / "ds-2w", 2))
        click.echo(f"run {run + 1}: ingest, 2 workers: {twos[-1]['seconds']:.1f} s")
        if run == 0:
            encode = encode_floor(out / "ds-2w", 2)
            click.echo(f"encoding the written members alone (2 processes): {encode['seconds']:.1f} s")
        shutil.rmtree(out / "ds-2w", ignore_errors=True)
        ones.append(ingest_once(scene, out / "ds-1w", 1))
        click.echo(f"run {run + 1}: ingest, 1 worker: {ones[-1]['seconds']:.1f} s")
        shutil.rmtree(out / "ds-1w", ignore_errors=True)
    floor = min(floors, key=lambda r: r["seconds"])
    two = min(twos, key=lambda r: r["seconds"])
    one = min(ones, key=lambda r: r["seconds"])
    ratio = two["seconds"] / floor["seconds"]
    speedup = one["seconds"] / two["seconds"]
    peak = max(one["peak_rss_per_worker_mb"] + two["peak_rss_per_worker_mb"] or [float("nan")])
    input_mb = sum(p.stat().st_size for p in scene.glob("*.tif")) / 1e6
    tiles = two["tiles_planned"]
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "scene": {"px": scene_px, "files": len(list(scene.glob('*.tif'))), "mb": input_mb, "format": "GeoTIFF DEFLATE, 1024 blocks"},
        "read_floor_2proc": floor, "encode_floor_2proc": encode,
        "ratio_read_plus_encode_over_read_floor": (floor["seconds"] + encode["seconds"]) / floor["seconds"],
        "ingest_2_workers": two, "ingest_1_worker": one, "repeats": repeats,
        "all_runs_seconds": {"read_floor": [r["seconds"] for r in floors], "ingest_2_workers": [r["seconds"] for r in twos],
                             "ingest_1_worker": [r["seconds"] for r in ones]},
        "ratio_parallel_stages_over_floor": two["parallel_stage_seconds"] / floor["seconds"],
        "worker_cpu_ms_per_tile": 1000 * two["worker_cpu_seconds"] / tiles,
        "floor_cpu_ms_per_tile": 1000 * 2 * floor["seconds"] / tiles,
        "ratio_ingest_over_floor": ratio, "speedup_2_vs_1": speedup, "peak_rss_per_worker_mb": peak,
        "targets": {"ratio_ingest_over_floor": "<= 2.0", "speedup_2_vs_1": ">= 1.6", "peak_rss_per_worker_mb": "<= 1536"},
    }
    st2, st1 = two["stage_seconds"], one["stage_seconds"]
    md = [
        "## Ingest (`ingest/bench.py`)", "",
        f"One generated S2 L2A scene, {scene_px} x {scene_px} px at 10 m ({result['scene']['files']} GeoTIFFs, "
        f"{input_mb:.0f} MB), {tiles} tiles of 264 px planned, {two['samples']} samples written "
        f"({two['bytes_written'] / 1e9:.2f} GB, {two['shards']} shards).", "",
        "| measure | value | target |", "|---|---:|---:|",
        f"| read floor, 2 processes | {floor['seconds']:.1f} s ({floor['mpixels_per_s']:.0f} Mpx/s) | |",
        f"| encoding the written members alone (zstd 1), 2 processes | {encode['seconds']:.1f} s | |",
        f"| (read floor + encoding) / read floor: the ratio of an ingest that did nothing else | "
        f"{(floor['seconds'] + encode['seconds']) / floor['seconds']:.2f} | |",
        f"| ingest end to end, 2 workers | {two['seconds']:.1f} s | |",
        f"| ingest end to end, 1 worker | {one['seconds']:.1f} s | |",
        f"| **ingest / read floor** (2 workers) | **{ratio:.2f}** | <= 2.0 |",
        f"| **speed-up 2 vs 1 worker** | **{speedup:.2f}** | >= 1.6 |",
        f"| **peak RSS per worker** | **{peak:.0f} MB** | <= 1536 MB |",
        f"| parallel stages alone (read {st2['read']:.1f} s + materialize {st2['materialize']:.1f} s) / read floor | "
        f"{result['ratio_parallel_stages_over_floor']:.2f} | |",
        f"| worker CPU per planned tile, ingest (2 workers) vs read floor | "
        f"{result['worker_cpu_ms_per_tile']:.1f} vs {result['floor_cpu_ms_per_tile']:.1f} ms | |",
        f"| client CPU (scheduler, scan, plan, finalize, reports) | {two['client_cpu_seconds']:.1f} s | |", "",
        f"Fastest of {repeats} interleaved runs each (all runs, s: floor {result['all_runs_seconds']['read_floor']}, "
        f"2 workers {[round(s, 1) for s in result['all_runs_seconds']['ingest_2_workers']]}, 1 worker "
        f"{[round(s, 1) for s in result['all_runs_seconds']['ingest_1_worker']]}).", "",
        f"Stages, 2 workers (s): {st2}; 1 worker: {st1}. The rest of the end-to-end time is the "
        "LocalCluster's start and stop and the reports.", "",
    ]
    write_results(out, "ingest", result, "\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":  # pragma: no cover
    main()
