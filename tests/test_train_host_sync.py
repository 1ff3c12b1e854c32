"""A training step issues no device-to-host copy outside logging steps; a NaN loss stops the run
before it reaches a checkpoint.

On a GPU every ``.item()`` / ``.tolist()`` / ``float(tensor)`` / ``if tensor:`` waits for the
queue of kernels to drain. The test counts those calls made by the training code (the engine,
the methods, their losses and heads; not the data pipeline, which works on host arrays) during
a run of 2 steps and a run of 8 steps, each logging and checkpointing once at its end: with no
per-step copy the counts are equal.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from eoforge.train.config import PretrainConfig
from eoforge.train.engine import train

TRAIN_DIR = str(Path(__file__).resolve().parents[1] / "train") + "/"
RECIPES = Path(TRAIN_DIR) / "recipes"
#: Tensor methods that copy a value from the device to the host.
HOST_COPIES = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


def _short(steps: int) -> dict[str, Any]:
    return {"engine.steps": steps, "engine.checkpoint_every": steps, "engine.log_every": steps,
            "engine.progress": False, "engine.device": "cpu", "engine.torch_threads": 1, "data.workers": 0,
            "data.batch_size": 4, "data.shuffle_buffer": 8, "data.shuffle_initial": 4}


class HostCopies:
    """Counts the calls of :data:`HOST_COPIES` whose caller is eoforge's training code and that
    are not made while a DataLoader produces a batch (host data: the views, augmentations)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for name in HOST_COPIES:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name: str, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(TRAIN_DIR) and not self._in_loader(caller):
                self.calls[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {name}"] += 1
            return original(tensor, *args, **kwargs)

        return counted

    @staticmethod
    def _in_loader(frame: Any) -> bool:
        while frame is not None:
            name = frame.f_code.co_filename
            if "torch/utils/data" in name or name.startswith(TRAIN_DIR + "data/"):
                return True
            frame = frame.f_back
        return False


@pytest.mark.parametrize("method", ["pera", "softcon", "dualenc", "cmid"])
def test_no_host_copy_per_training_step(method: str, demo_ingest: Any, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    counts = {}
    for steps in (2, 8):
        copies = HostCopies(monkeypatch)
        cfg = PretrainConfig.load(RECIPES / f"{method}-tiny-demo.yaml").override(_short(steps))
        train(cfg, demo_ingest.out, tmp_path / f"run-{steps}")
        counts[steps] = copies.calls
        monkeypatch.undo()
    assert sum(counts[2].values()) > 0  # the counter sees the log step's copies
    assert counts[8] == counts[2], {k: (counts[2][k], counts[8][k]) for k in counts[8] if counts[8][k] != counts[2][k]}


def test_a_nan_loss_stops_the_run_before_a_checkpoint(demo_ingest: Any, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from eoforge.train.checkpoint import latest_checkpoint
    from eoforge.train.methods.pera import PerA

    forward = PerA.forward

    def poisoned(self: Any, batch: Any, step: int) -> Any:
        out = forward(self, batch, step)
        if step == 4:  # the fifth step (0-based), between the checkpoints at 4 and 8
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PerA, "forward", poisoned)
    cfg = PretrainConfig.load(RECIPES / "pera-tiny-demo.yaml").override(
        {**_short(12), "engine.checkpoint_every": 4, "engine.log_every": 6})
    with pytest.raises(FloatingPointError, match=r"non-finite .* between steps 5 and 6"):
        train(cfg, demo_ingest.out, tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000004.pt"  # none after the NaN


def test_the_dino_centre_update_is_one_all_reduce(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Row sums and row count travel in one collective (a 1-rank gloo group), and the centre
    is the momentum mean the DINO rule gives."""
    import torch.distributed as dist

    from eoforge.train.losses.dino_cls import DINOClsLoss

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = []
        reduce = dist.all_reduce
        monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: (calls.append(tuple(t.shape)), reduce(t, *a, **k)))
        loss = DINOClsLoss(out_dim=5, center_momentum=0.9)
        logits = torch.arange(15, dtype=torch.float32).reshape(3, 5)
        loss.update_center(logits)
        assert calls == [(6,)]  # K sums + the count
        torch.testing.assert_close(loss.center, 0.1 * logits.mean(dim=0, keepdim=True))
    finally:
        dist.destroy_process_group()
