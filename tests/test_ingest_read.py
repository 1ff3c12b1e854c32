"""Window reads and upsampling (``ingest/read.py``) and the read tasks' tile order (``ingest/plan.py``,
``ingest/pieces.py``), against independent references."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pieces import (
    Piece, ReadReport, finished_read, harmonise_s2, load_pieces, read_report_paths, row_windows, staging_paths, tiles_digest,
    write_piece_index,
)
from eoforge.ingest.plan import (
    MAX_READ_THREADS, TILE_WORK_MS, PlanRow, ReadTask, balanced_cuts, part_work, plan_reads, read_order,
    split_read, tile_row_work,
)
from eoforge.ingest.scan import valid_profile
from eoforge.ingest.scene import Scene
from eoforge.ingest.read import SourceCache, TargetGrid, read_band, upsample
from eoforge.shards.keys import TileId


def reference_upsample(data: np.ndarray, ratio: int, first_row: int, first_col: int, n_rows: int, n_cols: int,
                       nodata: float | None, nearest: bool) -> np.ndarray:
    """Pixel by pixel: target (i, j) samples source (first + (i + 0.5) / ratio - 0.5, ...),
    indices clamped to ``data``; bilinear weights of nodata pixels are dropped."""
    h, w = data.shape
    out = np.zeros((n_rows, n_cols), dtype=np.float64)
    for i in range(n_rows):
        for j in range(n_cols):
            if nearest:
                out[i, j] = data[min(first_row + i // ratio, h - 1), min(first_col + j // ratio, w - 1)]
                continue
            y = first_row + (i + 0.5) / ratio - 0.5
            x = first_col + (j + 0.5) / ratio - 0.5
            y0, x0 = math.floor(y), math.floor(x)
            fy, fx = y - y0, x - x0
            num = den = 0.0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    v = data[min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), w - 1)]
                    if nodata is not None and v == nodata:
                        continue
                    num += wy * wx * float(v)
                    den += wy * wx
            out[i, j] = num / den if den > 1e-6 else nodata
    return out


@pytest.mark.parametrize("ratio", [2, 6])
@pytest.mark.parametrize("case", ["full", "swath_edge", "all_nodata", "offset"])
def test_upsample_matches_the_pixel_by_pixel_formula(ratio: int, case: str) -> None:
    rng = np.random.default_rng(ratio * 10 + len(case))
    h, w = 9, 13
    data = rng.integers(1, 10_000, size=(h, w)).astype(np.uint16)
    first_row = first_col = 1
    if case == "swath_edge":
        data[np.add.outer(np.arange(h), -np.arange(w)) > -4] = 0  # a diagonal nodata wedge
    elif case == "all_nodata":
        data[:] = 0
    elif case == "offset":
        first_row, first_col = 0, 2
    n_rows, n_cols = (h - first_row - 1) * ratio, (w - first_col - 1) * ratio + ratio // 2
    for nearest in (False, True):
        got = upsample(data, ratio, Resampling.nearest if nearest else Resampling.bilinear,
                       first_row, first_col, n_rows, n_cols, 0)
        want = reference_upsample(data, ratio, first_row, first_col, n_rows, n_cols, 0, nearest)
        assert got.shape == (n_rows, n_cols) and got.dtype == np.uint16
        # float32 weights of 1/12ths (ratio 6) can round a .5 either way: 1 DN at most
        np.testing.assert_allclose(got, np.rint(want), atol=0 if ratio == 2 or nearest else 1, rtol=0)
        if case == "swath_edge" and not nearest:
            assert (got[want == 0] == 0).all() and (got[want > 0] > 0).all()  # nodata never blends in


@pytest.mark.parametrize("offset", [0, 1000])
@pytest.mark.parametrize("layout", ["window_one_tile_high", "window_taller_than_the_tile"])
def test_harmonise_s2_follows_the_offset_rule_in_every_layout(offset: int, layout: str) -> None:
    """max(DN - offset, 1) in the bands present, 0 in an absent band and wherever a pixel is
    not valid: the formula of ingest/SENTINEL.md, at the DN values around the offset."""
    rng = np.random.default_rng(7)
    edges = np.array([0, 1, 2, 999, 1000, 1001, 1002, 65534, 65535], dtype=np.uint16)
    window = rng.choice(edges, size=(13, 12, 40)).astype(np.uint16)
    window[10] = 0  # B10, absent from L2A
    present = tuple(b != 10 for b in range(13))
    rows = slice(None) if layout == "window_one_tile_high" else slice(2, 9)
    dn = window[:, rows, 8:24]  # a tile's columns of the window: a strided view
    valid = rng.random(dn.shape[1:]) > 0.2
    expected = np.maximum(dn.astype(np.int64) - offset, 1) if offset else dn.astype(np.int64)
    expected[10] = 0
    expected *= valid
    for mask in (valid, None):
        out = harmonise_s2(dn, offset, present, mask, np.empty(dn.shape, dtype=np.uint16))
        want = expected if mask is not None else (
            np.maximum(dn.astype(np.int64) - offset, 1) if offset else dn.astype(np.int64)) * (np.arange(13) != 10)[:, None, None]
        assert out.dtype == np.uint16 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, want)
    assert (window[:, rows, 8:24] == dn).all()  # the window is read, never written


def test_aligned_read_equals_rasterio_at_the_same_coordinates(tmp_path) -> None:
    """A 20 m band read onto a 10 m window: pixels whose centre sits on a 20 m pixel's
    quarter points are the bilinear blend of the independent reads of their neighbours."""
    path = tmp_path / "b05.tif"
    data = np.random.default_rng(1).integers(1, 5000, size=(64, 64)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", nodata=0,
                       crs="EPSG:32632", transform=Affine(20, 0, 500000, 0, -20, 5000000)) as dst:
        dst.write(data, 1)
    target = TargetGrid(32632, Affine(10, 0, 500000 + 200, 0, -10, 5000000 - 400), 40, 20)
    with SourceCache() as cache:
        got = read_band(cache, str(path), 1, target, Resampling.bilinear, "uint16", 0, 0)
    with rasterio.open(path) as src:
        for i, j in ((0, 0), (7, 11), (19, 39), (10, 20)):
            x, y = target.transform * (j + 0.5, i + 0.5)
            r, c = src.index(x, y)
            # this target pixel lies in source pixel (r, c), a quarter pixel off its centre
            dy = -1 if i % 2 == 0 else 1
            dx = -1 if j % 2 == 0 else 1
            win = [src.read(1, window=Window(c + a, r + b, 1, 1))[0, 0].astype(float)
                   for b, a in ((0, 0), (0, dx), (dy, 0), (dy, dx))]
            want = 0.5625 * win[0] + 0.1875 * win[1] + 0.1875 * win[2] + 0.0625 * win[3]
            assert got[i, j] == np.rint(want), (i, j)


class _RecordingCache(SourceCache):
    """A source cache whose datasets record the windows they are asked to read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int, int, int]] = []

    def get(self, path: str) -> Any:
        dataset, reads = super().get(path), self.reads

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(dataset, name)

            def read(self, index: int, window: Window, **kwargs: Any) -> np.ndarray:
                reads.append((int(window.col_off), int(window.row_off), int(window.width), int(window.height)))
                return dataset.read(index, window=window, **kwargs)

        return Recording()


def test_block_prefetch_decodes_each_block_row_of_a_tile_row_once(tmp_path) -> None:
    """A 20 m band in 128-row blocks under tile rows of 64 px at 10 m (32 source rows): the
    first tile row of each block row asks for the rows not decoded yet, across the whole
    tile row (one request, so GDAL decodes its blocks together); the other tile rows of
    that block row ask for nothing. A tile row that crosses into a new block row asks only
    for the rows past the decoded ones."""
    from eoforge.ingest.read import BlockPrefetch

    path = tmp_path / "b05.tif"
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16", tiled=True,
                       blockxsize=128, blockysize=128, crs="EPSG:32632",
                       transform=Affine(20, 0, 500000, 0, -20, 5000000)) as dst:
        dst.write(np.ones((1, 512, 512), np.uint16))
    prefetch, cache = BlockPrefetch(), _RecordingCache()

    def row(first_row_px: int) -> None:  # a tile row 64 px tall, 512 px wide at 10 m
        target = TargetGrid(32632, Affine(10, 0, 500000, 0, -10, 5000000 - 10 * first_row_px), 512, 64)
        prefetch.row(cache, str(path), 1, target)

    row(0)  # source rows 0-32 (32 rows and a halo row): block row 0
    assert cache.reads == [(0, 0, 257, 33)]
    for first in (64, 128, 192):  # source rows 31-64, 63-96, 95-128: the last crosses into block row 1
        row(first)
    assert cache.reads == [(0, 0, 257, 33), (0, 128, 257, 1)]
    row(256)  # source rows 127-160: decoded
    assert len(cache.reads) == 2
    cache.close()


def _plan_row(**fields: Any) -> PlanRow:
    """A plan row with the given fields; the ones read tasks do not look at get placeholders."""
    return PlanRow(**{"epsg": 32632, "step": 0, "season": 0, "s2_product_id": "S2", "s2_datetime": "2023-06-01T10:00:00Z",
                      "s2_coverage": 1.0, "cloud_percentage": None, "s1_scene": None, "s1_product_id": None,
                      "s1_datetime": None, "dt_days": None, "orbit_direction": None, "wave": 0, "shard": 0,
                      "position": 0, **fields})


def test_read_tasks_walk_each_source_north_to_south_in_balanced_parts() -> None:
    tiles = [TileId(32, "n", c, r) for r in range(100, 107) for c in range(10, 14)]
    rows = [_plan_row(tile_id=str(t), split="val" if t.col == 13 else "train", s2_scene=3, landcover_scenes=(5,))
            for t in tiles]
    config = IngestConfig(read_task_rows=3)
    tasks = plan_reads(rows, config)
    s2 = [t for t in tasks if t.kind == "s2"]
    assert [t.name for t in s2] == ["s2-000003-w000-000of003", "s2-000003-w000-001of003", "s2-000003-w000-002of003"]
    assert [len(t.tiles) for t in s2] == [8, 8, 12]  # 7 rows in 3 parts: 2, 2, 3 rows
    walked = [TileId.parse(t) for task in s2 for t in task.tiles]
    assert walked == sorted(tiles, key=read_order) and walked[0] == TileId(32, "n", 10, 106)
    assert [t.name for t in tasks if t.kind == "lc"] == ["lc-000005-w000-000of003", "lc-000005-w000-001of003",
                                                                "lc-000005-w000-002of003"]
    assert all(train == (not tile.endswith("00013_" + tile[-5:])) for task in s2
               for tile, train in zip(task.tiles, task.train))
    # automatic split (read_task_rows None): a scene is split only when its kind has fewer
    # scenes than there are workers, into ceil(workers / scenes) parts, at most one per row
    auto = IngestConfig()
    assert [t.name for t in plan_reads(rows, auto, workers=1)] == ["s2-000003-w000-000of001", "lc-000005-w000-000of001"]
    two_scenes = rows + [dataclasses.replace(r, s2_scene=4) for r in rows]
    assert [t.name for t in plan_reads(two_scenes, auto, workers=2) if t.kind == "s2"] == [
        "s2-000003-w000-000of001", "s2-000004-w000-000of001"]
    by_kind = Counter(t.kind for t in plan_reads(two_scenes, auto, workers=5))
    assert by_kind == {"s2": 6, "lc": 5}  # ceil(5 / 2) = 3 parts per S2 scene; 5 of the one land-cover raster
    assert len(plan_reads(rows, auto, workers=64)) == 2 * 7  # never more parts than tile rows
    # waves: a source read in two waves is two tasks, each with its wave's tiles only
    waved = [dataclasses.replace(r, wave=int(TileId.parse(r.tile_id).row >= 104)) for r in rows]
    by_wave = {t.name: t.tiles for t in plan_reads(waved, auto, workers=1) if t.kind == "s2"}
    assert sorted(by_wave) == ["s2-000003-w000-000of001", "s2-000003-w001-000of001"]
    assert {TileId.parse(t).row for t in by_wave["s2-000003-w001-000of001"]} == {104, 105, 106}
    for workers in (1, 2, 5, 64):  # every (tile, source) is read by exactly one task, whatever the split
        tasks = plan_reads(two_scenes, auto, workers=workers)
        pairs = [(t.kind, t.scene, tile) for t in tasks for tile in t.tiles]
        assert len(pairs) == len(set(pairs)) == 3 * len(tiles)
    # windows: one per tile row, split at gaps and at read_window_tiles
    gap = [TileId(32, "n", c, 100) for c in (1, 2, 3, 5, 6)]
    windows = list(row_windows(gap, IngestConfig(tile_size_px=16, read_window_tiles=2)))
    assert [[str(t) for t, _ in cut] for _, cut in windows] == [
        ["32n_00001_00100", "32n_00002_00100"], ["32n_00003_00100"], ["32n_00005_00100", "32n_00006_00100"]]
    grid, cut = windows[2]
    assert (grid.width, grid.height, grid.transform.c, grid.transform.f) == (32, 16, 5 * 160.0, 101 * 160.0)
    assert cut[1][1] == slice(16, 32)


def test_a_split_scene_is_cut_where_its_valid_area_is_halved() -> None:
    """Two read parts of an S2 scene whose north half is nodata: the scan probe's valid
    profile moves the cut north, so both parts read about as many valid pixels (on the
    bench's COG scene the equal-row parts took 7.7 and 9.0 s, the balanced ones 7.1 and 7.2 s)."""
    tiles = [TileId(32, "n", c, r) for r in range(100, 107) for c in range(10, 14)]
    rows = [_plan_row(tile_id=str(t), split="train", s2_scene=0, landcover_scenes=()) for t in tiles]
    grid = IngestConfig().grid
    top, bottom = grid.bounds(TileId(32, "n", 10, 106))[3], grid.bounds(TileId(32, "n", 10, 100))[1]
    scene = Scene(sensor="s2", product_id="S2", location="S2", datetime="2023-06-01T10:00:00Z", crs_wkt="",
                  epsg=32632, bounds=(26400.0, bottom, 36960.0, top), footprint=b"", paths=("S2",),
                  valid_profile=bytes([0] * 32 + [100] * 32), number=0)
    auto = IngestConfig()
    equal = [len(t.tiles) for t in plan_reads(rows, auto, workers=2)]
    balanced = plan_reads(rows, auto, workers=2, scenes={0: scene})
    assert equal == [12, 16]  # 3 and 4 tile rows
    # per tile 0.3 + valid fraction: rows 106-104 empty (1.2 each), 103 half (3.2), 102-100 full
    # (5.2 each); half the 22.4 lies nearest the end of the fifth row
    assert [len(t.tiles) for t in balanced] == [20, 8]
    assert sorted(t for task in balanced for t in task.tiles) == sorted(map(str, tiles))
    work = tile_row_work([[TileId(32, "n", c, r) for c in range(10, 14)] for r in range(106, 99, -1)], scene, grid)
    np.testing.assert_allclose(np.array(work) / TILE_WORK_MS, [1.2, 1.2, 1.2, 3.2, 5.2, 5.2, 5.2], atol=0.15)
    # a scene without a profile (not probed: a STAC item) keeps equal rows
    unprobed = dataclasses.replace(scene, valid_profile=None)
    assert [len(t.tiles) for t in plan_reads(rows, auto, workers=2, scenes={0: unprobed})] == equal


def test_a_split_scene_is_cut_where_its_decoding_is_shared() -> None:
    """Seven valid tile rows whose north block rows take 4x as long to decode as the south
    ones: the cut moves north of where valid area alone puts it, and each part pays for every
    block row it touches whole (the one the cut crosses twice)."""
    tiles = [TileId(32, "n", c, r) for r in range(100, 107) for c in range(10, 14)]
    rows = [_plan_row(tile_id=str(t), split="train", s2_scene=0, landcover_scenes=()) for t in tiles]
    grid = IngestConfig().grid
    top, bottom = grid.bounds(TileId(32, "n", 10, 106))[3], grid.bounds(TileId(32, "n", 10, 100))[1]
    # four block rows of two tile rows each (the last one of one), 40 ms north, 10 ms south
    blocks = np.array([(0, 2 / 7, 40), (2 / 7, 4 / 7, 40), (4 / 7, 6 / 7, 10), (6 / 7, 1, 10)], np.float32)
    scene = Scene(sensor="s2", product_id="S2", location="S2", datetime="2023-06-01T10:00:00Z", crs_wkt="",
                  epsg=32632, bounds=(26400.0, bottom, 36960.0, top), footprint=b"", paths=("S2",),
                  valid_profile=bytes([100] * 64), decode_rows=blocks.tobytes(), number=0)
    tile_rows = [[TileId(32, "n", c, r) for c in range(10, 14)] for r in range(106, 99, -1)]
    work = part_work(tile_rows, scene, grid)
    row_ms = 4 * TILE_WORK_MS * 1.3  # four valid tiles
    assert work(0, 3) == pytest.approx(3 * row_ms + 80)  # rows 106-104 touch the two north blocks
    assert work(3, 7) == pytest.approx(4 * row_ms + 60)  # rows 103-100: the second block again, and the south
    auto = IngestConfig()
    assert [len(t.tiles) for t in plan_reads(rows, auto, workers=2, scenes={0: scene})] == [12, 16]
    valid_only = dataclasses.replace(scene, decode_rows=None)
    assert [len(t.tiles) for t in plan_reads(rows, auto, workers=2, scenes={0: valid_only})] == [16, 12]


def _bench_like_scene(decode_s: float) -> tuple[list[PlanRow], Scene, list[list[TileId]]]:
    """42 x 42 fully valid tiles of 264 px over one 10980 px S2 scene whose band files take
    ``decode_s`` to decode, in blocks of 1024 px as the bench's scene: 45 % in the 10 m
    bands' block rows (1024 px), 50 % in the 20 m bands' (2048 px at 10 m), 5 % in the 60 m
    bands' (6144 px)."""
    tiles = [TileId(32, "n", c, r) for r in range(100, 142) for c in range(10, 52)]
    rows = [_plan_row(tile_id=str(t), split="train", s2_scene=0, landcover_scenes=()) for t in tiles]
    grid = IngestConfig().grid
    left, bottom = grid.bounds(TileId(32, "n", 10, 100))[:2]
    right, top = grid.bounds(TileId(32, "n", 51, 141))[2:]
    blocks = []
    for share, block_px in ((0.45, 1024), (0.50, 2048), (0.05, 6144)):
        edges = [*np.arange(0, 10980, block_px) / 10980, 1.0]
        blocks += [(a, b, 1000 * decode_s * share * (b - a)) for a, b in zip(edges[:-1], edges[1:])]
    scene = Scene(sensor="s2", product_id="S2", location="S2", datetime="2023-06-01T10:00:00Z", crs_wkt="",
                  epsg=32632, bounds=(left, bottom, right, top), footprint=b"", paths=("S2",),
                  valid_profile=bytes([100] * 64), decode_rows=np.array(blocks, np.float32).tobytes(), number=0)
    tile_rows = [[TileId(32, "n", c, r) for c in range(10, 52)] for r in range(141, 99, -1)]
    return rows, scene, tile_rows


def test_a_scene_decoding_dominates_is_read_with_threads_instead_of_parts() -> None:
    """The bench's two layouts of one scene: the JPEG 2000 one (~80 s of decoding) is read by
    one task with two threads (parts would decode the block row they share twice), the
    DEFLATE one (~5 s) in two single-threaded parts (threads would leave the rest of the
    work, QA, encoding, statistics, to one core)."""
    auto = IngestConfig()
    jp2_rows, jp2, tile_rows = _bench_like_scene(80.4)
    tasks = plan_reads(jp2_rows, auto, workers=2, scenes={0: jp2})
    assert [(t.name, t.threads, len(t.tiles)) for t in tasks] == [("s2-000000-w000-000of001", 2, 42 * 42)]
    cog_rows, cog, _ = _bench_like_scene(4.8)
    tasks = plan_reads(cog_rows, auto, workers=2, scenes={0: cog})
    assert [(t.threads, len(t.tiles) % 42) for t in tasks] == [(1, 0), (1, 0)] and len(tasks) == 2
    assert [t.threads for t in plan_reads(jp2_rows, auto, workers=1, scenes={0: jp2})] == [1]  # one core: no threads
    # the estimates behind it: the slowest part of each split
    work = part_work(tile_rows, jp2, auto.grid)
    parts, threads, cuts = split_read(42, 2, work)
    assert (parts, threads, cuts) == (1, 2, [0, 42])
    assert work(0, 42, 2) < min(max(work(0, c), work(c, 42)) for c in range(1, 42))
    # 8 cores: at most MAX_READ_THREADS threads a task, the parts sharing the rest
    parts, threads, cuts = split_read(42, 8, work)
    assert threads <= MAX_READ_THREADS and parts * threads <= 8 and cuts[0] == 0 and cuts[-1] == 42
    # equal estimates: fewer threads (a decode-free scene gains nothing from them)
    flat = lambda i, j, threads=1: float(j - i)  # noqa: E731
    assert split_read(4, 2, flat) == (2, 1, [0, 2, 4])


def test_valid_profile_and_balanced_cuts() -> None:
    mask = np.ones((256, 40), bool)
    mask[:64] = False
    mask[64:128, :10] = False  # a quarter of these rows
    assert list(valid_profile(mask, bins=8)) == [0, 0, 75, 75, 100, 100, 100, 100]
    assert list(valid_profile(np.ones((3, 5), bool), bins=8)) == [100] * 8  # fewer rows than bins

    def cuts(work: list[float], parts: int) -> list[int]:
        return balanced_cuts(len(work), parts, lambda i, j: sum(work[i:j]))

    assert cuts([1, 1, 1, 1], 2) == [0, 2, 4]
    assert cuts([0.1, 0.1, 0.1, 5], 2) == [0, 3, 4]
    assert cuts([5, 0, 0, 0], 3) == [0, 2, 3, 4]  # every part keeps at least one item
    assert cuts([1, 2, 3], 3) == [0, 1, 2, 3]
    assert cuts([3, 1, 1, 1, 3, 3], 3) == [0, 3, 5, 6]  # largest part 5: no split does better
    # work that is not a sum: a part pays 10 for each of the two blocks of 3 items it touches
    blocks = lambda i, j: (j - i) + 10 * len({k // 3 for k in range(i, j)})  # noqa: E731
    assert balanced_cuts(6, 2, blocks) == [0, 3, 6]  # a cut inside a block would decode it twice


def test_a_finished_read_is_reused_only_for_the_same_tiles(tmp_path) -> None:
    """A read report names its task; a rerun whose task of that name reads other tiles (its
    scene cut elsewhere) reads again instead of taking pieces it lacks."""
    task = ReadTask("s2-000000-w000-000of002", 0, "s2", 0, ("32n_00010_00106", "32n_00011_00106"), (True, True))
    frames, index = staging_paths(tmp_path, task.name)
    frames.parent.mkdir(parents=True)
    frames.write_bytes(b"x" * 10)
    index_bytes = write_piece_index(index, {"32n_00010_00106": Piece("ok", 1.0, 0.0, {"s2": (0, 10)})})
    report = ReadReport(task.name, "s2", 0, frames_bytes=10, index_bytes=index_bytes, tiles=2,
                        tiles_digest=tiles_digest(task.tiles))
    path = read_report_paths(tmp_path, task.name)[0]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report.to_json()))
    assert finished_read(tmp_path, task) == report
    moved = dataclasses.replace(task, tiles=("32n_00010_00106", "32n_00010_00105"))
    assert finished_read(tmp_path, moved) is None


def test_a_shard_task_loads_only_its_pieces_from_a_staged_index(tmp_path) -> None:
    """The piece index round-trips every field (frames of each member, QA fractions, land-cover
    counts, nulls), and a lookup returns just the tiles asked for."""
    pieces = {
        "32n_00010_00106": Piece("ok", 0.75, 0.125, {"s2": (0, 100), "scl": (100, 7)}),
        "32n_00011_00106": Piece("low_valid", 0.05, None),
        "32n_00012_00106": Piece("ok", 1.0, frames={"s1": (107, 50), "s1valid": (157, 3)}),
        "32n_00013_00106": Piece("ok", frames={"lc": (160, 9)}, counts=(0, 5, 1 << 40)),
        "32n_00014_00106": Piece("empty"),
    }
    path = staging_paths(tmp_path, "s2-000003-w000-000of001")[1]
    path.parent.mkdir(parents=True)
    assert write_piece_index(path, pieces) == path.stat().st_size
    loaded = load_pieces(tmp_path, "s2-000003-w000-000of001", list(pieces) + ["32n_00099_00106"])
    assert loaded == {t: dataclasses.replace(p, task="s2-000003-w000-000of001", tile=t) for t, p in pieces.items()}
    some = load_pieces(tmp_path, "s2-000003-w000-000of001", ["32n_00013_00106", "32n_00011_00106"])
    assert sorted(some) == ["32n_00011_00106", "32n_00013_00106"]
    assert some["32n_00013_00106"].counts == (0, 5, 1 << 40)


def _demo_s2_read(raw, out) -> tuple[ReadTask, Scene]:
    """The demo's S2 read task with the most tiles, and its scene (from a dry run's plan)."""
    import pyarrow.parquet as pq
    from conftest import DEMO_INGEST

    from eoforge.ingest.pipeline import run_ingest
    from eoforge.ingest.plan import plan_rows

    config = IngestConfig(**DEMO_INGEST)
    run_ingest([str(raw)], out, config=config, workers=1, progress=False, dry_run=True)
    scenes = {s.number: s for s in map(Scene.from_row, pq.read_table(out / "scenes.parquet").to_pylist())}
    tasks = [t for t in plan_reads(plan_rows(pq.read_table(out / "plan.parquet")), config) if t.kind == "s2"]
    task = max(tasks, key=lambda t: len(t.tiles))
    return task, scenes[task.scene]


def test_a_read_task_with_threads_stages_the_same_bytes(demo_raw, tmp_path) -> None:
    """A task given two threads (GDAL decoding, and a helper thread cutting one window while
    the next is read, whole tile rows) stages byte for byte the frames, the piece index, the
    report counts and the statistics of the same task run in one thread."""
    from conftest import DEMO_INGEST

    from eoforge.ingest.pieces import read_source

    task, scene = _demo_s2_read(demo_raw, tmp_path / "plan")
    config = IngestConfig(**DEMO_INGEST).to_dict()
    staged = {}
    for threads in (1, 2):
        out = tmp_path / f"threads-{threads}"
        report = read_source(dataclasses.replace(task, threads=threads), scene, config, str(out))
        assert report.threads == threads
        assert 0 < report.write_seconds <= report.seconds  # the frames' page-cache writes, part of the task
        assert ReadReport.from_json(json.loads(read_report_paths(out, task.name)[0].read_text())) == report
        frames, index = staging_paths(out, task.name)
        stats = read_report_paths(out, task.name)[1]
        staged[threads] = (report.counts, report.frames_bytes, frames.read_bytes(), index.read_bytes(),
                           dict(np.load(stats)))
    one, two = staged[1], staged[2]
    assert one[0] == two[0] and one[0].get("ok", 0) > 10
    assert one[1] == two[1] > 0 and one[2] == two[2] and one[3] == two[3]
    assert one[4].keys() == two[4].keys() and all(np.array_equal(one[4][k], two[4][k]) for k in one[4])


def test_a_piece_that_fails_in_the_helper_thread_fails_the_task_and_stages_nothing(demo_raw, tmp_path,
                                                                                  monkeypatch) -> None:
    """Fault injected in the cutting thread (the third window): the task raises that error, as
    the one-thread task would, and leaves no frame file, index or report behind (a rerun reads
    again)."""
    from conftest import DEMO_INGEST

    from eoforge.ingest import pieces as pieces_module

    task, scene = _demo_s2_read(demo_raw, tmp_path / "plan")
    calls = []
    real_piece = pieces_module._S2Pieces.piece

    def failing_piece(self, data, cols, train, frames):
        calls.append(cols)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real_piece(self, data, cols, train, frames)

    monkeypatch.setattr(pieces_module._S2Pieces, "piece", failing_piece)
    out = tmp_path / "ds"
    with pytest.raises(OSError, match="injected"):
        pieces_module.read_source(dataclasses.replace(task, threads=2), scene, IngestConfig(**DEMO_INGEST).to_dict(),
                                  str(out))
    staging = out / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not read_report_paths(out, task.name)[0].exists()

