"""Probes, features, inputs and ``eoforge eval`` end to end on tiny real timm models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _eval_helpers import TINY_VIT, export_tiny_vit
from click.testing import CliRunner

from eoforge.train.model_format import ModelFormatError, load_backbone, read_model_info
from eoforge.eval.cli import eval_cmd
from eoforge.eval.features import FeatureExtractor
from eoforge.eval.inputs import MissingInput, input_spec
from eoforge.eval.knn import KNNConfig, knn_probe, knn_scores
from eoforge.eval.labels import label_fraction_subset
from eoforge.eval.linear import LinearConfig, linear_probe
from eoforge.eval.run import EvalConfig, evaluate
from eoforge.eval.segmentation import SegmentationConfig, segmentation_probe
from eoforge.shards.encoding import decode_array, encode_array
from eoforge.shards.reader import decode_sample, iter_dataset, read_samples, shard_urls
from eoforge.shards.schema import S2_B10_INDEX
from eoforge.shards.stats import compute_stats


def _clusters(n_per_class: int, num_classes: int = 3, dim: int = 16, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + noise * torch.randn(len(y), dim, generator=g), y


# ----------------------------------------------------------------------------- kNN


def test_knn_on_separable_features_is_perfect():
    xtr, ytr = _clusters(10, seed=0)
    xte, yte = _clusters(5, seed=0)
    out = knn_probe(xtr, ytr, xte + 0.05 * torch.randn_like(xte), yte, single_label=True, num_classes=3)
    assert out == {"top1": 1.0}


def test_knn_multilabel_scores_give_perfect_ap_on_separable_features():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, (60, 4))).float()
    labels[labels.sum(1) == 0, 0] = 1
    feats = labels * 4 + 0.05 * torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    out = knn_probe(feats[:40], labels[:40], feats[40:], labels[40:], single_label=False, num_classes=4)
    assert out["micro_ap"] == 1.0 and out["macro_ap"] == 1.0


def test_knn_votes_are_temperature_weighted_shares():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    q = torch.tensor([[2.0, 1.0]])  # cosine 2/sqrt5 to the first, 1/sqrt5 to the second, the third is not in top-2
    scores = knn_scores(bank, targets, q, KNNConfig(k=2, temperature=0.5))
    w1, w2 = math.exp(2 / math.sqrt(5) / 0.5), math.exp(1 / math.sqrt(5) / 0.5)
    assert scores[0].tolist() == pytest.approx([w1 / (w1 + w2), w2 / (w1 + w2)], rel=1e-5)


# -------------------------------------------------------------------------- linear


def test_linear_probe_learns_a_separable_problem():
    xtr, ytr = _clusters(20, num_classes=4, seed=1)
    xte, yte = _clusters(10, num_classes=4, seed=1)
    assert linear_probe(xtr, ytr, xte, yte, True, 4, LinearConfig()) == {"top1": 1.0}
    multi = torch.stack([ytr % 2, (ytr >= 2).long()], 1).float()
    multi_te = torch.stack([yte % 2, (yte >= 2).long()], 1).float()
    out = linear_probe(xtr, multi, xte, multi_te, False, 2, LinearConfig())
    assert out["micro_ap"] == 1.0


def test_linear_probe_is_deterministic_for_a_seed():
    xtr, ytr = _clusters(10, noise=2.0, seed=2)
    xte, yte = _clusters(10, noise=2.0, seed=3)
    cfg = LinearConfig(epochs=5, min_steps=0, batch_size=8)
    a = linear_probe(xtr, ytr, xte, yte, True, 3, cfg, seed=4)
    assert linear_probe(xtr, ytr, xte, yte, True, 3, cfg, seed=4) == a


# ------------------------------------------------------------------- segmentation


def test_segmentation_probe_learns_water_from_patch_features():
    g = torch.Generator().manual_seed(0)
    water = torch.rand(12, 4, 4, generator=g) < 0.4  # per patch
    feats = torch.randn(12, 6, 4, 4, generator=g) * 0.3
    feats[:, 0] += water.float() * 2 - 1  # channel 0 says water / dry
    labels = water.long().repeat_interleave(8, 1).repeat_interleave(8, 2)  # 32 x 32 px
    labels[:, :2, :] = -1  # unlabelled rows
    out = segmentation_probe(feats[:8], labels[:8], feats[8:], labels[8:], ("dry", "water"),
                             SegmentationConfig())
    # bilinear upsampling of ideal +-1 patch logits reaches 0.94 water IoU here; chance is ~0.4
    assert out["water_iou"] > 0.75 and out["miou"] > 0.75
    assert set(out) == {"per_class_iou", "miou", "pixel_accuracy", "water_iou"}


# ------------------------------------------------------------- label fraction draw


def test_label_fraction_draw_is_stratified_seeded_and_covering():
    y = np.repeat(np.arange(4), [40, 30, 20, 10])
    sub = label_fraction_subset(y, 0.1, seed=0, single_label=True)
    assert np.bincount(y[sub]).tolist() == [4, 3, 2, 1]
    assert np.array_equal(sub, label_fraction_subset(y, 0.1, seed=0, single_label=True))
    assert not np.array_equal(sub, label_fraction_subset(y, 0.1, seed=1, single_label=True))
    multi = np.zeros((50, 5), dtype=np.uint8)
    multi[:, 0] = 1
    multi[np.arange(5), np.arange(5)] = 1  # classes 1..4 appear once each
    sub = label_fraction_subset(multi, 0.1, seed=0, single_label=False)
    assert len(sub) == 5 and multi[sub].any(0).all()
    assert len(label_fraction_subset(multi, 1.0, 0, False)) == 50


# ---------------------------------------------------------------------- features


def test_vit_feature_modes(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", **TINY_VIT, in_chans=13)
    x = torch.randn(2, 13, 32, 32)
    tokens = model.eval().forward_features(x)
    out = FeatureExtractor(model, "cls")(x, patches=True)
    assert torch.allclose(out["pooled"], tokens[:, 0])
    assert out["patches"].shape == (2, 48, 4, 4)
    assert torch.allclose(out["patches"][:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # row-major patch grid
    assert torch.allclose(FeatureExtractor(model, "mean")(x)["pooled"], tokens[:, 1:].mean(1))
    d2 = FeatureExtractor(model, "dinov2")(x)["pooled"]
    assert d2.shape == (2, 3 * 48)  # 2 blocks' class tokens + mean patch token (depth 2 < 4)
    assert torch.allclose(d2[:, 48:96], tokens[:, 0], atol=1e-5)  # last block's normed class token
    assert torch.allclose(d2[:, 96:], tokens[:, 1:].mean(1), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


def test_cnn_feature_modes():
    model = timm.create_model("resnet10t", in_chans=2, num_classes=0)
    x = torch.randn(2, 2, 64, 64)
    out = FeatureExtractor(model, "cls")(x, patches=True)
    assert torch.allclose(out["pooled"], model(x), atol=1e-6)  # global average pool
    assert out["patches"].shape[:2] == (2, model.num_features)
    dims = FeatureExtractor(model, "dinov2")(x)["pooled"].shape[1]
    assert dims == sum(info["num_chs"] for info in model.feature_info[-4:])


# ------------------------------------------------------------------------- inputs


def test_inputs_follow_the_model_normalisation(built_dataset, tmp_path):
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    spec = input_spec(read_model_info(weights), built_dataset)
    sample = next(iter_dataset(built_dataset, "train"))
    x = spec.prepare(sample)
    assert x.shape == (13, 32, 32) and x.dtype == torch.float32
    dn = sample["s2"][0].astype(np.float32)
    assert x[3].numpy() == pytest.approx(np.where(dn[3] != 0, dn[3] / 4000, 0.0), rel=1e-6)
    assert not x[:, :4, :4].any()  # the nodata corner is 0 in every band


def test_inputs_from_dataset_stats_zero_unusable_bands_and_s1(dataset_copy, tmp_path):
    stats = compute_stats(dataset_copy, workers=1)
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    spec = input_spec(read_model_info(weights), dataset_copy, source="dataset")
    assert spec.source == "dataset" and spec.mode == "minmax2sigma"
    mean, std = stats["s2"]["mean"][1], stats["s2"]["std"][1]
    assert spec.offset[1] == pytest.approx(mean - 2 * std) and spec.scale[1] == pytest.approx(1 / (4 * std))
    assert spec.scale[S2_B10_INDEX] == 0  # B10 has no statistics in L2A data
    sample = next(iter_dataset(dataset_copy, "train"))
    sample["s2"][:, S2_B10_INDEX] = 500  # whatever B10 holds, the model never saw it
    assert not spec.prepare(sample)[S2_B10_INDEX].any()

    s1 = input_spec(read_model_info(export_tiny_vit(tmp_path / "s1.safetensors", in_chans=2)), dataset_copy)
    x = s1.prepare(sample)
    vv = sample["s1"][0, 0].astype(np.float32)
    assert x.shape == (2, 32, 32) and not x[:, :, -3:].any()  # NaN strip -> 0
    assert x[0, 0, 0].item() == pytest.approx((vv[0, 0] + 12.5) / 5.0, rel=1e-3)
    del sample["s1"]
    with pytest.raises(MissingInput, match="no s1"):
        s1.prepare(sample)


def test_eval_inputs_are_the_training_inputs(dataset_copy, tmp_path):
    """One normalisation path: a stacked S2+S1 model's eval input equals what the training
    loader feeds for the same step, S1 clipping and the S1 validity rule included (a pixel
    whose VV is NaN is invalid in both polarisations)."""
    from eoforge.train.config import PretrainConfig
    from eoforge.train.data.loader import DataConfig, modality_norms, normalize_inputs
    from eoforge.train.engine import describe_dataset
    from eoforge.train.model_format import write_backbone

    compute_stats(dataset_copy, workers=1)
    data_cfg = DataConfig(modality="s1s2", s1_clip_db=((-25.0, 0.0), (-32.5, 0.0)), clip=True)
    cfg = PretrainConfig(data=data_cfg)
    facts = describe_dataset(dataset_copy, cfg)
    kwargs = {**TINY_VIT, "in_chans": 15}
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    weights, _ = write_backbone(model, tmp_path / "stacked.safetensors", {
        "format": "eoforge-backbone/1", "timm_model": "vit_tiny_patch16_224", "timm_kwargs": kwargs, "in_chans": 15,
        "img_size": 32, "bands": facts["bands"], "normalization": facts["normalization"], "method": "test",
        "config": {}, "manifest_sha256": None})
    spec = input_spec(read_model_info(weights), dataset_copy)

    sample = next(iter_dataset(dataset_copy, "train"))
    sample["s1"][0, 0, 5, 5] = np.nan  # VV missing, VH present
    sample["s1"][0, 1, 6, 6] = -60.0  # below VH's clip range
    eval_x = spec.prepare(sample, 0).numpy()

    stats = json.loads((dataset_copy / "stats.json").read_text())
    step = {"__key__": sample["__key__"], "labels": np.zeros(1, np.float32),
            "s2": sample["s2"][0], "s1": sample["s1"][0], "s1valid": sample["s1valid"][0]}
    train_inputs = next(normalize_inputs([step], modality_norms(stats, data_cfg)))
    np.testing.assert_allclose(eval_x[:13], train_inputs["s2"].numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(eval_x[13:], train_inputs["s1"].numpy(), rtol=1e-6, atol=1e-7)
    assert not eval_x[13:, 5, 5].any()  # both polarisations 0 where one is missing
    assert eval_x[14, 6, 6] == pytest.approx(train_inputs["s1"][1, 6, 6].item()) and eval_x[14, 6, 6] == 0.0


def test_eval_decodes_only_the_step_it_reads(built_dataset, tmp_path):
    """``InputSpec.decode`` keeps one time step of each member the model reads, and gives the
    same input as preparing the fully decoded sample."""
    s1 = input_spec(read_model_info(export_tiny_vit(tmp_path / "s1.safetensors", in_chans=2)), built_dataset)
    raw = next(iter(read_samples(shard_urls(built_dataset, "train"), decode=None)))
    raw_full = dict(raw)
    # step 0 has no S1 data: the probe reads step 1, and decodes nothing else
    valid = decode_array(raw["s1valid.npy.zst"], "npy.zst")
    valid[0] = False
    raw["s1valid.npy.zst"] = raw_full["s1valid.npy.zst"] = encode_array(valid)
    one = s1.decode(raw, extra=("lc",))
    assert one["time_step"] == 1 and one["s1"].shape[0] == 1 and one["s1valid"].shape[0] == 1
    assert "s2" not in one and one["lc"].shape[0] == 1
    full = decode_sample(raw_full)
    assert torch.equal(s1.prepare(one), s1.prepare(full))
    assert torch.equal(s1.prepare(full), s1.prepare(full, 1))


def test_backbone_loads_strictly(tmp_path):
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    model, info = load_backbone(weights)
    assert info.in_chans == 13 and info.img_size == 32 and len(info.weights_sha256) == 64
    meta = json.loads(weights.with_suffix(".json").read_text())
    meta["timm_kwargs"]["depth"] = 3
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="do not fit"):
        load_backbone(weights)


# ---------------------------------------------------------------------- evaluate


def test_evaluate_reports_random_init_beside_pretrained(built_dataset, tmp_path):
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    cfg = EvalConfig(linear=LinearConfig(epochs=10, min_steps=50))
    result = evaluate(weights, built_dataset, ("knn", "linear"), cfg, out=tmp_path / "out")
    rows = result.report["results"]
    assert [(r["backbone"], r["probe"]) for r in rows] == [
        ("pretrained", "knn"), ("random-init", "knn"), ("pretrained", "linear"), ("random-init", "linear")]
    for r in rows:
        assert 0 <= r["metrics"]["micro_ap"] <= 1 and set(r["metrics"]["per_class_ap"]) >= {"tree_cover"}
    s = result.report["settings"]
    assert s["labels"]["taxonomy"] == "worldcover" and not s["labels"]["single_label"]
    assert s["data"]["train_samples"] == 9 and s["data"]["eval_samples"] == 3
    assert s["inputs"]["normalization_source"] == "model" and s["probes"]["knn"] == {
        "k": 20, "temperature": 0.07, "similarity": "cosine"}
    again = evaluate(weights, built_dataset, ("knn", "linear"), cfg)
    assert json.dumps(again.report["results"]) == json.dumps(rows)  # deterministic
    assert result.json_path.is_file() and "random-init" in result.markdown_path.read_text()


def _two_class_dataset(root: Path) -> Path:
    """Tiles whose one land-cover class shows in the pixels: tree cover dark (DN ~600), cropland
    bright (DN ~3000), noisy; 16 train and 8 val samples, alternating."""
    from conftest import make_sample

    from eoforge.shards.manifest import merge_parts
    from eoforge.shards.meta import Labels
    from eoforge.shards.schema import WORLDCOVER
    from eoforge.shards.writer import ShardWriter

    rng = np.random.default_rng(0)
    for split, indices in (("train", range(16)), ("val", range(16, 24))):
        with ShardWriter(root, split, max_samples=8) as writer:
            for i in indices:
                sample = make_sample(i, split, steps=1)
                crop = i % 2 == 1
                level = 3000 if crop else 600
                sample.arrays["s2"][:] = rng.normal(level, 150, sample.arrays["s2"].shape).clip(1, 20000).astype(np.uint16)
                code = 40 if crop else 10  # WorldCover cropland / tree cover
                sample.arrays["lc"][:] = code
                hot = [int(c == code) for c in WORLDCOVER.codes]
                sample.meta.labels = Labels(taxonomy="worldcover", names=list(WORLDCOVER.names), multi_hot=hot,
                                            fractions=[float(h) for h in hot], threshold=0.01, source="synthetic")
                writer.write(sample)
    merge_parts(root)
    return root


def test_probes_beat_a_constant_predictor_where_the_pixels_tell_the_class(tmp_path):
    """On data whose class is visible (dark tree cover, bright cropland) both probes of a frozen
    random ViT beat the majority class (val: 4 of each, top-1 0.5) by a margin, and agree with
    the class the pixels say: a probe that predicted one class for everything would fail."""
    data = _two_class_dataset(tmp_path / "ds")
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    cfg = EvalConfig(label_mode="single", linear=LinearConfig(epochs=30, min_steps=100))
    result = evaluate(weights, data, ("knn", "linear"), cfg)
    assert result.report["settings"]["labels"]["single_label"]
    for row in result.report["results"]:
        assert row["metrics"]["top1"] >= 0.875, row  # at most one of the 8 wrong; constant: 0.5


def test_evaluate_segmentation_with_an_s1_model(built_dataset, tmp_path):
    weights = export_tiny_vit(tmp_path / "s1.safetensors", in_chans=2)
    cfg = EvalConfig(features="mean", label_fraction=0.5, segmentation=SegmentationConfig(epochs=3))
    result = evaluate(weights, built_dataset, ("segmentation", "knn"), cfg)
    seg = [r for r in result.report["results"] if r["probe"] == "segmentation"]
    assert [r["backbone"] for r in seg] == ["pretrained", "random-init"]
    assert 0 <= seg[0]["metrics"]["miou"] <= 1 and "tree_cover" in seg[0]["metrics"]["per_class_iou"]
    assert result.report["settings"]["data"]["train_labelled"] == 5  # round(0.5 * 9) after covering draw
    assert result.report["settings"]["inputs"]["bands"] == ["VV", "VH"]


def test_eval_cli_end_to_end(built_dataset, tmp_path):
    weights = export_tiny_vit(tmp_path / "model" / "MODEL.safetensors")
    res = CliRunner().invoke(eval_cmd, ["--weights", str(weights), "--data", str(built_dataset),
                                        "--features", "dinov2", "--label-fraction", "0.5", "--seed", "3"])
    assert res.exit_code == 0, res.output
    out = weights.parent / f"eval-{built_dataset.name}"
    report = json.loads((out / "results.json").read_text())
    assert {(r["backbone"], r["probe"]) for r in report["results"]} == {
        (b, p) for b in ("pretrained", "random-init") for p in ("knn", "linear")}
    assert report["settings"]["seed"] == 3 and report["settings"]["features"] == "dinov2"
    assert report["settings"]["feature_dims"]["pooled"] == [3 * 48]
    md = (out / "results.md").read_text()
    assert "| random-init | knn |" in md and "label fraction 0.5" in md and "k = 20" in md
    assert "| random-init | linear |" in res.output


def test_eval_cli_names_a_missing_split(built_dataset, tmp_path):
    weights = export_tiny_vit(tmp_path / "m.safetensors")
    res = CliRunner().invoke(eval_cmd, ["--weights", str(weights), "--data", str(built_dataset),
                                        "--eval-split", "test", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no shards in split 'test'" in res.output


def test_feature_standardisation_does_not_change_knn():
    # cosine kNN sees raw features; scaling all features leaves the result unchanged
    xtr, ytr = _clusters(10, noise=1.0, seed=5)
    xte, yte = _clusters(5, noise=1.0, seed=6)
    a = knn_scores(xtr, F.one_hot(ytr, 3), xte)
    assert torch.allclose(a, knn_scores(3 * xtr, F.one_hot(ytr, 3), 3 * xte))


def test_labels_of_another_taxonomy_are_refused():
    from eoforge.eval.labels import LabelError, image_target, label_space, segmentation_target

    space = label_space({"taxonomy": "eurosat", "names": ["a", "b"]})
    assert space.single_label  # EuroSAT is single-label by its taxonomy
    assert image_target({"labels": {"taxonomy": "eurosat", "names": ["a", "b"], "multi_hot": [0, 1]}}, space) == 1
    assert image_target({"labels": {"taxonomy": "eurosat", "names": ["a", "b"], "multi_hot": [1, 1]}}, space) is None
    with pytest.raises(LabelError, match="taxonomy 'worldcover'"):
        image_target({"key": "k", "labels": {"taxonomy": "worldcover", "names": ["a", "b"], "multi_hot": [1, 0]}},
                     space)
    with pytest.raises(LabelError, match="no code table"):
        segmentation_target({"lc": np.zeros((1, 2, 2), np.uint8)}, "my_classes")
