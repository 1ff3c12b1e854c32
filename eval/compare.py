"""``eoforge compare``: which pretraining method works on my data?

Every method of a comparison recipe is pretrained on the same dataset with the same budget
(``steps`` optimiser steps of ``batch_size`` samples per process), exported, and probed
(kNN and linear, frozen features) beside a random-init twin of its backbone; the results of
every method and seed go into one table and one picture::

    eoforge compare --data demo/ds --out demo/compare            # eval/recipes/compare-demo.yaml
    eoforge compare --data /data/ds --out cmp --config eval/recipes/compare-gpu.yaml --device cuda

Per method and seed, under ``OUT/runs/<name>-seed<k>/``: the training run (``train``,
resumed from its last checkpoint), ``model.safetensors`` (``export_run``, the entry's
branch: the dual encoder's S2 encoder), ``eval/results.json`` (``evaluate``). Each step is
skipped when its output is already there and current (a run at its last step is not trained
again, an export of the run's last checkpoint is kept, an evaluation of the same weights is
read back), so an interrupted comparison continues where it stopped.

Baselines: the random-init twin is evaluated with the same seed as the pretrained model, so
methods on the same architecture share one baseline (the demo's ViTs); CMID has no ViT path
(train/METHODS.md#cmid) and trains a ResNet, which has its own. Each method is scored against the
baseline of its architecture ("Δ vs random init" in the table).

Outputs: ``OUT/results.md`` (the table, the settings, the seeds' spread),
``OUT/results.json`` (every number), ``OUT/results.png`` (macro AP per method beside random
init; each method's loss curve).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.config import ConfigError, check_keys, read_recipe

#: where ``recipe: <method>-tiny-demo.yaml`` and the other bare recipe names are looked up
TRAIN_RECIPES = Path(__file__).resolve().parent.parent / "train" / "recipes"
#: the comparison recipes shipped beside this module
COMPARE_RECIPES = Path(__file__).resolve().parent / "recipes"
#: metrics of the table (multi-label datasets; single-label ones report top-1 accuracy)
TABLE_METRICS = ("micro_ap", "macro_ap")


@dataclass(frozen=True)
class CompareEntry:
    """One row of the comparison.

    Attributes:
        method: registry name (``pera``, ``softcon``, ``dualenc``, ``cmid``).
        recipe: the method's training recipe: a path, or a file name in ``train/recipes``
            (default ``<method>-tiny-demo.yaml``). Its steps and batch size are replaced by
            the comparison's budget.
        branch: encoder to export and probe for a several-encoder method (dualenc: ``s2``).
        name: the row's name (default: ``method``, plus ``-branch`` when given).
        sets: further ``SECTION.KEY=VALUE`` overrides (an ablation: ``method.soft_weight=0``).
    """

    method: str
    recipe: str | None = None
    branch: str | None = None
    name: str | None = None
    sets: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name or (f"{self.method}-{self.branch}" if self.branch else self.method)

    def recipe_path(self) -> Path:
        recipe = self.recipe or f"{self.method}-tiny-demo.yaml"
        path = Path(recipe)
        return path if path.is_file() or path.parent != Path(".") else TRAIN_RECIPES / recipe


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: the methods, one budget, the seeds, the probes.

    Attributes:
        methods: the rows (:class:`CompareEntry`), in table order.
        steps: optimiser steps of every run.
        batch_size: samples per step per process of every run (the budget is steps x batch).
        seeds: every method is trained and probed once per seed (``engine.seed`` and the
            probes' seed); the table shows the mean, the JSON every seed.
        device: ``cpu``, ``cuda`` or ``auto``, for training and probing.
        workers: DataLoader worker processes per run (None: each recipe's).
        probes: ``knn`` and / or ``linear``.
        train_split / eval_split: the splits the probes learn from and are scored on.
        label_fraction: share of the training split the probes see, (0, 1].
    """

    methods: tuple[CompareEntry, ...] = (
        CompareEntry("pera"), CompareEntry("softcon"), CompareEntry("dualenc", branch="s2"), CompareEntry("cmid"))
    steps: int = 1000
    batch_size: int = 32
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    workers: int | None = None
    probes: tuple[str, ...] = ("knn", "linear")
    train_split: str = "train"
    eval_split: str = "val"
    label_fraction: float = 1.0

    def __post_init__(self) -> None:
        labels = [m.label for m in self.methods]
        checks = [
            (bool(self.methods), "methods: at least one"),
            (len(set(labels)) == len(labels), f"methods: two rows share a name ({labels}); give one a `name`"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds: one or more distinct integers"),
            (self.device in ("cpu", "cuda", "auto"), "device must be cpu, cuda or auto"),
            (bool(self.probes) and set(self.probes) <= {"knn", "linear"}, "probes: knn and/or linear"),
            (0 < self.label_fraction <= 1, "label_fraction must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> CompareConfig:
        """From YAML-like values (``methods`` as a list of mappings or of method names).

        Raises:
            ConfigError: naming ``source`` and the key.
        """
        check_keys(values, {f.name for f in dataclasses.fields(cls)}, source, "compare")
        values = dict(values)
        entry_keys = {f.name for f in dataclasses.fields(CompareEntry)}
        if "methods" in values:
            entries = []
            for i, item in enumerate(values["methods"] or []):
                item = {"method": item} if isinstance(item, str) else dict(item)
                bad = sorted(set(item) - entry_keys)
                if bad or "method" not in item:
                    raise ConfigError(f"{source}: methods[{i}]: unknown keys {bad} or no `method` "
                                      f"(known: {sorted(entry_keys)})")
                item["sets"] = tuple(item.get("sets") or ())
                entries.append(CompareEntry(**item))
            values["methods"] = tuple(entries)
        for key in ("seeds", "probes"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{source}: {err}") from err

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompareConfig:
        """A comparison recipe (YAML); the settings may sit at the top level or under ``compare:``."""
        return cls.from_dict(read_recipe(path, section="compare"), source=str(path))

    def replace(self, **changes: Any) -> CompareConfig:
        """A copy with the non-None ``changes`` applied (command-line options over a recipe)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class RunResult:
    """One method at one seed: where it went and what the probes scored."""

    entry: CompareEntry
    seed: int
    run: Path
    weights: Path
    architecture: str
    eval: dict[str, Any]  # probe -> backbone (pretrained / random-init) -> metric -> value
    seconds: dict[str, float] = field(default_factory=dict)


def compare(data: str | os.PathLike[str], out: str | os.PathLike[str], config: CompareConfig | None = None,
            log: Callable[[str], None] = print, progress: bool = False) -> dict[str, Any]:
    """Run (or continue) the comparison ``config`` on the dataset ``data`` into ``out``;
    return the report (the content of ``results.json``). See the module docstring.
    ``log`` gets one line per run and stage; ``progress`` shows each run's progress bar."""
    config = config or CompareConfig()
    data, out = Path(data), Path(out)
    if not (data / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{data}: no manifest.parquet (not an ingested dataset)")
    for entry in config.methods:
        if not entry.recipe_path().is_file():
            raise ConfigError(f"methods: {entry.label}: recipe {entry.recipe_path()} not found")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    total = len(config.methods) * len(config.seeds)
    for seed in config.seeds:
        for entry in config.methods:
            log(f"[{len(results) + 1}/{total}] {entry.label}, seed {seed}")
            results.append(_run_one(entry, seed, data, out / "runs" / f"{entry.label}-seed{seed}", config, log,
                                    progress))
    report = _report(results, data, config)
    write_text_atomic(out / "results.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "results.md", results_markdown(report))
    plot_comparison(report, out / "results.png")
    return report


def _run_one(entry: CompareEntry, seed: int, data: Path, run: Path, config: CompareConfig,
             log: Callable[[str], None], progress: bool) -> RunResult:
    from eoforge.shards.digest import file_sha256
    from eoforge.eval.run import EvalConfig, evaluate
    from eoforge.train.config import pretrain_config
    from eoforge.train.engine import train
    from eoforge.train.export import export_run

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = pretrain_config(entry.recipe_path(), method=entry.method, steps=config.steps,
                          batch_size=config.batch_size, workers=config.workers, device=config.device,
                          sets=(*entry.sets, f"engine.seed={seed}"), progress=progress)
    result = train(cfg, data, run, resume=True)  # a finished run: nothing left to train
    seconds["pretrain"] = round(time.perf_counter() - t0, 1)
    if result.start_step < result.steps:
        log(f"  pretrained {result.steps - result.start_step} steps ({seconds['pretrain']:.0f} s), "
            f"loss {result.last_metrics.get('loss', float('nan')):.4g}")

    t0 = time.perf_counter()
    weights = run / "model.safetensors"
    checkpoint = result.checkpoint
    meta_path = weights.with_suffix(".json")
    stale = not weights.is_file() or not meta_path.is_file() or (
        checkpoint is not None and checkpoint.stat().st_mtime_ns > weights.stat().st_mtime_ns)
    if stale:
        export_run(run, weights, branch=entry.branch)
    seconds["export"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    eval_dir = run / "eval"
    sha = file_sha256(weights)
    eval_config = EvalConfig(seed=seed, train_split=config.train_split, eval_split=config.eval_split,
                             label_fraction=config.label_fraction, device=config.device)
    saved = eval_dir / "results.json"
    report = json.loads(saved.read_text()) if saved.is_file() else None
    if report is None or not _eval_is_current(report["settings"], sha, eval_config, config.probes):
        report = evaluate(weights, data, config.probes, eval_config, out=eval_dir).report
    seconds["eval"] = round(time.perf_counter() - t0, 1)
    scores: dict[str, Any] = {}
    for row in report["results"]:
        scores.setdefault(row["probe"], {})[row["backbone"]] = {
            k: v for k, v in row["metrics"].items() if isinstance(v, (int, float))}
    arch = report["settings"]["model"]["timm_model"]
    return RunResult(entry, seed, run, weights, arch, scores, seconds)


def _eval_is_current(settings: dict[str, Any], weights_sha256: str, config: Any, probes: tuple[str, ...]) -> bool:
    """Whether a saved evaluation is of these weights with these settings (then it is kept)."""
    data = settings.get("data", {})
    return (settings.get("model", {}).get("weights_sha256") == weights_sha256 and settings.get("seed") == config.seed
            and tuple(settings.get("probes", ())) == probes and data.get("train_split") == config.train_split
            and data.get("eval_split") == config.eval_split and data.get("label_fraction") == config.label_fraction)


def _metric_names(results: list[RunResult]) -> tuple[str, ...]:
    probe = next(iter(results[0].eval.values()))
    names = probe["pretrained"]
    return tuple(m for m in TABLE_METRICS if m in names) or (("top1",) if "top1" in names else tuple(names)[:2])


def _report(results: list[RunResult], data: Path, config: CompareConfig) -> dict[str, Any]:
    metrics = _metric_names(results)
    rows = []
    for entry in config.methods:
        runs = [r for r in results if r.entry == entry]
        row: dict[str, Any] = {"name": entry.label, "method": entry.method, "branch": entry.branch,
                               "architecture": runs[0].architecture, "recipe": str(entry.recipe_path()),
                               "sets": list(entry.sets), "scores": {}, "random_init": {}, "per_seed": []}
        for probe in config.probes:
            for m in metrics:
                key = f"{probe}_{m}"
                row["scores"][key] = statistics.fmean(r.eval[probe]["pretrained"][m] for r in runs)
                row["random_init"][key] = statistics.fmean(r.eval[probe]["random-init"][m] for r in runs)
        for r in runs:
            row["per_seed"].append({
                "seed": r.seed, "run": str(r.run), "weights": str(r.weights), "seconds": r.seconds,
                "scores": {f"{p}_{m}": r.eval[p]["pretrained"][m] for p in config.probes for m in metrics},
                "random_init": {f"{p}_{m}": r.eval[p]["random-init"][m] for p in config.probes for m in metrics},
                "loss_curve": _loss_curve(r.run),
            })
        rows.append(row)
    return {"data": str(data), "config": _plain(dataclasses.asdict(config)), "metrics": list(metrics),
            "rows": rows}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _loss_curve(run: Path) -> list[list[float]]:
    """``[step, loss]`` of every logged step of a run (``metrics.jsonl``)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if isinstance(row.get("loss"), (int, float)):
            curve.append([row["step"], row["loss"]])
    return curve


def results_markdown(report: dict[str, Any]) -> str:
    """The comparison table: one row per method, one per architecture's random init."""
    cfg = report["config"]
    keys = [f"{p}_{m}" for p in cfg["probes"] for m in report["metrics"]]
    head = ["method", "backbone", *[k.replace("_", " ") for k in keys], "Δ vs random init"]
    lines = ["# Method comparison", "",
             f"Dataset `{report['data']}`; every method {cfg['steps']} steps x batch {cfg['batch_size']} per process; "
             f"probes on `{cfg['eval_split']}` (learned on `{cfg['train_split']}`, label fraction "
             f"{cfg['label_fraction']:g}); mean of seed(s) {', '.join(map(str, cfg['seeds']))}. "
             "Scores in %; Δ: each method against the random init of its own backbone, per column.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    baselines: dict[str, dict[str, float]] = {}
    for row in report["rows"]:
        baselines.setdefault(row["architecture"], row["random_init"])
        delta = " / ".join(f"{100 * (row['scores'][k] - row['random_init'][k]):+.1f}" for k in keys)
        lines.append("| " + " | ".join([row["name"], row["architecture"],
                                         *[f"{100 * row['scores'][k]:.1f}" for k in keys], delta]) + " |")
    for arch, scores in baselines.items():
        lines.append("| " + " | ".join(["random init", arch, *[f"{100 * scores[k]:.1f}" for k in keys], ""]) + " |")
    if len(cfg["seeds"]) > 1:
        lines += ["", "Per seed (pretrained; spread = max - min over seeds):", ""]
        for row in report["rows"]:
            spread = ", ".join(f"{k.replace('_', ' ')} {100 * (max(s['scores'][k] for s in row['per_seed']) - min(s['scores'][k] for s in row['per_seed'])):.1f}"
                               for k in keys)
            lines.append(f"- {row['name']}: {spread}")
    lines += ["", "Runs, models and probe reports: `runs/<method>-seed<k>/`; picture: `results.png`.", ""]
    return "\n".join(lines)


def plot_comparison(report: dict[str, Any], png: str | os.PathLike[str]) -> Path:
    """Macro AP (or the first metric) per method beside its random init, and the loss curves."""
    from eoforge.shards.plots import figure, save_figure

    cfg = report["config"]
    metric = report["metrics"][-1]
    rows = report["rows"]
    fig, (ax_bar, ax_loss) = figure(1, 2, figsize=(12, 4.2), dpi=110)
    width = 0.8 / (2 * len(cfg["probes"]))
    for i, probe in enumerate(cfg["probes"]):
        key = f"{probe}_{metric}"
        for j, (what, alpha) in enumerate((("scores", 1.0), ("random_init", 0.35))):
            offset = (2 * i + j - len(cfg["probes"]) + 0.5) * width
            ax_bar.bar([x + offset for x in range(len(rows))], [100 * r[what][key] for r in rows], width,
                       color=f"C{i}", alpha=alpha,
                       label=f"{probe} {'pretrained' if what == 'scores' else 'random init'}")
    values = [100 * r[what][f"{p}_{metric}"] for r in rows for what in ("scores", "random_init") for p in cfg["probes"]]
    ax_bar.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 5))  # the differences, not the bars' height
    ax_bar.set_xticks(range(len(rows)), [f"{r['name']}\n{r['architecture']}" for r in rows], fontsize=8)
    ax_bar.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax_bar.set_title(f"frozen-feature probes on {cfg['eval_split']}")
    ax_bar.legend(fontsize=7, loc="lower right")
    for k, row in enumerate(rows):
        curve = row["per_seed"][0]["loss_curve"]
        if curve:
            steps, losses = zip(*curve)
            first = losses[0] if losses[0] else 1.0
            ax_loss.plot(steps, [v / first for v in losses], color=f"C{k}", label=row["name"])
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss / first logged loss (each its own objective)")
    ax_loss.set_title(f"loss, seed {cfg['seeds'][0]}")
    ax_loss.legend(fontsize=7)
    return save_figure(fig, Path(png))

