"""Typed ingest configuration: defaults here, a YAML file over them, CLI options over both.

Every field has a unit in its name or its doc. ``IngestConfig.load("recipe.yaml")`` reads a
recipe; ``config.replace(max_dt_days=5)`` applies overrides; ``config.to_dict()`` is what
the dataset records in ``DS/ingest.json`` so a rerun can check it resumes the same job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from eoforge.ingest.grid import Grid
from eoforge.shards.config import ConfigError, build_section, read_recipe
from eoforge.shards.schema import TAXONOMIES


@dataclass(frozen=True)
class IngestConfig:
    """What ``eoforge ingest`` builds.

    Attributes:
        tile_size_px: tile edge in pixels (SSL4EO-S12: 264).
        resolution_m: pixel size of every member, metres.
        seasons: time steps per tile, at most one per season (the year split into this
            many equal month ranges; 4 = DJF, MAM, JJA, SON).
        max_dt_days: largest |S1 time - S2 time| for a pair, days.
        orbit_direction: ``"auto"`` (per tile, the direction that pairs most steps),
            ``"ascending"`` or ``"descending"``; a tile never mixes directions.
        keep_unpaired_s2: keep S2 time steps without an S1 partner (S2-only steps); False keeps
            paired steps only (a planned partner whose pixels turn out too sparse drops the step).
        s2_level: ``"L2A"`` or ``"L1C"``; products of the other level are skipped.
        min_scene_coverage: smallest share of a tile inside a scene's footprint for the
            scene to be planned for that tile (0..1, from metadata).
        min_valid_fraction: smallest share of valid S2 pixels (data in every band) for a
            time step to be kept; S1 steps under it lose their S1 (0..1).
        max_cloud_fraction: largest SCL cloud share of valid pixels for a time step (0..1).
        cloud_classes: SCL classes counted as cloud (3 shadow, 8/9 cloud, 10 cirrus).
        label_threshold: τ; a class is in the multi-hot when its fraction >= τ.
        label_taxonomy: taxonomy of ``--landcover`` rasters whose name does not say
            (``"worldcover"`` or ``"dynamic_world"``).
        zone_overlap_iou: tiles of neighbouring UTM zones overlapping by at least this IoU
            are near-duplicates; the one whose centre lies deeper in its own zone stays.
        val_fraction: share of split blocks that go to ``val`` (0 = no validation split).
        split_block_tiles: split blocks are this many tiles square (all tiles of a block
            share a split, so val is spatially separate from train).
        read_task_rows: tile rows one read task covers (one task reads one source scene
            north to south). Where two tasks of a scene meet, each band's block row there is
            decoded by both (~9 % of a 10980 px JPEG2000 product's decoding when it is read
            as two tasks, measured). None (the default): enough tasks to keep the workers
            busy: every scene of a kind (S2, S1, land cover) is one task when there are at
            least as many scenes of that kind as workers, else ceil(workers / scenes) tasks,
            an S2 scene's cut where its estimated work (valid area from the scan probe,
            decoding from the files' block sizes) is shared equally, or, when decoding
            dominates it (JPEG 2000), fewer tasks with several threads each.
        read_window_tiles: most tiles one window read spans along a tile row (bounds a
            task's pixel buffers; GDAL's block cache keeps the source blocks between rows).
            Warped sources' pixels depend in their last bits on the windows (GDAL's
            approximate transformer), so a dataset's bytes depend on this setting.
        plan_region_tiles: a plan region is a block of this many x this many grid tiles
            of one UTM zone (id ``{zone:02d}{hemi}_{col // R}_{row // R}``, 64 tiles of
            2.64 km: ~169 km square). The dry-run report (``--dry-run``) breaks its counts
            and size estimate down by region; what is written does not depend on it. Each
            region is planned by its own task, so planning memory follows the region size.
        staging_budget_gb: disk the staged pieces of one *wave* may take, GB (10⁹ bytes).
            Tiles are grouped into waves (rows of split blocks, north to south, packed until
            their estimated size, :mod:`eoforge.ingest.sizes`, reaches the budget); a wave's
            sources are read, its shards written, then its staging deleted before the next
            wave, so the disk holds the dataset plus about this much. Shards mix the places of
            one wave; the training loader mixes the waves' shards. The default suits a
            workstation; one wave when the whole dataset fits.
        samples_per_shard: target samples per shard (tiles are dealt to shards in a seeded
            random order, so every shard mixes places and scenes from the whole area).
        codec: array member codec (``"zstd"`` or ``"npy"``).
        s1_dtype: ``"float16"`` or ``"float32"`` for stored dB.
        seed: seed of the split and shard shuffles.
        stats_pixel_stride: ``stats.json`` counts every n-th pixel of every n-th row of each
            tile (2: a regular quarter; 1: every pixel, exact; see ``shards/stats.py``).
        gdal_cache_mb: GDAL block cache per worker process, MB. A read task decodes each source
            block once when the cache holds two block rows of every band it reads (a 10980 px
            S2 product in 1024 px blocks: ~350 MB).
        gdal_threads: threads GDAL may use to decode one read (``GDAL_NUM_THREADS``; JPEG2000
            decodes its tiles in parallel, by default on every core). 1: the Dask workers are
            the parallelism, one core each, as their ``nthreads`` says; a read task that the
            plan gives more cores (a JPEG 2000 scene with fewer scenes than workers,
            ``ReadTask.threads``) uses those.
        href_signer: a function that signs the hrefs of STAC assets before GDAL opens them,
            as ``module:function`` or ``path/to/file.py:function`` taking and returning a
            URL string (Planetary Computer: ``planetary_computer:sign``). Called in the
            worker each time a file is opened, so tokens are fresh whatever the ingest's
            length. None: hrefs are opened as they are.
    """

    tile_size_px: int = 264
    resolution_m: float = 10.0
    seasons: int = 4
    max_dt_days: float = 3.0
    orbit_direction: str = "auto"
    keep_unpaired_s2: bool = True
    s2_level: str = "L2A"
    min_scene_coverage: float = 0.05
    min_valid_fraction: float = 0.5
    max_cloud_fraction: float = 1.0
    cloud_classes: tuple[int, ...] = (3, 8, 9, 10)
    label_threshold: float = 0.01
    label_taxonomy: str = "worldcover"
    zone_overlap_iou: float = 0.1
    val_fraction: float = 0.1
    split_block_tiles: int = 8
    read_task_rows: int | None = None
    read_window_tiles: int = 16
    plan_region_tiles: int = 64
    staging_budget_gb: float = 64.0
    samples_per_shard: int = 64
    codec: str = "zstd"
    s1_dtype: str = "float16"
    seed: int = 0
    stats_pixel_stride: int = 2
    gdal_cache_mb: int = 512
    gdal_threads: int = 1
    href_signer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cloud_classes", tuple(int(c) for c in self.cloud_classes))
        checks = [
            (self.tile_size_px >= 8, "tile_size_px must be >= 8"),
            (self.resolution_m > 0, "resolution_m must be > 0"),
            (1 <= self.seasons <= 12, "seasons must be 1..12"),
            (self.max_dt_days >= 0, "max_dt_days must be >= 0"),
            (self.orbit_direction in ("auto", "ascending", "descending"),
             "orbit_direction must be auto, ascending or descending"),
            (self.s2_level in ("L2A", "L1C"), "s2_level must be L2A or L1C"),
            (0 <= self.min_scene_coverage <= 1, "min_scene_coverage must be in 0..1"),
            (0 <= self.min_valid_fraction <= 1, "min_valid_fraction must be in 0..1"),
            (0 <= self.max_cloud_fraction <= 1, "max_cloud_fraction must be in 0..1"),
            (0 <= self.label_threshold <= 1, "label_threshold must be in 0..1"),
            (self.label_taxonomy in TAXONOMIES, f"label_taxonomy must be one of {sorted(TAXONOMIES)}"),
            (0 < self.zone_overlap_iou <= 1, "zone_overlap_iou must be in (0, 1]"),
            (0 <= self.val_fraction < 1, "val_fraction must be in 0..1"),
            (self.split_block_tiles >= 1, "split_block_tiles must be >= 1"),
            (self.read_task_rows is None or self.read_task_rows >= 1, "read_task_rows must be >= 1 (or null: automatic)"),
            (self.read_window_tiles >= 1, "read_window_tiles must be >= 1"),
            (self.plan_region_tiles >= 1, "plan_region_tiles must be >= 1"),
            (self.staging_budget_gb > 0, "staging_budget_gb must be > 0"),
            (self.gdal_cache_mb >= 16, "gdal_cache_mb must be >= 16"),
            (self.gdal_threads >= 1, "gdal_threads must be >= 1"),
            (self.href_signer is None or ":" in self.href_signer,
             "href_signer must be module:function or path/to/file.py:function"),
            (self.stats_pixel_stride >= 1, "stats_pixel_stride must be >= 1"),
            (self.samples_per_shard >= 1, "samples_per_shard must be >= 1"),
            (self.codec in ("zstd", "npy"), "codec must be zstd or npy"),
            (self.s1_dtype in ("float16", "float32"), "s1_dtype must be float16 or float32"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def grid(self) -> Grid:
        return Grid(self.tile_size_px, self.resolution_m)

    # ------------------------------------------------------------------ I/O

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> IngestConfig:
        """From a mapping of settings; :class:`ConfigError` names ``source`` and the key."""
        return build_section(cls, values, source, "ingest")

    @classmethod
    def load(cls, path: str | Path) -> IngestConfig:
        """Read a YAML recipe; the settings may sit at the top level or under ``ingest:``."""
        return cls.from_dict(read_recipe(path, section="ingest"), source=str(path))

    def replace(self, **overrides: Any) -> IngestConfig:
        """A copy with the given fields changed (``None`` values are ignored)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return self.from_dict({**self.to_dict(), **changes}, source="options")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cloud_classes"] = list(self.cloud_classes)
        return out
