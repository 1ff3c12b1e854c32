"""Training checkpoints: the full state, written atomically, found again after a crash.

Layout inside a run folder::

    RUN/checkpoints/step-00001000.pt   # torch.save of the state dict below
    RUN/checkpoints/latest             # text: the file name of the newest complete checkpoint

A checkpoint is written to ``step-….pt.tmp`` in the same folder, flushed and fsynced, then
renamed with ``os.replace`` (atomic on POSIX), and only then is ``latest`` rewritten the same
way. A process killed at any moment leaves either the previous checkpoint or the new one,
never a torn file under a final name. Older checkpoints beyond ``keep`` are deleted after
the new one is in place.

The state (see :func:`eoforge.train.engine.train`) holds only tensors and plain Python
values — RNG states are converted to tensors/lists by :func:`rng_state` — so it loads with
``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eoforge.shards.atomic import atomic_path

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_name(step: int) -> str:
    """``step-00001000.pt`` for ``step`` completed optimiser steps."""
    return f"step-{step:08d}.pt"


def _write_atomic(path: Path, write: Any) -> None:
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        write(f)


def save_checkpoint(folder: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = 1) -> Path:
    """Write ``state`` as ``folder/step-<step>.pt`` atomically, point ``latest`` at it, prune old ones.

    Args:
        folder: the checkpoint folder (created if missing), usually ``RUN/checkpoints``.
        step: completed optimiser steps (names the file).
        state: tensors and plain Python values only.
        keep: how many of the newest checkpoints to keep (>= 1).

    Returns:
        path of the written checkpoint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    _write_atomic(path, lambda f: torch.save(state, f))
    _write_atomic(folder / LATEST, lambda f: f.write(path.name.encode() + b"\n"))
    for old in list_checkpoints(folder)[: -max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (``.tmp`` leftovers are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``latest`` names, else the highest-step complete one, else None."""
    folder = Path(folder)
    pointer = folder / LATEST
    if pointer.is_file():
        target = folder / pointer.read_text().strip()
        if _NAME.match(target.name) and target.is_file():
            return target
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loader: no arbitrary unpickling)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states as tensors / lists."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when the GPU count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
