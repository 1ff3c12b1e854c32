"""End-to-end training under torchrun (gloo, CPU, loopback): DDP, two "nodes", exact resume, PerA.

Each test launches the real command, ``python -m torch.distributed.run ... -m eoforge.train.cli
pretrain`` (or, where one process is enough, ``python -m eoforge.train.cli pretrain``: the
no-torchrun code path), on a small dataset of 32-px tiles with the tiny ViT (``vit_pico_patch8``),
and reads what the run wrote: ``RUN/metrics.jsonl``, ``RUN/checkpoints/``, and ``RUN/ranks/rank-N.json``
(the engine's debugging record of each rank's steps, consumed sample keys and final state
hash). Every subprocess has a timeout, so a hang fails the test instead of stalling it.

Kill + resume injects the fault through the engine's one extension seam,
``engine.step_callbacks``: a callback file makes the training process SIGKILL itself right after
step ``k`` (a hard crash at a reproducible point, between two checkpoints), then the same command
without it and with ``--resume`` continues. The training loop has no test branch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_dataset
from eoforge.shards.manifest import read_manifest
from eoforge.shards.stats import compute_stats
from eoforge.train.checkpoint import latest_checkpoint, load_checkpoint
from eoforge.train.engine import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "recipes" / "pera-tiny-demo.yaml"
TIMEOUT_S = 120

#: small and fast: 4 samples a step, 2 local crops, a small head
FAST = [
    "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet",
    "--set", "method.n_local_crops=2", "--set", "method.head_prototypes=256",
    "--set", "method.head_hidden_dim=64", "--set", "data.shuffle_buffer=16", "--set", "data.shuffle_initial=4",
    "--set", "engine.log_every=1",
]


@pytest.fixture(scope="module")
def train_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training tiles in 8 shards (enough for 2 ranks x 1 worker) plus stats.json."""
    root = build_dataset(tmp_path_factory.mktemp("train-ds"), n_train=16, n_val=2, max_samples=2)
    compute_stats(root, workers=1)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


#: fault injection through the engine's one seam, ``engine.step_callbacks``: a hard crash after a step
KILL_AFTER_STEP = """
import os, signal

def kill_after_step_3(step):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_after_step_3(folder: Path) -> list[str]:
    """``--set`` options that make a run die (SIGKILL) right after step 3."""
    (folder / "fault.py").write_text(KILL_AFTER_STEP)
    return ["--set", f"engine.step_callbacks=['{folder / 'fault.py'}:kill_after_step_3']"]


def _pretrain_args(ds: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return ["-m", "eoforge.train.cli", "pretrain", "--data", str(ds), "--method", "pera", "--out", str(run),
            "--config", str(TINY), "--steps", str(steps), *FAST, *extra]


def _torchrun(launch: list[str] | None, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run torchrun (or plain python) to the end; fail the test with its output on an error or a timeout."""
    code, log = _finish(_start(launch, args, env))
    if code != 0:
        pytest.fail(f"{' '.join((launch or []) + args)} exited {code}\n{log}")
    return log


def _start(launch: list[str] | None, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``torchrun LAUNCH ARGS`` (``launch=None``: a plain ``python ARGS``, no process group)."""
    cmd = [sys.executable, *(["-m", "torch.distributed.run", *launch] if launch is not None else []), *args]
    # a session of its own, so a hang can be killed with all of torchrun's workers
    return subprocess.Popen(cmd, cwd=REPO, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for a process started by :func:`_start` (killed on timeout); its exit code and output tail."""
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT_S} s: {proc.args}\n{out[-5000:]}")
    return proc.returncode, out[-5000:]


def _ranks(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank-*.json"))]


def _shard_of_key(ds: Path) -> dict[str, str]:
    table = read_manifest(ds, columns=["key", "shard"])
    return dict(zip(table.column("key").to_pylist(), table.column("shard").to_pylist()))


def _check_ddp_run(run: Path, ds: Path, steps: int) -> None:
    ranks = _ranks(run)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # equal work: both ranks took every step, each with a full batch
    assert [r["steps"] for r in ranks] == [steps, steps]
    assert [len(r["keys"]) for r in ranks] == [steps, steps]
    assert all(len(batch) == 4 for r in ranks for batch in r["keys"])
    # disjoint shards: no shard fed both ranks
    shard = _shard_of_key(ds)
    shards = [{shard[k] for batch in r["keys"] for k in batch} for r in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    # identical weights (student, EMA teacher, DINO centre) on both ranks
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    lines = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in lines] == list(range(1, steps + 1))


def test_torchrun_two_processes_one_node(train_ds: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = _torchrun(["--standalone", "--nproc-per-node", "2"],
                    _pretrain_args(train_ds, run, 4, "--set", "engine.checkpoint_every=2"))
    _check_ddp_run(run, train_ds, 4)
    assert "FutureWarning" not in log and "DeprecationWarning" not in log, log  # none of ours on any rank
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2


def test_torchrun_two_nodes_c10d_loopback(train_ds: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = _free_port()
    launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "eoforge-test"]
    nodes = [_start(launch, _pretrain_args(train_ds, run, 3)) for _ in range(2)]
    try:
        results = [_finish(node) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    for code, log in results:
        assert code == 0, log
    _check_ddp_run(run, train_ds, 3)


def test_kill_and_resume_is_exact(train_ds: Path, tmp_path: Path) -> None:
    """Deterministic CPU runs: 6 steps straight vs killed after step 3 and resumed from step 2."""
    steps = 6
    args = ["--set", "engine.checkpoint_every=2", "--set", "engine.deterministic=true", "--workers", "1"]
    launch = None  # one plain process (torchrun's agent adds start-up time, not coverage, here)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    # the uninterrupted run and the one that crashes hard after step 3 (last checkpoint: step 2,
    # the log already has step 3) run side by side
    procs = [_start(launch, _pretrain_args(train_ds, whole, steps, *args)),
             _start(launch, _pretrain_args(train_ds, broken, steps, *args, *_kill_after_step_3(tmp_path)))]
    (code_whole, log_whole), (code_broken, _) = [_finish(p) for p in procs]
    assert code_whole == 0, log_whole
    assert code_broken != 0
    assert latest_checkpoint(broken / "checkpoints").name == "step-00000002.pt"
    assert [m["step"] for m in read_metrics(broken / "metrics.jsonl")] == [1, 2, 3]

    _torchrun(launch, _pretrain_args(train_ds, broken, steps, *args, "--resume"))
    a, b = read_metrics(whole / "metrics.jsonl"), read_metrics(broken / "metrics.jsonl")
    # the log continues from the saved step: no gap, no duplicate
    assert [m["step"] for m in b] == list(range(1, steps + 1))
    for ma, mb in zip(a, b):
        for key in ("loss", "dino", "koleo", "pixel", "lr", "wd", "momentum", "grad_norm", "embed_std"):
            assert ma[key] == mb[key], (ma["step"], key)
    # the same batches, in the same order
    assert _ranks(whole)[0]["keys"] == _ranks(broken)[0]["keys"]
    # bit-identical weights, optimiser state and loss centre
    sa = load_checkpoint(latest_checkpoint(whole / "checkpoints"))
    sb = load_checkpoint(latest_checkpoint(broken / "checkpoints"))
    assert sa["step"] == sb["step"] == steps
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert any("center" in k for k in sa["model"])
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])


def test_short_pera_run_lowers_loss_without_collapse(train_ds: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps = 100
    _torchrun(None, _pretrain_args(train_ds, run, steps, "--batch-size", "8", "--workers", "1",
                                   "--set", "engine.checkpoint_every=100",
                                   "--set", "optim.warmup_steps=10", "--set", "method.teacher_temp_warmup_steps=10"))
    lines = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    # the DINO term first rises while the teacher sharpens (temperature warm-up), then falls
    first = sum(m["loss"] for m in lines[:10]) / 10
    last = sum(m["loss"] for m in lines[-10:]) / 10
    assert last < first - 0.3, (first, last)
    for m in lines:
        for key in ("embed_std", "embed_std_norm", "embed_mean_cos", "collapsed", "samples_per_s",
                    "data_wait_share", "lr", "wd", "momentum", "grad_norm", "dino", "koleo", "pixel",
                    "teacher_temp"):
            assert key in m, key
    # the monitor's figures say "spread", not "collapsed"
    assert not any(m["collapsed"] for m in lines[-20:])
    tail = lines[-10:]
    assert sum(m["embed_std_norm"] for m in tail) / 10 > 0.5
    assert sum(m["embed_mean_cos"] for m in tail) / 10 < 0.5
    assert (run / "loss.png").stat().st_size > 10_000
