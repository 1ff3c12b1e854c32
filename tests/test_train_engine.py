"""Fast units of the training engine: schedules, EMA, config files, checkpoints, collapse monitor."""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import warnings

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from eoforge.train.checkpoint import (
    checkpoint_name, latest_checkpoint, list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from eoforge.shards.config import ConfigError
from eoforge.train.config import PretrainConfig, pretrain_config
from eoforge.train.ema import ema_update
from eoforge.train.monitor import CollapseMonitor, CollapseWarning, embedding_figures
from eoforge.train.schedules import cosine_schedule, warmup_constant_schedule

# ----------------------------------------------------------------------------- schedules


def test_cosine_schedule_hand_values() -> None:
    s = cosine_schedule(1.0, 0.0, total_steps=6, warmup_steps=2, start_warmup_value=0.0)
    # warm-up: linspace(0, 1, 2) = [0, 1]; cosine over n = 4: 0.5 (1 + cos(pi j / 4)), j = 0..3
    c = math.cos(math.pi / 4)
    expected = [0.0, 1.0, 1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c)]
    np.testing.assert_allclose(s, expected, rtol=0, atol=1e-15)
    assert s.dtype == np.float64 and s.shape == (6,)


def test_cosine_schedule_pera_recipe() -> None:
    steps, warm = 1000, 100
    lr = cosine_schedule(1e-3, 1e-6, steps, warm)
    assert lr[0] == 0.0 and lr[warm - 1] == pytest.approx(1e-3) and lr[warm] == pytest.approx(1e-3)
    assert np.all(np.diff(lr[:warm]) > 0) and np.all(np.diff(lr[warm:]) < 0)
    assert 1e-6 < lr[-1] < 1e-6 + 1e-8  # approaches min_lr on the last step
    wd = cosine_schedule(0.04, 0.2, steps)
    assert wd[0] == pytest.approx(0.04) and np.all(np.diff(wd) > 0) and wd[-1] == pytest.approx(0.2, abs=1e-6)
    m = cosine_schedule(0.992, 1.0, steps)
    assert m[0] == pytest.approx(0.992) and m[500] == pytest.approx(0.996) and m.max() < 1.0 + 1e-12


def test_cosine_schedule_edges() -> None:
    assert cosine_schedule(1.0, 0.5, 1).tolist() == [1.0]
    assert cosine_schedule(1.0, 0.5, 3, warmup_steps=3).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 3, warmup_steps=4)


def test_warmup_constant_schedule() -> None:
    np.testing.assert_allclose(warmup_constant_schedule(0.03, 0.05, 5, 3), [0.03, 0.04, 0.05, 0.05, 0.05])
    np.testing.assert_allclose(warmup_constant_schedule(0.03, 0.05, 2, 3), [0.03, 0.04])


# ----------------------------------------------------------------------------------- EMA


def _pair() -> tuple[nn.Module, nn.Module]:
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(2.0)
        for p in teacher.parameters():
            p.fill_(1.0)
        student[1].running_mean.fill_(5.0)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, student


def test_ema_update_hand_values() -> None:
    teacher, student = _pair()
    ema_update(teacher, student, 0.9)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.9 * 1.0 + 0.1 * 2.0), atol=0, rtol=1e-7)
    ema_update(teacher, student, 0.5)  # 0.5 * 1.1 + 0.5 * 2 = 1.55
    assert torch.allclose(teacher[0].weight, torch.full((2, 3), 1.55), atol=1e-6)
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 5.0))  # buffers copied
    for p in student.parameters():
        assert torch.equal(p, torch.full_like(p, 2.0))  # the student is only read


def test_ema_momentum_one_and_zero() -> None:
    teacher, student = _pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0, copy_buffers=False)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert torch.equal(teacher[1].running_mean, torch.zeros(2))
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), 0.9)


# ---------------------------------------------------------------------------- checkpoint


def test_checkpoint_atomic_latest_and_prune(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        save_checkpoint(folder, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert [p.name for p in list_checkpoints(folder)] == [checkpoint_name(20), checkpoint_name(30)]
    assert (folder / "latest").read_text().strip() == "step-00000030.pt"
    assert not list(folder.glob("*.tmp"))
    state = load_checkpoint(latest_checkpoint(folder))
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((3,), 30.0))


def test_checkpoint_torn_write_leaves_previous(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 5, {"step": 5})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(folder, 6, {"step": 6, "bad": Unpicklable()})
    # the failed write left only a .tmp file, never a final name; latest still points at 5
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000005.pt"]
    assert load_checkpoint(latest_checkpoint(folder))["step"] == 5
    # a stale pointer (file deleted by hand) falls back to the newest complete checkpoint
    (folder / "latest").write_text("step-00000099.pt\n")
    assert latest_checkpoint(folder).name == "step-00000005.pt"
    assert latest_checkpoint(tmp_path / "none") is None


def test_rng_state_round_trip(tmp_path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / checkpoint_name(1))["rng"])  # weights_only load
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# ------------------------------------------------------------------------------- monitor


def test_monitor_figures_on_known_embeddings() -> None:
    d = 8
    eye = torch.eye(d) * 3.0  # orthogonal rows (scale is removed by the L2 norm)
    f = embedding_figures(eye)
    # per dim: one 1 and d-1 zeros -> unbiased std sqrt(1/d); mean cosine over pairs = 0
    assert f["embed_std"] == pytest.approx(math.sqrt(1 / d))
    assert f["embed_std_norm"] == pytest.approx(1.0)
    assert f["embed_mean_cos"] == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(5, d)
    g = embedding_figures(same)
    assert g["embed_std"] == pytest.approx(0.0, abs=1e-7) and g["embed_mean_cos"] == pytest.approx(1.0)
    pair = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt(2)
    assert embedding_figures(pair)["embed_mean_cos"] == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(embedding_figures(torch.ones(1, 4))["embed_std"])


def test_monitor_effective_rank_and_what_it_flags() -> None:
    g = torch.Generator().manual_seed(0)
    iso = embedding_figures(torch.randn(64, 32, generator=g))
    assert 20 < iso["embed_rank"] <= 32 and iso["embed_std_norm"] > 0.9
    # images that differ along one direction only: effective rank ~ 1, flagged
    line = torch.ones(64, 32) + torch.randn(64, 1, generator=g) * torch.eye(32)[0]
    assert embedding_figures(line)["embed_rank"] < 2
    # a constant output with float noise: spread everywhere, but no std left
    noise = 5 + 1e-5 * torch.randn(64, 32, generator=g)
    assert embedding_figures(noise)["embed_std_norm"] < 1e-3
    mon = CollapseMonitor(patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        assert mon.update(line, 1)["collapsed"] and mon.update(noise, 2)["collapsed"]
    # two images always differ along one direction: too few to judge the rank
    assert not CollapseMonitor(patience=1).update(torch.randn(2, 32, generator=g), 1)["collapsed"]


def test_monitor_does_not_flag_random_init_networks_on_real_tiles(built_dataset) -> None:
    """Pooled features of random-init ViTs and ResNets are concentrated (mean cosine up to 0.99)
    but not collapsed: the default thresholds leave them alone."""
    import timm

    import eoforge.train.models  # noqa: F401  (registers vit_pico_patch8 with timm)
    from eoforge.shards.reader import iter_dataset

    x = torch.stack([torch.from_numpy(s["s2"][0].astype("float32") / 3000.0) for s in iter_dataset(built_dataset)])
    mon = CollapseMonitor(patience=1)
    for name, kw in (("vit_pico_patch8", {"img_size": 32}), ("resnet18", {})):
        torch.manual_seed(0)
        net = timm.create_model(name, in_chans=13, num_classes=0, **kw).eval()
        with torch.no_grad():
            figures = mon.update(net(x), 1)
        assert not figures["collapsed"], (name, figures)


def test_monitor_warns_after_patience() -> None:
    mon = CollapseMonitor(min_std_norm=0.1, max_mean_cos=0.9, patience=2)
    spread = torch.eye(4)
    collapsed = torch.ones(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mon.update(spread, 1)["collapsed"] is False
        assert mon.update(collapsed, 2)["collapsed"] is False  # one bad check is not collapse
    with pytest.warns(CollapseWarning, match="step 3"):
        assert mon.update(collapsed, 3)["collapsed"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per episode
        assert mon.update(collapsed, 4)["collapsed"] is True
        assert mon.update(spread, 5)["collapsed"] is False


# -------------------------------------------------------------------------------- config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "train" / "recipes").glob("*.yaml"))
TINY = Path(__file__).resolve().parents[1] / "train" / "recipes" / "pera-tiny-demo.yaml"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_load_and_round_trip(recipe: Path) -> None:
    cfg = PretrainConfig.load(recipe)
    assert cfg.method_name == recipe.name.split("-")[0]  # recipes are named <method>-...
    if cfg.method_name == "pera":  # the paper's optimiser
        assert cfg.optim.eps == 2e-5 and cfg.optim.grad_clip == 3.0 and cfg.optim.lr == 1e-3
        assert cfg.optim.ema_momentum == 0.992 and cfg.optim.ema_momentum_end == 1.0
        assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.2)
        assert isinstance(cfg.method.global_crop_scale, tuple)
    elif cfg.method_name == "softcon":  # train/METHODS.md#softcon: EMA 0.99 -> 1, wd 0.1, two seasons, labels
        assert (cfg.optim.ema_momentum, cfg.optim.ema_momentum_end) == (0.99, 1.0) and cfg.optim.weight_decay == 0.1
        assert cfg.data.time_step == "random_pair" and cfg.data.label_taxonomy == "dynamic_world"
    elif cfg.method_name == "cmid":  # train/METHODS.md#cmid: one image, 30 of 49 blocks, lr x sqrt(batch / 256), EMA 0.996
        assert cfg.data.time_step == "random" and cfg.optim.lr_scaling == "sqrt" and cfg.optim.lr == 1e-3
        assert cfg.optim.lr_reference_batch == 256 and cfg.optim.warmup_start_factor == 0.01
        assert (cfg.optim.ema_momentum, cfg.optim.ema_momentum_end) == (0.996, 1.0) and cfg.optim.grad_clip == 0
        assert cfg.method.crop_scale == (0.3, 1.0) and cfg.method.mask_ratio == 0.6
        assert cfg.method.crop_px % cfg.method.mask_block_px == 0
    else:  # the dual encoder: paired steps, S1 clipped in dB
        assert cfg.data.modality == "s1s2" and cfg.data.paired_only
        assert cfg.data.s1_clip_db == ((-25.0, 0.0), (-32.5, 0.0))
    from eoforge.train.methods import METHODS

    METHODS[cfg.method_name]  # a registered method
    again = PretrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert isinstance(again.optim.betas, tuple)


def test_lr_rule_by_hand_and_the_optimisers() -> None:
    from eoforge.train.config import OptimConfig, scaled_lr
    from eoforge.train.engine import build_optimizer

    assert scaled_lr(OptimConfig(lr=1e-3), 512) == 1e-3  # "none": as given (existing recipes)
    assert scaled_lr(OptimConfig(lr=1e-3, lr_scaling="linear"), 512) == pytest.approx(2e-3)
    assert scaled_lr(OptimConfig(lr=1e-3, lr_scaling="sqrt"), 512) == pytest.approx(1e-3 * 2**0.5)
    assert scaled_lr(OptimConfig(lr=1e-3, lr_scaling="sqrt", lr_reference_batch=128), 32) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="lr_scaling"):
        OptimConfig(lr_scaling="cubic")
    with pytest.raises(ValueError, match="adan takes 3"):
        OptimConfig(optimizer="adan")  # AdamW's two betas
    params = [torch.nn.Parameter(torch.ones(3))]
    cfg = PretrainConfig(optim=OptimConfig(optimizer="adan", betas=(0.98, 0.92, 0.99)))
    from timm.optim import Adan

    assert isinstance(build_optimizer([{"params": params}], cfg), Adan)
    assert isinstance(build_optimizer([{"params": params}], PretrainConfig()), torch.optim.AdamW)


def test_config_unknown_key_names_file_and_key(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  steps: 3\n  stepz: 4\n")
    with pytest.raises(ConfigError) as err:
        PretrainConfig.load(bad)
    assert str(bad) in str(err.value) and "engine.stepz" in str(err.value)
    bad.write_text("method:\n  name: pera\n  global_crop: 32\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*method\.global_crop"):
        PretrainConfig.load(bad)
    bad.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*trainer"):
        PretrainConfig.load(bad)
    bad.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim"):
        PretrainConfig.load(bad)
    bad.write_text("method:\n  name: nosuch\n")
    with pytest.raises(ConfigError, match="unknown method 'nosuch'"):
        PretrainConfig.load(bad)


def test_config_overrides(tmp_path) -> None:
    cfg = pretrain_config(TINY, method="pera", model="vit_small_patch16_224", steps=7, batch_size=3, workers=0,
                          device="cpu", sets=("optim.lr=0.5", "optim.betas=[0.8, 0.9]", "method.n_local_crops=2"))
    assert (cfg.model.name, cfg.engine.steps, cfg.data.batch_size, cfg.data.workers, cfg.engine.device) == (
        "vit_small_patch16_224", 7, 3, 0, "cpu")
    assert cfg.optim.lr == 0.5 and cfg.optim.betas == (0.8, 0.9) and cfg.method.n_local_crops == 2
    base = PretrainConfig.load(TINY)
    assert cfg.model.img_size_px == base.model.img_size_px  # untouched keys keep the recipe's values
    with pytest.raises(ConfigError, match="engine.nope"):
        pretrain_config(TINY, method="pera", sets=("engine.nope=1",))
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        pretrain_config(TINY, method="pera", sets=("steps",))
    other = tmp_path / "other.yaml"
    other.write_text("method:\n  name: pera\n")
    with pytest.raises(ConfigError, match="--method 'softcon'"):
        PretrainConfig.load(other, method="softcon")
    # resuming without --config starts from the run's own config.yaml
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    assert pretrain_config(None, method="pera", run=run) == cfg
    assert pretrain_config(None, method="pera", run=run, steps=9).engine.steps == 9


# --------------------------------------------------------------- a tiny run, then export


def test_truncate_metrics_drops_lines_after_the_checkpoint(tmp_path) -> None:
    from eoforge.train.engine import read_metrics, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "loss": {i / 10}}}\n' for i in range(1, 6)) + '{"step": 6, "lo')
    assert [m["step"] for m in read_metrics(path)] == [1, 2, 3, 4, 5]  # the torn line of a crash is skipped
    truncate_metrics(path, 3)
    assert [m["step"] for m in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().endswith("\n")


@pytest.fixture(scope="module")
def stats_dataset(built_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared dataset (3 train shards of 32-px tiles) with its stats.json."""
    from eoforge.shards.stats import compute_stats

    root = Path(shutil.copytree(built_dataset, tmp_path_factory.mktemp("engine") / "ds"))
    compute_stats(root, workers=1)
    return root


def test_train_in_process_then_export_loads_in_timm(stats_dataset: Path, tmp_path: Path) -> None:
    import json

    import timm
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from eoforge.train.cli import export
    from eoforge.train.engine import read_metrics, train

    cfg = pretrain_config(TINY, method="pera", steps=3, batch_size=2, workers=0, device="cpu", sets=(
        "engine.checkpoint_every=2", "engine.log_every=1", "engine.progress=false", "engine.torch_threads=0",
        "method.n_local_crops=1",
        "method.head_prototypes=64", "method.head_hidden_dim=32", "data.shuffle_buffer=4", "data.shuffle_initial=2"))
    run = tmp_path / "run"
    result = train(cfg, stats_dataset, run)  # plain single process: no torchrun environment
    assert result.steps == 3 and result.start_step == 0 and result.checkpoint.name == "step-00000003.pt"
    lines = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in lines] == [1, 2, 3] and lines[-1]["skipped_samples"] == 0
    assert lines[0]["lr"] == 0.0 and lines[0]["wd"] == pytest.approx(0.04)  # warm-up starts at 0
    assert (run / "loss.png").is_file() and json.loads((run / "ranks" / "rank-0.json").read_text())["steps"] == 3
    assert PretrainConfig.load(run / "config.yaml") == cfg
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, stats_dataset, run)

    model_path = tmp_path / "model" / "pera-pico.safetensors"
    res = CliRunner().invoke(export, [str(run), "--out", str(model_path)])
    assert res.exit_code == 0, res.output
    meta = json.loads(model_path.with_suffix(".json").read_text())
    for key in ("timm_model", "in_chans", "img_size", "bands", "normalization", "method", "config", "manifest_sha256"):
        assert key in meta, key
    assert meta["timm_model"] == "vit_pico_patch8" and meta["in_chans"] == 13 and meta["img_size"] == 32
    assert meta["method"] == "pera" and meta["bands"][10] == "B10" and len(meta["bands"]) == 13
    assert meta["manifest_sha256"] == hashlib.sha256((stats_dataset / "manifest.parquet").read_bytes()).hexdigest()
    norm = meta["normalization"]
    assert norm["mode"] == "minmax2sigma" and len(norm["lo"]) == len(norm["hi"]) == 13
    stats = json.loads((stats_dataset / "stats.json").read_text())["s2"]
    assert norm["lo"][1] == pytest.approx(stats["mean"][1] - 2 * stats["std"][1])
    assert norm["lo"][10] is None  # L2A's zero B10 has no statistics
    assert PretrainConfig.from_dict(meta["config"]) == cfg

    # the contract: plain timm + load_state_dict, no missing (or unexpected) keys
    net = timm.create_model(meta["timm_model"], in_chans=meta["in_chans"], num_classes=0)
    state = load_file(str(model_path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    # and it is the EMA teacher's backbone of the last checkpoint
    ckpt = torch.load(run / "checkpoints" / "step-00000003.pt", weights_only=True)
    for k, v in state.items():
        assert torch.equal(v, ckpt["model"][f"teacher.backbone.{k}"]), k
    with torch.no_grad():
        assert net(torch.zeros(2, 13, 32, 32)).shape == (2, 64)


def test_resume_warns_about_a_changed_configuration_only(stats_dataset: Path, tmp_path: Path) -> None:
    """``--resume`` with settings that change the numbers warns, naming them; settings of how a
    run goes (progress, threads, callbacks) do not."""
    import warnings

    from eoforge.train.engine import train

    def cfg(*sets: str) -> PretrainConfig:
        return pretrain_config(TINY, method="pera", steps=1, batch_size=2, workers=0, device="cpu", sets=(
            "engine.checkpoint_every=1", "engine.progress=false", "method.n_local_crops=1", "method.head_prototypes=64",
            "method.head_hidden_dim=32", "data.shuffle_buffer=4", "data.shuffle_initial=2", *sets))

    run = tmp_path / "run"
    train(cfg(), stats_dataset, run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning of ours fails here
        train(cfg("engine.torch_threads=2", "engine.step_callbacks=['builtins:abs']"), stats_dataset, run, resume=True)
    with pytest.warns(UserWarning, match=r"different configuration .*optim\.lr: 0\.001 -> 0\.002") as caught:
        train(cfg("engine.steps=2", "optim.lr=0.002"), stats_dataset, run, resume=True)
    message = str(caught[0].message)
    assert "engine.steps: 1 -> 2" in message and "torch_threads" not in message


def _cpu_fp16_amp_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
        torch.amp.GradScaler("cpu")
        return y.dtype == torch.float16
    except (RuntimeError, TypeError, ValueError):
        return False


@pytest.mark.skipif(not _cpu_fp16_amp_works(), reason="this torch has no CPU fp16 autocast / GradScaler")
def test_fp16_autocast_and_grad_scaler_on_cpu(stats_dataset: Path, tmp_path: Path) -> None:
    """``engine.amp: fp16`` with ``cpu_amp``: the GradScaler path (scale, unscale before clipping,
    step, update) runs on CPU, its state is checkpointed and comes back on resume."""
    from eoforge.train.engine import read_metrics, train

    def cfg(steps: int) -> PretrainConfig:
        return pretrain_config(TINY, method="pera", steps=steps, batch_size=2, workers=0, device="cpu", sets=(
            "engine.amp=fp16", "engine.cpu_amp=true", "engine.checkpoint_every=2", "engine.log_every=1",
            "engine.progress=false", "method.n_local_crops=1", "method.head_prototypes=64",
            "method.head_hidden_dim=32", "data.shuffle_buffer=4", "data.shuffle_initial=2"))

    run = tmp_path / "run"
    train(cfg(2), stats_dataset, run)
    path = run / "checkpoints" / "step-00000002.pt"
    state = torch.load(path, weights_only=False)
    # an enabled scaler has state (a disabled one's is empty); it starts at 2**16 and halves on
    # every step whose fp16 gradients overflowed (the step is then skipped)
    assert state["scaler"]["scale"] in {2.0 ** k for k in range(14, 17)}
    state["scaler"]["scale"] = 8.0  # small enough that no gradient overflows: the resumed steps apply
    torch.save(state, path)
    with pytest.warns(UserWarning, match=r"engine\.steps: 2 -> 4"):  # a longer run: another schedule
        train(cfg(4), stats_dataset, run, resume=True)
    resumed = torch.load(run / "checkpoints" / "step-00000004.pt", weights_only=False)["scaler"]
    assert resumed["scale"] == 8.0 and resumed["_growth_tracker"] == 2  # restored, then two finite steps
    lines = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in lines] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in lines)
    assert all(m["grad_norm"] is not None and np.isfinite(m["grad_norm"]) for m in lines[2:])  # unscaled before clipping
    fp32 = pretrain_config(TINY, method="pera", steps=2, device="cpu", sets=("engine.amp=fp16",))
    assert fp32.engine.cpu_amp is False  # off unless asked: CPU trains in fp32
