"""The demo scenes, ingested on a real 2-worker LocalCluster: verified shards, dedup and
pairing as designed, and georeferencing checked by value against the source files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pipeline import IngestError, run_ingest
from eoforge.shards import iter_dataset, read_manifest, verify_dataset
from eoforge.shards.schema import S2_BAND_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples(demo_ingest) -> list[dict]:
    return list(iter_dataset(demo_ingest.out))


@pytest.fixture(scope="module")
def scenes(demo_ingest) -> dict[str, dict]:
    rows = pq.read_table(demo_ingest.out / "scenes.parquet").to_pylist()
    for r in rows:
        r["bands"] = json.loads(r["bands"])
    return {r["product_id"]: r for r in rows if r["sensor"] != "landcover"}


@pytest.fixture(scope="module")
def truth(demo_raw: Path) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {}
    for p in json.loads((demo_raw / "truth.json").read_text())["products"]:
        roles.setdefault(p["role"], []).append(p["product_id"])
    return roles


def test_demo_ingest_writes_verified_shards(demo_ingest) -> None:
    assert demo_ingest.exit_code == 0, demo_ingest.errors
    report = verify_dataset(demo_ingest.out)
    assert report.ok, report.problems
    table = read_manifest(demo_ingest.out)
    splits = Counter(table.column("split").to_pylist())
    assert splits["train"] > 20 and splits["val"] > 0
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == demo_ingest.samples
    for name in ("stats.json", "errors.parquet", "report.json", "report.md", "report-dt.png", "scenes.parquet", "plan.parquet"):
        assert (demo_ingest.out / name).is_file(), name
    stats = json.loads((demo_ingest.out / "stats.json").read_text())
    assert stats["s2"]["bands"] == list(S2_BAND_NAMES)
    assert 200 < stats["s2"]["mean"][S2_BAND_NAMES.index("B4")] < 3000  # harmonised DN, no +1000 mix


def test_duplicates_levels_and_far_s1_are_handled(demo_ingest, truth) -> None:
    dedup = demo_ingest.report["dedup"]
    assert dedup["duplicate_product"]["count"] == 1
    assert dedup["duplicate_product"]["examples"][0]["product_id"] in truth["duplicate_copy"]
    assert [e["product_id"] for e in dedup["other_level"]["examples"]] == truth["l1c"]
    assert dedup["reprocessed_baseline"]["count"] >= 1
    assert dedup["same_acquisition"]["count"] >= 1  # the 32TQR / 33TTL overlap of each datatake
    assert dedup["zone_edge_overlap"]["count"] >= 1
    assert [e["product_id"] for e in dedup["s1_far_in_time"]["examples"]] == truth["far_in_time"]
    table = read_manifest(demo_ingest.out).to_pylist()
    s2_used = {p for r in table for p in r["s2_product_ids"]}
    s1_used = {p for r in table for p in r["s1_product_ids"] if p}
    assert not s2_used & set(truth["l1c"])
    assert not s1_used & set(truth["far_in_time"])
    # The 2021-07-21 acquisition is used only in its reprocessed (N0500) version.
    july = {p for p in s2_used if "20210721T" in p}
    assert july and july <= set(truth["reprocessed"]) | {p for p in s2_used if "T33TTL" in p}
    assert not any("N0301_R022_T32TQR_20210721" in p for p in s2_used)
    # One orbit direction per tile, pairs within max_dt_days.
    for r in table:
        assert len({d for d in r["s1_orbit_directions"] if d}) <= 1
        assert all(abs(dt) <= 3.0 for dt in r["dt_days"] if dt is not None)
    pairing = demo_ingest.report["pairing"]
    assert 0 < pairing["written_paired_steps"] <= pairing["written_steps"]
    assert sum(pairing["dt_days_histogram"]["counts"]) == pairing["planned_paired_steps"]


def test_time_steps_are_one_per_season_in_time_order(samples) -> None:
    for s in samples:
        times = [t["datetime"] for t in s["meta"]["time_steps"]]
        assert times == sorted(times) and len(times) <= 4
        seasons = [((int(t[5:7]) % 12) // 3) for t in times]
        assert len(set(seasons)) == len(seasons)
        assert s["s2"].shape[0] == len(times)


def _source_pixel(path: str, band_index: int, x: float, y: float, epsg: int, radius: int = 0) -> np.ndarray:
    """An independent read of the source around map coordinate (x, y) of CRS ``epsg``."""
    with rasterio.open(path) as src:
        if src.crs.to_epsg() != epsg:
            x, y = Transformer.from_crs(epsg, src.crs, always_xy=True).transform(x, y)
        row, col = src.index(x, y)
        win = Window(col - radius, row - radius, 2 * radius + 1, 2 * radius + 1)
        return src.read(band_index, window=win, boundless=True, fill_value=0)


def _pixels(sample: dict, rng: np.random.Generator, valid: np.ndarray, n: int) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(valid)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [(int(rows[i]), int(cols[i])) for i in pick]


def test_s2_values_match_the_source_at_the_same_map_coordinate(samples, scenes) -> None:
    rng = np.random.default_rng(0)
    exact = warped = 0
    for s in samples:
        meta = s["meta"]
        transform = Affine(*meta["transform"])
        for t, step in enumerate(meta["time_steps"]):
            scene = scenes[step["s2_product_id"]]
            offset = step["s2_offset_removed"]
            valid = s["s2"][t, 1] > 0
            for r, c in _pixels(s, rng, valid, 3):
                x, y = transform @ (c + 0.5, r + 0.5)
                band = scene["bands"]["B2"]
                if scene["epsg"] == meta["epsg"]:  # same grid: an exact copy
                    src = int(_source_pixel(band["path"], band["index"], x, y, meta["epsg"])[0, 0])
                    assert s["s2"][t, 1, r, c] == max(src - offset, 1), (meta["key"], t, r, c)
                    exact += 1
                else:  # another UTM zone: bilinear, inside the source neighbourhood's range
                    nb = _source_pixel(band["path"], band["index"], x, y, meta["epsg"], radius=1).astype(int) - offset
                    nb = nb[nb > -offset]
                    assert nb.min() - 1 <= int(s["s2"][t, 1, r, c]) <= nb.max() + 1, (meta["key"], t, r, c)
                    warped += 1
            # a 20 m band, upsampled bilinearly on the same grid
            if scene["epsg"] == meta["epsg"]:
                band = scene["bands"]["B11"]
                for r, c in _pixels(s, rng, valid, 2):
                    x, y = transform @ (c + 0.5, r + 0.5)
                    nb = _source_pixel(band["path"], band["index"], x, y, meta["epsg"], radius=1).astype(int) - offset
                    assert nb.min() <= int(s["s2"][t, 11, r, c]) <= nb.max()
    assert exact > 50 and warped > 5


def test_s1_and_landcover_from_epsg4326_match_the_source(samples, scenes, demo_ingest) -> None:
    landcover = {r["product_id"]: r["paths"][0] for r in pq.read_table(demo_ingest.out / "scenes.parquet").to_pylist()
                 if r["sensor"] == "landcover"}
    rng = np.random.default_rng(1)
    checked_s1 = checked_lc = exact_lc = 0
    for s in samples:
        meta = s["meta"]
        transform = Affine(*meta["transform"])
        for t, step in enumerate(meta["time_steps"]):
            if not step["s1_product_id"]:
                assert "s1valid" not in s or not s["s1valid"][t].any()
                continue
            scene = scenes[step["s1_product_id"]]
            assert scene["epsg"] == 4326
            for r, c in _pixels(s, rng, s["s1valid"][t], 3):
                x, y = transform @ (c + 0.5, r + 0.5)
                band = scene["bands"]["VV"]
                nb = _source_pixel(band["path"], band["index"], x, y, meta["epsg"], radius=1).astype(np.float64)
                nb = nb[np.isfinite(nb) & (nb != 0)]
                if step["s1_source_unit"] == "linear":
                    nb = 10 * np.log10(nb)
                value = float(s["s1"][t, 0, r, c])
                assert nb.min() - 0.05 <= value <= nb.max() + 0.05, (meta["key"], t, value, nb)
                checked_s1 += 1
        if "lc" in s:
            paths = [landcover[name] for name in meta["labels"]["source"].split(",")]
            for r, c in _pixels(s, rng, s["lc"][0] > 0, 5):
                x, y = transform @ (c + 0.5, r + 0.5)
                # the mosaic takes the first raster with data at the point
                nb = next(a for a in (_source_pixel(p, 1, x, y, meta["epsg"], radius=1) for p in paths) if a[1, 1])
                assert s["lc"][0, r, c] in nb
                exact_lc += int(s["lc"][0, r, c] == nb[1, 1])
                checked_lc += 1
            fractions = np.asarray(meta["labels"]["fractions"])
            assert fractions.sum() == pytest.approx(1.0, abs=1e-4)
            assert meta["labels"]["multi_hot"] == [int(f >= 0.01 and f > 0) for f in fractions]
    assert checked_s1 > 30 and checked_lc > 50
    assert exact_lc / checked_lc > 0.9


def test_rerun_is_a_no_op_and_a_changed_plan_is_refused(demo_raw, demo_ingest, tmp_path) -> None:
    before = {p: p.read_bytes() for p in (demo_ingest.out / "shards").rglob("*.tar")}
    manifest = (demo_ingest.out / "manifest.parquet").read_bytes()
    # the Δt figure is drawn once the first read tasks are out; a rerun that reads nothing draws it at the end
    dt_figure = (demo_ingest.out / "report-dt.png").read_bytes()
    read_reports = {p: p.stat().st_mtime_ns for p in (demo_ingest.out / "task-reports" / "read").glob("*.json")}
    (demo_ingest.out / "report-dt.png").unlink()
    from conftest import DEMO_INGEST

    again = run_ingest([str(demo_raw)], demo_ingest.out, config=IngestConfig(**DEMO_INGEST), workers=1, progress=False)
    assert again.samples == demo_ingest.samples
    assert {p: p.stat().st_mtime_ns for p in read_reports} == read_reports  # no read task ran again
    assert {p: p.read_bytes() for p in (demo_ingest.out / "shards").rglob("*.tar")} == before
    assert (demo_ingest.out / "manifest.parquet").read_bytes() == manifest
    assert (demo_ingest.out / "report-dt.png").read_bytes() == dt_figure
    with pytest.raises(IngestError, match="different ingest.*config"):
        run_ingest([str(demo_raw)], demo_ingest.out, config=IngestConfig(**{**DEMO_INGEST, "max_dt_days": 1.0}),
                   workers=1, progress=False)


def test_statistics_taken_while_reading_equal_a_recount_of_the_shards(demo_ingest, tmp_path) -> None:
    """S2 statistics come from the read tasks, S1's and the sample count from the shard
    tasks: together they equal ``eoforge shards stats --pixel-stride 2`` over the written shards."""
    import shutil

    from eoforge.shards.stats import compute_stats

    ingested = json.loads((demo_ingest.out / "stats.json").read_text())
    assert ingested["pixel_stride"] == 2
    copy = Path(shutil.copytree(demo_ingest.out, tmp_path / "ds", ignore=shutil.ignore_patterns("*.png")))
    recount = compute_stats(copy, "train", workers=1, pixel_stride=2)
    assert recount == ingested
    exact = compute_stats(copy, "train", workers=1)  # every pixel: the same figures, a few digits in
    for b, mean in enumerate(exact["s2"]["mean"]):
        if mean is not None:
            assert abs(ingested["s2"]["mean"][b] - mean) < 0.01 * exact["s2"]["std"][b]
    # and against plain numpy over the decoded shards, no accumulator of ours involved: per band
    # mean and std of the non-zero S2 DN (every 2nd pixel, as ingest counts) and of the valid,
    # finite S1 dB
    s2 = [[] for _ in range(13)]
    s1 = [[], []]
    for sample in iter_dataset(copy, "train"):
        x = sample["s2"][:, :, ::2, ::2]
        for b in range(13):
            v = x[:, b]
            s2[b].append(v[v != 0].astype(np.float64))
        if "s1" in sample:
            valid = sample["s1valid"][:, ::2, ::2]
            for b in range(2):
                v = sample["s1"][:, b, ::2, ::2][valid].astype(np.float64)
                s1[b].append(v[np.isfinite(v)])
    for name, per_band in (("s2", s2), ("s1", s1)):
        for b, parts in enumerate(per_band):
            v = np.concatenate(parts)
            if not v.size:
                assert ingested[name]["mean"][b] is None, (name, b)
                continue
            assert ingested[name]["mean"][b] == pytest.approx(v.mean(), rel=1e-6, abs=1e-6), (name, b)
            assert ingested[name]["std"][b] == pytest.approx(v.std(), rel=1e-4, abs=1e-4), (name, b)


def test_each_source_is_read_once_and_every_shard_mixes_the_area(demo_ingest) -> None:
    out = demo_ingest.out
    assert not (out / "staging").exists(), "the staging pieces are deleted once every shard is written"
    reads = [json.loads(p.read_text()) for p in sorted((out / "task-reports" / "read").glob("*.json"))]
    stage = demo_ingest.report["stages"]["read"]
    assert stage["tasks"] == len(reads) > 0
    plan = pq.read_table(out / "plan.parquet").to_pylist()
    s2_used = {r["s2_scene"] for r in plan}
    assert {r["scene"] for r in reads if r["kind"] == "s2"} == s2_used  # one read task set per S2 scene
    # every planned (tile, S2 scene) pair is read by exactly one task
    assert sum(r["tiles"] for r in reads if r["kind"] == "s2") == len({(r["tile_id"], r["s2_scene"]) for r in plan})
    # shards are not spatial blocks: each covers most of its split's extent
    table = read_manifest(out)
    rows = table.select(["shard", "split", "lon", "lat"]).to_pylist()
    for split in ("train", "val"):
        members = [r for r in rows if r["split"] == split]
        lon = [r["lon"] for r in members]
        lat = [r["lat"] for r in members]
        for shard in {r["shard"] for r in members}:
            mine = [r for r in members if r["shard"] == shard]
            if len(mine) < 8:
                continue
            assert max(r["lon"] for r in mine) - min(r["lon"] for r in mine) > 0.5 * (max(lon) - min(lon)), shard
            assert max(r["lat"] for r in mine) - min(r["lat"] for r in mine) > 0.5 * (max(lat) - min(lat)), shard
