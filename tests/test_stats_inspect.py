"""`shards stats` equals a direct numpy computation; `shards inspect` counts and draws."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from eoforge.cli import main
from eoforge.shards.inspect import inspect_dataset
from eoforge.shards.reader import iter_dataset
from eoforge.shards.stats import compute_stats


def _direct(ds, split="train"):
    samples = list(iter_dataset(ds, split))
    s2 = np.concatenate([s["s2"] for s in samples]).astype(np.float64)  # [N*T, 13, H, W]
    s1 = np.concatenate([s["s1"] for s in samples]).astype(np.float64)
    valid = np.concatenate([s["s1valid"] for s in samples])
    return len(samples), s2, s1, valid


def test_stats_match_numpy_over_valid_pixels(dataset_copy):
    out = compute_stats(dataset_copy, "train", workers=1)
    n, s2, s1, valid = _direct(dataset_copy)
    assert out["num_samples"] == n == 9
    for b in range(13):
        v = s2[:, b][s2[:, b] != 0]
        if b == 10:
            assert out["s2"]["count"][b] == 0 and out["s2"]["mean"][b] is None
            continue
        assert out["s2"]["count"][b] == v.size
        assert np.isclose(out["s2"]["mean"][b], v.mean(), rtol=1e-12)
        assert np.isclose(out["s2"]["std"][b], v.std(), rtol=1e-9)
        assert out["s2"]["p01"][b] == np.quantile(v, 0.01, method="inverted_cdf")
    for b in range(2):
        v = s1[:, b][valid]
        assert out["s1"]["count"][b] == v.size and np.isfinite(v).all()
        assert np.isclose(out["s1"]["mean"][b], v.mean(), rtol=1e-9)
        assert np.isclose(out["s1"]["std"][b], v.std(), rtol=1e-6)
        assert abs(out["s1"]["p99"][b] - np.quantile(v, 0.99)) < 0.02  # 0.01 dB bins
    assert json.loads((dataset_copy / "stats.json").read_text()) == out


@pytest.mark.parametrize("exact_counts", [1 << 24, 1000], ids=["opencv", "bincount-fallback"])
def test_s2_histograms_count_every_strided_value_exactly(monkeypatch, exact_counts):
    """The S2 histogram is a per-band bincount of every k-th pixel of every k-th row, for any
    stride, odd sizes, stacked [T, 13, H, W] arrays, shapes changing between arrays and the full
    uint16 range (0 not counted), whichever counting path a batch takes."""
    import eoforge.shards.stats as stats_module
    from eoforge.shards.stats import S2_BATCH, DatasetStats

    monkeypatch.setattr(stats_module, "_EXACT_COUNTS", exact_counts)
    rng = np.random.default_rng(5)
    for k in (1, 2, 3):
        arrays = [rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
                  for shape in [(13, 33, 31)] * (S2_BATCH + 3) + [(2, 13, 20, 20), (13, 7, 9)]]
        arrays[0][:, :5, :5] = 65535
        arrays[1][:, :4, :4] = 0
        stats = DatasetStats(pixel_stride=k)
        for a in arrays:
            stats.add_s2(a)
        stats._flush()
        expected = np.zeros((13, 1 << 16), np.int64)
        for a in arrays:
            counted = a.reshape(-1, *a.shape[-3:])[..., ::k, ::k]
            for b in range(13):
                expected[b] += np.bincount(counted[:, b].ravel(), minlength=1 << 16)
        expected[:, 0] = 0
        np.testing.assert_array_equal(stats.s2.hist, expected)


def test_stats_do_not_depend_on_parallelism(dataset_copy):
    assert compute_stats(dataset_copy, workers=2) == compute_stats(dataset_copy, workers=1)


def test_stats_cli_and_unknown_split(dataset_copy):
    r = CliRunner().invoke(main, ["shards", "stats", str(dataset_copy), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "9 samples of split 'train'" in r.output and "VV" in r.output
    r = CliRunner().invoke(main, ["shards", "stats", str(dataset_copy), "--split", "test"])
    assert r.exit_code == 1 and "no shards in split 'test'" in r.output


def test_inspect_summary_values(built_dataset):
    _, s = inspect_dataset(built_dataset)
    assert s["samples"] == 12 and s["shards"] == 4
    assert s["splits"] == {"train": 9, "val": 3}
    assert s["modalities"] == {"s2": 12, "s1": 12, "scl": 12, "lc": 12}
    assert s["time_steps"] == {2: 12}
    assert s["time_range"][0].startswith("2023-01-10 10:10:29")
    qa = s["qa"]["s2_valid_fraction"]
    assert np.isclose(qa["q00"], 1 - (1 / 8) ** 2) and qa["q00"] == qa["q100"]  # the nodata corner
    assert np.isclose(s["qa"]["dt_days"]["q50"], 0.2)  # |dt|, stored as float32
    present = s["labels"]["worldcover"]["present"]
    assert sum(present["train"].values()) >= 9 and set(present) == {"train", "val"}
    assert np.isclose(sum(s["labels"]["worldcover"]["mean_fraction"]), 1.0, atol=1e-3)


def test_inspect_cli_plots(dataset_copy):
    r = CliRunner().invoke(main, ["shards", "inspect", str(dataset_copy), "--plot"])
    assert r.exit_code == 0, r.output
    assert "splits      train: 9  val: 3" in r.output
    for name in ("coverage.png", "labels.png"):
        img = matplotlib.image.imread(dataset_copy / "inspect" / name)
        assert img.shape[0] > 300 and img.std() > 0.05  # a real picture, not a blank canvas
    r = CliRunner().invoke(main, ["shards", "inspect", str(dataset_copy), "--json"])
    assert json.loads(r.output)["splits"] == {"train": 9, "val": 3}


def test_root_command_lists_groups():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "shards" in r.output and "demo-data" in r.output
