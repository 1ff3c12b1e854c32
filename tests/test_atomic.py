"""One writer for every file eoforge replaces: whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eoforge.shards.atomic import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "sub" / "report.json", "old\n")  # the folder is created
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_the_file_appears_only_when_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "stats.npz"
    with atomic_path(path, suffix=".tmp.npz", fsync=True) as tmp:
        np.savez(tmp, a=np.arange(3))  # a writer that names its format by the extension
        assert not path.exists() and tmp.exists()
    with np.load(path) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]
