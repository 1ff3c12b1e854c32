"""The chipper a user would hand-write: the baseline ``ingest/bench.py`` times eoforge against.

**Not part of eoforge's pipeline.** It is what one would write in an afternoon instead of
running ``eoforge ingest`` on one S2 L2A product, kept deliberately plain so the bench can
say what eoforge's extras (dedup, QA, pairing, labels, statistics, geography-mixed shards,
manifest, resume, a Dask cluster) cost on top of "read the bands, cut tiles, write tars":

- N processes (``ProcessPoolExecutor``), forked like eoforge's workers from a forkserver
  that has imported this module (numpy, rasterio, zstandard) once, one GDAL thread each
  and the same GDAL block cache as the ingest (``gdal_cache_mb``; its ``GDAL_READ_ENV``);
- the scene's tiles, on the same grid as eoforge's (``tile_px`` x 10 m squares aligned to
  multiples of the tile edge in the scene's UTM zone, every tile the 10 m band overlaps),
  split into N contiguous bands of tile rows, one per process;
- each process opens every band file once and walks its tile rows north to south; per row
  it reads one window per band spanning the whole row of tiles, 20/60 m bands upsampled to
  10 m by rasterio's ``out_shape`` (bilinear; SCL nearest), edges past the raster left 0;
- each tile is one sample, key ``<tile id>`` (``32n_00189_01931``, eoforge's spelling), with
  ``s2.npy.zst`` (uint16 ``[13, T, T]``, raw DN, bands B1..B12 with B8A in S2 order; B10,
  absent from L2A, all 0, the same layout as eoforge's ``s2`` member) and ``scl.npy.zst``
  (uint8 ``[T, T]``): ``np.save`` then one zstd frame at level 1 (the ``zstandard`` package);
- samples go into webdataset tars written with :mod:`tarfile`, ``samples_per_shard`` each,
  ``OUT/chips-<process>-<shard>.tar`` (each process its own shards, tiles in raster order).

No dedup, QA, offset removal, labels, statistics, manifest or resume. One optional
filter a user adds to avoid storing swath-edge padding: ``min_valid_fraction`` skips tiles
with a smaller share of pixels that have data in every band (default 0: write every tile).

    python -m eoforge.ingest.chipper build/bench/scene-10980 build/bench/chips --processes 2
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import re
import resource
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np
import rasterio
import zstandard
from rasterio.enums import Resampling
from rasterio.windows import Window

#: The 13 S2 bands in S2 order: the stack's axis 0 (bands without a file stay 0: B10 of L2A).
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: ``..._B04.tif`` (COG per band) or ``..._B04_10m.jp2`` (SAFE): the band label in a file name.
_BAND_RE = re.compile(r"_(B\d\d|B8A|SCL)(?:_\d+m)?\.(?:tif|tiff|jp2)$", re.IGNORECASE)
#: GDAL settings of eoforge's reads (``ingest/read.py`` ``GDAL_READ_ENV``), so both read alike.
GDAL_ENV = {"GDAL_PAM_ENABLED": "NO", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_NUM_THREADS": "1"}
RESOLUTION_M = 10.0


def find_bands(scene: str | os.PathLike[str]) -> dict[str, str]:
    """Band label (``B01`` .. ``B12``, ``B8A``, ``SCL``) -> file, for every band file under ``scene``
    (a folder of per-band COGs or a ``.SAFE`` product); each label must occur once."""
    found: dict[str, str] = {}
    for path in sorted(Path(scene).rglob("*")):
        m = _BAND_RE.search(path.name)
        if m:
            label = m.group(1).upper()
            if label in found:
                raise ValueError(f"{scene}: two files for band {label}: {found[label]}, {path}")
            found[label] = str(path)
    if "B02" not in found:
        raise ValueError(f"{scene}: no B02 (10 m) band file found")
    return found


def tile_grid(path_10m: str, tile_px: int) -> dict[str, Any]:
    """The tiles a 10 m band overlaps on eoforge's grid: ``{"key_prefix", "cols", "rows"}``,
    columns west to east and rows north to south (grid indices: a tile's lower-left corner
    is ``(col, row) * tile_px * 10 m``), plus the band's transform and size."""
    with rasterio.open(path_10m) as src:
        epsg = src.crs.to_epsg() if src.crs else None
        t, width, height = src.transform, src.width, src.height
    if epsg is None or not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise ValueError(f"{path_10m}: not in a WGS 84 / UTM CRS (EPSG:{epsg})")
    tile_m = tile_px * RESOLUTION_M
    left, top = t.c, t.f
    right, bottom = left + width * t.a, top + height * t.e
    cols = list(range(math.floor(left / tile_m), math.ceil(right / tile_m)))
    rows = list(range(math.ceil(top / tile_m) - 1, math.floor(bottom / tile_m) - 1, -1))
    return {"key_prefix": f"{epsg % 100:02d}{'n' if epsg < 32700 else 's'}", "cols": cols, "rows": rows,
            "transform": tuple(t)[:6], "width": width, "height": height}


def _npy_zst(array: np.ndarray, compressor: zstandard.ZstdCompressor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return compressor.compress(buf.getvalue())


class _TarShards:
    """Webdataset tars of ``per_shard`` samples each, ``<prefix>-<n:04d>.tar``."""

    def __init__(self, out: Path, prefix: str, per_shard: int) -> None:
        self.out, self.prefix, self.per_shard = out, prefix, per_shard
        self.tar: tarfile.TarFile | None = None
        self.in_shard = self.shards = 0
        self.paths: list[Path] = []

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None or self.in_shard == self.per_shard:
            self.close()
            self.paths.append(self.out / f"{self.prefix}-{len(self.paths):04d}.tar")
            self.tar = tarfile.open(self.paths[-1], "w", format=tarfile.USTAR_FORMAT)
            self.in_shard = 0
        now = time.time()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime = len(data), now
            self.tar.addfile(info, io.BytesIO(data))
        self.in_shard += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def chip_rows(job: dict[str, Any]) -> dict[str, Any]:
    """One process's work: its tile rows, north to south (see the module docstring); returns
    ``{"part", "tiles", "samples", "shards", "bytes", "seconds", "peak_rss_mb"}`` and the
    seconds spent reading (``read_seconds``: decode + upsample), encoding (``encode_seconds``:
    ``np.save`` + zstd) and writing tars (``write_seconds``)."""
    t0 = time.perf_counter()
    tile_px, cols, grid = job["tile_px"], job["cols"], job["grid"]
    tile_m = tile_px * RESOLUTION_M
    left, top = grid["transform"][2], grid["transform"][5]
    width_px = len(cols) * tile_px
    x_first = round((cols[0] * tile_m - left) / RESOLUTION_M)  # 10 m column of the row window's first pixel
    cx0, cx1 = max(x_first, 0), min(x_first + width_px, grid["width"])
    stack = np.zeros((len(S2_BANDS), tile_px, width_px), dtype=np.uint16)
    scl = np.zeros((tile_px, width_px), dtype=np.uint8)
    compressor = zstandard.ZstdCompressor(level=job["zstd_level"])
    out = Path(job["out"])
    shards = _TarShards(out, f"chips-{job['part']:02d}", job["samples_per_shard"])
    tiles = samples = 0
    spent = {"read": 0.0, "encode": 0.0, "write": 0.0}  # seconds in reads, npy + zstd, tar writes
    with rasterio.Env(GDAL_CACHEMAX=job["gdal_cache_mb"] * (1 << 20), **GDAL_ENV):
        srcs = {label: rasterio.open(path) for label, path in job["files"].items()}
        present = [i for i, b in enumerate(S2_BANDS) if b in srcs]
        try:
            for row in job["rows"]:
                y_first = round((top - (row + 1) * tile_m) / RESOLUTION_M)
                cy0, cy1 = max(y_first, 0), min(y_first + tile_px, grid["height"])
                target = (slice(cy0 - y_first, cy1 - y_first), slice(cx0 - x_first, cx1 - x_first))
                for a in (stack, scl):  # where the window reaches past the scene: 0
                    a[..., :target[0].start, :] = a[..., target[0].stop:, :] = 0
                    a[..., :target[1].start] = a[..., target[1].stop:] = 0
                t = time.perf_counter()
                for i, label in enumerate(S2_BANDS):
                    if label in srcs:
                        stack[(i, *target)] = _read(srcs[label], cx0, cy0, cx1, cy1, Resampling.bilinear)
                if "SCL" in srcs:
                    scl[target] = _read(srcs["SCL"], cx0, cy0, cx1, cy1, Resampling.nearest)
                valid = np.all(stack[present] != 0, axis=0) if job["min_valid_fraction"] > 0 else None
                spent["read"] += time.perf_counter() - t
                for k, col in enumerate(cols):
                    tiles += 1
                    cut = slice(k * tile_px, (k + 1) * tile_px)
                    if valid is not None and valid[:, cut].mean() < job["min_valid_fraction"]:
                        continue
                    t = time.perf_counter()
                    members = {"s2.npy.zst": _npy_zst(stack[:, :, cut], compressor)}
                    if "SCL" in srcs:
                        members["scl.npy.zst"] = _npy_zst(scl[:, cut], compressor)
                    t1 = time.perf_counter()
                    shards.add(f"{grid['key_prefix']}_{col:05d}_{row:05d}", members)
                    spent["encode"] += t1 - t
                    spent["write"] += time.perf_counter() - t1
                    samples += 1
        finally:
            shards.close()
            for src in srcs.values():
                src.close()
    return {"part": job["part"], "tiles": tiles, "samples": samples, "shards": len(shards.paths),
            "bytes": sum(p.stat().st_size for p in shards.paths), "seconds": time.perf_counter() - t0,
            **{f"{k}_seconds": v for k, v in spent.items()},
            "peak_rss_mb": _peak_rss_mb()}


def _process_context() -> multiprocessing.context.BaseContext:
    """Forkserver processes with this module imported, as :mod:`.engine` starts eoforge's
    workers (where the platform has no forkserver: spawned). A forkserver already running
    in this process is reused as it is."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["eoforge.ingest.chipper"])
    return context


def _peak_rss_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` of its address space (``ru_maxrss``
    would also count the parent's, copied by the fork before the spawn's exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read(src: Any, cx0: int, cy0: int, cx1: int, cy1: int, resampling: Resampling) -> np.ndarray:
    """10 m pixels ``[cy0, cy1) x [cx0, cx1)`` of band ``src`` (any resolution; upsampled by
    GDAL through ``out_shape``)."""
    ratio = src.transform.a / RESOLUTION_M
    window = Window(cx0 / ratio, cy0 / ratio, (cx1 - cx0) / ratio, (cy1 - cy0) / ratio)
    if ratio == 1:
        return src.read(1, window=window)
    return src.read(1, window=window, out_shape=(cy1 - cy0, cx1 - cx0), resampling=resampling)


def chip_scene(scene: str | os.PathLike[str], out: str | os.PathLike[str], processes: int = 2, tile_px: int = 264,
               samples_per_shard: int = 64, gdal_cache_mb: int = 512, zstd_level: int = 1,
               min_valid_fraction: float = 0.0) -> dict[str, Any]:
    """Chip one S2 product folder into ``out`` with ``processes`` processes; returns
    ``{"seconds", "tiles", "samples", "shards", "bytes", "tile_ids", "processes": [per process]}``
    (``tile_ids``: every tile cut, in raster order)."""
    files = find_bands(scene)
    grid = tile_grid(files["B02"], tile_px)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = grid["rows"]
    processes = max(1, min(processes, len(rows)))
    jobs = [{"part": p, "rows": rows[p * len(rows) // processes:(p + 1) * len(rows) // processes],
             "cols": grid["cols"], "grid": grid, "files": files, "out": str(out), "tile_px": tile_px,
             "samples_per_shard": samples_per_shard, "gdal_cache_mb": gdal_cache_mb, "zstd_level": zstd_level,
             "min_valid_fraction": min_valid_fraction} for p in range(processes)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=_process_context()) as pool:
        parts = list(pool.map(chip_rows, jobs))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles": sum(p["tiles"] for p in parts), "samples": sum(p["samples"] for p in parts),
            "shards": sum(p["shards"] for p in parts), "bytes": sum(p["bytes"] for p in parts),
            "tile_ids": [f"{grid['key_prefix']}_{c:05d}_{r:05d}" for r in rows for c in grid["cols"]],
            "processes": parts}


@click.command()
@click.argument("scene", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--processes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--tile-px", type=click.IntRange(min=8), default=264, show_default=True)
@click.option("--min-valid-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Skip tiles with a smaller share of pixels that have data in every band.")
def main(scene: Path, out: Path, processes: int, tile_px: int, min_valid_fraction: float) -> None:
    """Chip one S2 L2A product (per-band COGs or a SAFE folder) into webdataset tars."""
    r = chip_scene(scene, out, processes=processes, tile_px=tile_px, min_valid_fraction=min_valid_fraction)
    click.echo(f"{r['samples']} of {r['tiles']} tiles in {r['shards']} shards ({r['bytes'] / 1e9:.2f} GB), "
               f"{r['seconds']:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
