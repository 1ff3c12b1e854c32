"""``eoforge ingest`` on bad and on real inputs.

Bad inputs (one small demo copy with broken files added, one ingest run shared by the
tests): every bad input becomes an error row naming its path and the problem, the good
scenes still become samples, the dataset verifies, and the exit code is 1. ``--strict``
stops at the first bad file instead.

Real inputs ($EOFORGE_REAL_DATA, skipped when unset): the whole folder is ingested the way a
user would, with ``--landcover REAL/worldcover`` so that the non-standard-named Berlin clip
is taken as land cover too (without it the clip would only be "not recognised"); every
raster file is either in the dataset or explained in ``errors.parquet``; the BigEarthNet
pair becomes one paired sample whose values are the source values.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from eoforge.cli import main
from eoforge.ingest.config import IngestConfig
from eoforge.ingest.demo import generate_demo_data
from eoforge.ingest.pipeline import IngestResult, run_ingest
from eoforge.shards import read_manifest, read_samples, shard_urls, verify_dataset
from eoforge.shards.schema import S2_BAND_NAMES

CONFIG = IngestConfig(tile_size_px=64, samples_per_shard=16)
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
ERROR_COLUMNS = ["path", "stage", "reason", "product_id"]

# The trimmed demo copy: two good S2 scenes (winter 2022, summer 2023) of MGRS tile 32TQR,
# one good S1 (2023-07-14, 2 days from the summer S2), both WorldCover tiles.
GOOD_S2 = {
    "S2B_MSIL2A_20220211T101032_N0400_R022_T32TQR_20220211T133516",
    "S2B_MSIL2A_20230716T101028_N0509_R022_T32TQR_20230716T140425",
}
GOOD_SUMMER_SAFE = "S2B_MSIL2A_20230716T101028_N0509_R022_T32TQR_20230716T140425.SAFE"
GOOD_S1 = "S1A_IW_GRDH_1SDV_20230714T052947_20230714T053012_049393_05F0C5_FF47"
TRUNCATED_S2 = "S2B_MSIL2A_20210417T101031_N0300_R022_T32TQR_20210417T150049"  # B02 cut in half
ZERO_S2 = "S2B_MSIL2A_20211103T101029_N0301_R022_T32TQR_20211103T141453"  # every band 0
MISSING_BAND_S2 = "S2A_MSIL2A_20230422T101019_N0509_R022_T32TQR_20230422T143907"  # B05 deleted
TRUNCATED_S1 = "S1B_IW_GRDH_1SDV_20210721T053134_20210721T053159_027931_03551C_33A0"  # GEE 2-band file cut in half
NAN_S1 = "S1A_IW_GRDH_1SDV_20230716T170338_20230716T170403_049429_05F1F0_069F"  # per-band VV/VH, all NaN


@dataclass
class BadInputs:
    raw: Path
    far_landcover: Path
    truncated_s2_band: Path
    truncated_s1: Path
    text_tif: Path
    no_crs: Path
    zero_s2_files: list[Path]
    nan_s1_files: list[Path]
    missing_band_files: list[Path]
    deleted_band: Path
    good_files: list[Path]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def _make_bad_inputs(root: Path) -> BadInputs:
    raw = root / "raw"
    generate_demo_data(raw, seed=0, extent_km=6, progress=False)
    # Trim to a few products so the run stays fast.
    for name in ("mirror", "earth_search", "s2_reprocessed"):
        shutil.rmtree(raw / name)
    keep_s2 = GOOD_S2 | {TRUNCATED_S2, ZERO_S2, MISSING_BAND_S2}
    for safe in (raw / "s2").iterdir():
        if safe.name.removesuffix(".SAFE") not in keep_s2:
            shutil.rmtree(safe)
    for item in (raw / "s1").iterdir():
        if not item.name.startswith((GOOD_S1, TRUNCATED_S1, NAN_S1)):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    s2 = {p: raw / "s2" / f"{p}.SAFE" for p in keep_s2}
    assert all(d.is_dir() for d in s2.values()), "demo layout changed"

    # (a) a truncated band file of an otherwise valid S2 scene, and a truncated single-file S1.
    truncated_s2_band = next(s2[TRUNCATED_S2].rglob("*_B02_10m.tif"))
    _truncate(truncated_s2_band)
    truncated_s1 = raw / "s1" / f"{TRUNCATED_S1}.tif"
    _truncate(truncated_s1)
    # (b) a text file named like a GeoTIFF.
    text_tif = raw / "notes" / "something.tif"
    text_tif.parent.mkdir()
    text_tif.write_text("field notes, not a raster\n" * 20)
    # (c) a GeoTIFF without CRS (and without transform).
    no_crs = raw / "other" / "no_crs.tif"
    no_crs.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(no_crs, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16",
                           nodata=0) as dst:
            dst.write(np.full((1, 32, 32), 1234, np.uint16))
    # (d) an all-nodata S2 scene: every band (SCL too) set to 0.
    zero_s2_files = _files(s2[ZERO_S2])
    for path in zero_s2_files:
        with rasterio.open(path, "r+") as ds:
            ds.write(np.zeros((ds.count, ds.height, ds.width), ds.dtypes[0]))
    # (e) an S1 product (valid name, VV + VH files) that is all NaN.
    nan_s1_files = sorted((raw / "s1").glob(f"{NAN_S1}_V?.tif"))
    assert [p.stem[-2:] for p in nan_s1_files] == ["VH", "VV"]
    for path in nan_s1_files:
        with rasterio.open(path, "r+") as ds:
            ds.write(np.full((ds.count, ds.height, ds.width), np.nan, np.float32))
    # (f) an S2 product with one band file deleted.
    deleted_band = next(s2[MISSING_BAND_S2].rglob("*_B05_20m.tif"))
    deleted_band.unlink()
    missing_band_files = _files(s2[MISSING_BAND_S2])
    # (g) a land-cover raster (uint8, EPSG:4326) far from every scene: in the Amazon.
    far_landcover = root / "far_landcover.tif"
    with rasterio.open(far_landcover, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", nodata=0,
                       crs="EPSG:4326", transform=Affine(1e-3, 0.0, -60.0, 0.0, -1e-3, -10.0)) as dst:
        dst.write(np.full((1, 100, 100), 40, np.uint8))

    bad = {truncated_s2_band, truncated_s1, text_tif, no_crs, *zero_s2_files, *nan_s1_files, *missing_band_files}
    bad |= set(_files(s2[TRUNCATED_S2]))
    good_files = [p for p in _files(raw) if p not in bad]
    return BadInputs(raw, far_landcover, truncated_s2_band, truncated_s1, text_tif, no_crs, zero_s2_files,
                     nan_s1_files, missing_band_files, deleted_band, good_files)


@pytest.fixture(scope="session")
def scheduler() -> Iterator[str]:
    """One loopback Dask cluster for every ingest of this file (``--scheduler`` / ``Engine(scheduler=)``),
    so each run skips starting its own and its workers' imports."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> BadInputs:
    return _make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="session")
def bad_run(bad_inputs: BadInputs, scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    out = tmp_path_factory.mktemp("bad_ds")
    return run_ingest([str(bad_inputs.raw)], out, landcover=[str(bad_inputs.far_landcover)], config=CONFIG,
                      scheduler=scheduler, progress=False)


def _rows(result: IngestResult, path: Path) -> list[dict]:
    return [e.to_dict() for e in result.errors if e.path == str(path)]


def _one_row(result: IngestResult, path: Path) -> dict:
    rows = _rows(result, path)
    assert len(rows) == 1, f"{path.name}: expected one error row, got {rows}"
    return rows[0]


# ---------------------------------------------------------------- the run as a whole


def test_bad_inputs_do_not_stop_the_run(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    out = bad_run.out
    assert bad_run.exit_code == 1
    assert bad_run.samples > 0
    manifest = read_manifest(out)
    assert manifest.num_rows == bad_run.samples
    # Only the good scenes made it into the dataset, and all of them did.
    s2_ids = {p for ids in manifest.column("s2_product_ids").to_pylist() for p in ids}
    s1_ids = {p for ids in manifest.column("s1_product_ids").to_pylist() for p in ids} - {None}
    assert s2_ids == GOOD_S2
    assert s1_ids == {GOOD_S1}
    # Land cover came from the demo WorldCover tiles, never from the far-away raster.
    assert all(manifest.column("has_lc").to_pylist())
    # The samples read back are the manifest's, and the dataset verifies.
    urls = shard_urls(out, "train") + shard_urls(out, "val")
    samples = list(read_samples(urls))
    assert sorted(s["__key__"] for s in samples) == sorted(manifest.column("key").to_pylist())
    for s in samples:
        assert {t["s2_product_id"] for t in s["meta"]["time_steps"]} <= GOOD_S2
        assert "far_landcover" not in s["meta"]["labels"]["source"]
        assert s["meta"]["labels"]["source"].startswith("ESA_WorldCover_10m_2021_v200_")
    assert verify_dataset(out, workers=1).ok


def test_errors_parquet_lists_exactly_the_bad_inputs(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    table = pq.read_table(bad_run.out / "errors.parquet")
    assert table.column_names == ERROR_COLUMNS
    on_disk = table.to_pylist()
    assert sorted(on_disk, key=lambda r: (r["path"], r["stage"])) == \
        sorted((e.to_dict() for e in bad_run.errors), key=lambda r: (r["path"], r["stage"]))
    report = json.loads((bad_run.out / "report.json").read_text())
    assert report["errors"]["count"] == len(bad_run.errors)
    # a product-level problem is one row naming the product (its SAFE folder), a file's the file
    expected = {bad_inputs.truncated_s1, bad_inputs.text_tif, bad_inputs.no_crs, bad_inputs.far_landcover,
                bad_inputs.truncated_s2_band, bad_inputs.zero_s2_files[0].parents[4], *bad_inputs.nan_s1_files,
                bad_inputs.missing_band_files[0].parents[4]}
    got = {Path(e.path) for e in bad_run.errors}
    # Every bad input has a row; no good file does (the truncated scene's other bands may be listed too).
    assert expected <= got
    assert not got & set(bad_inputs.good_files)
    truncated_safe = bad_inputs.truncated_s2_band.parents[4]
    assert all(p in expected or truncated_safe in p.parents for p in got), got - expected
    assert all(e.reason and len(e.reason) > 15 for e in bad_run.errors)


# ---------------------------------------------------------------- one test per bad input


def test_truncated_s2_band_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    row = _one_row(bad_run, bad_inputs.truncated_s2_band)
    assert row["stage"] == "scan"
    assert "truncated" in row["reason"]
    assert row["product_id"] == TRUNCATED_S2


def test_truncated_s2_band_is_singled_out(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    blamed = [e for e in bad_run.errors if e.product_id == TRUNCATED_S2 and "truncated" in e.reason]
    name = bad_inputs.truncated_s2_band.name
    only_the_file = [e.path for e in blamed] == [str(bad_inputs.truncated_s2_band)]
    assert only_the_file or all(name in e.reason for e in blamed), blamed[:2]


def test_truncated_s1_file_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    row = _one_row(bad_run, bad_inputs.truncated_s1)
    assert row["stage"] == "scan"
    assert row["reason"].startswith("unreadable raster")
    assert bad_inputs.truncated_s1.name in row["reason"]  # GDAL's message names the file


def test_text_file_named_tif_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    row = _one_row(bad_run, bad_inputs.text_tif)
    assert row["stage"] == "scan"
    assert row["reason"].startswith("unreadable raster")
    assert "not recognized as being in a supported file format" in row["reason"]


def test_geotiff_without_crs_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    row = _one_row(bad_run, bad_inputs.no_crs)
    assert row["stage"] == "scan"
    assert row["reason"] == "no CRS: the raster is not georeferenced"


def test_all_nodata_s2_scene_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    assert len(bad_inputs.zero_s2_files) == 13  # 12 bands + SCL: one problem, one row naming the SAFE
    safe = bad_inputs.zero_s2_files[0].parents[4]
    assert safe.name == f"{ZERO_S2}.SAFE"
    row = _one_row(bad_run, safe)
    assert (row["stage"], row["product_id"]) == ("scan", ZERO_S2)
    assert row["reason"] == "no valid pixels: every S2 value is nodata (0)"
    assert not any(_rows(bad_run, path) for path in bad_inputs.zero_s2_files)


def test_all_nan_s1_product_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    for path in bad_inputs.nan_s1_files:
        row = _one_row(bad_run, path)
        assert (row["stage"], row["product_id"]) == ("scan", NAN_S1)
        assert row["reason"].startswith("no valid pixels") and "NaN" in row["reason"]


def test_s2_product_with_a_deleted_band_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    assert not _rows(bad_run, bad_inputs.deleted_band)  # gone: nothing to point at but its siblings
    assert len(bad_inputs.missing_band_files) == 12
    safe = bad_inputs.missing_band_files[0].parents[4]
    assert safe.name == f"{MISSING_BAND_S2}.SAFE"
    row = _one_row(bad_run, safe)  # one row for the product, not one per remaining band file
    assert (row["stage"], row["product_id"]) == ("scan", MISSING_BAND_S2)
    assert re.search(r"without band\(s\) B5\b", row["reason"]), row["reason"]
    assert not any(_rows(bad_run, path) for path in bad_inputs.missing_band_files)


def test_landcover_far_from_every_scene_is_reported(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    row = _one_row(bad_run, bad_inputs.far_landcover)
    assert (row["stage"], row["product_id"]) == ("plan", "far_landcover")
    assert "overlaps no planned tile" in row["reason"]


def test_s1_with_an_all_nan_vh_band_is_reported(bad_inputs: BadInputs, scheduler: str, tmp_path: Path) -> None:
    s1 = tmp_path / "s1" / f"{GOOD_S1}.tif"
    s1.parent.mkdir()
    shutil.copy(bad_inputs.raw / "s1" / s1.name, s1)
    with rasterio.open(s1, "r+") as ds:
        assert ds.descriptions == ("VV", "VH")
        ds.write(np.full((ds.height, ds.width), np.nan, np.float32), 2)
    result = run_ingest([str(bad_inputs.raw / "s2" / GOOD_SUMMER_SAFE), str(s1)], tmp_path / "ds", config=CONFIG,
                        scheduler=scheduler, progress=False)
    assert result.samples > 0  # the S2 steps stay
    row = _one_row(result, s1)
    assert "NaN" in row["reason"] or "no valid pixels" in row["reason"]
    assert result.exit_code == 1


def test_s2_with_one_all_nodata_band_is_reported(bad_inputs: BadInputs, scheduler: str, tmp_path: Path) -> None:
    safe = Path(shutil.copytree(bad_inputs.raw / "s2" / GOOD_SUMMER_SAFE, tmp_path / GOOD_SUMMER_SAFE))
    b02 = next(safe.rglob("*_B02_10m.tif"))
    with rasterio.open(b02, "r+") as ds:
        ds.write(np.zeros((ds.height, ds.width), np.uint16), 1)
    result = run_ingest([str(safe)], tmp_path / "ds", config=CONFIG, scheduler=scheduler, progress=False)
    assert result.samples == 0
    assert result.exit_code == 1
    assert any(e.path == str(b02) and "no valid pixels" in e.reason for e in result.errors), result.errors


def test_good_scene_values_survive_next_to_bad_inputs(bad_run: IngestResult, bad_inputs: BadInputs) -> None:
    """A 32632 tile's B02 equals the SAFE's B02 at the same map coordinate, minus the 05.09 offset."""
    product = GOOD_SUMMER_SAFE.removesuffix(".SAFE")
    source = next((bad_inputs.raw / "s2" / GOOD_SUMMER_SAFE).rglob("*_B02_10m.tif"))
    urls = shard_urls(bad_run.out, "train") + shard_urls(bad_run.out, "val")
    sample = next(s for s in read_samples(urls) if s["meta"]["epsg"] == 32632
                  and s["meta"]["time_steps"][-1]["s2_product_id"] == product
                  and s["meta"]["time_steps"][-1]["s2_valid_fraction"] == 1.0)
    step = len(sample["meta"]["time_steps"]) - 1
    assert sample["meta"]["time_steps"][step]["s2_offset_removed"] == 1000
    a, _, c, _, e, f = sample["meta"]["transform"]
    b02 = sample["s2"][step, S2_BAND_NAMES.index("B2")]
    with rasterio.open(source) as src:
        for row, col in [(0, 0), (5, 41), (31, 17), (63, 63), (47, 2)]:
            r, cc = src.index(c + a * (col + 0.5), f + e * (row + 0.5))
            dn = int(src.read(1, window=((r, r + 1), (cc, cc + 1)))[0, 0])
            assert dn > 0
            assert int(b02[row, col]) == max(dn - 1000, 1), (row, col)


# ---------------------------------------------------------------- --strict


def test_strict_stops_at_the_first_bad_file(bad_inputs: BadInputs, scheduler: str, tmp_path: Path) -> None:
    good_safe = bad_inputs.raw / "s2" / GOOD_SUMMER_SAFE
    out = tmp_path / "ds"
    # Inputs in this order on purpose: the first bad file (in scan order, by path) is notes/something.tif.
    result = CliRunner().invoke(main, [
        "ingest", str(good_safe), str(bad_inputs.no_crs), str(bad_inputs.text_tif), "--out", str(out),
        "--strict", "--scheduler", scheduler, "--tile-size", "64", "--quiet",
    ])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit)
    assert str(bad_inputs.text_tif) in result.output
    assert "not recognized as being in a supported file format" in result.output
    assert "--strict" in result.output
    assert str(bad_inputs.no_crs) not in result.output  # only the first one is named
    # It stopped before writing anything: no shards, no manifest; errors.parquet starts with that file.
    assert not list(out.glob("shards/*/*.tar"))
    assert not (out / "manifest.parquet").exists()
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert errors[0]["path"] == str(bad_inputs.text_tif)


# ---------------------------------------------------------------- real data


def _real_product_id(path: Path) -> str:
    """The product a raster file belongs to, from its name (independent of eoforge.ingest.names)."""
    safe = next((p for p in path.parents if p.name.endswith(".SAFE")), None)
    if safe is not None:
        return safe.name.removesuffix(".SAFE")
    return re.sub(r"_(B\d\d|B8A|VV|VH)$", "", path.stem)


@pytest.mark.real_data
def test_real_folder_is_ingested_or_explained(real_data: Path, scheduler: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, [
        "ingest", str(real_data), "--landcover", str(real_data / "worldcover"), "--out", str(out),
        "--min-valid-fraction", "0.2", "--scheduler", scheduler, "--quiet",
    ])
    assert result.exit_code == 1, result.output  # inputs failed, the rest was written
    assert "input error(s)" in result.output
    assert verify_dataset(out, workers=1).ok

    manifest = read_manifest(out)
    samples = list(read_samples(shard_urls(out, "train") + shard_urls(out, "val")))
    ingested = {p for col in ("s2_product_ids", "s1_product_ids") for ids in manifest.column(col).to_pylist()
                for p in ids if p}
    ingested |= {src for s in samples if s["meta"]["labels"] for src in s["meta"]["labels"]["source"].split(",")}
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    by_path: dict[str, list[dict]] = defaultdict(list)
    by_product: dict[str, list[dict]] = defaultdict(list)
    for e in errors:
        by_path[e["path"]].append(e)
        by_product[e["product_id"]].append(e)

    files = _files(real_data)
    assert len(files) >= 30
    unexplained = []
    def explained(path: Path) -> bool:  # a row names the file, or the product folder it is in
        return any(by_path.get(str(p)) for p in (path, *path.parents))

    for path in files:
        pid = _real_product_id(path)
        if pid in ingested or explained(path):
            continue
        # Files the scan skips on purpose (a SAFE's true-colour preview) are covered by their product's rows.
        if "_TCI_" in path.name and by_product.get(pid):
            continue
        unexplained.append(path)
    assert not unexplained

    def reasons(path: Path) -> set[str]:
        return {(e["stage"], e["reason"]) for e in by_path[str(path)]}

    # T29UNU SAFE: all bands at 60 m but B08 (10 m only) -> missing band: one row, the SAFE's
    safe = next(real_data.glob("*T29UNU*.SAFE"))
    ((stage, reason),) = reasons(safe)
    assert stage == "scan" and re.search(r"without band\(s\) B8\b", reason), reason
    assert not any(by_path.get(str(path)) for path in _files(safe))
    # Sen1Floods11 chips have no acquisition time; its label raster is not a Sentinel product.
    floods = real_data / "sen1floods11_spain"
    for name in ("Spain_7370579_S1Hand.tif", "Spain_7370579_S2Hand.tif"):
        ((stage, reason),) = reasons(floods / name)
        assert stage == "scan" and reason.startswith("no acquisition time"), reason
    for path in (floods / "Spain_7370579_LabelHand.tif", real_data / "other" / "RGB.byte.tif"):
        ((stage, reason),) = reasons(path)
        assert stage == "scan" and reason.startswith("not recognised as Sentinel-1, Sentinel-2 or land cover")
    # Both land-cover rasters (the standard tile and the Berlin clip given by --landcover) overlap nothing.
    for path in _files(real_data / "worldcover"):
        ((stage, reason),) = reasons(path)
        assert stage == "plan" and "overlaps no planned tile" in reason, (path.name, reason)

    # The BigEarthNet pair: exactly one sample, one time step, paired with its S1.
    ben = real_data / "ben_pair_29UPU_4_55"
    assert not any(by_path.get(str(p)) for p in _files(ben))
    assert manifest.num_rows == 1
    (sample,) = samples
    meta = sample["meta"]
    (step,) = meta["time_steps"]
    assert step["s2_product_id"] == "S2A_MSIL2A_20170617T113321_4_55"
    assert step["s1_product_id"] == "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"
    dt = (datetime(2017, 6, 17, 6, 47, 24) - datetime(2017, 6, 17, 11, 33, 21)).total_seconds() / 86400
    assert step["dt_days"] == pytest.approx(dt, abs=1e-3)  # -0.1986
    assert step["s1_orbit_direction"] == "descending"
    assert step["s1_source_unit"] == "db"
    assert step["s2_offset_removed"] == 0  # 2017: before baseline 04.00
    n = meta["width"]
    assert (n, meta["height"], meta["epsg"]) == (264, 264, 32629)
    assert step["s2_valid_fraction"] == pytest.approx(120 * 120 / n**2, abs=1e-5)  # ~0.21
    assert sample["s2"].shape == (1, 13, n, n)
    assert not sample["s2"][0, S2_BAND_NAMES.index("B10")].any()

    # Values: 10 m bands and S1 are on the tile's grid, so they are the source values exactly.
    a, _, c, _, e, f = meta["transform"]
    pixels = [(36, 24), (36 + 7, 24 + 11), (100, 80), (155, 143), (120, 30)]  # inside the 120 px patch
    for band, member, index in (("S2A_MSIL2A_20170617T113321_4_55_B02.tif", "s2", S2_BAND_NAMES.index("B2")),
                                ("S2A_MSIL2A_20170617T113321_4_55_B08.tif", "s2", S2_BAND_NAMES.index("B8")),
                                ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55_VV.tif", "s1", 0),
                                ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55_VH.tif", "s1", 1)):
        with rasterio.open(ben / band) as src:
            for row, col in pixels:
                r, cc = src.index(c + a * (col + 0.5), f + e * (row + 0.5))
                assert 0 <= r < src.height and 0 <= cc < src.width
                direct = src.read(1, window=((r, r + 1), (cc, cc + 1)))[0, 0]
                got = sample[member][0, index, row, col]
                if member == "s2":
                    assert int(got) == int(direct), (band, row, col)
                else:
                    assert got == np.float16(direct), (band, row, col)
    # Outside the patch there is no data: S2 0, S1 invalid.
    for row, col in [(0, 0), (35, 24), (36, 23), (156, 143), (263, 263)]:
        assert not sample["s2"][0, :, row, col].any()
        assert not sample["s1valid"][0, row, col]
    assert sample["s1valid"][0].sum() == 120 * 120


def test_a_jpeg2000_safe_and_deflate_geotiffs_of_the_same_pixels_give_the_same_samples(
        scheduler: str, tmp_path: Path) -> None:
    """The benchmark's two scene layouts (``ingest/bench.py``): a SAFE folder of lossless
    JPEG2000 bands as ESA delivers L2A (``MTD_MSIL2A.xml``, ``GRANULE/…/IMG_DATA/R10m|R20m|R60m``)
    and per-band DEFLATE GeoTIFFs, the same pixels. Both must be scanned as one L2A product
    of baseline 05.09 (+1000 offset removed) and give identical samples, so what the
    benchmark compares is decoding alone."""
    from eoforge.ingest.bench import make_scene

    results, samples = {}, {}
    for fmt in ("safe", "cog"):
        scene = make_scene(tmp_path / f"scene-{fmt}", 1056, fmt)
        results[fmt] = run_ingest([str(scene)], tmp_path / f"ds-{fmt}", config=IngestConfig(val_fraction=0.0),
                                  scheduler=scheduler, progress=False)
        assert not results[fmt].errors, results[fmt].errors
        samples[fmt] = {s["__key__"]: s for s in read_samples(shard_urls(tmp_path / f"ds-{fmt}"))}
    scenes = pq.read_table(tmp_path / "ds-safe" / "scenes.parquet").to_pylist()
    assert len(scenes) == 1 and scenes[0]["level"] == "L2A" and scenes[0]["baseline"] == "05.09"
    assert scenes[0]["dn_offset"] == 1000 and all(p.endswith(".jp2") for p in scenes[0]["paths"])
    assert results["safe"].samples == results["cog"].samples > 0
    assert samples["safe"].keys() == samples["cog"].keys()
    for key, safe in samples["safe"].items():
        cog = samples["cog"][key]
        np.testing.assert_array_equal(safe["s2"], cog["s2"])
        np.testing.assert_array_equal(safe["scl"], cog["scl"])
        assert safe["meta"]["time_steps"][0]["s2_product_id"] == cog["meta"]["time_steps"][0]["s2_product_id"]
    some = next(iter(samples["safe"].values()))["s2"]
    assert some.dtype == np.uint16 and some[0, S2_BAND_NAMES.index("B4")].max() > 0
