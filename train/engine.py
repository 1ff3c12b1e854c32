"""The training loop shared by every method: DDP, AMP, schedules, EMA, checkpoints, logs.

``train(cfg, data, out, resume)`` runs one process of a (possibly distributed) job; launch
it with ``torchrun`` for several processes (``make pretrain``) or directly for one.

Per step ``i`` (0-based; the logs and checkpoints count *completed* steps, ``i + 1``)::

    batch  = next(loader)                                  # data wait is timed here
    lr, wd = lr_schedule[i] * lr_scale, wd_schedule[i]     # set on every optimiser group
    loss   = ddp(batch, step=i).loss                       # autocast bf16 on CUDA, fp32 on CPU
    loss.backward(); clip_grad_norm_(grad_clip); optimizer.step()
    method.update_teacher(momentum_schedule[i])            # EMA after the optimiser step

Data position: the loader is rebuilt at every checkpoint boundary ("segment") with
``start_step`` = the segment's first step, and the stream of a segment depends only on
(seed, start_step, rank, worker) (see :func:`eoforge.train.data.build_loader`). A resumed
run therefore sees exactly the batches an uninterrupted one sees, and with
``engine.deterministic`` on CPU its weights are bit-identical.

The peak of ``lr_schedule`` is ``optim.lr`` scaled by the global batch (per-rank batch × ranks)
with the rule ``optim.lr_scaling`` (``none``, ``linear`` or ``sqrt``, against
``optim.lr_reference_batch``; :func:`eoforge.train.config.scaled_lr`); ``min_lr`` is not scaled.

Run folder ``RUN``::

    config.yaml              the full PretrainConfig (``PretrainConfig.load`` reads it back)
    dataset.json             data path, manifest sha256, bands, in_chans, normalisation used
    optim.json               the optimiser and the learning-rate rule as applied: base lr, rule,
                             reference and global batch, ranks, peak lr, min lr, warm-up
    metrics.jsonl            one JSON line per logged step (rank 0), see below
    checkpoints/step-N.pt    full state every ``engine.checkpoint_every`` steps (+ ``latest``)
    ranks/rank-N.json        debugging aid: per rank, steps taken, sample keys consumed per
                             step (``engine.record_keys``) and, at the end, a SHA-256 of the
                             final state dict, so tests can check equal work, disjoint shards
                             and identical weights across ranks
    tensorboard/             TensorBoard events when ``engine.tensorboard``
    loss.png                 loss and collapse curves at the end (rank 0)

``metrics.jsonl`` lines hold ``step`` (completed steps), the loss and the method's loss
terms averaged over the steps since the previous line and over ranks, ``lr``, ``wd``,
``momentum``, ``grad_norm``, ``samples_per_s`` (global), ``data_wait_share`` (time waiting
on the loader ÷ step time), the collapse figures of rank 0's last batch (``embed_std``,
``embed_std_norm``, ``embed_mean_cos``, ``embed_rank``, ``collapsed``), ``skipped_samples`` (corrupt samples
the loaders of all ranks skipped since the start of the run) and ``time_s``. On ``--resume``
lines past the checkpoint's step are dropped before appending, so the log continues from the
saved step with no gap and no duplicate.

Extension seam: ``engine.step_callbacks`` names functions called as ``fn(step)`` on every rank
after each step (after that step's log line and any checkpoint): profilers, schedulers, and
the resume tests' fault injection (a callback that SIGKILLs the process after step ``k``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.config import load_callable
from eoforge.shards.digest import file_sha256
from eoforge.train import distributed as D
from eoforge.train.checkpoint import (
    CHECKPOINT_DIR, latest_checkpoint, list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from eoforge.train.config import LR_SCALINGS, PretrainConfig, scaled_lr
from eoforge.train.monitor import CollapseMonitor
from eoforge.train.schedules import cosine_schedule

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
DATASET = "dataset.json"
OPTIM = "optim.json"
RANKS = "ranks"
LOSS_PNG = "loss.png"
#: metric keys the engine writes; any other key of a metrics line is one of the method's logs
ENGINE_KEYS = frozenset({
    "step", "loss", "lr", "wd", "momentum", "grad_norm", "samples_per_s", "data_wait_share", "embed_std",
    "embed_std_norm", "embed_mean_cos", "embed_rank", "collapsed", "skipped_samples", "max_memory_gib", "time_s",
})


@dataclass
class TrainResult:
    """What a finished :func:`train` call did (every rank returns one).

    Attributes:
        run: the run folder.
        steps: completed optimiser steps (``engine.steps``).
        start_step: the step this process started from (0, or the resumed checkpoint's).
        checkpoint: the last checkpoint written.
        last_metrics: the last metrics line (rank 0; empty elsewhere).
        is_main: this process is rank 0 (the one that prints).
    """

    run: Path
    steps: int
    start_step: int
    checkpoint: Path | None
    last_metrics: dict[str, Any]
    is_main: bool = True


# ------------------------------------------------------------------------ small helpers


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Bit-exact kernels (``torch.use_deterministic_algorithms``) and no cuDNN autotuning."""
    if on:
        # cuBLAS needs a fixed workspace for deterministic matmuls; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``; strings and numbers stay."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], torch.Tensor):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's switch for "do not broadcast buffers before every forward": the methods keep their
    buffers (DINO centre, MoCo queue, logit scale) identical on every rank themselves. torch
    >= 2.14 spells it ``forward_sync_buffers`` (and warns on every rank at the old spelling,
    ``broadcast_buffers``); its one sync at construction copies what every rank already holds."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines with ``step <= step`` (atomically): the resume point of the log."""
    kept = [m for m in read_metrics(path) if isinstance(m.get("step"), int) and m["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))


def plot_metrics(metrics_path: str | os.PathLike[str], png: str | os.PathLike[str]) -> Path | None:
    """Loss terms and collapse figures against the step, as a PNG."""
    from eoforge.shards.plots import figure, save_figure

    rows = read_metrics(metrics_path)
    if not rows:
        return None

    steps = [r["step"] for r in rows]
    # the method's own terms (PerA: dino, koleo, pixel) in their own panel, on a symlog scale
    # because their magnitudes differ by orders; schedules (temperatures) and shares left out
    terms = [k for k, v in rows[-1].items() if k not in ENGINE_KEYS and "temp" not in k and "share" not in k
             and isinstance(v, (int, float)) and not isinstance(v, bool)]
    fig, (ax1, ax2, ax3) = figure(1, 3, figsize=(15, 4), dpi=100)
    ax1.plot(steps, [r.get("loss", math.nan) for r in rows], color="k")
    ax1.set_title("training loss (total)")
    for k in terms:
        ax2.plot(steps, [r.get(k, math.nan) for r in rows], label=k)
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.set_title("loss terms (unweighted)")
    if terms:
        ax2.legend(fontsize=8)
    for k, label in (("embed_std_norm", "std x sqrt(D)"), ("embed_mean_cos", "mean pairwise cosine")):
        ax3.plot(steps, [r.get(k, math.nan) for r in rows], label=label)
    ax3.set_ylim(-0.05, 1.05)
    ax3.set_title("collapse monitor (trained encoder's embeddings)")
    if any("embed_rank" in r for r in rows):
        rank_ax = ax3.twinx()
        rank_ax.plot(steps, [r.get("embed_rank", math.nan) for r in rows], color="tab:green", label="effective rank")
        rank_ax.set_ylim(bottom=0)
        rank_ax.set_ylabel("effective rank (directions)")
        rank_ax.legend(fontsize=8, loc="center right")
    ax3.legend(fontsize=8, loc="upper right")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return save_figure(fig, png)


#: config keys that may change on resume without changing the numbers (how it runs, not what)
RESUME_HARMLESS = frozenset({
    "engine.progress", "engine.tensorboard", "engine.keep_checkpoints", "engine.dist_timeout_s",
    "engine.torch_threads", "engine.log_every", "engine.step_callbacks", "data.worker_timeout_s", "data.pin_memory",
    "data.prefetch_factor",
})


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between the saved tree ``a`` and ``b`` (harmless ones left
    out, and keys ``a`` lacks: settings added by a later eoforge, which take their defaults)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and f"{prefix}{k}" not in RESUME_HARMLESS:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


# ------------------------------------------------------------------------ data set facts


def describe_dataset(data: str | os.PathLike[str] | list[str], cfg: PretrainConfig) -> dict[str, Any]:
    """Facts about the training data that an exported model must carry (``RUN/dataset.json``).

    Returns:
        ``{"data", "split", "manifest_sha256", "modality", "bands", "in_chans", "normalization"}``.
        ``bands`` is the model's input channel order (S2 then S1 for ``"s1s2"``, as the
        methods stack them); ``normalization`` holds ``mode``, ``clip``, the rule, and per band
        ``mean``/``std`` (stored unit: S2 DN, S1 dB), ``offset``/``scale`` and, for
        ``"minmax2sigma"``, ``lo``/``hi`` (the values mapped to 0 and 1); bands without
        statistics (L2A's zero B10) have ``None`` and are fed as 0; ``value_min``/``value_max``
        (stored unit) when values are clipped before the affine map (``data.s1_clip_db``).
        ``manifest_sha256`` is None for a list of shard URLs.
    """
    from eoforge.train.data import read_stats, resolve_shards
    from eoforge.train.data.loader import modality_norms

    source = resolve_shards(data, cfg.data.split)
    stats_at = cfg.data.stats or source.stats
    if stats_at is None:
        raise ValueError(f"{source.name}: an explicit shard list needs data.stats (path or URL of stats.json)")
    stats = read_stats(stats_at)
    bands: list[str] = []
    per_band: dict[str, list[Any]] = {k: [] for k in ("modality", "unit", "mean", "std", "offset", "scale", "lo", "hi",
                                                      "value_min", "value_max")}
    for m, norm in modality_norms(stats, cfg.data).items():
        section = stats[m]
        bands += list(norm.bands)
        for b in range(len(norm.bands)):
            usable = float(norm.scale[b]) != 0.0
            mean, std = section["mean"][b], section["std"][b]
            per_band["modality"].append(m)
            per_band["unit"].append(section.get("unit"))
            per_band["mean"].append(mean if usable else None)
            per_band["std"].append(std if usable else None)
            per_band["offset"].append(float(norm.offset[b]))
            per_band["scale"].append(float(norm.scale[b]))
            per_band["lo"].append(mean - 2 * std if usable else None)
            per_band["hi"].append(mean + 2 * std if usable else None)
            clipped = norm.value_min is not None and norm.value_max is not None
            per_band["value_min"].append(float(norm.value_min[b]) if clipped else None)  # type: ignore[index]
            per_band["value_max"].append(float(norm.value_max[b]) if clipped else None)  # type: ignore[index]
    if cfg.data.normalization != "minmax2sigma":
        del per_band["lo"], per_band["hi"]
    if all(v is None for v in per_band["value_min"]):
        del per_band["value_min"], per_band["value_max"]
    manifest = None
    if not isinstance(data, (list, tuple)) and Path(data).is_dir():
        path = Path(data) / "manifest.parquet"
        manifest = file_sha256(path) if path.is_file() else None
    return {
        "data": [str(u) for u in data] if isinstance(data, (list, tuple)) else str(data),
        "split": source.split,
        "num_shards": len(source.urls),
        "manifest_sha256": manifest,
        "modality": cfg.data.modality,
        "bands": bands,
        "in_chans": len(bands),
        "normalization": {
            "mode": cfg.data.normalization,
            "clip": bool(cfg.data.clip and cfg.data.normalization == "minmax2sigma"),
            "rule": "x_norm = (clip(x, value_min, value_max) - offset) * scale per band (minmax2sigma: lo -> 0, "
                    "hi -> 1; zscore: (x - mean) / std; no clip where value_min/value_max are absent or None); "
                    "no-data pixels (S2 DN 0, S1 invalid or NaN) -> 0",
            "stats": str(stats_at),
            "bands": bands,
            **per_band,
        },
    }


# ------------------------------------------------------------------------------ training


def build_optimizer(param_groups: list[dict[str, Any]], cfg: PretrainConfig) -> torch.optim.Optimizer:
    """``optim.optimizer`` (AdamW, or timm's Adan) over the method's groups; per-step LR / WD are
    set by the loop.

    Each group keeps ``apply_weight_decay`` (bool, default True) and an optional
    ``lr_scale`` (float, default 1; e.g. a pretrained backbone at 0.1x).
    """
    groups = []
    for g in param_groups:
        g = dict(g)
        params = [p for p in g.pop("params") if p.requires_grad]
        if not params:
            continue
        g.setdefault("apply_weight_decay", True)
        g.setdefault("lr_scale", 1.0)
        groups.append({"params": params, **g})
    o = cfg.optim
    if o.optimizer == "adan":
        from timm.optim import Adan

        return Adan(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def optim_facts(cfg: PretrainConfig, world_size: int) -> dict[str, Any]:
    """The learning-rate rule as the run applies it (``RUN/optim.json``)."""
    o = cfg.optim
    global_batch = cfg.data.batch_size * world_size
    peak = scaled_lr(o, global_batch)
    return {
        "optimizer": o.optimizer, "base_lr": o.lr, "lr_scaling": o.lr_scaling, "rule": LR_SCALINGS[o.lr_scaling],
        "lr_reference_batch": o.lr_reference_batch, "batch_size_per_rank": cfg.data.batch_size,
        "world_size": world_size, "global_batch": global_batch, "peak_lr": peak, "min_lr": o.min_lr,
        "warmup_steps": min(o.warmup_steps, cfg.engine.steps), "warmup_start_lr": o.warmup_start_factor * peak,
    }


def _open_tensorboard(run: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is optional
        warnings.warn(f"engine.tensorboard is on but TensorBoard cannot be imported ({err}); "
                      "pip install tensorboard. Going on with metrics.jsonl only.", stacklevel=2)
        return None
    return SummaryWriter(str(run / "tensorboard"), purge_step=purge_step)


def train(cfg: PretrainConfig, data: str | os.PathLike[str] | list[str], out: str | os.PathLike[str],
          resume: bool = False) -> TrainResult:
    """Pretrain ``cfg.method_name`` on ``data`` into the run folder ``out``.

    Args:
        cfg: the full configuration (``engine.steps`` is the length of the run).
        data: dataset folder ``DS`` (with ``manifest.parquet`` and ``stats.json``) or a list
            of shard URLs.
        out: run folder ``RUN`` (see the module docstring). On a shared file system for
            multi-node jobs: every rank reads the checkpoint on resume.
        resume: continue from ``RUN/checkpoints/latest`` when there is one (a fresh start
            otherwise, so a requeued job can always pass it).

    Returns:
        a :class:`TrainResult` (on every rank).

    Raises:
        FileExistsError: ``out`` already has checkpoints and ``resume`` is False.
        FloatingPointError: the loss became NaN or infinite (the last checkpoint is kept).
    """
    if cfg.engine.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = D.init_distributed(cfg.engine.device, cfg.engine.dist_timeout_s)
    try:
        return _Run(cfg, data, Path(out), resume, info).run()
    finally:
        D.cleanup()


class _Run:
    """One process's share of a training run (the body of :func:`train`)."""

    def __init__(self, cfg: PretrainConfig, data: Any, run: Path, resume: bool, info: D.DistInfo) -> None:
        self.cfg, self.data, self.run_dir, self.info = cfg, data, run, info
        self.ckpt_dir = run / CHECKPOINT_DIR
        self.metrics_path = run / METRICS
        self.rank_path = run / RANKS / f"rank-{info.rank}.json"
        self.t_start = time.perf_counter()
        self.checkpoint = latest_checkpoint(self.ckpt_dir) if resume else None
        if not resume and list_checkpoints(self.ckpt_dir):
            raise FileExistsError(f"{run} already has checkpoints; pass --resume to continue that run "
                                  "or choose another --out")
        D.barrier()  # every rank has looked before anyone writes

    # ------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        from eoforge.train.methods import create_method

        set_deterministic(cfg.engine.deterministic)
        if cfg.engine.torch_threads:
            torch.set_num_threads(cfg.engine.torch_threads)
        # each rank its own stream (drop-path, masks); DDP copies rank 0's initial weights
        seed_everything(cfg.engine.seed + info.rank)

        # rank 0 reads the data set's facts and hands them (or its error) to every rank, so a
        # missing stats.json fails all ranks at once instead of leaving them at a barrier
        facts: dict[str, Any] | Exception | None = None
        if info.is_main:
            try:
                facts = describe_dataset(self.data, cfg)
                (self.run_dir / RANKS).mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.run_dir / DATASET, json.dumps(facts, indent=1) + "\n")
                write_text_atomic(self.run_dir / OPTIM, json.dumps(optim_facts(cfg, info.world_size), indent=1) + "\n")
                cfg.save(self.run_dir / CONFIG)
            except Exception as err:  # noqa: BLE001 - re-raised on every rank below
                facts = err
        facts = D.broadcast_object(facts)
        if isinstance(facts, Exception):
            raise facts
        self.dataset_facts = facts

        steps = cfg.engine.steps
        method = create_method(
            cfg.method_name, cfg.method, cfg.model, in_chans=int(self.dataset_facts["in_chans"]),
            total_steps=steps, world_size=info.world_size,
        )
        method.check_data(cfg.data)
        if cfg.engine.sync_batchnorm and info.world_size > 1 and info.device.type == "cuda":
            # BatchNorm statistics over the global batch (MoCo v3, SimCLR); SyncBatchNorm needs CUDA
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.method = method.to(info.device)
        self.optimizer = build_optimizer(self.method.param_groups(), cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        o = cfg.optim
        peak = scaled_lr(o, cfg.data.batch_size * info.world_size)
        self.lr = cosine_schedule(peak, o.min_lr, steps, min(o.warmup_steps, steps), o.warmup_start_factor * peak)
        self.wd = cosine_schedule(o.weight_decay, o.weight_decay_end, steps)
        self.momentum = cosine_schedule(o.ema_momentum, o.ema_momentum_end, steps)

        amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[cfg.engine.amp]
        self.amp_dtype = amp if info.device.type == "cuda" or cfg.engine.cpu_amp else None  # CPU: fp32 by default
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.amp_dtype is torch.float16)

        self.start_step = 0
        self.skipped = 0  # corrupt samples this rank's loaders skipped in finished segments
        self.keys: list[list[str]] = []
        if self.checkpoint is not None:
            self._restore(self.checkpoint)

        if info.world_size > 1:
            kw: dict[str, Any] = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
            kw.update(_no_forward_buffer_sync())
            self.model: nn.Module = nn.parallel.DistributedDataParallel(self.method, find_unused_parameters=False, **kw)
        else:
            self.model = self.method
        self.monitor = CollapseMonitor(cfg.engine.collapse_min_std_norm, cfg.engine.collapse_max_mean_cos,
                                       cfg.engine.collapse_min_rank, cfg.engine.collapse_patience)
        self.tb = None
        if info.is_main:
            if self.start_step > 0:
                truncate_metrics(self.metrics_path, self.start_step)
            else:
                self.metrics_path.write_text("")
            if cfg.engine.tensorboard:
                self.tb = _open_tensorboard(self.run_dir, self.start_step + 1 if self.start_step else None)

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        saved = state.get("config") or {}
        changed = _config_diff(saved, self.cfg.to_dict())
        if changed and self.info.is_main:
            warnings.warn(f"resuming {path} with a different configuration (the run will not match an "
                          f"uninterrupted one): {'; '.join(changed)}", stacklevel=2)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_step = int(state["step"])
        skipped = state.get("skipped") or []
        self.skipped = int(skipped[self.info.rank]) if len(skipped) == self.info.world_size else 0
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            warnings.warn(f"{path}: saved by {len(rngs)} ranks, resumed with {self.info.world_size}; "
                          "random streams are reseeded (the run stays valid, not bit-exact)", stacklevel=2)
            seed_everything(self.cfg.engine.seed + self.info.rank + 1_000_003 * self.start_step)
        if self.cfg.engine.record_keys and self.rank_path.is_file():
            previous = json.loads(self.rank_path.read_text()).get("keys") or []
            self.keys = previous[: self.start_step]

    # ------------------------------------------------------------------ saving

    def _save(self, step: int) -> Path | None:
        rngs = D.all_gather_object(rng_state())
        skipped = D.all_gather_object(self.skipped)
        path = None
        if self.info.is_main:
            state = {
                "format": "eoforge-pretrain-checkpoint/1",
                "step": step,
                "method": self.cfg.method_name,
                "world_size": self.info.world_size,
                "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "skipped": skipped,
                "config": self.cfg.to_dict(),
            }
            path = save_checkpoint(self.ckpt_dir, step, state, keep=self.cfg.engine.keep_checkpoints)
        self._write_rank_file(step)
        D.barrier()
        return path or latest_checkpoint(self.ckpt_dir)

    def _write_rank_file(self, step: int, final: bool = False) -> None:
        record: dict[str, Any] = {
            "rank": self.info.rank,
            "world_size": self.info.world_size,
            "steps": step,
            "started_at_step": self.start_step,
            "keys": self.keys if self.cfg.engine.record_keys else None,
        }
        if final:
            record["state_sha256"] = state_sha256(self.method)
        self.rank_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.rank_path, json.dumps(record) + "\n")

    # ------------------------------------------------------------------ logging

    def _log(self, step: int, window: dict[str, float], n: int, extra: dict[str, float],
             embeddings: torch.Tensor | None, skipped: int | None) -> dict[str, Any]:
        means = {k: v / n for k, v in window.items()}
        if skipped is not None:
            means["skipped"] = float(skipped)
        means = D.all_reduce_mean(means, self.info.device)  # NCCL reduces CUDA tensors only
        if not self.info.is_main:
            return {}
        i = step - 1
        line: dict[str, Any] = {"step": step}
        internal = ("step_time_s", "wait_s", "samples", "skipped")
        line.update({k: means[k] for k in sorted(means) if k not in internal})
        step_time = means["step_time_s"]
        line["samples_per_s"] = means["samples"] / step_time * self.info.world_size if step_time > 0 else math.nan
        line["data_wait_share"] = means["wait_s"] / step_time if step_time > 0 else math.nan
        line.update({"lr": float(self.lr[i]), "wd": float(self.wd[i]), "momentum": float(self.momentum[i])})
        line.update(extra)
        if embeddings is not None:
            line.update(self.monitor.update(embeddings, step))
        if "skipped" in means:  # all ranks, since the start of the run
            line["skipped_samples"] = int(round(means["skipped"] * self.info.world_size))
        if self.info.device.type == "cuda":
            line["max_memory_gib"] = torch.cuda.max_memory_allocated(self.info.device) / 2**30
        line["time_s"] = time.perf_counter() - self.t_start
        line = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)
        return line

    # ------------------------------------------------------------------ the loop

    def _loader(self, start: int, num: int) -> Iterable[dict[str, Any]]:
        from eoforge.train.data import build_loader

        return build_loader(
            self.cfg.data, self.data, self.method.make_views(), rank=self.info.rank,
            world_size=self.info.world_size, seed=self.cfg.engine.seed, start_step=start, num_steps=num,
        )

    def run(self) -> TrainResult:
        self._setup()
        cfg, info = self.cfg, self.info
        steps, every = cfg.engine.steps, cfg.engine.checkpoint_every
        callbacks = [load_callable(spec, "engine.step_callbacks") for spec in cfg.engine.step_callbacks]
        bar = tqdm(total=steps, initial=self.start_step, desc=f"pretrain {cfg.method_name}", unit="step",
                   disable=not (info.is_main and cfg.engine.progress), dynamic_ncols=True)
        autocast = (torch.autocast(info.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        last_line: dict[str, Any] = {}
        checkpoint = self.checkpoint
        window = LogWindow(info.device)
        checked = self.start_step  # steps up to here are known to have a finite loss on every rank
        step = self.start_step
        try:
            while step < steps:
                seg_end = min(steps, (step // every + 1) * every)
                loader = self._loader(step, seg_end - step)
                batches = iter(loader)
                t_prev = time.perf_counter()
                for i in range(step, seg_end):
                    batch = next(batches)
                    t_data = time.perf_counter()
                    keys = batch.pop("__key__", None)
                    batch.pop("__skipped__", None)  # the loader's running count, read below
                    batch = to_device(batch, info.device)
                    for g in self.optimizer.param_groups:
                        g["lr"] = float(self.lr[i]) * g["lr_scale"]
                        g["weight_decay"] = float(self.wd[i]) if g["apply_weight_decay"] else 0.0
                    with autocast:
                        out = self.model(batch, step=i)
                    loss = out.loss
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.method.update_teacher(float(self.momentum[i]))

                    # no device-to-host copy here: the terms stay on the device until a log step
                    window.add({"loss": loss.detach(), **(out.logs or {})})
                    t_end = time.perf_counter()
                    if cfg.engine.record_keys and keys is not None:
                        self.keys.append([str(k) for k in keys])
                    window.add({"step_time_s": t_end - t_prev, "wait_s": t_data - t_prev,
                                "samples": float(_batch_size(batch, keys))})
                    window.steps += 1
                    t_prev = t_end
                    done = i + 1
                    bar.update()
                    log_step = done % cfg.engine.log_every == 0 or done == steps
                    if log_step or done == seg_end:  # before a log line or a checkpoint
                        if D.all_reduce_sum(window.nonfinite.reshape(1).clone()).item() > 0:
                            raise FloatingPointError(
                                f"the loss became non-finite (NaN or inf) between steps {checked + 1} and {done}, "
                                f"on rank {info.rank} or another; stopping before it reaches a checkpoint. "
                                f"Last checkpoint: {latest_checkpoint(self.ckpt_dir)}")
                        checked = done
                    if log_step:
                        extra = {"grad_norm": float(grad_norm)}
                        skipped = getattr(loader, "skipped", None)
                        skipped = None if skipped is None else self.skipped + int(skipped)
                        line = self._log(done, window.sums(), window.steps, extra, out.embeddings, skipped)
                        if line:
                            last_line = line
                            bar.set_postfix(loss=f"{line['loss']:.4f}", refresh=False)
                        window = LogWindow(info.device)
                    if done == seg_end:
                        self.skipped += int(getattr(loader, "skipped", 0) or 0)
                        del batches, loader  # stop this segment's workers before the next
                        checkpoint = self._save(done)
                    for callback in callbacks:
                        callback(done)
                step = seg_end
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.close()
        self._write_rank_file(steps, final=True)
        if info.is_main:
            plot_metrics(self.metrics_path, self.run_dir / LOSS_PNG)
            if not last_line:
                rows = read_metrics(self.metrics_path)
                last_line = rows[-1] if rows else {}
        D.barrier()
        return TrainResult(run=self.run_dir, steps=steps, start_step=self.start_step, checkpoint=checkpoint,
                           last_metrics=last_line, is_main=info.is_main)


class LogWindow:
    """Sums of the logged terms since the last log line, kept where they are made: 0-d tensors
    (the loss, a method's terms) on the device, Python numbers (timings) on the host. A step
    adds without a device-to-host copy (on a GPU each copy stalls the queue of kernels);
    :meth:`sums` reads every tensor in one copy at a log step. ``nonfinite`` counts the steps
    whose loss was NaN or inf, also on the device, read when the engine checks it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = 0
        self.nonfinite = torch.zeros((), device=device)
        self._host: dict[str, float] = {}
        self._device: dict[str, torch.Tensor] = {}

    def add(self, terms: dict[str, Any]) -> None:
        for k, v in terms.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().float().reshape(())
                if k == "loss":
                    self.nonfinite += ~torch.isfinite(v)
                self._device[k] = self._device[k] + v if k in self._device else v.clone()
            else:
                self._host[k] = self._host.get(k, 0.0) + float(v)

    def sums(self) -> dict[str, float]:
        out = dict(self._host)
        if self._device:
            out.update(zip(self._device, torch.stack(list(self._device.values())).tolist()))
        return out


def _batch_size(batch: dict[str, Any], keys: Any) -> int:
    if keys is not None:
        return len(keys)
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim:
            return int(v.shape[0])
    return 0
