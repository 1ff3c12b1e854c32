"""The one recipe loader (``shards/config.py``) every command reads its YAML through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from eoforge.eval.compare import CompareConfig
from eoforge.ingest.config import IngestConfig
from eoforge.shards.config import ConfigError, build_section, load_callable, read_recipe
from eoforge.train.config import PretrainConfig


@dataclass(frozen=True)
class _Section:
    betas: tuple[float, ...] = (0.9, 0.999)
    lr: float = 1e-3
    name: str | None = None


def test_build_section_converts_yaml_values_and_names_bad_keys() -> None:
    built = build_section(_Section, {"betas": [0.9, 0.95], "lr": "3e-4"}, "r.yaml", "optim")
    assert built == _Section(betas=(0.9, 0.95), lr=3e-4)
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key optim.lrr \(known optim keys: \['betas', 'lr', 'name'\]\)"):
        build_section(_Section, {"lrr": 1}, "r.yaml", "optim")


def test_read_recipe_takes_a_section_and_names_the_file(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("ingest:\n  tile_size_px: 128\ncompare:\n  steps: 5\n")
    assert read_recipe(both, "ingest") == {"tile_size_px": 128}
    assert IngestConfig.load(both).tile_size_px == 128
    assert CompareConfig.load(both).steps == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    for load in (IngestConfig.load, CompareConfig.load, PretrainConfig.load):
        with pytest.raises(ConfigError, match=r"bad.yaml: expected a mapping of settings, got list"):
            load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: cannot read config"):
        read_recipe(broken)


def test_load_callable_from_a_module_or_a_file(tmp_path: Path) -> None:
    assert load_callable("os.path:join", "x")("a", "b") == "a/b"
    hook = tmp_path / "hook.py"
    hook.write_text("def double(v):\n    return 2 * v\n")
    assert load_callable(f"{hook}:double", "engine.step_callbacks")(21) == 42
    with pytest.raises(ConfigError, match=r"engine.step_callbacks .*hook.py has no function triple"):
        load_callable(f"{hook}:triple", "engine.step_callbacks")
    with pytest.raises(ConfigError, match=r"href_signer 'nocolon': expected module:function"):
        load_callable("nocolon", "href_signer")
    with pytest.raises(ConfigError, match=r"cannot load .*missing.py"):
        load_callable(f"{tmp_path / 'missing.py'}:f", "x")
    with pytest.raises(ConfigError, match=r"cannot import no_such_module_eoforge"):
        load_callable("no_such_module_eoforge:f", "x")
