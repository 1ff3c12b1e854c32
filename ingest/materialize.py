"""Stage 3, materialize: one task writes one shard from its plan rows.

Per read cluster (a square of neighbouring tiles, all in this shard) and per source
scene, every band is read once over the tiles that use the scene (:mod:`.read`), then
cut into tiles. Per tile and time step:

- S2: 20/60 m bands upsampled to 10 m (bilinear), SCL nearest; the +1000 DN offset of
  baseline >= 04.00 removed (``DN - 1000``, clipped at 1 so dark valid pixels stay valid;
  0 stays nodata); L2A gets a zero B10. QA: ``s2_valid_fraction`` (data in every band) and
  ``cloud_fraction`` (SCL classes ``cloud_classes`` among valid pixels).
- S1: VV/VH bilinear onto the tile, linear power converted to dB, NaN / 0 masked
  (``s1valid``); an S1 under ``min_valid_fraction`` is dropped from the step.
- Labels: the land-cover rasters read with nearest resampling and mosaicked; class
  fractions over valid label pixels and a multi-hot at ``label_threshold``.

Steps under the QA thresholds are dropped, tiles without steps are dropped, and the rest
is streamed into ``write_shard`` (``.tmp`` + rename). The task's report (counts, errors)
is written last, so its presence marks the shard done for a resumed run.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.read import GDAL_READ_ENV, SourceCache, TargetGrid, read_band
from eoforge.shards.keys import TileId
from eoforge.shards.meta import Labels, SampleMeta, TimeStep
from eoforge.shards.sample import Sample
from eoforge.shards.schema import S2_BAND_NAMES, TAXONOMIES
from eoforge.shards.stats import DatasetStats
from eoforge.shards.writer import write_shard

TASK_REPORTS = "task-reports"


def task_report_path(out: str | os.PathLike[str], split: str, shard: int) -> Path:
    return Path(out) / TASK_REPORTS / split / f"shard-{shard:06d}.json"


def task_stats_path(out: str | os.PathLike[str], split: str, shard: int) -> Path:
    """Per-band statistics of the shard's samples (merged into ``stats.json`` by finalize)."""
    return Path(out) / TASK_REPORTS / split / f"shard-{shard:06d}.stats.npz"


def _box(tiles: list[TileId], grid_tile_px: int, resolution_m: float) -> tuple[TargetGrid, int, int]:
    """The pixel grid spanning ``tiles`` (one zone) and the (col, row) of its top-left tile."""
    c0, c1 = min(t.col for t in tiles), max(t.col for t in tiles)
    r0, r1 = min(t.row for t in tiles), max(t.row for t in tiles)
    tile_m = grid_tile_px * resolution_m
    transform = Affine(resolution_m, 0.0, c0 * tile_m, 0.0, -resolution_m, (r1 + 1) * tile_m)
    grid = TargetGrid(tiles[0].epsg, transform, (c1 - c0 + 1) * grid_tile_px, (r1 - r0 + 1) * grid_tile_px)
    return grid, c0, r1


def _tile_slice(tile: TileId, c0: int, r_top: int, n: int) -> tuple[slice, slice]:
    y = (r_top - tile.row) * n
    x = (tile.col - c0) * n
    return slice(y, y + n), slice(x, x + n)


class ShardBuilder:
    """Builds the samples of one shard job, cluster by cluster (see the module docstring)."""

    def __init__(self, job: dict[str, Any], scenes: dict[int, dict[str, Any]], config: IngestConfig) -> None:
        self.job = job
        self.scenes = scenes
        self.config = config
        self.n = config.tile_size_px
        self.counts: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self._failed: set[int] = set()
        self.stats = DatasetStats()
        self.cloud_lut = np.zeros(256, bool)  # SCL class -> counts as cloud
        self.cloud_lut[list(config.cloud_classes)] = True

    # ------------------------------------------------------------------ reading

    def _read_error(self, scene: dict[str, Any], err: Exception | None, path: str | None = None,
                    reason: str | None = None) -> None:
        """Record one error row per scene (later windows of a failed scene are skipped)."""
        if scene["scene"] in self._failed:
            return
        self._failed.add(scene["scene"])
        if reason is None:
            cause = err.__cause__ if err is not None else None
            reason = f"read failed (truncated or corrupt file?): {err}" + (f": {cause}" if cause else "")
        self.errors.append({"path": path or scene["paths"][0], "stage": "materialize", "reason": reason,
                            "product_id": scene["product_id"]})

    def _read_s2(self, cache: SourceCache, scene: dict[str, Any], target: TargetGrid) -> tuple[np.ndarray, np.ndarray | None]:
        """``[13, H, W]`` uint16 harmonised DN (0 = nodata) and SCL ``[H, W]`` or None."""
        stack = np.zeros((len(S2_BAND_NAMES), target.height, target.width), dtype=np.uint16)
        valid = np.ones((target.height, target.width), dtype=bool)
        bands = scene["bands"]
        offset = int(scene.get("dn_offset") or 0)
        filled: dict[int, int] = {}  # band -> pixels with data
        for i, name in enumerate(S2_BAND_NAMES):
            if name not in bands:
                continue  # B10 of L2A
            b = bands[name]
            band = stack[i]
            band[...] = read_band(cache, b["path"], b["index"], target, Resampling.bilinear, "uint16",
                                  b["nodata"] if b["nodata"] is not None else 0, 0)
            nonzero = band != 0
            filled[i] = int(np.count_nonzero(nonzero))
            valid &= nonzero
            if offset:
                # reflectance = (DN - offset) / 10000; max(DN - offset, 1) keeps dark valid pixels valid.
                np.maximum(band, offset + 1, out=band)
                band -= offset
        # A band without any data where the others are well covered is a broken product
        # (a band written as all zeros), not a swath edge.
        has_data = [i for i, n in filled.items() if n > 0]
        if has_data and len(has_data) < len(filled) and max(filled.values()) > 0.01 * valid.size:
            empty = [n for i, n in enumerate(S2_BAND_NAMES) if n in bands and i not in has_data]
            self._read_error(scene, None, bands[empty[0]]["path"],
                             f"no valid pixels: band(s) {', '.join(empty)} all nodata (0) where the other bands "
                             "have data; product skipped")
            stack[:] = 0
            return stack, None
        stack *= valid  # 0 (nodata) wherever any band lacks data
        scl = None
        if "SCL" in bands:
            b = bands["SCL"]
            scl = read_band(cache, b["path"], b["index"], target, Resampling.nearest, "uint8", 0, 0)
            scl[~valid] = 0
        return stack, scl

    def _read_s1(self, cache: SourceCache, scene: dict[str, Any], target: TargetGrid) -> np.ndarray:
        """``[2, H, W]`` float32 dB, NaN where VV or VH has no data."""
        out = np.empty((2, target.height, target.width), dtype=np.float32)
        for i, pol in enumerate(("VV", "VH")):
            b = scene["bands"][pol]
            nodata = b["nodata"] if b["nodata"] is not None else 0.0
            v = read_band(cache, b["path"], b["index"], target, Resampling.bilinear, "float32", nodata, np.nan)
            v[v == 0] = np.nan  # 0 is nodata in linear power and in 0-filled dB exports
            if scene.get("s1_unit") == "linear":
                with np.errstate(divide="ignore", invalid="ignore"):
                    v = np.where(v > 0, 10.0 * np.log10(v), np.nan).astype(np.float32)
            out[i] = v
        out[:, ~np.isfinite(out).all(axis=0)] = np.nan
        return out

    def _read_landcover(self, cache: SourceCache, ids: list[int], target: TargetGrid) -> tuple[np.ndarray, str] | None:
        taxonomy = self.scenes[ids[0]]["taxonomy"]
        nodata = TAXONOMIES[taxonomy].nodata
        mosaic = np.full((target.height, target.width), nodata, dtype=np.uint8)
        for i in ids:
            scene = self.scenes[i]
            if scene["taxonomy"] != taxonomy:
                continue  # one taxonomy per dataset; the first raster of a tile decides
            b = scene["bands"]["class"]
            try:
                part = read_band(cache, b["path"], b["index"], target, Resampling.nearest, "uint8",
                                 b["nodata"] if b["nodata"] is not None else nodata, nodata)
            except RasterioError as err:
                self._read_error(scene, err)
                continue
            hole = mosaic == nodata
            mosaic[hole] = part[hole]
        return mosaic, taxonomy

    # ------------------------------------------------------------------ samples

    def samples(self) -> Iterator[Sample]:
        clusters: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
        order: list[str] = []
        for tile_rows in self.job["tiles"]:
            c = tile_rows[0]["cluster"]
            if c not in clusters:
                order.append(c)
            clusters[c].append(tile_rows)
        with rasterio.Env(GDAL_CACHEMAX=self.config.gdal_cache_mb * (1 << 20), **GDAL_READ_ENV), SourceCache() as cache:
            for c in order:
                yield from self._cluster(cache, clusters[c])

    def _cluster(self, cache: SourceCache, tiles: list[list[dict[str, Any]]]) -> Iterator[Sample]:
        n = self.n
        ids = [TileId.parse(rows[0]["tile_id"]) for rows in tiles]
        T = [len(rows) for rows in tiles]
        s2 = [np.zeros((t, len(S2_BAND_NAMES), n, n), np.uint16) for t in T]
        scl = [np.zeros((t, n, n), np.uint8) for t in T]
        s1 = [np.full((t, 2, n, n), np.nan, np.float32) for t in T]
        has_scl = [[False] * t for t in T]
        # Every S2 / S1 scene once, over the tiles that use it.
        for kind in ("s2", "s1"):
            users: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for k, rows in enumerate(tiles):
                for step, r in enumerate(rows):
                    if r[f"{kind}_scene"] is not None:
                        users[int(r[f"{kind}_scene"])].append((k, step))
            for sid in sorted(users):
                scene = self.scenes[sid]
                if sid in self._failed:
                    continue
                target, c0, r_top = _box([ids[k] for k, _ in users[sid]], n, self.config.resolution_m)
                try:
                    data = self._read_s2(cache, scene, target) if kind == "s2" else self._read_s1(cache, scene, target)
                except RasterioError as err:
                    self._read_error(scene, err)
                    continue
                for k, step in users[sid]:
                    ys, xs = _tile_slice(ids[k], c0, r_top, n)
                    if kind == "s2":
                        stack, scl_arr = data
                        s2[k][step] = stack[:, ys, xs]
                        if scl_arr is not None:
                            scl[k][step] = scl_arr[ys, xs]
                            has_scl[k][step] = True
                    else:
                        s1[k][step] = data[:, ys, xs]
                del data
        # Land cover over the whole cluster.
        lc_ids = sorted({i for rows in tiles for i in rows[0]["landcover_scenes"]})
        lc = None
        if lc_ids:
            target, c0, r_top = _box(ids, n, self.config.resolution_m)
            lc = self._read_landcover(cache, lc_ids, target)
        for k, rows in enumerate(tiles):
            sample = self._sample(ids[k], rows, s2[k], scl[k], has_scl[k], s1[k],
                                  None if lc is None else (lc[0][_tile_slice(ids[k], c0, r_top, n)], lc[1]))
            if sample is not None:
                yield sample

    def _sample(self, tile: TileId, rows: list[dict[str, Any]], s2: np.ndarray, scl: np.ndarray,
                has_scl: list[bool], s1: np.ndarray, lc: tuple[np.ndarray, str] | None) -> Sample | None:
        cfg = self.config
        self.counts["tiles_planned"] += 1
        keep: list[int] = []
        steps: list[TimeStep] = []
        pixels = float(self.n * self.n)
        for i, r in enumerate(rows):
            scene = self.scenes[int(r["s2_scene"])]
            # _read_s2 zeroed every band where any band lacks data, so one band tells validity
            valid = s2[i, S2_BAND_NAMES.index(next(b for b in S2_BAND_NAMES if b in scene["bands"]))] != 0
            n_valid = int(valid.sum())
            s2_valid = n_valid / pixels
            cloud = float(self.cloud_lut[scl[i][valid]].sum() / n_valid) if has_scl[i] and n_valid else None
            if s2_valid < cfg.min_valid_fraction:
                self.counts["steps_dropped_low_valid_fraction"] += 1
                continue
            if cloud is not None and cloud > cfg.max_cloud_fraction:
                self.counts["steps_dropped_cloudy"] += 1
                continue
            step = TimeStep(
                datetime=scene["datetime"], s2_product_id=scene["product_id"], s2_level=scene["level"],
                s2_processing_baseline=scene.get("baseline"), s2_offset_removed=int(scene.get("dn_offset") or 0),
                s2_b10_zero="B10" not in scene["bands"], s2_valid_fraction=round(s2_valid, 6),
                cloud_fraction=None if cloud is None else round(cloud, 6), relative_orbit=scene.get("relative_orbit"),
            )
            if r["s1_scene"] is not None:
                s1_scene = self.scenes[int(r["s1_scene"])]
                s1_ok = np.isfinite(s1[i, 0])
                frac = float(s1_ok.sum()) / pixels
                if frac >= cfg.min_valid_fraction:
                    step.s1_product_id = s1_scene["product_id"]
                    step.s1_datetime = s1_scene["datetime"]
                    step.s1_orbit_direction = s1_scene["orbit_direction"]
                    step.s1_valid_fraction = round(frac, 6)
                    step.s1_source_unit = s1_scene.get("s1_unit")
                    step.dt_days = round(float(r["dt_days"]), 4)
                else:
                    s1[i] = np.nan
                    self.counts["s1_dropped_low_valid_fraction"] += 1
            keep.append(i)
            steps.append(step)
        if not keep:
            self.counts["tiles_dropped_no_valid_step"] += 1
            return None
        arrays: dict[str, np.ndarray] = {"s2": np.ascontiguousarray(s2[keep])}
        if any(s.s1_product_id for s in steps):
            s1_keep = s1[keep]
            arrays["s1"] = s1_keep.astype(cfg.s1_dtype)
            arrays["s1valid"] = np.isfinite(s1_keep[:, 0])
        if all(has_scl[i] for i in keep):
            arrays["scl"] = np.ascontiguousarray(scl[keep])
        labels = None
        if lc is not None:
            classes, taxonomy = lc
            labels = self._labels(classes, taxonomy, rows[0]["landcover_scenes"])
            if labels is not None:
                arrays["lc"] = classes[None].copy()
        grid = cfg.grid
        meta = SampleMeta(
            key=str(tile), tile_id=str(tile), epsg=tile.epsg, transform=tuple(grid.transform(tile))[:6],
            width=self.n, height=self.n, split=rows[0]["split"], time_steps=steps, labels=labels,
            grid=grid.as_dict(),
        )
        self.stats.add_sample(arrays)
        self.counts["samples_written"] += 1
        self.counts["time_steps_written"] += len(steps)
        self.counts["paired_steps_written"] += sum(s.s1_product_id is not None for s in steps)
        return Sample(arrays, meta)

    def _labels(self, classes: np.ndarray, taxonomy: str, sources: list[int]) -> Labels | None:
        tax = TAXONOMIES[taxonomy]
        index = tax.lookup()[classes]
        counts = np.bincount(index[index >= 0], minlength=tax.num_classes)
        total = int(counts.sum())
        if total == 0:
            self.counts["tiles_without_label_pixels"] += 1
            return None
        fractions = counts / total
        return Labels(
            taxonomy=taxonomy, names=list(tax.names), fractions=[round(float(f), 6) for f in fractions],
            multi_hot=[int(f >= self.config.label_threshold and f > 0) for f in fractions],
            threshold=self.config.label_threshold,
            source=",".join(sorted({self.scenes[i]["product_id"] for i in sources})),
        )


def shard_done(out: str | os.PathLike[str], split: str, shard: int) -> bool:
    """A shard is done when its statistics and task report exist (written, in that order,
    after the tar and its manifest part)."""
    return task_report_path(out, split, shard).is_file() and task_stats_path(out, split, shard).is_file()


def materialize_shard(job: dict[str, Any], scenes: dict[int, dict[str, Any]], config: dict[str, Any],
                      out: str) -> dict[str, Any]:
    """Write one shard (skipped when already done); return its task report."""
    split, shard = job["split"], int(job["shard"])
    report_path = task_report_path(out, split, shard)
    if shard_done(out, split, shard):
        return json.loads(report_path.read_text())
    builder = ShardBuilder(job, scenes, IngestConfig.from_dict(config))
    rows = write_shard(out, split, shard, builder.samples(), codec=config["codec"])
    report_path.parent.mkdir(parents=True, exist_ok=True)
    builder.stats.save(task_stats_path(out, split, shard))
    report = {"split": split, "shard": shard, "samples": len(rows), "counts": dict(sorted(builder.counts.items())),
              "errors": builder.errors}
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, report_path)
    return report
