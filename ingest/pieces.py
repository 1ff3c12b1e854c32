"""Stage 3a, read: every source scene read once, in raster order, into per-tile pieces.

A read task (:func:`~eoforge.ingest.plan.plan_reads`) is one source, an S2 or S1 product or
a land-cover raster, and the tiles it serves, north to south and west to east. It reads one
window per tile row (at most ``read_window_tiles`` tiles wide) and band; GDAL's block cache
keeps the source blocks the previous row touched, so every source block is decoded once, as
the read floor of ``make bench`` does. Each window is cut into tiles, and each (tile, source)
becomes a *piece*:

- ``s2``: the 13 bands at 10 m (:func:`read_s2`), harmonised (:func:`harmonise_s2`): 20/60 m
  bands upsampled bilinearly, SCL nearest, the +1000 DN offset of baseline >= 04.00 removed (``DN - 1000``,
  clipped at 1 so dark valid pixels stay valid; 0 stays nodata), a zero B10 for L2A, 0 in
  every band wherever one band lacks data. QA: ``valid_fraction`` (data in every band) and
  ``cloud_fraction`` (SCL ``cloud_classes`` among valid pixels); status ``ok``, or
  ``low_valid`` / ``cloudy`` under the thresholds (no pixels kept then).
- ``s1``: VV/VH bilinear, linear power converted to dB, NaN / 0 masked (``s1valid``); status
  ``ok`` or ``low_valid`` (under ``min_valid_fraction``).
- ``lc``: the class map (nearest) and its class counts; status ``ok`` or ``empty``.

A piece's pixels are stored as its member entries already encoded
(:func:`~eoforge.shards.encoding.encode_entry`, one frame each), so writing a shard later
only concatenates them (:mod:`.materialize`). Frames go to ``DS/staging/<task>.bin`` and the
piece index to ``DS/staging/<task>.pieces.arrow`` (:func:`load_pieces`); what outlives the
staging folder goes to ``DS/task-reports/read/<task>.json`` (errors, counts) and
``<task>.stats.npz`` (S2 statistics of the train tiles). Every file is written ``.tmp`` + rename, the index last: its presence,
with the frame file and the index at the sizes the report recorded, marks the task done for
a resumed run (nothing is fsynced; a machine crash may cut files short).

A task given several cores (:attr:`~eoforge.ingest.plan.ReadTask.threads`: a JPEG 2000 scene
with fewer scenes than workers) decodes with as many GDAL threads, has each tile row's
source blocks decoded in one request before its windows are read
(:class:`~eoforge.ingest.read.BlockPrefetch`), and cuts window k into pieces in a helper
thread while window k + 1 is read (:class:`_Cutter`); its frames, index and statistics are
byte for byte those of the same task in one thread.

Memory per task: one row window of every band (13 x 264 x 264 x 16 tiles x 2 B = 29 MB at the
defaults; two in a task with threads) and GDAL's block cache (``gdal_cache_mb``); neither
grows with the scene.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.errors import ErrorRow
from eoforge.ingest.read import GDAL_READ_ENV, BlockPrefetch, SourceCache, TargetGrid, read_band
from eoforge.shards.atomic import atomic_path, publish, write_text_atomic
from eoforge.shards.encoding import encode_entry
from eoforge.shards.keys import TileId
from eoforge.shards.schema import S2_BAND_NAMES, TAXONOMIES
from eoforge.shards.stats import DatasetStats

if TYPE_CHECKING:  # the records only; plan.py's and scan.py's imports are not a worker's business
    from eoforge.ingest.plan import ReadTask
    from eoforge.ingest.scene import Scene


STAGING = "staging"
#: The members a piece may have frames of.
FRAME_MEMBERS = ("s2", "scl", "s1", "s1valid", "lc")
#: A read task's piece index (``DS/staging/<task>.pieces.arrow``, an Arrow IPC file): one row
#: per tile it read, in read order; a member's frame is its ``<member>_offset`` and
#: ``<member>_length`` in the task's frame file (null when the piece has no such frame).
PIECE_INDEX_SCHEMA = pa.schema([
    ("tile", pa.string()), ("status", pa.string()), ("valid_fraction", pa.float64()),
    ("cloud_fraction", pa.float64()), ("counts", pa.list_(pa.int64())),
    *[(f"{m}_{part}", pa.int64()) for m in FRAME_MEMBERS for part in ("offset", "length")],
])
READ_REPORTS = Path("task-reports") / "read"


@dataclass(frozen=True, slots=True)
class Piece:
    """What a read task made of one (tile, source).

    Attributes:
        status: ``"ok"``; ``"low_valid"`` / ``"cloudy"`` (S2 and S1 under the QA thresholds)
            or ``"empty"`` (land cover without a class pixel): no frames then.
        valid_fraction: the tile's fraction of pixels with data in every band (S2, S1).
        cloud_fraction: S2 only: the fraction of valid pixels whose SCL class counts as cloud
            (None without SCL).
        frames: member (:data:`FRAME_MEMBERS`) -> (offset, length) of its encoded entry in the
            task's frame file.
        counts: land cover only: pixels per taxonomy class.
        task, tile: the read task that staged it and its tile (set when loaded for a shard).
    """

    status: str
    valid_fraction: float | None = None
    cloud_fraction: float | None = None
    frames: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    counts: tuple[int, ...] | None = None
    task: str = ""
    tile: str = ""

    def index_row(self, tile: str) -> dict[str, Any]:
        """The piece as its row of the piece index (:data:`PIECE_INDEX_SCHEMA`)."""
        row: dict[str, Any] = {"tile": tile, "status": self.status, "valid_fraction": self.valid_fraction,
                               "cloud_fraction": self.cloud_fraction,
                               "counts": None if self.counts is None else list(self.counts)}
        for member in FRAME_MEMBERS:
            offset, length = self.frames.get(member, (None, None))
            row[f"{member}_offset"], row[f"{member}_length"] = offset, length
        return row

    @classmethod
    def from_index_row(cls, row: Mapping[str, Any], task: str) -> Piece:
        counts = row["counts"]
        return cls(row["status"], row["valid_fraction"], row["cloud_fraction"],
                   {m: (row[f"{m}_offset"], row[f"{m}_length"]) for m in FRAME_MEMBERS
                    if row[f"{m}_offset"] is not None},
                   None if counts is None else tuple(counts), task, row["tile"])


@dataclass(frozen=True, slots=True)
class ReadReport:
    """What a read task did: ``DS/task-reports/read/<task>.json``.

    Attributes:
        task, kind, scene: the :class:`~eoforge.ingest.plan.ReadTask` it reports on.
        errors: the problems it met (a window it could not read, a band without data).
        counts: pieces per status.
        tiles: tiles it was asked for.
        seconds: its run time.
        frames_bytes, index_bytes: the sizes of its staged frame file and piece index (how a
            resumed run tells that both are complete).
        tiles_digest: :func:`tiles_digest` of the task's tiles (a resumed run whose task of
            the same name reads other tiles, since its scene was cut elsewhere, reads again).
        threads: the cores the task used (:attr:`~eoforge.ingest.plan.ReadTask.threads`).
        write_seconds: of ``seconds``, the time spent appending frames to the staged frame
            file: page-cache writes, the part of a read task that slows most when another
            worker of the same host writes too (``ingest/README.md``, the COG benchmark).
    """

    task: str
    kind: str
    scene: int
    errors: tuple[ErrorRow, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    tiles: int = 0
    seconds: float = 0.0
    frames_bytes: int = 0
    index_bytes: int = 0
    tiles_digest: str = ""
    threads: int = 1
    write_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "kind": self.kind, "scene": self.scene, "errors": [e.to_dict() for e in self.errors],
                "counts": dict(self.counts), "tiles": self.tiles, "seconds": self.seconds,
                "frames_bytes": self.frames_bytes, "index_bytes": self.index_bytes, "tiles_digest": self.tiles_digest,
                "threads": self.threads, "write_seconds": self.write_seconds}

    @classmethod
    def from_json(cls, report: Mapping[str, Any]) -> ReadReport:
        return cls(report["task"], report["kind"], int(report["scene"]),
                   tuple(ErrorRow.from_dict(e) for e in report["errors"]), dict(report["counts"]),
                   int(report["tiles"]), float(report["seconds"]), int(report["frames_bytes"]),
                   int(report["index_bytes"]), str(report.get("tiles_digest", "")), int(report.get("threads", 1)),
                   float(report.get("write_seconds", 0.0)))


def tiles_digest(tiles: Iterable[str]) -> str:
    """A short sha256 of tile ids in order: which tiles a read task read."""
    return hashlib.sha256("\n".join(tiles).encode()).hexdigest()[:16]


def staging_paths(out: str | os.PathLike[str], task: str) -> tuple[Path, Path]:
    """``DS/staging/<task>.bin`` (frames) and ``DS/staging/<task>.pieces.arrow`` (piece index)."""
    folder = Path(out) / STAGING
    return folder / f"{task}.bin", folder / f"{task}.pieces.arrow"


def read_report_paths(out: str | os.PathLike[str], task: str) -> tuple[Path, Path]:
    """``DS/task-reports/read/<task>.json`` (errors, counts) and ``<task>.stats.npz``."""
    folder = Path(out) / READ_REPORTS
    return folder / f"{task}.json", folder / f"{task}.stats.npz"


# ------------------------------------------------------------------ sources onto a window


@dataclass(frozen=True, slots=True)
class S2Window:
    """One S2 window as read, before it is cut into tiles.

    Attributes:
        dn: ``[13, H, W]`` uint16 DN as stored (0 = nodata; the offset of baseline >= 04.00
            still in), 20/60 m bands upsampled, absent bands (B10 of L2A) all 0.
        valid: ``[H, W]`` bool, True where every band has data; None where all pixels do
            (most windows lie inside the swath).
        scl: ``[H, W]`` uint8 SCL classes, 0 where not valid; None without an SCL band.
        present: the bands the product has, in :data:`S2_BAND_NAMES` order.
    """

    dn: np.ndarray
    valid: np.ndarray | None
    scl: np.ndarray | None
    present: tuple[bool, ...]


def read_s2(cache: SourceCache, scene: Scene, target: TargetGrid, filled: np.ndarray,
            stack: np.ndarray | None = None) -> S2Window:
    """The window ``target`` of an S2 product (:class:`S2Window`); adds pixels with data per
    band to ``filled`` (for the all-nodata-band check). ``stack``: a ``[13, H, W]`` uint16
    buffer to read into. Each tile is harmonised as it is cut (:func:`harmonise_s2`): only the
    tiles that pass QA pay for it, and it fuses with the copy a tile needs anyway."""
    if stack is None:
        stack = np.empty((len(S2_BAND_NAMES), target.height, target.width), dtype=np.uint16)
    valid = np.ones((target.height, target.width), dtype=bool)
    bands = scene.bands
    for i, name in enumerate(S2_BAND_NAMES):
        if name not in bands:
            stack[i] = 0  # B10 of L2A
            continue
        b = bands[name]
        band = read_band(cache, b.path, b.index, target, Resampling.bilinear, "uint16",
                         b.nodata if b.nodata is not None else 0, 0, out=stack[i])
        filled[i] += int(np.count_nonzero(band))
        np.logical_and(valid, band, out=valid)
    all_valid = bool(valid.all())
    scl = None
    if "SCL" in bands:
        b = bands["SCL"]
        scl = read_band(cache, b.path, b.index, target, Resampling.nearest, "uint8", 0, 0)
        if not all_valid:
            scl *= valid
    return S2Window(stack, None if all_valid else valid, scl, tuple(name in bands for name in S2_BAND_NAMES))


def harmonise_s2(dn: np.ndarray, offset: int, present: tuple[bool, ...], valid: np.ndarray | None,
                 out: np.ndarray) -> np.ndarray:
    """``out`` (``[13, h, w]`` uint16, C-contiguous) <- the harmonised DN of ``dn`` (the same
    shape, any row stride: a tile's columns of a window): ``max(DN - offset, 1)`` in the
    bands ``present`` (reflectance = DN / 10000 after it; dark valid pixels stay valid),
    0 in the others, and 0 in every band where ``valid`` (``[h, w]``) is False.

    OpenCV's saturating subtract and max, ~5x faster here than ``np.maximum`` with a scalar
    on uint16, which numpy does not vectorise (measured); they read the strided tile in
    place, so the copy into ``out`` comes with them. In a window one tile high the bands'
    rows are evenly spaced, and one call does all 13 bands (half the time of 13 calls)."""
    if offset:
        bands, height, width = dn.shape
        if dn.strides[0] == height * dn.strides[1]:  # a view, not a copy: rows evenly spaced
            pairs = [(dn.reshape(bands * height, width), out.reshape(bands * height, width))]
        else:
            pairs = list(zip(dn, out))
        # the binding takes a Python number as a cv2.Scalar; OpenCV 5's stubs list no such overload
        dn_offset: Any = offset
        for src, dst in pairs:
            cv2.subtract(src, dn_offset, dst=dst)
            cv2.max(dst, 1, dst=dst)
    else:
        np.copyto(out, dn)
    for b, has in enumerate(present):
        if not has:
            out[b] = 0
    if valid is not None:
        out *= valid
    return out


def read_s1(cache: SourceCache, scene: Scene, target: TargetGrid) -> np.ndarray:
    """``[2, H, W]`` float32 dB, NaN where VV or VH has no data (NaN, nodata or 0)."""
    out = np.empty((2, target.height, target.width), dtype=np.float32)
    for i, pol in enumerate(("VV", "VH")):
        b = scene.bands[pol]
        nodata = b.nodata if b.nodata is not None else 0.0
        v = read_band(cache, b.path, b.index, target, Resampling.bilinear, "float32", nodata, np.nan, out=out[i])
        v[v == 0] = np.nan  # 0 is nodata in linear power and in 0-filled dB exports
        if scene.s1_unit == "linear":
            with np.errstate(divide="ignore", invalid="ignore"):
                out[i] = np.where(v > 0, 10.0 * np.log10(v), np.nan)
    out[:, ~np.isfinite(out).all(axis=0)] = np.nan
    return out


def read_classes(cache: SourceCache, scene: Scene, target: TargetGrid) -> np.ndarray:
    """``[H, W]`` uint8 class codes (nearest), the taxonomy's nodata where the raster has none."""
    nodata = TAXONOMIES[str(scene.taxonomy)].nodata
    if nodata is None:  # the taxonomies ingest writes all have one; a tile's holes need it
        raise ValueError(f"taxonomy {scene.taxonomy!r} has no nodata value")
    b = scene.bands["class"]
    return read_band(cache, b.path, b.index, target, Resampling.nearest, "uint8",
                     b.nodata if b.nodata is not None else nodata, nodata)


# ------------------------------------------------------------------ the task


def row_windows(tiles: list[TileId], config: IngestConfig) -> Iterator[tuple[TargetGrid, list[tuple[TileId, slice]]]]:
    """Windows of one tile row each (adjacent tiles, at most ``read_window_tiles``), in the
    order of ``tiles`` (:func:`~eoforge.ingest.plan.read_order`), with each tile's columns.
    They depend on the task's tiles in each row only, never on how its scene was split or
    on its threads: warped sources' pixels depend in their last bits on the window (GDAL's
    approximate transformer), and a dataset's bytes must not depend on the workers."""
    n = config.tile_size_px
    run: list[TileId] = []

    def window() -> tuple[TargetGrid, list[tuple[TileId, slice]]]:
        c0 = run[0].col
        return tile_row_grid(run, config), [(t, slice((t.col - c0) * n, (t.col - c0 + 1) * n)) for t in run]

    for t in tiles:
        if run and ((t.epsg, t.row) != (run[-1].epsg, run[-1].row) or t.col != run[-1].col + 1
                    or len(run) == config.read_window_tiles):
            yield window()
            run = []
        run.append(t)
    if run:
        yield window()


def tile_row_grid(tiles: list[TileId], config: IngestConfig) -> TargetGrid:
    """The pixel grid of tiles of one zone and grid row, from the westmost to the eastmost."""
    n = config.tile_size_px
    tile_m = n * config.resolution_m
    c0, c1 = min(t.col for t in tiles), max(t.col for t in tiles)
    transform = Affine(config.resolution_m, 0.0, c0 * tile_m, 0.0, -config.resolution_m, (tiles[0].row + 1) * tile_m)
    return TargetGrid(tiles[0].epsg, transform, (c1 - c0 + 1) * n, n)


class _Frames:
    """The append-only frame file of one task (``.tmp`` until :meth:`commit`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self.offset = 0
        self.write_seconds = 0.0  # in write(): new page-cache pages, what two workers contend on

    def put(self, data: bytes) -> tuple[int, int]:
        """Append one frame; its (offset, length) in the file."""
        started = time.perf_counter()
        self._file.write(data)
        self.write_seconds += time.perf_counter() - started
        ref = (self.offset, len(data))
        self.offset += len(data)
        return ref

    def commit(self) -> None:
        self._file.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class _Cutter:
    """Cuts each window a task reads into its tiles' pieces (:meth:`_Pieces.piece`, frames
    appended in read order either way).

    With ``overlap`` (a task given more than one core, :attr:`ReadTask.threads`) a helper
    thread cuts window k while the task's thread reads window k + 1: GDAL and OpenCV release
    the GIL while they decode and resample, zstd while it encodes. One window at most is
    pending, so a source's two window buffers suffice."""

    def __init__(self, source: _Pieces, frames: _Frames, train: Mapping[str, bool], overlap: bool) -> None:
        self.source = source
        self.frames = frames
        self.train = train
        self.pieces: dict[str, Piece] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eoforge-cut") if overlap else None
        self._pending: Future[None] | None = None

    def _cut(self, data: Any, cut: list[tuple[TileId, slice]]) -> None:
        for tile, cols in cut:
            key = str(tile)
            self.pieces[key] = self.source.piece(data, cols, self.train[key], self.frames)

    def put(self, data: Any, cut: list[tuple[TileId, slice]]) -> None:
        """Cut the window ``data`` into the tiles ``cut`` (tile, its columns in the window)."""
        if self._pool is None:
            self._cut(data, cut)
            return
        self.wait()
        self._pending = self._pool.submit(self._cut, data, cut)

    def wait(self) -> None:
        """Until the pending window is cut; its error, if it raised, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Cutter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # before the frame file is committed or dropped
        if kind is None:
            self.wait()


class _Pieces(ABC):
    """What one kind of source makes of a window and of each tile in it."""

    def __init__(self, scene: Scene, config: IngestConfig, buffers: int = 1) -> None:
        self.scene = scene
        self.config = config
        self.buffers = buffers  # windows in flight: 2 when a helper thread cuts (:class:`_Cutter`)
        self.pixels = float(config.tile_size_px ** 2)
        self.stats = DatasetStats(pixel_stride=config.stats_pixel_stride)

    @abstractmethod
    def read(self, cache: SourceCache, target: TargetGrid) -> Any:
        """The source's pixels on the window ``target``."""

    def prefetch(self, cache: SourceCache, row: TargetGrid) -> None:
        """Have GDAL decode, with its threads, the source blocks of the tile row ``row``
        before its windows are read (:class:`~eoforge.ingest.read.BlockPrefetch`); by
        default nothing: only S2 scenes are read with threads (:func:`~.plan.split_read`)."""
        return None

    @abstractmethod
    def piece(self, data: Any, cols: slice, train: bool, frames: _Frames) -> Piece:
        """The piece of the tile at columns ``cols`` of the window (its frames put in ``frames``)."""

    def check(self) -> tuple[str, str] | None:
        """(file, reason) when the whole task's pieces are unusable, found only once all is
        read; else None."""
        return None


class _S2Pieces(_Pieces):
    def __init__(self, scene: Scene, config: IngestConfig, buffers: int = 1) -> None:
        super().__init__(scene, config, buffers)
        self.filled = np.zeros(len(S2_BAND_NAMES), dtype=np.int64)
        self.read_pixels = 0
        self.cloud_lut = np.zeros(256, np.uint8)  # SCL class -> 1 where it counts as cloud
        self.cloud_lut[list(config.cloud_classes)] = 1
        # Window buffers used in turn: with a helper thread cutting pieces (:class:`_Cutter`),
        # the next window is read into one while the other is still being cut.
        self._buffers = [np.empty(0, dtype=np.uint16) for _ in range(self.buffers)]
        self._prefetch = BlockPrefetch()

    def read(self, cache: SourceCache, target: TargetGrid) -> S2Window:
        self.read_pixels += target.width * target.height
        # One buffer for every window of the task: a fresh 70+ MB array per window would be
        # mapped and page-faulted anew each time (it is above glibc's mmap threshold).
        size = len(S2_BAND_NAMES) * target.height * target.width
        self._buffers.append(self._buffers.pop(0))
        if self._buffers[0].size < size:
            self._buffers[0] = np.empty(size, dtype=np.uint16)
        stack = self._buffers[0][:size].reshape(len(S2_BAND_NAMES), target.height, target.width)
        return read_s2(cache, self.scene, target, self.filled, stack)

    def prefetch(self, cache: SourceCache, row: TargetGrid) -> None:
        for band in self.scene.bands.values():
            self._prefetch.row(cache, band.path, band.index, row)

    def piece(self, data: S2Window, cols: slice, train: bool, frames: _Frames) -> Piece:
        cfg = self.config
        valid = None if data.valid is None else data.valid[:, cols]
        n_valid = int(self.pixels) if valid is None else int(np.count_nonzero(valid))
        cloud = None
        if data.scl is not None and n_valid:
            # OpenCV's table lookup: 0.03 ms a tile against numpy's fancy indexing's 0.14 (measured)
            cloudy: np.ndarray = cv2.LUT(data.scl[:, cols], self.cloud_lut)
            if valid is not None:
                cloudy &= valid
            cloud = round(cv2.countNonZero(cloudy) / n_valid, 6)
        fraction = round(n_valid / self.pixels, 6)
        if n_valid / self.pixels < cfg.min_valid_fraction:
            return Piece("low_valid", fraction, cloud)
        if cloud is not None and cloud > cfg.max_cloud_fraction:
            return Piece("cloudy", fraction, cloud)
        dn = data.dn[:, :, cols]
        s2 = harmonise_s2(dn, self.scene.dn_offset, data.present, valid, np.empty(dn.shape, dtype=np.uint16))
        refs = {"s2": frames.put(encode_entry(s2, cfg.codec))}
        if data.scl is not None:
            refs["scl"] = frames.put(encode_entry(data.scl[:, cols], cfg.codec))
        if train:
            self.stats.add_s2(s2)
        return Piece("ok", fraction, cloud, frames=refs)

    def check(self) -> tuple[str, str] | None:
        # A band without any data where the others are well covered is a broken product
        # (a band written as all zeros), not a swath edge.
        bands = [i for i, b in enumerate(S2_BAND_NAMES) if b in self.scene.bands]
        empty = [S2_BAND_NAMES[i] for i in bands if self.filled[i] == 0]
        if empty and len(empty) < len(bands) and self.filled.max() > 0.01 * self.read_pixels:
            return self.scene.bands[empty[0]].path, (
                f"no valid pixels: band(s) {', '.join(empty)} all nodata (0) where the other bands "
                "have data; product skipped")
        return None


class _S1Pieces(_Pieces):
    def read(self, cache: SourceCache, target: TargetGrid) -> np.ndarray:
        return read_s1(cache, self.scene, target)

    def piece(self, data: np.ndarray, cols: slice, train: bool, frames: _Frames) -> Piece:
        s1 = data[:, :, cols]
        ok = np.isfinite(s1[0])
        fraction = float(np.count_nonzero(ok)) / self.pixels
        if fraction < self.config.min_valid_fraction:
            return Piece("low_valid", round(fraction, 6))
        codec = self.config.codec
        return Piece("ok", round(fraction, 6), frames={
            "s1": frames.put(encode_entry(s1.astype(self.config.s1_dtype), codec)),
            "s1valid": frames.put(encode_entry(ok, codec))})


class _LandcoverPieces(_Pieces):
    def __init__(self, scene: Scene, config: IngestConfig, buffers: int = 1) -> None:
        super().__init__(scene, config, buffers)
        self.taxonomy = TAXONOMIES[str(scene.taxonomy)]
        self.lookup = self.taxonomy.lookup()

    def read(self, cache: SourceCache, target: TargetGrid) -> np.ndarray:
        return read_classes(cache, self.scene, target)

    def piece(self, data: np.ndarray, cols: slice, train: bool, frames: _Frames) -> Piece:
        classes = np.ascontiguousarray(data[:, cols])
        if not np.any(classes != self.taxonomy.nodata):
            return Piece("empty")
        return Piece("ok", frames={"lc": frames.put(encode_entry(classes, self.config.codec))},
                     counts=tuple(class_counts(classes, self.lookup, self.taxonomy.num_classes).tolist()))


def class_counts(classes: np.ndarray, lookup: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per taxonomy class (codes outside the taxonomy and nodata not counted)."""
    index = lookup[classes]
    return np.bincount(index[index >= 0], minlength=num_classes)


_KINDS: dict[str, type[_Pieces]] = {"s2": _S2Pieces, "s1": _S1Pieces, "lc": _LandcoverPieces}


def file_size(path: Path) -> int:
    """Bytes of ``path``; 0 when it does not exist."""
    return path.stat().st_size if path.is_file() else 0


def complete_report(report_path: Path, files: dict[str, Path]) -> dict[str, Any] | None:
    """A task's report (its JSON) when it parses and each of ``files`` has the size the report
    recorded under its key; else None: the task is to be (re)done. Nothing is fsynced, so a
    machine crash may leave any of these files short or empty."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    return report if all(report.get(key) == file_size(path) for key, path in files.items()) else None


def finished_read(out: str | os.PathLike[str], task: ReadTask, *, staged: bool = True) -> ReadReport | None:
    """The report of a finished read task, or None when there is none, it does not parse, or
    it read other tiles (the scene was cut elsewhere). With ``staged`` its pieces must be
    staged too: the frame file and the index (written last) at the sizes the report
    recorded. Some of its frames may have been released since (:func:`released_tiles`)."""
    frames_path, index_path = staging_paths(out, task.name)
    files = {"frames_bytes": frames_path, "index_bytes": index_path} if staged else {}
    report = complete_report(read_report_paths(out, task.name)[0], files)
    if report is None or report.get("tiles_digest") != tiles_digest(task.tiles):
        return None
    try:
        return ReadReport.from_json(report)
    except (KeyError, TypeError, ValueError):  # a report of another shape: read again
        return None


def released_marker(out: str | os.PathLike[str], task: str) -> Path:
    """``DS/staging/<task>.released``: the tiles whose frames are gone (their shard is written),
    one per line."""
    return Path(out) / STAGING / f"{task}.released"


def released_tiles(out: str | os.PathLike[str], task: str) -> set[str]:
    """Tiles of a read task whose staged frames :func:`release_pieces` freed."""
    try:
        return set(released_marker(out, task).read_text().split())
    except FileNotFoundError:
        return set()


#: ``fallocate`` modes (linux/falloc.h): free a byte range, keep the file's size.
_PUNCH_HOLE = 0x02 | 0x01


@lru_cache(maxsize=1)
def _fallocate() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn


def release_pieces(out: str | os.PathLike[str], pieces: Iterable[Piece]) -> int:
    """Free the staged frames of ``pieces`` (each with its ``task`` and ``tile``) once their shard is
    written; returns the bytes freed.

    Every staged frame belongs to one tile, so to one shard: once that shard is on disk the
    frames are never read again. Punching them out of the frame file (the file keeps its
    size) drops their page-cache pages at once, most still dirty, so they are never written
    back, and the shard writes that follow reuse warm pages: staging then adds less disk
    traffic. The tiles go into the task's ``.released`` list first (one ``O_APPEND`` write per
    shard): a rerun that needs one of them again (a shard deleted later) reads the source
    again, while the shards still pending keep using the task's other frames. Where
    ``fallocate`` cannot punch (not Linux, a file system without holes) nothing is freed
    before the wave ends."""
    fallocate = _fallocate()
    if fallocate is None:
        return 0
    spans: dict[str, list[tuple[int, int]]] = {}
    tiles: dict[str, list[str]] = {}
    for piece in pieces:
        refs = piece.frames.values()
        if refs:  # a tile's frames were appended one after the other
            start = min(off for off, _ in refs)
            spans.setdefault(piece.task, []).append((start, max(off + n for off, n in refs) - start))
            tiles.setdefault(piece.task, []).append(piece.tile)
    freed = 0
    for task, ranges in spans.items():
        fd = os.open(released_marker(out, task), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(f"{t}\n" for t in tiles[task]).encode())
        finally:
            os.close(fd)
        fd = os.open(staging_paths(out, task)[0], os.O_WRONLY)
        try:
            for offset, length in ranges:
                if fallocate(fd, _PUNCH_HOLE, offset, length) != 0:
                    return freed  # EOPNOTSUPP and the like: keep the frames, nothing lost
                freed += length
        finally:
            os.close(fd)
    return freed


def write_piece_index(path: Path, pieces: Mapping[str, Piece]) -> int:
    """Write a read task's piece index (tile id -> piece, in read order) to ``path`` as an
    Arrow IPC file; return its size in bytes."""
    table = pa.Table.from_pylist([p.index_row(tile) for tile, p in pieces.items()], schema=PIECE_INDEX_SCHEMA)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, PIECE_INDEX_SCHEMA) as writer:
        writer.write_table(table)
    return path.stat().st_size


def load_pieces(out: str | os.PathLike[str], task: str, tiles: Iterable[str]) -> dict[str, Piece]:
    """The pieces of ``tiles`` that a finished read task staged, tile id -> piece (a tile it has
    no piece for is left out).

    A shard task reads the indexes of the read tasks its tiles came from, and in an archive's
    wave those are many (each step of each tile its own S2, S1 and land-cover source), each
    with thousands of tiles: the index is memory-mapped and only the shard's rows are
    converted, so the cost of a lookup hardly grows with the size of the index."""
    with pa.memory_map(str(staging_paths(out, task)[1])) as source:
        table = pa.ipc.open_file(source).read_all()
        rows = table.filter(pc.is_in(table.column("tile"), value_set=pa.array(list(tiles), pa.string())))
        return {row["tile"]: Piece.from_index_row(row, task) for row in rows.to_pylist()}


def remove_staged(out: str | os.PathLike[str], task: str) -> None:
    """Delete a read task's staged frames and index (its report stays: its counts and, for
    S2, statistics are the dataset's)."""
    for path in (*staging_paths(out, task), released_marker(out, task)):
        path.unlink(missing_ok=True)


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"


def read_source(task: ReadTask, scene: Scene, config: dict[str, Any], out: str) -> ReadReport:
    """Run one read task (or load its report when done); return its report. The pieces are
    in the staged index (:func:`load_pieces`). See the module docstring."""
    name = task.name
    if not task.redo and (done := finished_read(out, task)) is not None:
        return done
    started = time.perf_counter()
    cfg = IngestConfig.from_dict(config)
    frames_path, index_path = staging_paths(out, name)
    report_path, stats_path = read_report_paths(out, name)
    source = _KINDS[task.kind](scene, cfg, buffers=2 if task.threads > 1 else 1)
    tiles = [TileId.parse(t) for t in task.tiles]
    train = dict(zip(task.tiles, task.train))
    errors: list[ErrorRow] = []
    frames = _Frames(frames_path)
    threads = max(cfg.gdal_threads, task.threads)
    try:
        with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * (1 << 20), GDAL_NUM_THREADS=str(threads),
                          **GDAL_READ_ENV), SourceCache(cfg.href_signer, threads=task.threads) as cache, \
                _Cutter(source, frames, train, overlap=task.threads > 1) as cutter:
            # a task with threads has each tile row's blocks decoded in one request first
            row_tiles: dict[tuple[int, int], list[TileId]] = defaultdict(list)
            for t in tiles if task.threads > 1 else ():
                row_tiles[(t.epsg, t.row)].append(t)
            for target, cut in row_windows(tiles, cfg):
                try:
                    if (row := row_tiles.pop((cut[0][0].epsg, cut[0][0].row), None)) is not None:
                        source.prefetch(cache, tile_row_grid(row, cfg))
                    data = source.read(cache, target)
                except RasterioError as err:
                    cause = f": {err.__cause__}" if err.__cause__ else ""
                    errors.append(ErrorRow(scene.paths[0], "materialize",
                                           f"read failed (truncated or corrupt file?): {err}{cause}", scene.product_id))
                    break  # the tiles after this window get no piece (counted when shards are written)
                cutter.put(data, cut)
                del data
        frames.commit()
    except BaseException:
        frames.abort()
        raise
    pieces = cutter.pieces
    broken = source.check()
    if broken:
        errors.append(ErrorRow(broken[0], "materialize", broken[1], scene.product_id))
        pieces = {}
        source.stats = DatasetStats(pixel_stride=cfg.stats_pixel_stride)
    with atomic_path(index_path) as index_tmp:  # renamed into place last, after the report
        report = ReadReport(name, task.kind, task.scene, tuple(errors),
                            dict(sorted(Counter(p.status for p in pieces.values()).items())), len(tiles),
                            round(time.perf_counter() - started, 3), frames.offset,
                            write_piece_index(index_tmp, pieces), tiles_digest(task.tiles), task.threads,
                            round(frames.write_seconds, 3))
        if task.kind == "s2":
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            source.stats.save(stats_path)
        write_text_atomic(report_path, _json_text(report.to_json()))
    released_marker(out, name).unlink(missing_ok=True)  # every frame is back (last: a crash before leaves it)
    return report
