"""Ingest benchmark (``make bench``): ingest time against the read floor, worker scaling and
peak memory per worker, measured side by side in one run on one full-size S2 scene.

- **scene**: one generated 10980 x 10980 S2 L2A product (12 bands at 10/20/60 m + SCL,
  baseline 05.09 so the +1000 offset is removed, a nodata wedge like a swath edge), cached
  under ``build/bench``, in the two layouts users ingest, the same pixels in both:
  ``cog``, DEFLATE GeoTIFFs tiled 1024 like Earth Search / Planetary Computer COGs, and
  ``safe``, a SAFE folder of lossless JPEG2000 bands as ESA's L2A products are. Decoding
  costs ~16x more in the second, so the two columns bracket what ingest adds to it.
- **read floor**: every pixel of every file read and decoded once with rasterio, block by
  block, by as many processes as the ingest has workers (one GDAL thread each, as the
  ingest's ``gdal_threads: 1``; the ingest may instead give one read task of a JPEG 2000
  scene both cores, which the results record as ``read_task_threads``).
- **encoding**: the array members the ingest wrote, zstd-encoded again by as many processes
  (read back first, untimed): what writing the output costs at the least, for scale.
- **ingest**: ``run_ingest`` end to end (cluster start, scan, plan, read, materialize,
  finalize, reports, cluster stop) on a LocalCluster of 2 and of 1 worker; ratio = ingest /
  read floor on 2 workers, speed-up = time(1 worker) / time(2 workers), each taken per
  repeat (the floor and both ingests run back to back) and the median reported. Next to it: the
  time of the parallel stages alone (read + materialize) and the CPU seconds the workers
  and the client spent (``getrusage``), so what the stages cost per tile and what the
  one-off parts (cluster start, scan, plan, reports) cost can be told apart.
- **chipper**: the chipper a user would hand-write (:mod:`eoforge.ingest.chipper`: N
  processes, each opens the band files once and walks its band of tile rows north to south,
  20/60 m upsampled by rasterio's ``out_shape``, zstd-1 ``.npy`` members in webdataset tars;
  no dedup, QA, labels, statistics, manifest or resume) on 2 and 1 processes, cutting the
  same tiles as the ingest plans (asserted); ratio = ingest / chipper per repeat (2 workers
  vs 2 processes), median; its speed-up 2 vs 1 and its peak RSS per process beside the ingest's.
- **where the ingest's time goes**: its stage times (``DS/report.json``: read, materialize;
  the rest is cluster start and stop, scan, plan and finalize), the busy seconds of its read
  and shard tasks (``DS/task-reports``), the bytes it wrote to staging (frames the read tasks
  encode) and then to shards (the same frames again, in geography-mixed tars), next to the
  chipper's seconds reading, encoding and writing.
- **memory**: peak RSS of each worker process (the kernel's high-water mark, read twice a second).

Worker processes of both the ingest and the chipper are forked from one forkserver that the
untimed warm-up runs start (:mod:`.engine`), so the timed runs carry neither the client's nor
the workers' imports; what a cold run costs on top is in ``ingest/README.md``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import threading
import time
from collections import Counter
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
from eoforge.shards.encoding import encoding_version
from eoforge.shards.schema import S2_BANDS, Band

SCENE_PX = 10980
#: the scene sizes the loader benchmark (eoforge.train.data.bench) reads: 2640 px and a full product
LOADER_SCENES_PX = (2640, 10980)
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


TILE = PRODUCT.split("_")[5]  # T32TNR
TIME = PRODUCT.split("_")[2]  # 20230716T101028
FORMATS = ("cog", "safe")


def _band_data(band: Band | None, n: int, rng: np.random.Generator, y0: int, h: int) -> np.ndarray:
    """Rows [y0, y0+h) of one band (``band`` None: SCL): a terrain-like field, +1000 DN
    (baseline >= 04.00), a nodata wedge like a swath edge."""
    cols = np.arange(n)[None, :]
    wedge = cols < (0.25 * n - 0.2 * (np.arange(y0, y0 + h)[:, None]))
    if band is None:
        data = np.where(_field(rng, (h, n), y0, n, 5) > 6.2, 8, 4).astype(np.uint8)
    else:
        data = (_field(rng, (h, n), y0, n, 1500 + band.wavelength_nm) + 1000).clip(1, 60000).astype(np.uint16)
    data[wedge] = 0
    return data


def scene_bands() -> list[tuple[Band | None, str, int]]:
    """(band or None for SCL, file label, GSD m) of an L2A product."""
    out = []
    for band in [*(b for b in S2_BANDS if b.in_l2a), None]:
        name, gsd = (band.name, band.gsd_m) if band else ("SCL", 20)
        out.append((band, name if name in ("SCL", "B8A") else f"B{name[1:].zfill(2)}", gsd))
    return out


def _write_band(args: tuple[Path, str, int, int, int]) -> None:
    """One band file: a DEFLATE GeoTIFF tiled 1024 (``cog``) or a lossless JPEG2000 tiled
    1024 with 6 resolution levels, as ESA's SAFE bands are (``safe``)."""
    folder, fmt, index, size_px, seed = args
    band, label, gsd = scene_bands()[index]
    rng = np.random.default_rng([seed, index])
    n = size_px * 10 // gsd
    profile: dict[str, Any] = dict(width=n, height=n, count=1, dtype="uint8" if band is None else "uint16",
                                   crs="EPSG:32632", transform=Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1]), nodata=0)
    if fmt == "cog":
        path = folder / f"{PRODUCT}_{label}.tif"
        profile.update(driver="GTiff", tiled=True, blockxsize=1024, blockysize=1024, compress="deflate",
                       predictor=2, zlevel=1)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **profile) as dst:
            for y0 in range(0, n, 1024):
                h = min(1024, n - y0)
                dst.write(_band_data(band, n, rng, y0, h), 1, window=Window(0, y0, n, h))
        return
    path = (folder / f"{PRODUCT}.SAFE" / "GRANULE" / f"L2A_{TILE}_A000000_{TIME}" / "IMG_DATA" / f"R{gsd}m"
            / f"{TILE}_{TIME}_{label}_{gsd}m.jp2")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.concatenate([_band_data(band, n, rng, y0, min(1024, n - y0)) for y0 in range(0, n, 1024)])
    # JPEG2000 is written in one go (GDAL's driver only copies a whole raster)
    profile.update(driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES", RESOLUTIONS=6, BLOCKXSIZE=1024, BLOCKYSIZE=1024)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def make_scene(folder: Path, size_px: int = SCENE_PX, fmt: str = "cog") -> Path:
    """Write one full S2 L2A scene (baseline 05.09, so the +1000 offset is removed); cached.

    ``cog``: per-band GeoTIFFs with BigEarthNet-style names, DEFLATE, tiled 1024 like Earth
    Search / Planetary Computer COGs. ``safe``: a SAFE folder as ESA delivers it
    (``MTD_MSIL2A.xml``, ``GRANULE/…/IMG_DATA/R10m|R20m|R60m/T32TNR_…_B02_10m.jp2``), each
    band lossless JPEG2000. Bands are written by 2 processes."""
    done = folder / ".complete"
    if done.exists():
        return folder
    if fmt not in FORMATS:
        raise ValueError(f"scene format must be one of {FORMATS}, not {fmt!r}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if fmt == "safe":
        safe = folder / f"{PRODUCT}.SAFE"
        safe.mkdir()
        (safe / "MTD_MSIL2A.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int'
            '/PSD/User_Product_Level-2A.xsd">\n<n1:General_Info><Product_Info>\n'
            f"<PRODUCT_START_TIME>{TIME[:4]}-{TIME[4:6]}-{TIME[6:8]}T{TIME[9:11]}:{TIME[11:13]}:{TIME[13:15]}.024Z"
            f"</PRODUCT_START_TIME>\n<PRODUCT_URI>{PRODUCT}.SAFE</PRODUCT_URI>\n"
            "<PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>\n</Product_Info>\n<Product_Image_Characteristics>\n"
            "<BOA_ADD_OFFSET_VALUES_LIST>\n"
            + "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>\n' for i in range(13))
            + "</BOA_ADD_OFFSET_VALUES_LIST>\n</Product_Image_Characteristics>\n</n1:General_Info>\n"
            "<n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>12.5</Cloud_Coverage_Assessment>"
            "</n1:Quality_Indicators_Info>\n</n1:Level-2A_User_Product>\n")
    jobs = [(folder, fmt, i, size_px, 0) for i in range(len(scene_bands()))]
    jobs.sort(key=lambda j: scene_bands()[j[2]][2])  # 10 m bands first: balanced processes
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_band, jobs))
    done.touch()
    return folder


def scene_files(folder: Path) -> list[Path]:
    """The band files of a scene made by :func:`make_scene`."""
    return sorted(p for p in folder.rglob("*") if p.suffix in (".tif", ".jp2"))


def _read_file(path: str) -> int:
    """Decode every block of a file once (the read floor's unit of work); returns pixels read."""
    with rasterio.Env(GDAL_NUM_THREADS="1"), rasterio.open(path) as src:
        total = 0
        for _, window in src.block_windows(1):
            total += src.read(1, window=window).size
        return total


def warm_page_cache(folder: Path) -> None:
    """Read every input file's bytes once, so the floor and the ingest runs that follow all
    decode from the page cache (a cached scene from an earlier run may be on disk only)."""
    for path in scene_files(folder):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    os.sync()  # dirty pages of earlier runs written back now, not during the timed runs


def read_floor(folder: Path, processes: int) -> dict[str, float]:
    files = [str(p) for p in scene_files(folder)]
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
    """Peak resident memory per descendant process: the kernel's high-water mark (``VmHWM``
    in ``/proc/<pid>/status``), read every ``interval_s`` in a thread. The kernel keeps the
    peak, so a slow poll misses nothing but processes that start and end between two polls;
    a fast one would cost the measured run CPU (listing the process table)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                try:
                    cmd = self.peaks[p.pid][0] if p.pid in self.peaks else _role(p, me.pid)
                    with open(f"/proc/{p.pid}/status") as f:
                        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
                except (psutil.Error, OSError, StopIteration):
                    continue
                if hwm > self.peaks.get(p.pid, ("", 0))[1]:
                    self.peaks[p.pid] = (cmd, hwm)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def workers_mb(self) -> list[float]:
        """Peaks of the Dask worker processes (forked from the forkserver, or spawned)."""
        return sorted((rss / 2**20 for role, rss in self.peaks.values() if role == "worker"), reverse=True)

    def forkserver_mb(self) -> float:
        """Peak of the forkserver the workers are forked from (0 if none was seen): pages of
        the modules it preloaded, shared copy-on-write with every worker and counted in their
        peaks too."""
        return max((rss / 2**20 for role, rss in self.peaks.values() if role == "forkserver"), default=0.0)


def _role(process: psutil.Process, parent_pid: int) -> str:
    """``"forkserver"``, ``"worker"`` (forked from it, or spawned) or ``"other"`` (the resource
    tracker, anything else); forked workers keep the forkserver's command line."""
    cmd = " ".join(process.cmdline())
    if "multiprocessing" not in cmd or "resource_tracker" in cmd:
        return "other"
    return "forkserver" if "forkserver" in cmd and process.ppid() == parent_pid else "worker"


def ingest_once(scene: Path, out: Path, workers: int, **settings: Any) -> dict[str, Any]:
    from eoforge.ingest.config import IngestConfig
    from eoforge.ingest.pipeline import run_ingest

    shutil.rmtree(out, ignore_errors=True)
    config = IngestConfig(**settings)
    me, children = resource.getrusage(resource.RUSAGE_SELF), _children_cpu()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = run_ingest([str(scene)], out, config=config, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
    me_after, children_after = resource.getrusage(resource.RUSAGE_SELF), _children_cpu()
    tars = list((out / "shards").rglob("*.tar"))
    stages = result.report["timings_s"]
    reads = [json.loads(p.read_text()) for p in (out / "task-reports" / "read").glob("*.json")]
    shard_reports = [json.loads(p.read_text()) for p in (out / "task-reports").glob("*/shard-*.json")]
    return {"workers": workers, "seconds": seconds, "samples": result.samples, "shards": len(tars),
            "tiles_planned": result.report["stages"]["plan"]["tiles"],
            "bytes_written": sum(p.stat().st_size for p in tars), "stage_seconds": stages,
            "parallel_stage_seconds": stages["read"] + stages["materialize"],
            "fixed_seconds": seconds - stages["read"] - stages["materialize"],
            # what the read tasks wrote to DS/staging (frames + piece index), then the shard tasks to tars
            "staging_bytes": sum(r.get("frames_bytes", 0) + r.get("index_bytes", 0) for r in reads),
            "read_task_seconds": sum(r.get("seconds", 0.0) for r in reads),
            "staging_write_seconds": sum(r.get("write_seconds", 0.0) for r in reads),
            "read_task_threads": sorted(int(r.get("threads", 1)) for r in reads),
            "shard_task_seconds": sum(r.get("seconds", 0.0) for r in shard_reports),
            # the LocalCluster's worker processes, reaped when it closes
            "worker_cpu_seconds": children_after - children,
            "client_cpu_seconds": _cpu(me_after) - _cpu(me),
            "peak_rss_per_worker_mb": mem.workers_mb(), "forkserver_rss_mb": mem.forkserver_mb(),
            "errors": len(result.errors)}


def _task_layout(run: dict[str, Any]) -> str:
    """``"2 x 1"``: how an ingest's read tasks were laid out (tasks x threads each)."""
    threads = run.get("read_task_threads")
    if not threads:
        return "n/a"
    return ", ".join(f"{n} x {t}" for t, n in sorted(Counter(threads).items()))


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    """CPU seconds of the finished processes this one started: those it reaped itself
    (spawned) and those its forkserver reaped (forked from it, as the workers are)."""
    total = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
    for child in psutil.Process().children():
        try:
            if _role(child, os.getpid()) == "forkserver":
                times = child.cpu_times()
                total += times.children_user + times.children_system
        except psutil.Error:  # it ended meanwhile: its own children's time is in RUSAGE_CHILDREN now
            continue
    return total


def chipper_once(scene: Path, out: Path, processes: int, **settings: Any) -> dict[str, Any]:
    """The hand-written chipper (:func:`eoforge.ingest.chipper.chip_scene`) end to end, pool
    start and stop included; ``settings`` as the ingest's (tile size, shard size, GDAL cache)."""
    from eoforge.ingest.chipper import chip_scene

    shutil.rmtree(out, ignore_errors=True)
    children = _children_cpu()
    t0 = time.perf_counter()
    result = chip_scene(scene, out, processes=processes, **settings)
    seconds = time.perf_counter() - t0
    children_after = _children_cpu()  # the pool's processes, reaped at its shutdown
    parts = result["processes"]
    return {"processes": processes, "seconds": seconds, "tiles": result["tiles"], "samples": result["samples"],
            "shards": result["shards"], "bytes_written": result["bytes"], "tile_ids": result["tile_ids"],
            **{f"{k}_seconds": sum(p[f"{k}_seconds"] for p in parts) for k in ("read", "encode", "write")},
            "process_seconds": [round(p["seconds"], 2) for p in parts],
            "worker_cpu_seconds": children_after - children,
            "peak_rss_per_process_mb": sorted((p["peak_rss_mb"] for p in parts), reverse=True)}


def planned_tiles(ds: Path) -> list[str]:
    """The tile ids an ingest planned (``DS/plan.parquet``)."""
    import pyarrow.parquet as pq

    return sorted(set(pq.read_table(ds / "plan.parquet", columns=["tile_id"]).column("tile_id").to_pylist()))


FORMAT_NAMES = {"cog": "DEFLATE GeoTIFFs, 1024 blocks (Earth Search / Planetary Computer COG layout)",
                "safe": "SAFE, lossless JPEG2000 in 1024 tiles (as ESA delivers L2A)"}


def scene_folder(out: Path, scene_px: int, fmt: str) -> Path:
    """Where the benchmarks cache a generated scene (``scene-<px>`` for COGs, which the loader
    benchmark shares; ``scene-safe-<px>``)."""
    return out / (f"scene-{scene_px}" if fmt == "cog" else f"scene-{fmt}-{scene_px}")


def _settle(*folders: Path) -> None:
    """Delete a run's output and write back what is still dirty (untimed), so the next timed
    run neither inherits the writeback of this one nor the discards of its deletion."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    os.sync()


def measure(scene: Path, out: Path, repeats: int, fmt: str, chipper_min_valid_fraction: float = 0.0) -> dict[str, Any]:
    """Floor, encoding, ingest (2 workers, 1 worker) and the hand-written chipper (2
    processes, 1 process) on one scene, ``repeats`` interleaved runs each; the fastest of
    each counts, ratios are medians of per-repeat ratios."""
    from eoforge.ingest.config import IngestConfig

    cfg = IngestConfig()
    chip_settings = {"tile_px": cfg.tile_size_px, "samples_per_shard": cfg.samples_per_shard,
                     "gdal_cache_mb": cfg.gdal_cache_mb, "min_valid_fraction": chipper_min_valid_fraction}
    warm_page_cache(scene)
    floors: list[dict[str, float]] = []
    twos: list[dict[str, Any]] = []
    ones: list[dict[str, Any]] = []
    chip2s: list[dict[str, Any]] = []
    chip1s: list[dict[str, Any]] = []

    def chip(processes: int, runs: list[dict[str, Any]], label: str) -> None:
        result = chipper_once(scene, out / "chips", processes, **chip_settings)
        tile_ids = sorted(result.pop("tile_ids"))
        # a fair comparison: the chipper cuts exactly the tiles the ingest planned (and read)
        if tile_ids != planned:
            raise AssertionError(f"{fmt}: the chipper cut {len(tile_ids)} tiles, the ingest planned {len(planned)} "
                                 f"({len(set(tile_ids) ^ set(planned))} differ)")
        runs.append(result)
        click.echo(f"{fmt} {label}: chipper, {processes} process(es): {result['seconds']:.1f} s")
        _settle(out / "chips")

    # One untimed run of each first. The bench process imports dask.distributed, the report's
    # matplotlib and the like once, on its first ingest (~0.5 s of client time, measured), and
    # starts the forkserver that the ingest's workers and the chipper's processes are forked
    # from (~1 s of CPU importing their modules): a per-scene figure should not carry either,
    # any more than an archive ingest pays them per scene.
    warm_up = ingest_once(scene, out / "ds-2w", 2)
    click.echo(f"{fmt} warm-up: ingest, 2 workers: {warm_up['seconds']:.1f} s (not counted)")
    planned = planned_tiles(out / "ds-2w")
    encode = encode_floor(out / "ds-2w", 2)
    click.echo(f"{fmt}: encoding the written members alone (2 processes): {encode['seconds']:.1f} s")
    _settle(out / "ds-2w")
    chip_warm_up: list[dict[str, Any]] = []
    chip(2, chip_warm_up, "warm-up")

    for run in range(repeats):
        floors.append(read_floor(scene, 2))
        click.echo(f"{fmt} run {run + 1}: read floor (2 processes): {floors[-1]['seconds']:.1f} s")
        twos.append(ingest_once(scene, out / "ds-2w", 2))
        click.echo(f"{fmt} run {run + 1}: ingest, 2 workers: {twos[-1]['seconds']:.1f} s")
        _settle(out / "ds-2w")
        chip(2, chip2s, f"run {run + 1}")
        ones.append(ingest_once(scene, out / "ds-1w", 1))
        click.echo(f"{fmt} run {run + 1}: ingest, 1 worker: {ones[-1]['seconds']:.1f} s")
        _settle(out / "ds-1w")
        chip(1, chip1s, f"run {run + 1}")
    floor = min(floors, key=lambda r: r["seconds"])
    two = min(twos, key=lambda r: r["seconds"])
    one = min(ones, key=lambda r: r["seconds"])
    chip2 = min(chip2s, key=lambda r: r["seconds"])
    chip1 = min(chip1s, key=lambda r: r["seconds"])
    files = scene_files(scene)
    tiles = two["tiles_planned"]
    return {
        "scene": {"format": fmt, "layout": FORMAT_NAMES[fmt], "files": len(files),
                  "mb": sum(p.stat().st_size for p in files) / 1e6},
        "read_floor_2proc": floor, "encode_floor_2proc": encode,
        "ratio_read_plus_encode_over_read_floor": (floor["seconds"] + encode["seconds"]) / floor["seconds"],
        "ingest_2_workers": two, "ingest_1_worker": one, "repeats": repeats,
        "chipper_2_processes": chip2, "chipper_1_process": chip1, "chipper_settings": chip_settings,
        "warm_up_seconds": {"ingest_2_workers": round(warm_up["seconds"], 1),
                            "chipper_2_processes": round(chip_warm_up[0]["seconds"], 1)},
        "all_runs_seconds": {"read_floor": [round(r["seconds"], 2) for r in floors],
                             "ingest_2_workers": [round(r["seconds"], 1) for r in twos],
                             "ingest_1_worker": [round(r["seconds"], 1) for r in ones],
                             "chipper_2_processes": [round(r["seconds"], 1) for r in chip2s],
                             "chipper_1_process": [round(r["seconds"], 1) for r in chip1s]},
        "ratio_parallel_stages_over_floor": two["parallel_stage_seconds"] / floor["seconds"],
        "worker_cpu_ms_per_tile": 1000 * two["worker_cpu_seconds"] / tiles,
        "floor_cpu_ms_per_tile": 1000 * 2 * floor["seconds"] / tiles,
        "chipper_cpu_ms_per_tile": 1000 * chip2["worker_cpu_seconds"] / tiles,
        # Ratios per repeat (its floor, 2-worker and 1-worker runs back to back), median over
        # repeats: a burst on the shared host then moves one ratio, not the pair of minima.
        "ratio_ingest_over_floor_per_repeat": [t["seconds"] / f["seconds"] for f, t in zip(floors, twos)],
        "speedup_2_vs_1_per_repeat": [o["seconds"] / t["seconds"] for t, o in zip(twos, ones)],
        "ratio_ingest_over_floor": statistics.median(t["seconds"] / f["seconds"] for f, t in zip(floors, twos)),
        "speedup_2_vs_1": statistics.median(o["seconds"] / t["seconds"] for t, o in zip(twos, ones)),
        "peak_rss_per_worker_mb": max(one["peak_rss_per_worker_mb"] + two["peak_rss_per_worker_mb"] or [float("nan")]),
        "forkserver_rss_mb": max(r["forkserver_rss_mb"] for r in twos + ones),
        "ratio_ingest_over_chipper_per_repeat": [t["seconds"] / c["seconds"] for t, c in zip(twos, chip2s)],
        "ratio_ingest_over_chipper": statistics.median(t["seconds"] / c["seconds"] for t, c in zip(twos, chip2s)),
        "ratio_ingest_over_chipper_1_per_repeat": [o["seconds"] / c["seconds"] for o, c in zip(ones, chip1s)],
        "ratio_ingest_over_chipper_1": statistics.median(o["seconds"] / c["seconds"] for o, c in zip(ones, chip1s)),
        "ratio_chipper_over_floor": statistics.median(c["seconds"] / f["seconds"] for f, c in zip(floors, chip2s)),
        "chipper_speedup_2_vs_1_per_repeat": [o["seconds"] / t["seconds"] for t, o in zip(chip2s, chip1s)],
        "chipper_speedup_2_vs_1": statistics.median(o["seconds"] / t["seconds"] for t, o in zip(chip2s, chip1s)),
        "chipper_peak_rss_per_process_mb": max(chip1["peak_rss_per_process_mb"] + chip2["peak_rss_per_process_mb"]),
    }


def _spread(values: list[float]) -> str:
    return f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""


TARGETS = {"ratio_ingest_over_floor": "<= 2.0", "speedup_2_vs_1": ">= 1.6", "peak_rss_per_worker_mb": "<= 1536",
           "ratio_ingest_over_chipper": {"cog": "<= 0.9", "safe": "<= 1.0"}}


def markdown(results: dict[str, dict[str, Any]], scene_px: int) -> str:
    """The benchmark section: one column per scene format."""
    fmts = list(results)
    first = results[fmts[0]]
    two0 = first["ingest_2_workers"]

    def row(label: str, cell: Any, target: str = "") -> str:
        return f"| {label} | " + " | ".join(cell(results[f]) for f in fmts) + f" | {target} |"

    md = [
        "## Ingest (`ingest/bench.py`)", "",
        f"One generated S2 L2A scene, {scene_px} x {scene_px} px at 10 m, in each layout below "
        f"(the same pixels); {two0['tiles_planned']} tiles of 264 px planned, {two0['samples']} samples written "
        f"({two0['bytes_written'] / 1e9:.2f} GB, {two0['shards']} shards).", "",
        "| measure | " + " | ".join(f"`{f}`: {results[f]['scene']['files']} files, {results[f]['scene']['mb']:.0f} MB"
                                    for f in fmts) + " | target |",
        "|---|" + "---:|" * len(fmts) + "---:|",
        row("read floor, 2 processes", lambda r: f"{r['read_floor_2proc']['seconds']:.1f} s "
            f"({r['read_floor_2proc']['mpixels_per_s']:.0f} Mpx/s)"),
        row("encoding the written members alone (zstd 1), 2 processes", lambda r: f"{r['encode_floor_2proc']['seconds']:.1f} s"),
        row("(read floor + encoding) / read floor: an ingest that did nothing else",
            lambda r: f"{r['ratio_read_plus_encode_over_read_floor']:.2f}"),
        row("ingest end to end, 2 workers", lambda r: f"{r['ingest_2_workers']['seconds']:.1f} s"),
        row("ingest end to end, 1 worker", lambda r: f"{r['ingest_1_worker']['seconds']:.1f} s"),
        row("**ingest / read floor** (2 workers; median over repeats)", lambda r: f"**{r['ratio_ingest_over_floor']:.2f}**"
            + _spread(r["ratio_ingest_over_floor_per_repeat"]), "<= 2.0"),
        row("**speed-up 2 vs 1 worker** (median over repeats)", lambda r: f"**{r['speedup_2_vs_1']:.2f}**"
            + _spread(r["speedup_2_vs_1_per_repeat"]), ">= 1.6"),
        row("**peak RSS per worker**", lambda r: f"**{r['peak_rss_per_worker_mb']:.0f} MB**", "<= 1536 MB"),
        row("peak RSS of the forkserver the workers are forked from (its pages shared with them)",
            lambda r: f"{r.get('forkserver_rss_mb', 0.0):.0f} MB"),
        row("parallel stages alone (read + materialize) / read floor", lambda r: (
            f"({r['ingest_2_workers']['stage_seconds']['read']:.1f} + {r['ingest_2_workers']['stage_seconds']['materialize']:.1f} s)"
            f" {r['ratio_parallel_stages_over_floor']:.2f}")),
        row("worker CPU per planned tile, ingest (2 workers) vs read floor",
            lambda r: f"{r['worker_cpu_ms_per_tile']:.1f} vs {r['floor_cpu_ms_per_tile']:.1f} ms"),
        row("client CPU (scheduler, scan, plan, finalize, reports)",
            lambda r: f"{r['ingest_2_workers']['client_cpu_seconds']:.1f} s"),
        row("chipper (hand-written baseline) end to end, 2 processes", lambda r: f"{r['chipper_2_processes']['seconds']:.1f} s"),
        row("chipper end to end, 1 process", lambda r: f"{r['chipper_1_process']['seconds']:.1f} s"),
        row("**ingest / chipper** (2 workers vs 2 processes; median over repeats)",
            lambda r: f"**{r['ratio_ingest_over_chipper']:.2f}**" + _spread(r["ratio_ingest_over_chipper_per_repeat"]),
            "<= 0.9 `cog`, <= 1.0 `safe`"),
        row("ingest / chipper, 1 worker vs 1 process (median)",
            lambda r: f"{r['ratio_ingest_over_chipper_1']:.2f}" + _spread(r["ratio_ingest_over_chipper_1_per_repeat"])),
        row("chipper / read floor (2 processes; median)", lambda r: f"{r['ratio_chipper_over_floor']:.2f}"),
        row("speed-up 2 vs 1 process, chipper (median)", lambda r: f"{r['chipper_speedup_2_vs_1']:.2f}"
            + _spread(r["chipper_speedup_2_vs_1_per_repeat"])),
        row("peak RSS per process, chipper", lambda r: f"{r['chipper_peak_rss_per_process_mb']:.0f} MB"),
        row("samples written (bytes): ingest vs chipper", lambda r: (
            f"{r['ingest_2_workers']['samples']} ({r['ingest_2_workers']['bytes_written'] / 1e9:.2f} GB) vs "
            f"{r['chipper_2_processes']['samples']} ({r['chipper_2_processes']['bytes_written'] / 1e9:.2f} GB)")),
        row("read tasks, 2 workers / 1 worker: tasks x GDAL threads each",
            lambda r: f"{_task_layout(r['ingest_2_workers'])} / {_task_layout(r['ingest_1_worker'])}"),
        row("ingest, 2 workers: fixed (cluster, scan, plan, finalize, reports) + read + materialize", lambda r: (
            f"{r['ingest_2_workers']['fixed_seconds']:.1f} + {r['ingest_2_workers']['stage_seconds']['read']:.1f} + "
            f"{r['ingest_2_workers']['stage_seconds']['materialize']:.1f} s")),
        row("ingest, bytes written: staging + shards", lambda r: (
            f"{r['ingest_2_workers']['staging_bytes'] / 1e9:.2f} + {r['ingest_2_workers']['bytes_written'] / 1e9:.2f} GB")),
        row("busy seconds, 2 workers: ingest read tasks + shard tasks vs chipper read + encode + write", lambda r: (
            f"{r['ingest_2_workers']['read_task_seconds']:.1f} + {r['ingest_2_workers']['shard_task_seconds']:.1f} vs "
            f"{r['chipper_2_processes']['read_seconds']:.1f} + {r['chipper_2_processes']['encode_seconds']:.1f} + "
            f"{r['chipper_2_processes']['write_seconds']:.1f}")),
        row("page-cache writes, busy s: ingest's staging (2 workers / 1) vs chipper's shards (2 processes / 1)", lambda r: (
            f"{r['ingest_2_workers']['staging_write_seconds']:.1f} / {r['ingest_1_worker']['staging_write_seconds']:.1f} vs "
            f"{r['chipper_2_processes']['write_seconds']:.1f} / {r['chipper_1_process']['write_seconds']:.1f}")),
        row("worker CPU per planned tile, ingest vs chipper (2 each)",
            lambda r: f"{r['worker_cpu_ms_per_tile']:.1f} vs {r['chipper_cpu_ms_per_tile']:.1f} ms"), "",
    ]
    for f in fmts:
        r = results[f]
        md += [f"`{f}` ({r['scene']['layout']}): times are the fastest of {r['repeats']} interleaved run(s) each, after one untimed "
               f"warm-up run of the ingest and the chipper ({r['warm_up_seconds']} s); all runs (s): "
               f"{r['all_runs_seconds']}. Stages, 2 workers (s): {r['ingest_2_workers']['stage_seconds']}; "
               f"1 worker: {r['ingest_1_worker']['stage_seconds']}.", ""]
    md += ["The rest of the end-to-end time is the LocalCluster's start and stop and the reports. The workers "
           "of both the ingest and the chipper are forked from one forkserver, started by the warm-up runs with "
           "their modules imported. "
           "The floor and the chipper decode with one GDAL thread per process, and so does the ingest "
           "(`gdal_threads: 1`) except in a read task the plan gives several cores: one scene on 2 workers is "
           "read as two single-threaded parts, or, where decoding dominates (JPEG 2000), as one task with 2 "
           "threads, which decodes no block row twice (row `read tasks`).", "",
           "The chipper (`ingest/chipper.py`) is the baseline a user would hand-write: each process opens the band "
           "files once and walks its contiguous band of tile rows north to south, one window per band and tile row "
           "(20/60 m upsampled by rasterio's `out_shape`, bilinear), and writes every tile it cuts"
           + (f" with at least {first['chipper_settings']['min_valid_fraction']:g} of its pixels valid"
              if first["chipper_settings"]["min_valid_fraction"] else "")
           + " as `s2.npy.zst` + `scl.npy.zst` (zstd 1) into tars of 64 samples: no dedup, QA, labels, statistics, "
           "manifest or resume. It cuts exactly the tiles the ingest plans (asserted); the ingest drops the tiles "
           "under its `min_valid_fraction` before writing. Output is deleted and `sync`ed between timed runs.", ""]
    return "\n".join(md)


# ------------------------------------------------- datasets for the loader benchmark


def scene_dataset(out: str | os.PathLike[str], scene_px: int = 2640, samples_per_shard: int = 8) -> tuple[Path, Path]:
    """A generated S2 L2A scene (per-band DEFLATE GeoTIFFs at 10/20/60 m, as products are
    distributed; :func:`make_scene`) and the dataset ``eoforge ingest`` makes
    of it (264 px tiles, one time step, all in ``train``). Both cached under ``out``."""
    from eoforge.ingest.config import IngestConfig
    from eoforge.ingest.pipeline import run_ingest

    scene = make_scene(Path(out) / f"scene-{scene_px}", scene_px)
    ds = Path(out) / f"loader-scene-ds-{scene_px}"
    done = ds / ".complete"
    settings = f"{samples_per_shard} {encoding_version()}"
    if not (done.exists() and done.read_text() == settings):
        shutil.rmtree(ds, ignore_errors=True)
        config = IngestConfig(samples_per_shard=samples_per_shard, val_fraction=0.0)
        run_ingest([str(scene)], ds, config=config, workers=2, progress=False)
        done.write_text(settings)
    return scene, ds


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--scene-px", type=int, default=SCENE_PX, show_default=True, help="Scene size (10 m pixels).")
@click.option("--formats", default="cog,safe", show_default=True,
              help="Scene layouts to measure, comma-separated: cog (DEFLATE GeoTIFFs), safe (JPEG2000 SAFE).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved runs of the floor and of each ingest on the cog scene; ratios are the median "
                   "over runs, times the fastest (shared machines are noisy).")
@click.option("--repeats-safe", type=click.IntRange(min=1), default=2, show_default=True,
              help="The same for the safe scene (JPEG2000 decoding dominates it, and one run takes minutes).")
@click.option("--loader-datasets", is_flag=True,
              help="Only make the scenes and their datasets the loader benchmark reads (eoforge.train.data.bench), "
                   "then exit.")
@click.option("--chipper-min-valid-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="The chipper skips tiles with a smaller share of valid pixels (0: it writes every tile it cuts).")
def main(out: Path, scene_px: int, formats: str, repeats: int, repeats_safe: int, loader_datasets: bool,
         chipper_min_valid_fraction: float) -> None:
    """Measure ingest against the read floor and write the 'ingest' benchmark section."""
    if loader_datasets:
        for px, per_shard in zip(LOADER_SCENES_PX, (8, 64)):
            scene, ds = scene_dataset(out, px, samples_per_shard=per_shard)
            click.echo(f"loader benchmark input: {scene} -> {ds}")
        return
    results: dict[str, dict[str, Any]] = {}
    for fmt in [f.strip() for f in formats.split(",") if f.strip()]:
        if fmt not in FORMATS:
            raise click.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--formats")
        t0 = time.perf_counter()
        scene = make_scene(scene_folder(out, scene_px, fmt), scene_px, fmt)
        click.echo(f"scene {scene} ready ({time.perf_counter() - t0:.0f} s)")
        results[fmt] = measure(scene, out, repeats if fmt == "cog" else repeats_safe, fmt, chipper_min_valid_fraction)
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "scene_px": scene_px, "targets": TARGETS, "formats": results}
    md = markdown(results, scene_px)
    write_results(out, "ingest", result, md)
    click.echo(md)


if __name__ == "__main__":  # pragma: no cover
    main()
