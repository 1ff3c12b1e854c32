"""Typed pretraining configuration: defaults here, a YAML recipe over them, CLI options over both.

A recipe has five sections, each a frozen dataclass::

    data:    DataConfig    (eoforge.train.data)     modality, batch_size (per rank), workers, crops ...
    model:   ModelConfig   (eoforge.train.models)   timm backbone name and its options
    method:  <Method>Config chosen by ``method.name`` (eoforge.train.methods), e.g. PeraConfig
    optim:   OptimConfig   (here)                   AdamW / Adan, LR rule + LR / WD / EMA-momentum schedules
    engine:  EngineConfig  (here)                   steps, checkpoints, logging, seed, device, AMP

``PretrainConfig.load("recipe.yaml")`` reads a recipe (unknown keys are an error that names
the file and the dotted key); ``cfg.override({"engine.steps": 100})`` or
``cfg.replace(steps=100, batch_size=8)`` apply command-line values; ``cfg.to_dict()`` is what
the run records in ``RUN/config.yaml`` (and every checkpoint), and ``PretrainConfig.from_dict``
reads it back, so ``eoforge export`` rebuilds exactly the trained model.

An "epoch" is a step count here: the data stream is an infinite resampled stream, so
``engine.steps`` and ``optim.warmup_steps`` are the only units of training length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.config import ConfigError, build_section, read_recipe, section_to_dict


#: optimisers the engine builds (``optim.optimizer``); Adan is timm's (Xie et al. 2022)
OPTIMIZERS = ("adamw", "adan")
#: batch-size rules for the learning rate (``optim.lr_scaling``) and what each computes (:func:`scaled_lr`)
LR_SCALINGS = {
    "none": "peak_lr = base_lr",
    "linear": "peak_lr = base_lr * global_batch / lr_reference_batch",
    "sqrt": "peak_lr = base_lr * sqrt(global_batch / lr_reference_batch)",
}


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its per-step schedules (PerA's recipe is the default; train/METHODS.md#pera).

    Attributes:
        optimizer: ``"adamw"`` (default) or ``"adan"`` (timm's Adan, three betas; CMID's paper).
        lr: peak learning rate after warm-up, at the reference batch ``lr_reference_batch``
            when ``lr_scaling`` is not ``"none"`` (then the engine scales it, see below).
        lr_scaling: how the engine scales ``lr`` with the global batch ``B`` (per-rank batch ×
            ranks): ``"none"`` (as given), ``"linear"`` (``lr · B / ref``: Goyal et al., MoCo v3,
            DINO) or ``"sqrt"`` (``lr · √(B / ref)``: CMID, the maintainers' rule). The run records
            the result in ``RUN/optim.json`` and every metrics line's ``lr``.
        lr_reference_batch: the ``ref`` of ``lr_scaling`` (256).
        min_lr: learning rate the cosine decays to (never scaled).
        warmup_steps: optimiser steps of linear warm-up to the peak.
        warmup_start_factor: the warm-up starts at this share of the peak (0; CMID 0.01).
        weight_decay: weight decay at step 0 (groups with ``apply_weight_decay`` only).
        weight_decay_end: weight decay the cosine reaches at the end.
        betas: AdamW (beta1, beta2); Adan (beta1, beta2, beta3), e.g. (0.98, 0.92, 0.99).
        eps: the optimiser's epsilon.
        grad_clip: largest global L2 norm of the student gradients; 0 disables clipping.
        ema_momentum: teacher EMA momentum at step 0.
        ema_momentum_end: momentum the cosine reaches at the end (1 = frozen teacher).
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_scaling: str = "none"
    lr_reference_batch: int = 256
    min_lr: float = 1e-6
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 2e-5
    grad_clip: float = 3.0
    ema_momentum: float = 0.992
    ema_momentum_end: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {tuple(LR_SCALINGS)}, got {self.lr_scaling!r}")
        if self.lr_reference_batch < 1:
            raise ValueError(f"lr_reference_batch must be >= 1, got {self.lr_reference_batch}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"lr must be > 0 and min_lr >= 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_steps must be >= 0 and warmup_start_factor in [0, 1], got "
                             f"{self.warmup_steps}, {self.warmup_start_factor}")
        n_betas = 3 if self.optimizer == "adan" else 2
        if len(self.betas) != n_betas or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: {self.optimizer} takes {n_betas} numbers in [0, 1), got {self.betas}")
        if not (0 <= self.ema_momentum <= 1 and 0 <= self.ema_momentum_end <= 1):
            raise ValueError("ema_momentum and ema_momentum_end must be in [0, 1]")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """The peak learning rate the engine uses for ``global_batch`` samples a step (all ranks).

    ``"none"``: ``lr``; ``"linear"``: ``lr · B / ref``; ``"sqrt"``: ``lr · √(B / ref)`` with
    ``B = global_batch`` and ``ref = lr_reference_batch``. E.g. CMID's 0.001 at 8 × 64 = 512:
    0.001 × √2 ≈ 1.41e-3.
    """
    ratio = global_batch / optim.lr_reference_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[optim.lr_scaling]
    return optim.lr * factor


@dataclass(frozen=True)
class EngineConfig:
    """The training loop.

    Attributes:
        steps: total optimiser steps of the run (every rank takes exactly this many).
        checkpoint_every: steps between checkpoints; the data loader is also rebuilt at
            these boundaries (``start_step``), which makes resumed runs see the same batches.
        keep_checkpoints: newest checkpoints kept in ``RUN/checkpoints``.
        log_every: steps between metric lines in ``RUN/metrics.jsonl`` (the last step is
            always logged); loss terms are averaged over the steps since the previous line.
        seed: seeds Python, NumPy and torch (plus the rank) and the data stream.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        amp: autocast dtype on CUDA: ``"bf16"`` (default), ``"fp16"`` (with a GradScaler)
            or ``"fp32"`` (off). CPU trains in fp32 unless ``cpu_amp``.
        cpu_amp: autocast on CPU too, with ``amp``'s dtype (bf16 pays off on CPUs with bf16
            matrix units, e.g. AMX; fp16 goes with torch's CPU GradScaler). Off by default.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and cuDNN determinism):
            bit-exact reruns and resumes, slower on GPU.
        tensorboard: also write TensorBoard events to ``RUN/tensorboard`` (needs the
            ``tensorboard`` package).
        progress: tqdm progress bar on rank 0.
        record_keys: keep the sample keys each rank consumed in ``RUN/ranks/rank-N.json``
            (a debugging aid: memory grows with steps x batch size; off for long runs).
        collapse_min_std_norm: collapse monitor floor of std*sqrt(D) of the embeddings.
        collapse_max_mean_cos: collapse monitor ceiling of the mean pairwise cosine (1.0: not
            a trigger; healthy pooled features are concentrated, see ``eoforge.train.monitor``).
        collapse_min_rank: collapse monitor floor of the effective rank of the centred
            embeddings (how many directions the images' differences use).
        collapse_patience: consecutive logged checks before collapse is reported.
        dist_timeout_s: collective timeout; a rank that waits longer fails instead of hanging.
        sync_batchnorm: with several CUDA ranks, BatchNorm layers (ResNet backbones, SoftCon's
            projector and predictor) normalise over the global batch (``SyncBatchNorm``, as MoCo v3
            and SimCLR); CPU / gloo runs keep per-rank statistics (SyncBatchNorm needs CUDA).
        torch_threads: intra-op CPU threads of each training process (``torch.set_num_threads``);
            0 keeps torch's default (all cores, or ``OMP_NUM_THREADS``, which torchrun sets to
            1 for several processes per node). On a small shared CPU, 1 avoids OpenMP threads
            spinning against the DataLoader workers.
        step_callbacks: functions called on every rank as ``fn(step)`` after each optimiser
            step (and after that step's checkpoint is saved), named ``module:function`` or
            ``path/to/file.py:function``: profilers, external schedulers, and the tests' fault
            injection (a callback that kills the process after step N). Saved in
            ``RUN/config.yaml`` like every setting: ``--resume`` calls them again unless
            ``--set engine.step_callbacks=[]``.
    """

    steps: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 1
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str = "bf16"
    cpu_amp: bool = False
    deterministic: bool = False
    tensorboard: bool = False
    progress: bool = True
    record_keys: bool = True
    collapse_min_std_norm: float = 0.05
    collapse_max_mean_cos: float = 1.0
    collapse_min_rank: float = 2.0
    collapse_patience: int = 3
    dist_timeout_s: float = 1800.0
    sync_batchnorm: bool = True
    torch_threads: int = 0
    step_callbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0 (0 = torch's default), got {self.torch_threads}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every, log_every and keep_checkpoints must be >= 1")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        if self.amp not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"amp must be bf16, fp16 or fp32, got {self.amp!r}")


# ------------------------------------------------------------------- other sections


def _data_config_class() -> type:
    from eoforge.train.data import DataConfig

    return DataConfig


def _model_config_class() -> type:
    from eoforge.train.models import ModelConfig

    return ModelConfig


def method_names() -> list[str]:
    """The registered pretraining methods."""
    from eoforge.train.methods import METHODS

    return sorted(METHODS)


def method_config_class(name: str) -> type:
    """The config dataclass of method ``name`` (``"pera"`` -> ``PeraConfig``).

    Raises:
        ConfigError: for a method that is not registered.
    """
    from eoforge.train import methods

    if name not in methods.METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {sorted(methods.METHODS)})")
    return methods.METHODS[name].config_class


# ----------------------------------------------------------------- dict <-> dataclass


SECTIONS = ("data", "model", "method", "optim", "engine")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run needs besides the dataset path and the run folder.

    Attributes:
        method_name: registered method (``"pera"``); YAML ``method.name``.
        data: the loader's config (per-rank batch size, workers, modality, normalisation).
        model: the backbone's config.
        method: the method's own config (its class is chosen by ``method_name``).
        optim: optimiser and schedules.
        engine: the loop.
    """

    method_name: str = "pera"
    data: Any = None
    model: Any = None
    method: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        # fill the sections that live in other modules with their defaults
        if self.data is None:
            object.__setattr__(self, "data", _data_config_class()())
        if self.model is None:
            object.__setattr__(self, "model", _model_config_class()())
        if self.method is None:
            object.__setattr__(self, "method", method_config_class(self.method_name)())

    # -------------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config",
                  method: str | None = None) -> PretrainConfig:
        """Build from a nested mapping (``{"data": {...}, "method": {"name": "pera", ...}, ...}``).

        Args:
            values: the recipe; missing sections and keys take their defaults.
            source: what to name in error messages (the file).
            method: the method asked for on the command line; it must agree with
                ``method.name`` when the recipe gives one.

        Raises:
            ConfigError: naming ``source`` and the dotted key for unknown keys or bad values.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{source}: unknown key {', '.join(unknown)} (known sections: {list(SECTIONS)})")
        for name in SECTIONS:
            if values.get(name) is not None and not isinstance(values[name], Mapping):
                raise ConfigError(f"{source}: section {name} must be a mapping, got {type(values[name]).__name__}")
        method_values = dict(values.get("method") or {})
        recipe_method = method_values.pop("name", None)
        if method is not None and recipe_method is not None and method != recipe_method:
            raise ConfigError(f"{source}: method.name is {recipe_method!r} but --method {method!r} was asked for")
        name = method or recipe_method or "pera"
        return cls(
            method_name=name,
            data=build_section(_data_config_class(), values.get("data"), source, "data"),
            model=build_section(_model_config_class(), values.get("model"), source, "model"),
            method=build_section(method_config_class(name), method_values, source, "method"),
            optim=build_section(OptimConfig, values.get("optim"), source, "optim"),
            engine=build_section(EngineConfig, values.get("engine"), source, "engine"),
        )

    @classmethod
    def load(cls, path: str | Path, method: str | None = None) -> PretrainConfig:
        """Read a YAML recipe (see ``train/recipes/``); errors name the file and the key."""
        return cls.from_dict(read_recipe(path), source=str(path), method=method)

    # -------------------------------------------------------------------- changing

    def override(self, values: Mapping[str, Any], source: str = "options") -> PretrainConfig:
        """A copy with dotted keys changed: ``{"engine.steps": 10, "data.batch_size": 4}``.

        ``None`` values are ignored (an option that was not given). ``method.name`` cannot be
        changed this way (the method's section would no longer fit).
        """
        tree = self.to_dict()
        for key, value in values.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in SECTIONS or not name:
                raise ConfigError(f"{source}: unknown key {key} (use section.key, sections: {list(SECTIONS)})")
            if key == "method.name" and value != self.method_name:
                raise ConfigError(f"{source}: method.name cannot be overridden (start from that method's recipe)")
            tree[section][name] = value
        return self.from_dict(tree, source=source)

    def replace(self, *, model: str | None = None, steps: int | None = None, batch_size: int | None = None,
                workers: int | None = None, device: str | None = None) -> PretrainConfig:
        """The common command-line options (``--model --steps --batch-size --workers --device``)."""
        return self.override({
            f"model.{MODEL_NAME_KEY}": model, "engine.steps": steps, "data.batch_size": batch_size,
            "data.workers": workers, "engine.device": device,
        })

    # -------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values; ``from_dict(to_dict())`` gives an equal config."""
        return {
            "data": section_to_dict(self.data),
            "model": section_to_dict(self.model),
            "method": {"name": self.method_name, **section_to_dict(self.method)},
            "optim": section_to_dict(self.optim),
            "engine": section_to_dict(self.engine),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write ``to_yaml()`` to ``path`` (atomically)."""
        write_text_atomic(path, self.to_yaml())


#: ModelConfig's field holding the timm model name (target of ``--model``).
MODEL_NAME_KEY = "name"


def parse_set_option(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("engine.steps=10", "optim.betas=[0.9, 0.95]")`` -> dotted overrides (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: {err}") from err
    return out


def pretrain_config(config_file: str | Path | None = None, *, method: str | None = None, run: str | Path | None = None,
                    model: str | None = None, steps: int | None = None, batch_size: int | None = None,
                    workers: int | None = None, device: str | None = None, sets: tuple[str, ...] | list[str] = (),
                    progress: bool | None = None) -> PretrainConfig:
    """The configuration of ``eoforge pretrain``: a recipe, then the options over it.

    Base: ``config_file`` if given; else ``RUN/config.yaml`` when ``run`` (a run being
    resumed) has one; else the defaults of ``method``. Then ``--model --steps --batch-size
    --workers --device``, then ``--set SECTION.KEY=VALUE`` items, then ``progress``.

    Raises:
        ConfigError: naming the file (or option) and the key.
    """
    saved = Path(run) / "config.yaml" if run is not None else None
    if config_file is not None:
        cfg = PretrainConfig.load(config_file, method=method)
    elif saved is not None and saved.is_file():
        cfg = PretrainConfig.load(saved, method=method)
    else:
        cfg = PretrainConfig.from_dict({}, source="defaults", method=method)
    cfg = cfg.replace(model=model, steps=steps, batch_size=batch_size, workers=workers, device=device)
    if sets:
        cfg = cfg.override(parse_set_option(sets), source="--set")
    if progress is not None:
        cfg = cfg.override({"engine.progress": progress})
    return cfg
