"""Names, config, scan grouping and planning rules, on metadata (no Dask)."""

from __future__ import annotations

from datetime import datetime

import pytest

from eoforge.ingest.config import IngestConfig
from eoforge.shards.config import ConfigError
from eoforge.ingest.names import canonical_band, parse_file_name, parse_product_name
from eoforge.ingest.plan import season_of
from eoforge.ingest.scan import gdal_path, orbit_from_solar_time


def test_product_names() -> None:
    s2 = parse_product_name("S2A_MSIL2A_20230715T101031_N0509_R022_T32TQM_20230715T153045.SAFE")
    assert (s2.sensor, s2.level, s2.baseline, s2.relative_orbit, s2.mgrs_tile) == ("s2", "L2A", "05.09", 22, "32TQM")
    assert s2.datetime == datetime(2023, 7, 15, 10, 10, 31)
    s1 = parse_product_name("S1A_IW_GRDH_1SDV_20230715T053015_20230715T053040_049422_05F1B7_6C1A")
    assert (s1.sensor, s1.datetime) == ("s1", datetime(2023, 7, 15, 5, 30, 15))
    wc = parse_product_name("ESA_WorldCover_10m_2021_v200_N48E009_Map")
    assert (wc.sensor, wc.taxonomy) == ("landcover", "worldcover")
    assert parse_product_name("Spain_7370579_S1Hand").sensor is None


@pytest.mark.parametrize(
    ("stem", "folder", "expected"),
    [
        ("T32TQR_20210721T101027_B8A_20m", "S2A_MSIL2A_20210721T101027_N0301_R022_T32TQR_20210721T124534.SAFE",
         ("s2", "B8A", 20.0)),
        ("T32TQR_20230716T101028_B02", None, ("s2", "B2", None)),
        ("S2A_MSIL2A_20170617T113321_4_55_B12", None, ("s2", "B12", None)),
        ("B01", "S2A_33TTL_20221014_0_L2A", ("s2", "B1", None)),
        ("nir08", "S2A_33TTL_20221014_0_L2A", ("s2", "B8A", None)),
        ("vh", "S1A_IW_GRDH_1SDV_20221013T053107_20221013T053132_045397_056F36_56DA", ("s1", "VH", None)),
        ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55_VV", None, ("s1", "VV", None)),
    ],
)
def test_file_names(stem: str, folder: str | None, expected: tuple) -> None:
    info = parse_file_name(stem, folder)
    assert (info.sensor, info.band, info.resolution_m) == expected


def test_true_colour_is_skipped_and_bands_are_canonical() -> None:
    assert parse_file_name("T29UNU_20221005T115411_TCI_60m").band == "skip"
    # the auxiliary files of Earth Search / Planetary Computer items and of SAFE QI_DATA
    item = "S2A_33TTL_20221014_0_L2A"
    for stem in ("TCI", "visual", "AOT", "WVP", "L2A_PVI", "preview", "thumbnail", "MSK_CLDPRB_20m",
                 "MSK_DETFOO_B02", "T33TTL_20221014T100031_AOT_20m", "S2A_MSIL2A_20221014T100031_N0400_R122_T33TTL_WVP"):
        assert parse_file_name(stem, item).band == "skip", stem
    for stem in ("B02", "SCL", "blue", "coastal", "nir08", "T33TTL_20221014T100031_B02_10m"):  # bands stay bands
        assert parse_file_name(stem, item).band not in (None, "skip"), stem
    assert [canonical_band(b) for b in ("B02", "b8a", "B10", "swir16", "B13", "vv")] == ["B2", "B8A", "B10", "B11", None, "VV"]


def test_seasons_and_orbit_rules() -> None:
    assert [season_of(datetime(2021, m, 1), 4) for m in (12, 1, 2, 3, 6, 9, 11)] == [0, 0, 0, 1, 2, 3, 3]
    assert season_of(datetime(2021, 7, 1), 1) == 0
    # Dawn-dusk orbit: 05:28 UTC at 12°E is ~06:16 local -> descending; 17:03 UTC -> ascending.
    assert orbit_from_solar_time(datetime(2023, 7, 14, 5, 28), 12.0) == "descending"
    assert orbit_from_solar_time(datetime(2023, 7, 16, 17, 3), 12.0) == "ascending"
    assert orbit_from_solar_time(datetime(2017, 6, 17, 6, 47), -7.5) == "descending"


def test_gdal_paths() -> None:
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("https://host/x.tif") == "/vsicurl/https://host/x.tif"
    assert gdal_path("/data/x.tif") == "/data/x.tif"


def test_config_yaml_and_overrides(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ingest:\n  tile_size_px: 128\n  max_dt_days: 5\n  cloud_classes: [8, 9]\n")
    cfg = IngestConfig.load(recipe)
    assert (cfg.tile_size_px, cfg.max_dt_days, cfg.cloud_classes) == (128, 5.0, (8, 9))
    cfg = cfg.replace(max_dt_days=1.5, seasons=None)
    assert (cfg.max_dt_days, cfg.seasons) == (1.5, 4)
    assert IngestConfig.from_dict(cfg.to_dict()) == cfg
    recipe.write_text("ingest:\n  tile_size: 128\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key ingest.tile_size "):
        IngestConfig.load(recipe)
    with pytest.raises(ConfigError, match="read_task_rows"):
        IngestConfig(read_task_rows=0)
    with pytest.raises(ConfigError, match="gdal_threads must be >= 1"):
        IngestConfig(gdal_threads=0)


def test_release_pieces_frees_the_frames_and_lists_the_tiles(tmp_path) -> None:
    import os

    from eoforge.ingest.pieces import Piece, release_pieces, released_tiles, staging_paths

    frames, _ = staging_paths(tmp_path, "s2-000001-w000-000of001")
    frames.parent.mkdir(parents=True)
    block = 1 << 16  # whole file-system blocks, so the hole shows in st_blocks
    frames.write_bytes(os.urandom(4 * block))
    os.sync()
    before = os.stat(frames)
    task = "s2-000001-w000-000of001"
    pieces = [Piece("ok", 1.0, 0.0, {"s2": (block, block), "scl": (2 * block, block)}, task=task, tile="32n_00001_00002"),
              Piece("low_valid", 0.1, None, task=task, tile="32n_00001_00003")]
    freed = release_pieces(tmp_path, pieces)
    after = os.stat(frames)
    assert after.st_size == before.st_size  # offsets of the other frames stay valid
    if freed:  # where the file system punches holes
        assert freed == 2 * block
        assert after.st_blocks < before.st_blocks
        data = frames.read_bytes()
        assert data[block:3 * block] == bytes(2 * block) and data[:block] != bytes(block)
    assert released_tiles(tmp_path, "s2-000001-w000-000of001") == ({"32n_00001_00002"} if freed else set())


@pytest.mark.parametrize("driver,suffix,options", [
    ("GTiff", ".tif", {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}),
    ("GTiff", ".tif", {"tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "band"}),
    ("JP2OpenJPEG", ".jp2", {"reversible": "YES", "blockxsize": 256, "blockysize": 256}),
])
def test_truncation_is_told_from_header_bytes(tmp_path, driver: str, suffix: str, options: dict) -> None:
    """The scan probe's completeness check: a whole file passes, the same file cut anywhere
    after its header is named truncated, without decoding a block."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from eoforge.ingest.blocks import inspect_blocks

    path = tmp_path / f"band{suffix}"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 10000, (2, 700, 600), dtype=np.uint16)  # noise: blocks of similar size
    with rasterio.open(path, "w", driver=driver, width=600, height=700, count=2, dtype="uint16", crs="EPSG:32632",
                       transform=from_origin(500000, 5000000, 10, 10), **options) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert inspect_blocks(src, str(path))[0] == ""
    whole = path.read_bytes()
    for fraction in (0.5, 0.9, 0.999):
        path.write_bytes(whole[: int(len(whole) * fraction)])
        with rasterio.open(path) as src:
            reason = inspect_blocks(src, str(path))[0]
        assert reason and ("ends at byte" in reason or "needs" in reason or "EOC" in reason), (fraction, reason)
    path.write_bytes(whole)
    with rasterio.open(path) as src:
        assert inspect_blocks(src, "/vsicurl/https://example.invalid/band" + suffix)[0] is None  # not local: decode


def test_an_earth_search_folder_with_its_auxiliary_assets_scans_without_errors(demo_raw, tmp_path) -> None:
    """A downloaded Earth Search item folder holds TCI / AOT / WVP / preview COGs beside the
    bands (and a SAFE holds QI masks): they are skipped, not error rows."""
    import shutil

    import numpy as np
    import rasterio

    from eoforge.ingest.config import IngestConfig
    from eoforge.ingest.engine import Engine
    from eoforge.ingest.scan import scan

    item = tmp_path / "S2A_33TTL_20221014_0_L2A"
    shutil.copytree(demo_raw / "earth_search" / item.name, item)
    with rasterio.open(item / "B02.tif") as src:
        profile = src.profile
    for name, count, dtype in (("TCI", 3, "uint8"), ("AOT", 1, "uint16"), ("WVP", 1, "uint16"),
                               ("L2A_PVI", 3, "uint8"), ("MSK_DETFOO_B02", 1, "uint8")):
        with rasterio.open(item / f"{name}.tif", "w", **{**profile, "count": count, "dtype": dtype, "nodata": None}) as dst:
            dst.write(np.ones((count, profile["height"], profile["width"]), dtype))
    result = scan([str(tmp_path)], [], IngestConfig(), Engine(workers=1, progress=False))
    assert result.errors == [] and len(result.scenes) == 1
    bands = result.scenes[0].bands
    assert bands["B2"].path.endswith("/B02.tif") and "SCL" in bands
