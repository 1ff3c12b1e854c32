"""``eoforge compare`` on shards ingested from the demo scenes: real pretraining, export and
probes for two methods (one of them an ablation row), one table and picture; a rerun keeps
what is done; a bad recipe is refused naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eoforge.eval.compare import CompareConfig, CompareEntry, compare
from eoforge.shards.config import ConfigError

pytestmark = pytest.mark.slow

TWO_ROWS = CompareConfig(
    methods=(CompareEntry("pera"), CompareEntry("softcon", name="softcon-hard-only", sets=("method.soft_weight=0",))),
    steps=6, batch_size=8, seeds=(0,), device="cpu", workers=0)


def test_compare_trains_exports_and_probes_every_row_then_resumes(demo_ingest, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    report = compare(demo_ingest.out, out, TWO_ROWS, log=lambda _: None)
    assert [r["name"] for r in report["rows"]] == ["pera", "softcon-hard-only"]
    for row in report["rows"]:
        run = Path(row["per_seed"][0]["run"])
        config = (run / "config.yaml").read_text()
        assert "steps: 6" in config and "batch_size: 8" in config  # the comparison's budget, not the recipe's
        assert (run / "model.safetensors").is_file() and (run / "eval" / "results.json").is_file()
        scores = row["scores"]
        assert set(scores) == {f"{p}_{m}" for p in ("knn", "linear") for m in ("micro_ap", "macro_ap")}
        assert all(0.0 <= v <= 1.0 for v in [*scores.values(), *row["random_init"].values()])
        assert len(row["per_seed"][0]["loss_curve"]) >= 1
    assert "soft_weight: 0" in (Path(report["rows"][1]["per_seed"][0]["run"]) / "config.yaml").read_text()
    # both rows are ViTs of one architecture probed with one seed: one shared random-init baseline
    assert report["rows"][0]["random_init"] == report["rows"][1]["random_init"]
    table = (out / "results.md").read_text()
    assert "| pera | vit_pico_patch8 |" in table and table.count("| random init |") == 1
    assert (out / "results.png").stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["rows"][0]["name"] == "pera"

    # a rerun trains, exports and probes nothing again ...
    run = Path(report["rows"][0]["per_seed"][0]["run"])
    stamps = {p: p.stat().st_mtime_ns for p in (run / "model.safetensors", run / "eval" / "results.json")}
    again = compare(demo_ingest.out, out, TWO_ROWS, log=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["rows"][0]["scores"] == report["rows"][0]["scores"]
    # ... and a longer budget continues the runs from their last checkpoint, then probes anew
    with pytest.warns(UserWarning, match="engine.steps: 6 -> 8"):  # the engine says the run changed
        longer = compare(demo_ingest.out, out, dataclasses.replace(TWO_ROWS, steps=8), log=lambda _: None)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 8 and (run / "model.safetensors").stat().st_mtime_ns > stamps[run / "model.safetensors"]
    assert longer["config"]["steps"] == 8


def test_compare_recipes_and_errors(tmp_path: Path) -> None:
    shipped = CompareConfig.load(Path(__file__).resolve().parents[1] / "eval" / "recipes" / "compare-demo.yaml")
    assert [m.label for m in shipped.methods] == ["pera", "softcon", "softcon-hard-only", "dualenc-s2", "cmid"]
    assert all(m.recipe_path().is_file() for m in shipped.methods)
    bad = tmp_path / "bad.yaml"
    bad.write_text("compare:\n  methods: [pera]\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key compare.stepz "):
        CompareConfig.load(bad)
    bad.write_text("compare:\n  methods: [pera, pera]\n")
    with pytest.raises(ConfigError, match="share a name"):
        CompareConfig.load(bad)
    bad.write_text("compare:\n  methods:\n    - {method: pera, recipe: nowhere.yaml}\n")
    (tmp_path / "manifest.parquet").touch()
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        compare(tmp_path, tmp_path / "out", CompareConfig.load(bad))
    from eoforge.cli import main

    result = CliRunner().invoke(main, ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                       "--method", "nosuch"])  # a row of the default recipe, by name
    assert result.exit_code == 2 and ("--method nosuch: not a row of the recipe "
                                      "(pera, softcon, softcon-hard-only, dualenc-s2, cmid)") in result.output
    # a row's name selects it (eval/README's SoftCon ablation command): past the selection, the
    # run stops at the dataset (tmp_path has an empty manifest), not at --method
    result = CliRunner().invoke(main, ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                       "--method", "softcon", "--method", "softcon-hard-only", "--steps", "1"])
    assert "--method" not in result.output and "not a row" not in result.output, result.output
    only_pera = tmp_path / "only-pera.yaml"
    only_pera.write_text("compare:\n  methods: [pera]\n")
    result = CliRunner().invoke(main, ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                       "--config", str(only_pera), "--method", "cmid"])
    assert result.exit_code == 2 and "--method cmid: not a row of the recipe" in result.output
