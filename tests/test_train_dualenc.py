"""The S1/S2 dual encoder: paired steps only, the cross-modal loss, S1 preprocessing, and both
exported branches (the S1 one through the Sen1Floods11 segmentation probe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
import torch.nn.functional as F
from torch.utils.data._utils.collate import default_collate

import eoforge.train.models  # noqa: F401  (registers vit_pico_patch8 with timm)
from conftest import make_sample
from eoforge.eval.adapters.sen1floods11 import adapt_sen1floods11
from eoforge.eval.run import EvalConfig, evaluate
from eoforge.eval.segmentation import SegmentationConfig
from eoforge.shards.manifest import merge_parts
from eoforge.shards.meta import TimeStep
from eoforge.shards.stats import compute_stats
from eoforge.shards.writer import ShardWriter
from eoforge.train.config import PretrainConfig
from eoforge.train.data import DataConfig, build_loader
from eoforge.shards.normalize import band_norm
from eoforge.train.engine import train
from eoforge.train.export import export_run
from eoforge.train.model_format import load_backbone
from eoforge.train.losses import CrossModalInfoNCE
from eoforge.train.losses.cross_modal import nt_xent
from eoforge.train.methods import create_method
from eoforge.train.methods.dualenc import DualencConfig, DualencViews
from test_eval_adapters import _fake_flood_chips

SENTINEL_DN = 7777  # S2 of the unpaired steps: must never reach the dual encoder
PICO = {"name": "vit_pico_patch8", "img_size_px": 32}
TINY = {"crop_px": 32, "projector_hidden_dim": 64, "projector_dim": 32}
PAIRED = dict(modality="s1s2", paired_only=True, s1_clip_db=[[-25.0, 0.0], [-32.5, 0.0]])


def _unpair(sample, step: int) -> None:
    """Make time step ``step`` of a sample S2-only: no S1 product, NaN backscatter, sentinel S2 DN."""
    a = sample.arrays
    a["s1"][step] = np.nan
    a["s1valid"][step] = False
    a["s2"][step] = SENTINEL_DN
    a["s2"][step, 10] = 0
    t = sample.meta.time_steps[step]
    sample.meta.time_steps[step] = TimeStep(datetime=t.datetime, s2_product_id=t.s2_product_id, s2_level="L2A",
                                            s2_processing_baseline="05.09", s2_offset_removed=1000, s2_b10_zero=True,
                                            s2_valid_fraction=1.0, cloud_fraction=0.0, relative_orbit=22)


@pytest.fixture(scope="module")
def mixed_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: 12 tiles of 3 steps in 6 shards; step 1 of every tile S2-only, step 2 paired 2.5 days
    apart (step 0: 0.2 days); tiles 0 and 11 have no paired step at all (11 no S1 member either).
    Ingest's rule: 3 days (report.json)."""
    root = tmp_path_factory.mktemp("mixed") / "ds"
    for split, indices in (("train", range(12)), ("val", range(12, 14))):
        with ShardWriter(root, split, max_samples=2) as writer:
            for i in indices:
                s = make_sample(i, split, steps=3)
                _unpair(s, 1)
                s.meta.time_steps[2].dt_days = 2.5
                if i in (0, 11):
                    _unpair(s, 0)
                    _unpair(s, 2)
                if i == 11:  # a tile no S1 scene covered: no s1 members at all
                    del s.arrays["s1"], s.arrays["s1valid"]
                writer.write(s)
    merge_parts(root)
    compute_stats(root, workers=1)
    (root / "report.json").write_text(json.dumps({"pairing": {"max_dt_days": 3.0}}))
    return root


def _batches(root: Path, steps: int = 12, views=None, **data) -> list[dict]:
    cfg = DataConfig(**{"batch_size": 4, "workers": 0, "shuffle_buffer": 8, "shuffle_initial": 4, **PAIRED, **data})
    views = views or (lambda inputs, g: {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
    return list(build_loader(cfg, root, views, rank=0, world_size=1, seed=0, start_step=0, num_steps=steps))


def test_the_dual_encoder_never_sees_an_unpaired_step(mixed_ds: Path) -> None:
    stats = json.loads((mixed_ds / "stats.json").read_text())
    sentinel = float((SENTINEL_DN - band_norm(stats, "s2").offset[1]) * band_norm(stats, "s2").scale[1])
    batches = _batches(mixed_ds, steps=15)
    keys = [k for b in batches for k in b["__key__"]]
    unpaired = {make_sample(i, "train").meta.key for i in (0, 11)}
    assert len(keys) == 60 and not unpaired & set(keys)  # tiles without a paired step: passed over, not errors
    assert batches[-1]["__skipped__"] == 0
    for b in batches:
        assert not torch.isclose(b["s2"][:, 1], torch.tensor(sentinel)).all(dim=(-2, -1)).any()
        assert b["s1valid"].flatten(1).any(dim=1).all()  # every step drawn carries S1
    # the same data without the rule does draw the S2-only steps
    loose = _batches(mixed_ds, steps=15, modality="s2", paired_only=False, s1_clip_db=None)
    assert any(torch.isclose(b["s2"][:, 1], torch.tensor(sentinel)).all(dim=(-2, -1)).any() for b in loose)
    # through the method's own views and loss, on the same stream
    method = create_method("dualenc", TINY, PICO, in_chans=15, total_steps=10)
    method.check_data(DataConfig(**PAIRED))
    out = method(_batches(mixed_ds, steps=1, views=method.make_views())[0], step=0)
    assert torch.isfinite(out.loss)


def test_max_dt_days_can_only_tighten_the_pairing(mixed_ds: Path) -> None:
    # 1 day keeps step 0 (0.2 days) and drops step 2 (2.5 days): tile 1's S2 at step 0 only
    batches = _batches(mixed_ds, steps=10, max_dt_days=1.0)
    assert all(b["s1valid"].flatten(1).any(dim=1).all() for b in batches)
    with pytest.raises(ValueError, match="looser than the pairing rule"):
        _batches(mixed_ds, steps=1, max_dt_days=5.0)
    with pytest.raises(ValueError, match="paired_only"):
        DataConfig(max_dt_days=1.0)


def test_s1_is_clipped_in_db_before_mean_2sigma(mixed_ds: Path) -> None:
    stats = {"s1": {"bands": ["VV", "VH"], "mean": [-12.0, -20.0], "std": [5.0, 6.0]}}
    norm = band_norm(stats, "s1", "minmax2sigma", value_range=[[-25.0, 0.0], [-32.5, 0.0]])
    db = np.array([[-40.0, -12.0, 3.0], [-40.0, -20.0, np.nan]], dtype=np.float32)[:, :, None]
    out = norm.apply(db, np.ones((3, 1), bool))[:, :, 0]
    assert np.allclose(out[0], [(-25 + 22) / 20, 0.5, (0 + 22) / 20])
    assert np.allclose(out[1], [(-32.5 + 32) / 24, 0.5, 0.0])  # NaN (no data) -> 0


def test_the_dual_encoder_checks_its_data_settings() -> None:
    method = create_method("dualenc", TINY, PICO, in_chans=15, total_steps=10)
    with pytest.raises(ValueError, match="paired_only"):
        method.check_data(DataConfig(modality="s1s2"))
    with pytest.raises(ValueError, match="s1s2"):
        method.check_data(DataConfig(modality="s2", paired_only=True))
    with pytest.raises(ValueError, match="15 bands"):
        create_method("dualenc", TINY, PICO, in_chans=13, total_steps=10)


def test_views_crop_both_sensors_alike() -> None:
    ramp = torch.arange(48.0)[None, :].expand(48, 48) + 100 * torch.arange(48.0)[:, None]
    s2 = ramp.expand(13, 48, 48).clone()
    s1 = ramp.expand(2, 48, 48).clone()
    views = DualencViews(DualencConfig(**TINY))
    for seed in range(5):
        out = views({"s2": s2, "s1": s1}, torch.Generator().manual_seed(seed))
        assert out["s2_a"].shape == (13, 32, 32) and out["s1_a"].shape == (2, 32, 32)
        assert torch.allclose(out["s2_a"][0], out["s1_a"][0])  # the same ground, pixel for pixel
    intra = DualencViews(DualencConfig(**TINY, intra_weight=1.0))({"s2": s2, "s1": s1}, torch.Generator())
    assert set(intra) == {"s2_a", "s1_a", "s2_b", "s1_b"}


def test_cross_modal_loss_by_hand_and_learnable_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    terms = CrossModalInfoNCE(0.1)(a, b)
    assert float(terms.total) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms.temperature) == pytest.approx(0.1)
    learned = CrossModalInfoNCE(0.1, learn_temperature=True)
    learned(a, b).total.backward()
    assert learned.log_logit_scale.grad is not None and "log_logit_scale" in dict(learned.named_parameters())
    assert "log_logit_scale" not in dict(CrossModalInfoNCE(0.1).named_parameters())


def test_nt_xent_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = F.normalize(torch.cat([v1, v2]), dim=1)
    sim = z @ z.T / 0.5
    sim.fill_diagonal_(float("-inf"))
    expected = F.cross_entropy(sim, torch.tensor([3, 4, 5, 0, 1, 2]))
    assert float(nt_xent(v1, v2, 0.5)) == pytest.approx(float(expected), rel=1e-6)


def test_every_parameter_gets_a_gradient_with_the_intra_term() -> None:
    method = create_method("dualenc", {**TINY, "intra_weight": 1.0, "learn_temperature": True},
                           {"name": "resnet18"}, in_chans=15, total_steps=10)
    g = torch.Generator().manual_seed(0)
    items = [method.make_views()({"s2": torch.rand(13, 48, 48, generator=g), "s1": torch.rand(2, 48, 48, generator=g)},
                                 g) for _ in range(4)]
    out = method(default_collate(items), step=0)
    out.loss.backward()
    assert [n for n, p in method.named_parameters() if p.grad is None] == []
    assert {"cross", "intra", "temperature"} <= set(out.logs)


@pytest.fixture(scope="module")
def dualenc_run(mixed_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = PretrainConfig.from_dict({
        "data": {**PAIRED, "batch_size": 4, "workers": 0, "shuffle_buffer": 8, "shuffle_initial": 4},
        "model": PICO, "method": {"name": "dualenc", **TINY},
        "engine": {"steps": 4, "checkpoint_every": 4, "log_every": 2, "device": "cpu", "progress": False},
    })
    run = tmp_path_factory.mktemp("dualenc") / "run"
    train(cfg, mixed_ds, run)
    return run


def test_both_branches_export_with_their_own_bands_and_normalisation(dualenc_run: Path, tmp_path: Path) -> None:
    s2 = export_run(dualenc_run, tmp_path / "s2.safetensors")
    assert s2.branch == "s2" and s2.branches == ("s2", "s1")  # the default
    s1 = export_run(dualenc_run, tmp_path / "s1.safetensors", branch="s1")
    meta1 = json.loads(s1.meta.read_text())
    meta2 = json.loads(s2.meta.read_text())
    assert meta1["bands"] == ["VV", "VH"] and meta1["in_chans"] == 2 and meta1["branch"] == "s1"
    assert meta2["bands"][:2] == ["B1", "B2"] and meta2["in_chans"] == 13
    assert meta1["normalization"]["value_min"] == [-25.0, -32.5] and meta1["normalization"]["modality"] == ["s1", "s1"]
    assert "value_min" not in meta2["normalization"] or set(meta2["normalization"]["value_min"]) == {None}
    net, _ = load_backbone(s1.weights)
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 64)
    ckpt = torch.load(s1.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, ckpt[f"encoders.s1.{k}"]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="branches"):
        export_run(dualenc_run, tmp_path / "x.safetensors", branch="s3")


def test_the_s1_branch_runs_the_segmentation_probe_on_sen1floods11(dualenc_run: Path, tmp_path: Path) -> None:
    _fake_flood_chips(tmp_path / "src")
    adapt_sen1floods11(tmp_path / "src", tmp_path / "floods",
                       split_lists={s: tmp_path / "src" / f"{s}.csv" for s in ("train", "val")})
    weights = export_run(dualenc_run, tmp_path / "s1.safetensors", branch="s1").weights
    cfg = EvalConfig(features="mean", segmentation=SegmentationConfig(min_steps=50))
    out = evaluate(weights, tmp_path / "floods", "segmentation", cfg)
    rows = {r["backbone"]: r["metrics"] for r in out.report["results"]}
    assert set(rows) == {"pretrained", "random-init"} and 0 <= rows["pretrained"]["water_iou"] <= 1
    inputs = out.report["settings"]["inputs"]
    assert inputs["bands"] == ["VV", "VH"] and inputs["value_min"] == [-25.0, -32.5]


@pytest.mark.real_data
def test_the_s1_branch_on_the_real_sen1floods11_chip(dualenc_run: Path, real_data: Path, tmp_path: Path) -> None:
    ds = tmp_path / "floods"
    adapt_sen1floods11(real_data / "sen1floods11_spain", ds, val_fraction=0.0)
    # one chip: the probe learns and is scored on it (a check of the path, not a score)
    weights = export_run(dualenc_run, tmp_path / "s1.safetensors", branch="s1").weights
    cfg = EvalConfig(features="mean", eval_split="train", segmentation=SegmentationConfig(min_steps=20))
    out = evaluate(weights, ds, "segmentation", cfg)
    assert {r["backbone"] for r in out.report["results"]} == {"pretrained", "random-init"}
    assert out.report["settings"]["inputs"]["bands"] == ["VV", "VH"]


def _mlm_validator():  # noqa: ANN202 - a jsonschema validator
    """The MLM v1.5.2 schema with the three extension schemas it refers to, from
    ``tests/data/stac-schemas`` (vendored: no network in tests)."""
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    folder = Path(__file__).parent / "data" / "stac-schemas"
    load = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    refs = {f"https://stac-extensions.github.io/{ext}/v1.1.0/schema.json": load(f"{ext}-v1.1.0.json")
            for ext in ("raster", "processing", "classification")}
    registry = Registry().with_resources(
        (uri, Resource.from_contents(contents, default_specification=DRAFT7))
        for uri, contents in refs.items())
    return Draft7Validator(load("mlm-v1.5.2.json"), registry=registry)


def test_every_export_has_a_valid_stac_mlm_item(dualenc_run: Path, tmp_path: Path) -> None:
    """MODEL.stac.json validates against the MLM schema, its value_scaling reproduces eoforge's
    normalisation band by band, and its assets are the exported files."""
    validator = _mlm_validator()
    rng = np.random.default_rng(0)
    for branch, width in (("s2", 13), ("s1", 2)):
        result = export_run(dualenc_run, tmp_path / f"{branch}.safetensors", branch=branch)
        item_path = tmp_path / f"{branch}.stac.json"
        item = json.loads(item_path.read_text())
        errors = sorted(validator.iter_errors(item), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
        meta = json.loads(result.meta.read_text())
        (inputs,) = item["properties"]["mlm:input"]
        assert inputs["bands"] == meta["bands"] and inputs["input"]["shape"] == [-1, width, 32, 32]
        assert [b["name"] for b in item["properties"]["bands"]] == meta["bands"]
        net, _ = load_backbone(result.weights)
        assert item["properties"]["mlm:output"][0]["result"]["shape"] == [-1, net.num_features]
        assert {a["href"] for a in item["assets"].values()} == {f"./{branch}.safetensors", f"./{branch}.json",
                                                                 f"./{branch}.terratorch.yaml"}
        assert all((tmp_path / a["href"]).is_file() for a in item["assets"].values())
        # the TerraTorch block's (x - mean) / std is eoforge's affine map wherever nothing is clipped first
        block = yaml.safe_load((tmp_path / f"{branch}.terratorch.yaml").read_text())
        assert block["data"]["bands"] == meta["bands"]
        assert block["model_args"]["backbone_pretrained_cfg_overlay"]["file"] == str(result.weights.resolve())
        for i, (mean, std) in enumerate(zip(block["data"]["means"], block["data"]["stds"])):
            x = rng.uniform(-40, 3000, 100)
            if (meta["normalization"].get("value_min") or [None] * width)[i] is None and meta["normalization"]["scale"][i]:
                np.testing.assert_allclose((x - mean) / std, (x - meta["normalization"]["offset"][i])
                                           * meta["normalization"]["scale"][i], rtol=1e-9, atol=1e-9)
        # what (x - mean) / std cannot say is said: the S1 dB range, the clip to [0, 1]
        norm = meta["normalization"]
        clipped = any(v is not None for v in (norm.get("value_min") or []) + (norm.get("value_max") or []))
        assert any("value_min" in n for n in block["notes"]) == clipped == (branch == "s1")
        assert any("[0, 1]" in n for n in block["notes"]) == bool(norm.get("clip"))
        # each band's scaling gives what eoforge computes: (clip(x, lo, hi) - offset) * scale
        norm = meta["normalization"]
        lows, highs = norm.get("value_min") or [None] * width, norm.get("value_max") or [None] * width
        for i, scaling in enumerate(inputs["value_scaling"]):
            x = rng.uniform(-40, 3000, 1000)
            expected = (np.clip(x, -np.inf if lows[i] is None else lows[i], np.inf if highs[i] is None else highs[i])
                        - norm["offset"][i]) * norm["scale"][i]
            if scaling["type"] == "z-score":
                got = (x - scaling["mean"]) / scaling["stddev"]
            elif scaling["type"] == "scale":
                got = x * scaling["value"]
            else:
                assert scaling["type"] == "processing" and branch == "s1"
                got = eval(scaling["expression"], {"numpy": np, "inf": np.inf}, {"x": x})  # noqa: S307 - our own item
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # the validator is not a rubber stamp: an item without its model asset role or inputs fails
    broken = json.loads((tmp_path / "s2.stac.json").read_text())
    del broken["properties"]["mlm:input"]
    assert any("mlm:input" in e.message for e in validator.iter_errors(broken))
