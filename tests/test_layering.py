"""The pipeline's layering holds in the code: ingest -> shards -> train -> eval, data flowing
one way. A module may import its own stage and the stages before it (``shards`` is the
contract every stage shares), never a later one: ``shards`` imports no other stage, ``ingest``
only ``shards``, ``train`` only ``shards``, ``eval`` ``shards`` and ``train`` (the exported-model
format). Benchmarks included: one that needs another stage's output reads it from disk."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "shards": {"shards"},
    "ingest": {"ingest", "shards"},
    "train": {"train", "shards"},
    "eval": {"eval", "shards", "train"},
}


def _stage_imports(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "eoforge" and len(parts) > 1 and parts[1] in ALLOWED:
                stages.add(parts[1])
    return stages


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_stage_imports_only_itself_and_earlier_stages(stage: str) -> None:
    offending = {str(p.relative_to(ROOT)): sorted(_stage_imports(p) - ALLOWED[stage])
                 for p in sorted((ROOT / stage).rglob("*.py"))}
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from eoforge.ingest.bench import make_scene\n    import eoforge.eval.run\n")
    assert _stage_imports(module) == {"ingest", "eval"}
