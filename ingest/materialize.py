"""Stage 3b, materialize: one task writes one shard from the pieces its tiles need.

A shard's tiles come from all over the area (plan step 9); their pixels were read and
encoded by the read tasks (:mod:`.pieces`), each source once. Per tile and planned time step:

- the S2 piece decides the step: kept when its status is ``ok``, else dropped and counted
  (``steps_dropped_low_valid_fraction``, ``steps_dropped_cloudy``, ``steps_dropped_read_failed``);
- the S1 piece pairs it when ``ok`` (else the step stays S2-only: ``s1_dropped_low_valid_fraction``,
  ``s1_dropped_read_failed``; with ``keep_unpaired_s2: false`` the step is dropped instead,
  ``steps_dropped_unpaired``, so such a dataset holds paired steps only);
- the land-cover pieces give the labels: several rasters over one tile are mosaicked (the
  first in scan order wins where it has data; one taxonomy per tile, the first raster's);
  class fractions over valid label pixels, multi-hot at ``label_threshold``.

A tile without a kept step is dropped (``tiles_dropped_no_valid_step``). Members are
assembled from the pieces' frames without decoding them: a header for the kept T, then the
frames (:func:`~eoforge.shards.encoding.member_header`); a step without S1 in a sample that
has S1 gets a NaN entry (``s1valid`` False). S1 statistics of the train split are taken here
(S2's were taken by the read tasks). The tar and its manifest part are written ``.tmp`` +
rename; the task report and statistics, written last, mark the shard done.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pieces import (
    Piece, class_counts, complete_report, file_size, load_pieces, release_pieces, staging_paths,
)
from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.encoding import decode_entry_bytes, encode_entry, member_header
from eoforge.shards.keys import TileId
from eoforge.shards.meta import Labels, SampleMeta, TimeStep
from eoforge.shards.sample import EncodedSample, MemberInfo, array_member, meta_member
from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES, TAXONOMIES
from eoforge.shards.stats import DatasetStats
from eoforge.shards.writer import part_path, shard_path, write_shard

if TYPE_CHECKING:  # the records only; plan.py's and scan.py's imports are not a worker's business
    from eoforge.ingest.plan import PlanRow, ShardJob
    from eoforge.ingest.scene import Scene

TASK_REPORTS = "task-reports"


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What a shard task wrote: ``DS/task-reports/<split>/shard-<shard:06d>.json``.

    Attributes:
        split, shard: the shard.
        samples: samples written.
        counts: what happened to the planned tiles and steps (``samples_written``,
            ``steps_dropped_cloudy``, ...; see the module docstring).
        tar_bytes, part_bytes: the sizes of the shard tar and its manifest part (how a
            resumed run tells that both are complete).
        seconds: its run time.
    """

    split: str
    shard: int
    samples: int
    counts: Mapping[str, int] = field(default_factory=dict)
    tar_bytes: int = 0
    part_bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "shard": self.shard, "samples": self.samples, "counts": dict(self.counts),
                "tar_bytes": self.tar_bytes, "part_bytes": self.part_bytes, "seconds": self.seconds}

    @classmethod
    def from_json(cls, report: Mapping[str, Any]) -> ShardReport:
        return cls(report["split"], int(report["shard"]), int(report["samples"]), dict(report["counts"]),
                   int(report["tar_bytes"]), int(report["part_bytes"]), float(report["seconds"]))


def task_report_path(out: str | os.PathLike[str], split: str, shard: int) -> Path:
    return Path(out) / TASK_REPORTS / split / f"shard-{shard:06d}.json"


def task_stats_path(out: str | os.PathLike[str], split: str, shard: int) -> Path:
    """Sample count and S1 statistics of the shard's train samples (merged into ``stats.json``)."""
    return Path(out) / TASK_REPORTS / split / f"shard-{shard:06d}.stats.npz"


def piece_key(kind: str, scene: int, tile_id: str) -> str:
    """How a shard job names the piece of ``scene`` for ``tile_id``."""
    return f"{kind}:{scene}:{tile_id}"


def _shard_files(out: str | os.PathLike[str], split: str, shard: int) -> dict[str, Path]:
    """The files a shard task writes whose sizes its report records."""
    return {"tar_bytes": shard_path(out, split, shard), "part_bytes": part_path(out, split, shard)}


def finished_shard(out: str | os.PathLike[str], split: str, shard: int) -> ShardReport | None:
    """The task report of a finished shard, or None when it is to be (re)written: a shard is
    done when its statistics and task report exist (written, in that order, after the tar
    and its manifest part) and the tar and the part have the sizes the report recorded."""
    if not task_stats_path(out, split, shard).is_file():
        return None
    report = complete_report(task_report_path(out, split, shard), _shard_files(out, split, shard))
    return None if report is None else ShardReport.from_json(report)


class _Staging:
    """Frames of read tasks, read with one ``pread`` each (a memory map would page-fault
    every 4 KiB of a frame it touches once)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._fds: dict[str, int] = {}

    def frame(self, task: str, ref: tuple[int, int]) -> bytes:
        if task not in self._fds:
            self._fds[task] = os.open(staging_paths(self.out, task)[0], os.O_RDONLY)
        offset, length = ref
        data = os.pread(self._fds[task], length, offset)
        if len(data) != length:
            raise OSError(f"{staging_paths(self.out, task)[0]}: frame at {offset} cut short "
                          f"({len(data)} of {length} bytes)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ShardAssembler:
    """Builds the encoded samples of one shard job from pieces (see the module docstring)."""

    def __init__(self, job: ShardJob, pieces: dict[str, Piece], scenes: dict[int, Scene],
                 config: IngestConfig, staging: _Staging) -> None:
        self.job = job
        self.pieces = pieces
        self.scenes = scenes
        self.config = config
        self.staging = staging
        self.n = config.tile_size_px
        self.counts: Counter[str] = Counter()
        self.stats = DatasetStats(pixel_stride=config.stats_pixel_stride)
        codec = config.codec
        n = self.n
        # The entries of a time step without S1, in a sample that has S1 on another step.
        self._no_s1 = encode_entry(np.full((len(S1_BAND_NAMES), n, n), np.nan, config.s1_dtype), codec)
        self._no_s1valid = encode_entry(np.zeros((n, n), bool), codec)

    def _frame(self, piece: Piece, member: str) -> bytes:
        return self.staging.frame(piece.task, piece.frames[member])

    def _member(self, name: str, dtype: str, entry_shape: tuple[int, ...],
                frames: list[bytes]) -> tuple[MemberInfo, tuple[bytes, ...]]:
        """A member from its entries' frames: a header for their number, then the frames, as
        parts (hashed and written one after the other, never joined)."""
        shape = (len(frames), *entry_shape)
        header = member_header(np.dtype(dtype), shape, self.config.codec)
        return array_member(name, (header, *frames), dtype, shape, self.config.codec)

    def samples(self) -> Iterator[EncodedSample]:
        """The shard's samples in plan order, one at a time."""
        for rows in self.job.tiles:
            sample = self._sample(rows)
            if sample is not None:
                yield sample

    def _sample(self, rows: Sequence[PlanRow]) -> EncodedSample | None:
        cfg = self.config
        n = self.n
        tile_id = rows[0].tile_id
        tile = TileId.parse(tile_id)
        train = rows[0].split == "train"
        self.counts["tiles_planned"] += 1
        steps: list[TimeStep] = []
        s2_frames: list[bytes] = []
        scl_frames: list[bytes | None] = []
        s1_pieces: list[Piece | None] = []
        for r in rows:
            scene = self.scenes[r.s2_scene]
            s2 = self.pieces.get(piece_key("s2", r.s2_scene, tile_id))
            if s2 is None or s2.status != "ok":
                status = s2.status if s2 else "read_failed"
                self.counts[{"low_valid": "steps_dropped_low_valid_fraction", "cloudy": "steps_dropped_cloudy",
                             "read_failed": "steps_dropped_read_failed"}[status]] += 1
                continue
            step = TimeStep(
                datetime=str(scene.datetime), s2_product_id=scene.product_id, s2_level=str(scene.level),
                s2_processing_baseline=scene.baseline, s2_offset_removed=scene.dn_offset,
                s2_b10_zero="B10" not in scene.bands, s2_valid_fraction=float(s2.valid_fraction or 0.0),
                cloud_fraction=s2.cloud_fraction, relative_orbit=scene.relative_orbit,
            )
            s1 = None
            if r.s1_scene is not None:
                s1 = self.pieces.get(piece_key("s1", r.s1_scene, tile_id))
                if s1 is None:
                    self.counts["s1_dropped_read_failed"] += 1
                elif s1.status != "ok":
                    self.counts["s1_dropped_low_valid_fraction"] += 1
                    s1 = None
                else:
                    s1_scene = self.scenes[r.s1_scene]
                    step.s1_product_id = s1_scene.product_id
                    step.s1_datetime = s1_scene.datetime
                    step.s1_orbit_direction = s1_scene.orbit_direction
                    step.s1_valid_fraction = s1.valid_fraction
                    step.s1_source_unit = s1_scene.s1_unit
                    step.dt_days = round(float(r.dt_days or 0.0), 4)
            if s1 is None and not cfg.keep_unpaired_s2:
                self.counts["steps_dropped_unpaired"] += 1
                continue
            steps.append(step)
            s2_frames.append(self._frame(s2, "s2"))
            scl_frames.append(self._frame(s2, "scl") if "scl" in s2.frames else None)
            s1_pieces.append(s1)
        if not steps:
            self.counts["tiles_dropped_no_valid_step"] += 1
            return None
        members = [self._member("s2", "uint16", (len(S2_BAND_NAMES), n, n), s2_frames)]
        if any(s1_pieces):
            s1_frames = [self._frame(p, "s1") if p else self._no_s1 for p in s1_pieces]
            valid_frames = [self._frame(p, "s1valid") if p else self._no_s1valid for p in s1_pieces]
            members.append(self._member("s1", cfg.s1_dtype, (len(S1_BAND_NAMES), n, n), s1_frames))
            members.append(self._member("s1valid", "bool", (n, n), valid_frames))
            if train:
                for p, db, valid in zip(s1_pieces, s1_frames, valid_frames):
                    if p:
                        self.stats.add_s1(decode_entry_bytes(db, cfg.s1_dtype, (len(S1_BAND_NAMES), n, n), cfg.codec),
                                          decode_entry_bytes(valid, "bool", (n, n), cfg.codec))
        if all(f is not None for f in scl_frames):
            members.append(self._member("scl", "uint8", (n, n), scl_frames))  # type: ignore[arg-type]
        labels = None
        if rows[0].landcover_scenes:
            lc = self._landcover(tile_id, rows[0].landcover_scenes)
            if lc is None:
                self.counts["tiles_without_label_pixels"] += 1
            else:
                frame, labels = lc
                members.append(self._member("lc", "uint8", (n, n), [frame]))
        grid = cfg.grid
        meta = SampleMeta(
            key=tile_id, tile_id=tile_id, epsg=tile.epsg, transform=tuple(grid.transform(tile))[:6],
            width=n, height=n, split=rows[0].split, time_steps=steps, labels=labels, grid=grid.as_dict(),
        )
        members.append(meta_member(meta))
        if train:
            self.stats.num_samples += 1
        self.counts["samples_written"] += 1
        self.counts["time_steps_written"] += len(steps)
        self.counts["paired_steps_written"] += sum(s.s1_product_id is not None for s in steps)
        return EncodedSample(meta, members)

    def _landcover(self, tile_id: str, sources: Sequence[int]) -> tuple[bytes, Labels] | None:
        """The tile's class map frame and labels from its land-cover pieces; None when no
        raster has a label pixel there."""
        taxonomy = str(self.scenes[sources[0]].taxonomy)
        tax = TAXONOMIES[taxonomy]
        pieces = [p for i in sources if self.scenes[i].taxonomy == taxonomy
                  and (p := self.pieces.get(piece_key("lc", i, tile_id))) and p.status == "ok"]
        if not pieces:
            return None
        if len(pieces) == 1:
            frame, counts = self._frame(pieces[0], "lc"), np.asarray(pieces[0].counts)
        else:  # several rasters: the first fills the tile, the next ones its holes
            n, codec = self.n, self.config.codec
            mosaic = np.full((n, n), tax.nodata, dtype=np.uint8)
            for p in pieces:
                part = decode_entry_bytes(self._frame(p, "lc"), "uint8", (n, n), codec)
                hole = mosaic == tax.nodata
                mosaic[hole] = part[hole]
            frame, counts = encode_entry(mosaic, codec), class_counts(mosaic, tax.lookup(), tax.num_classes)
        total = int(counts.sum())
        if total == 0:
            return None
        fractions = counts / total
        labels = Labels(
            taxonomy=taxonomy, names=list(tax.names), fractions=[round(float(f), 6) for f in fractions],
            multi_hot=[int(f >= self.config.label_threshold and f > 0) for f in fractions],
            threshold=self.config.label_threshold,
            source=",".join(sorted({self.scenes[i].product_id for i in sources})),
        )
        return frame, labels


def staged_pieces(out: str, piece_tasks: dict[str, str]) -> dict[str, Piece]:
    """The pieces a shard needs (:func:`piece_key` -> read task), from the tasks' staged
    indexes, each read once for all its tiles; a key without a piece (the read met bad data
    before that tile) is left out."""
    by_task: dict[str, dict[str, str]] = {}
    for key, task in piece_tasks.items():
        by_task.setdefault(task, {})[key.rsplit(":", 1)[1]] = key
    pieces = {}
    for task, keys in by_task.items():
        for tile, piece in load_pieces(out, task, keys).items():
            pieces[keys[tile]] = piece
    return pieces


def materialize_shard(job: ShardJob, piece_tasks: dict[str, str], scenes: dict[int, Scene],
                      config: dict[str, Any], out: str) -> ShardReport:
    """Write one shard from the staged pieces of its tiles (``piece_tasks``: :func:`piece_key`
    -> the read task that staged it), skipped when already done; return its task report."""
    split, shard = job.split, job.shard
    if (done := finished_shard(out, split, shard)) is not None:
        return done
    pieces = staged_pieces(out, piece_tasks)
    report_path = task_report_path(out, split, shard)
    started = time.perf_counter()
    cfg = IngestConfig.from_dict(config)
    staging = _Staging(out)
    try:
        assembler = ShardAssembler(job, pieces, scenes, cfg, staging)
        # no fsync per shard: a resumed run redoes a shard whose tar or part lacks the recorded size
        rows = write_shard(out, split, shard, assembler.samples(), codec=cfg.codec, fsync=False)
    finally:
        staging.close()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    assembler.stats.save(task_stats_path(out, split, shard))
    sizes = {key: file_size(path) for key, path in _shard_files(out, split, shard).items()}
    report = ShardReport(split, shard, len(rows), dict(sorted(assembler.counts.items())), sizes["tar_bytes"],
                         sizes["part_bytes"], round(time.perf_counter() - started, 3))
    write_text_atomic(report_path, json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n")
    release_pieces(out, pieces.values())  # the shard is done: its frames are never read again
    return report
