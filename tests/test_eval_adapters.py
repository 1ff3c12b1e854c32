"""Adapters: reference datasets -> verified labelled shards (fake EuroSAT / Sen1Floods11 written
with rasterio; the real BigEarthNet pair and Sen1Floods11 chip from $EOFORGE_REAL_DATA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from _eval_helpers import export_tiny_vit
from click.testing import CliRunner
from affine import Affine

from eoforge.eval.adapters.bigearthnet import CORINE43, CORINE43_TO_BEN19, adapt_bigearthnet, map_labels
from eoforge.eval.adapters.common import AdapterError, hash_split
from eoforge.eval.adapters.eurosat import adapt_eurosat
from eoforge.eval.adapters.sen1floods11 import adapt_sen1floods11
from eoforge.eval.cli import adapt
from eoforge.eval.knn import KNNConfig
from eoforge.eval.run import EvalConfig, evaluate
from eoforge.eval.segmentation import SegmentationConfig
from eoforge.shards.reader import iter_dataset
from eoforge.shards.schema import BIGEARTHNET19, EUROSAT, S2_B10_INDEX, S2_BAND_NAMES
from eoforge.shards.verify import verify_dataset

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "SeaLake")


def _write_tif(path: Path, data: np.ndarray, epsg: int = 32631, origin=(500000.0, 5600000.0), res=10.0,
               nodata=None, descriptions=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
                       crs=f"EPSG:{epsg}", transform=Affine(res, 0.0, origin[0], 0.0, -res, origin[1]),
                       nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions


def _fake_eurosat(root: Path, per_class: int = 3, bands: int = 13) -> dict[str, tuple[str, np.ndarray, str]]:
    """``root/<Class>/<Class>_<n>.tif``: per class a distinct spectrum, so classes are separable."""
    truth = {}
    rng = np.random.default_rng(0)
    for c, cls in enumerate(EUROSAT_CLASSES):
        for i in range(1, per_class + 1):
            data = (500 + 800 * c + rng.integers(0, 100, (bands, 64, 64))).astype(np.uint16)
            _write_tif(root / cls / f"{cls}_{i}.tif", data, origin=(500000.0 + 640 * i, 5600000.0 + 640 * c))
            truth[f"{cls.lower()}_{i}"] = (cls, data, f"{cls}_{i}")
    return truth


def test_eurosat_folder_becomes_verified_single_label_shards(tmp_path):
    truth = _fake_eurosat(tmp_path / "EuroSAT_MS")
    result = adapt_eurosat(tmp_path / "EuroSAT_MS", tmp_path / "ds", val_fraction=0.3, samples_per_shard=4)
    assert result.total == 9 and not result.errors
    report = verify_dataset(tmp_path / "ds", workers=1)
    assert report.ok and report.samples_checked == 9 and report.shards_checked >= 3
    assert (tmp_path / "ds" / "stats.json").is_file()
    seen = {}
    for s in iter_dataset(tmp_path / "ds"):
        cls, data, stem = truth[s["__key__"]]
        labels = s["meta"]["labels"]
        assert labels["taxonomy"] == "eurosat" and labels["names"] == list(EUROSAT.names)
        assert labels["multi_hot"] == [int(n == cls) for n in EUROSAT.names]
        assert np.array_equal(s["s2"][0], data) and s["s2"].shape == (1, 13, 64, 64)
        assert s["meta"]["epsg"] == 32631 and s["meta"]["time_steps"][0]["datetime"] is None
        assert s["meta"]["split"] == hash_split(stem, 0.3)
        seen[s["__key__"]] = s["meta"]["split"]
    assert set(seen) == set(truth) and set(seen.values()) == {"train", "val"}
    assert sum(result.classes["train"].values()) + sum(result.classes["val"].values()) == 9
    # shards mix classes: the write order is a seeded hash, not folder order
    first_shard = [s["__key__"].split("_")[0] for s in iter_dataset(tmp_path / "ds", "train")][:4]
    assert len(set(first_shard)) > 1


def test_eurosat_bad_inputs_are_recorded_and_the_rest_written(tmp_path):
    _fake_eurosat(tmp_path / "src", per_class=2)
    _write_tif(tmp_path / "src" / "Forest" / "Forest_9.tif", np.ones((5, 64, 64), np.uint16))
    (tmp_path / "src" / "Forest" / "Forest_8.tif").write_bytes(b"not a tiff")
    result = adapt_eurosat(tmp_path / "src", tmp_path / "ds", val_fraction=0.0)
    assert result.samples == {"train": 6}
    errors = pq.read_table(tmp_path / "ds" / "errors.parquet").to_pylist()
    assert sorted(e["path"] for e in errors) == ["Forest_8", "Forest_9"]
    assert any("5 bands, expected 13" in e["reason"] for e in errors)
    assert verify_dataset(tmp_path / "ds", workers=1).ok
    with pytest.raises(AdapterError, match="already holds a dataset"):
        adapt_eurosat(tmp_path / "src", tmp_path / "ds")
    (tmp_path / "src" / "Clouds").mkdir()
    with pytest.raises(AdapterError, match="not a EuroSAT class folder"):
        adapt_eurosat(tmp_path / "src", tmp_path / "ds2")


def test_eurosat_12_band_files_get_a_zero_b10(tmp_path):
    _fake_eurosat(tmp_path / "src", per_class=1, bands=12)
    adapt_eurosat(tmp_path / "src", tmp_path / "ds", val_fraction=0.0)
    s = next(iter(iter_dataset(tmp_path / "ds")))
    assert not s["s2"][0, S2_B10_INDEX].any() and s["s2"][0, 11].all()
    assert s["meta"]["time_steps"][0]["s2_b10_zero"] is True


def test_adapt_cli_with_split_lists_and_knn_probe_on_eurosat(tmp_path):
    _fake_eurosat(tmp_path / "src", per_class=4)
    (tmp_path / "train.txt").write_text("".join(f"{c}_{i}.tif\n" for c in EUROSAT_CLASSES for i in (1, 2, 3)))
    (tmp_path / "val.txt").write_text("".join(f"{c}_4.tif\n" for c in EUROSAT_CLASSES[:2]))
    res = CliRunner().invoke(adapt, ["eurosat", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--quiet",
                                     "--split-list", f"train={tmp_path / 'train.txt'}",
                                     "--split-list", f"val={tmp_path / 'val.txt'}"])
    assert res.exit_code == 0, res.output
    assert "11 samples (9 train, 2 val)" in res.output and "1 left out" in res.output  # SeaLake_4 is not listed
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    result = evaluate(weights, tmp_path / "ds", "knn", EvalConfig(normalization="dataset", knn=KNNConfig(k=3)))
    assert result.report["settings"]["labels"]["single_label"] is True
    rows = {r["backbone"]: r["metrics"] for r in result.report["results"]}
    assert set(rows) == {"pretrained", "random-init"}
    assert rows["pretrained"]["top1"] == 1.0  # one spectrum per class: separable even for random weights


def test_corine_to_bigearthnet19_table_is_complete():
    assert len(CORINE43) == 43 and set(CORINE43_TO_BEN19) <= set(CORINE43)
    assert sorted(set(CORINE43_TO_BEN19.values()), key=BIGEARTHNET19.names.index) == list(BIGEARTHNET19.names)
    dropped = sorted(set(CORINE43) - set(CORINE43_TO_BEN19))
    assert len(dropped) == 11 and "Burnt areas" in dropped and "Bare rock" in dropped
    assert map_labels(["Sea and ocean", "Estuaries", "Peatbogs", "Airports"]) == ["Inland wetlands", "Marine waters"]
    assert map_labels(["transitional woodland/shrub"]) == ["Transitional woodland, shrub"]
    assert map_labels(["Transitional woodland, shrub"]) == ["Transitional woodland, shrub"]  # v2 spelling
    with pytest.raises(AdapterError, match="unknown CORINE label"):
        map_labels(["Lava fields"])


@pytest.mark.real_data
def test_real_bigearthnet_pair(real_data, tmp_path):
    src = real_data / "ben_pair_29UPU_4_55"
    result = adapt_bigearthnet(src, tmp_path / "ds", val_fraction=0.0)
    assert result.samples == {"train": 1}
    assert verify_dataset(tmp_path / "ds", workers=1).ok
    (s,) = list(iter_dataset(tmp_path / "ds"))
    patch = "S2A_MSIL2A_20170617T113321_4_55"
    corine = json.loads((src / f"{patch}_labels_metadata.json").read_text())["labels"]
    expected = {CORINE43_TO_BEN19[n] for n in corine if n in CORINE43_TO_BEN19}
    labels = s["meta"]["labels"]
    assert labels["taxonomy"] == "bigearthnet19"
    assert {n for n, h in zip(labels["names"], labels["multi_hot"]) if h} == expected == {"Pastures"}
    assert s["s2"].shape == (1, 13, 120, 120) and s["s2"].dtype == np.uint16
    assert s["meta"]["transform"][0] == 10.0 and s["meta"]["epsg"] == 32629
    for band in ("B2", "B8", "B5", "B1"):
        with rasterio.open(src / f"{patch}_B{band[1:].zfill(2)}.tif") as f:
            native = f.read(1)
        factor = 120 // native.shape[0]
        stored = s["s2"][0, S2_BAND_NAMES.index(band)]
        assert np.array_equal(stored, native.repeat(factor, 0).repeat(factor, 1)), band  # nearest: source values
    assert not s["s2"][0, S2_B10_INDEX].any()
    with rasterio.open(src / "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55_VH.tif") as f:
        assert np.array_equal(s["s1"][0, 1], f.read(1), equal_nan=True)
    step = s["meta"]["time_steps"][0]
    assert step["datetime"] == "2017-06-17T11:33:21Z" and step["s1_datetime"] == "2017-06-17T06:47:24Z"
    assert step["dt_days"] == pytest.approx(-(4 * 3600 + 45 * 60 + 57) / 86400)


@pytest.mark.real_data
def test_real_bigearthnet_cli_no_s1_and_bilinear_resampling(real_data, tmp_path):
    """``eoforge adapt bigearthnet --no-s1 --resampling bilinear``: no S1 members though the S1
    patch is there; the 10 m bands stay the source values, the 20/60 m bands are interpolated
    (not the nearest-neighbour repeats) and keep their band means."""
    from click.testing import CliRunner

    from eoforge.cli import main

    src = real_data / "ben_pair_29UPU_4_55"
    args = ["adapt", "bigearthnet", str(src), "--out", str(tmp_path / "ds"), "--val-fraction", "0",
            "--no-s1", "--resampling", "bilinear", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (s,) = list(iter_dataset(tmp_path / "ds"))
    assert "s1" not in s and "s1valid" not in s and not s["meta"]["time_steps"][0].get("s1_product_id")
    patch = "S2A_MSIL2A_20170617T113321_4_55"
    for band in ("B2", "B5", "B1"):
        with rasterio.open(src / f"{patch}_B{band[1:].zfill(2)}.tif") as f:
            native = f.read(1).astype(np.float64)
        stored = s["s2"][0, S2_BAND_NAMES.index(band)].astype(np.float64)
        factor = 120 // native.shape[0]
        if factor == 1:
            assert np.array_equal(stored, native), band
        else:
            assert not np.array_equal(stored, native.repeat(factor, 0).repeat(factor, 1)), band
            assert abs(stored.mean() - native.mean()) < 0.02 * native.mean(), band


@pytest.mark.real_data
def test_real_sen1floods11_chip(real_data, tmp_path):
    src = real_data / "sen1floods11_spain"
    result = adapt_sen1floods11(src, tmp_path / "ds", val_fraction=0.0)
    assert result.samples == {"train": 1}
    assert verify_dataset(tmp_path / "ds", workers=1).ok
    (s,) = list(iter_dataset(tmp_path / "ds"))
    with rasterio.open(src / "Spain_7370579_LabelHand.tif") as f:
        label = f.read(1)
    lc = s["lc"][0]
    assert (lc == 1).sum() == (label == 1).sum() > 0  # water
    assert (lc == 0).sum() == (label == 0).sum() > 0  # dry
    assert (lc == 255).sum() == (label == -1).sum() > 0  # ignore
    with rasterio.open(src / "Spain_7370579_S2Hand.tif") as f:
        assert np.array_equal(s["s2"][0], f.read().astype(np.uint16))
    with rasterio.open(src / "Spain_7370579_S1Hand.tif") as f:
        assert np.array_equal(s["s1"][0], f.read(), equal_nan=True)
    labels = s["meta"]["labels"]
    water = (label == 1).sum() / (label >= 0).sum()
    assert labels["taxonomy"] == "sen1floods11" and labels["fractions"][1] == pytest.approx(water, abs=1e-6)
    assert s["meta"]["epsg"] == 4326


def _fake_flood_chips(root: Path, n: int = 6, size: int = 32) -> None:
    """Sen1Floods11-style chips: water where VV is low; a band of -1 labels."""
    rng = np.random.default_rng(0)
    for i in range(n):
        chip = f"Atlantis_{1000 + i}"
        water = np.zeros((size, size), bool)
        water[:, : rng.integers(8, 24)] = True
        vv = np.where(water, -22.0, -9.0) + rng.normal(0, 0.5, water.shape)
        vh = vv - 7
        s1 = np.stack([vv, vh]).astype(np.float32)
        s1[:, 0, :3] = np.nan
        label = water.astype(np.int16)[None]
        label[:, -2:] = -1
        kw = dict(epsg=4326, origin=(-0.78 + 0.01 * i, 38.1), res=8.983e-05)
        _write_tif(root / "S1Hand" / f"{chip}_S1Hand.tif", s1, nodata=np.nan, **kw)
        _write_tif(root / "LabelHand" / f"{chip}_LabelHand.tif", label, **kw)
    (root / "Sen1Floods11_Metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None,
         "properties": {"location": "Atlantis", "s1_date": "2019/09/17", "s2_date": "2019/09/18",
                        "orbit": "DESCENDING"}}]}))
    (root / "train.csv").write_text("".join(f"Atlantis_{1000 + i}_S1Hand.tif,Atlantis_{1000 + i}_LabelHand.tif\n"
                                            for i in range(4)))
    (root / "val.csv").write_text("Atlantis_1004_S1Hand.tif,Atlantis_1004_LabelHand.tif\n"
                                  "Atlantis_1005_S1Hand.tif,Atlantis_1005_LabelHand.tif\n")


def test_flood_chips_split_lists_dates_and_segmentation_probe(tmp_path):
    _fake_flood_chips(tmp_path / "src")
    result = adapt_sen1floods11(tmp_path / "src", tmp_path / "ds",
                                split_lists={"train": tmp_path / "src" / "train.csv",
                                             "val": tmp_path / "src" / "val.csv"})
    assert result.samples == {"train": 4, "val": 2}
    assert verify_dataset(tmp_path / "ds", workers=1).ok
    s = next(iter(iter_dataset(tmp_path / "ds", "val")))
    step = s["meta"]["time_steps"][0]
    assert step["datetime"] == "2019-09-18T00:00:00Z" and step["dt_days"] == -1.0
    assert step["s1_orbit_direction"] == "descending" and "s2" not in s
    assert not s["s1valid"][0, 0, :3].any()
    weights = export_tiny_vit(tmp_path / "s1.safetensors", in_chans=2)
    cfg = EvalConfig(features="mean", segmentation=SegmentationConfig(min_steps=100))
    out = evaluate(weights, tmp_path / "ds", "segmentation", cfg, out=tmp_path / "res")
    rows = {r["backbone"]: r["metrics"] for r in out.report["results"]}
    assert set(rows) == {"pretrained", "random-init"}
    assert set(rows["pretrained"]["per_class_iou"]) == {"dry", "water"} and 0 <= rows["pretrained"]["water_iou"] <= 1
    assert "water IoU" in (tmp_path / "res" / "results.md").read_text()
