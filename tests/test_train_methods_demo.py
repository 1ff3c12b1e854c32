"""SoftCon and the dual encoder through the real engine on shards ingested from the demo scenes:
the recipes `make demo METHOD=...` uses, shortened; the loss falls and no collapse is reported,
and each exported encoder goes through `eoforge eval` beside its random-init twin."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from eoforge.eval.run import EvalConfig, evaluate
from eoforge.train.config import PretrainConfig
from eoforge.train.engine import read_metrics, train
from eoforge.train.export import export_run
from eoforge.train.monitor import CollapseWarning

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"
SHORT = {"engine.steps": 150, "engine.checkpoint_every": 150, "engine.log_every": 10, "engine.progress": False,
         "engine.device": "cpu", "data.workers": 0, "data.batch_size": 16, "optim.warmup_steps": 20}


def _run(recipe: str, data: Path, run: Path) -> list[dict]:
    cfg = PretrainConfig.load(RECIPES / recipe).override(SHORT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)  # a collapse warning fails the test
        train(cfg, data, run)
    lines = read_metrics(run / "metrics.jsonl")
    assert len(lines) == 15 and not any(m["collapsed"] for m in lines)
    first, last = lines[0]["loss"], sum(m["loss"] for m in lines[-3:]) / 3
    assert last < 0.95 * first, (first, last)
    return lines


def test_softcon_on_demo_shards(demo_ingest, tmp_path: Path) -> None:
    lines = _run("softcon-tiny-demo.yaml", demo_ingest.out, tmp_path / "run")
    assert {"hard", "soft", "labelled_share"} <= set(lines[-1]) and lines[-1]["labelled_share"] > 0.5
    assert json.loads((tmp_path / "run" / "dataset.json").read_text())["in_chans"] == 13
    weights = export_run(tmp_path / "run", tmp_path / "model.safetensors").weights
    out = evaluate(weights, demo_ingest.out, ("knn",), EvalConfig())
    assert {r["backbone"] for r in out.report["results"]} == {"pretrained", "random-init"}


def test_dual_encoder_on_demo_shards(demo_ingest, tmp_path: Path) -> None:
    lines = _run("dualenc-tiny-demo.yaml", demo_ingest.out, tmp_path / "run")
    assert lines[-1]["skipped_samples"] == 0  # tiles without an S1 pair are passed over, not errors
    for branch, bands in (("s2", 13), ("s1", 2)):
        result = export_run(tmp_path / "run", tmp_path / f"{branch}.safetensors", branch=branch)
        assert json.loads(result.meta.read_text())["in_chans"] == bands
        out = evaluate(result.weights, demo_ingest.out, ("knn",), EvalConfig())
        assert out.report["settings"]["inputs"]["bands"][0] == ("B1" if branch == "s2" else "VV")


def test_cmid_on_demo_shards(demo_ingest, tmp_path: Path) -> None:
    """The `make demo METHOD=cmid` recipe, shortened: every branch's loss falls, no collapse, and
    the exported student is a plain timm ResNet that `eoforge eval` probes."""
    steps, batch = 120, 16
    cfg = PretrainConfig.load(RECIPES / "cmid-tiny-demo.yaml").override(
        {**SHORT, "engine.steps": steps, "engine.checkpoint_every": steps, "data.batch_size": batch})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        train(cfg, demo_ingest.out, tmp_path / "run")
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(lines) == steps // 10 and not any(m["collapsed"] for m in lines)

    def tail(key: str) -> float:
        return sum(m[key] for m in lines[-3:]) / 3

    assert tail("rec") < 0.5 * lines[0]["rec"] and tail("local") < lines[0]["local"]
    # InfoNCE against a queue compares with the queue's random initial keys until real keys fill
    # it (queue_size / (2 x batch) steps): the global loss falls from the first step after that
    full = next(m for m in lines if m["step"] > cfg.method.queue_size // (2 * batch))
    assert tail("global") < full["global"], (full["global"], tail("global"))
    weights = export_run(tmp_path / "run", tmp_path / "model.safetensors").weights
    out = evaluate(weights, demo_ingest.out, ("knn",), EvalConfig())
    assert out.report["settings"]["model"]["timm_model"] == "resnet18"
