"""Command-line entry points of evaluation (gathered by the root ``eoforge`` group):

- ``eoforge eval``: frozen-backbone probes of an exported model beside its random-init twin;
- ``eoforge embed``: an exported model's embeddings of every sample, as GeoParquet parts;
- ``eoforge adapt eurosat|bigearthnet|sen1floods11``: reference datasets -> labelled shards;
- ``eoforge compare``: every method pretrained with one budget, probed beside random init.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

_SPLIT_LIST_HELP = ("Official split file as SPLIT=FILE (repeatable), e.g. train=train.csv; names not listed "
                    "are left out. Default: a seeded hash split (--val-fraction).")


@click.command("eval")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Exported backbone MODEL.safetensors (MODEL.json beside it), from `eoforge export`.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled dataset folder: ingested with land cover, or written by `eoforge adapt`.")
@click.option("--probe", "probes", multiple=True, type=click.Choice(["knn", "linear", "segmentation"]),
              help="Probe(s) to run, repeatable [knn and linear]. segmentation needs an lc member (Sen1Floods11).")
@click.option("--features", default="cls", show_default=True, type=click.Choice(["cls", "mean", "dinov2"]),
              help="Global feature: class token, mean patch token, or DINOv2's last-4-blocks concat.")
@click.option("--label-fraction", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Share of the training split used as labels (seeded, stratified draw), e.g. 0.1.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the random-init baseline, the label draw and the probes.")
@click.option("--k", "k", default=20, show_default=True, type=click.IntRange(min=1), help="kNN neighbours.")
@click.option("--temperature", default=0.07, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="kNN vote temperature: weight exp(cosine / T).")
@click.option("--normalization", default="model", show_default=True, type=click.Choice(["model", "dataset"]),
              help="Per-band statistics from MODEL.json (what the model was trained with) or the dataset's stats.json.")
@click.option("--train-split", default="train", show_default=True, help="Split the probes learn from.")
@click.option("--eval-split", default="val", show_default=True, help="Split the probes are scored on.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per backbone forward pass.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto (CUDA when available), as embed and pretrain.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results.json and results.md [WEIGHTS folder/eval-DATA name].")
def eval_cmd(weights: Path, data: Path, probes: tuple[str, ...], features: str, label_fraction: float, seed: int,
             k: int, temperature: float, normalization: str, train_split: str, eval_split: str, batch_size: int,
             device: str, out: Path | None) -> None:
    """Probe a frozen backbone (kNN, linear, segmentation) beside a random-init twin.

    Features of the first time step of every sample, normalised as the model was trained,
    feed a cosine kNN (k=20, T=0.07) and a linear probe; single-label datasets report top-1
    accuracy, multi-label ones micro/macro average precision, segmentation IoU. The same
    architecture with random weights is always evaluated beside it.

    \b
    Examples:
        eoforge eval --weights run/MODEL.safetensors --data demo/ds
        eoforge eval --weights m.safetensors --data eurosat-ds --probe knn --label-fraction 0.1
        eoforge eval --weights s1.safetensors --data floods-ds --probe segmentation --out results/
    """
    from eoforge.train.model_format import ModelFormatError
    from eoforge.eval.knn import KNNConfig
    from eoforge.eval.run import EvalConfig, EvalError, evaluate

    out = out or weights.parent / f"eval-{data.resolve().name}"
    config = EvalConfig(features=features, label_fraction=label_fraction, seed=seed, train_split=train_split,
                        eval_split=eval_split, normalization=normalization, batch_size=batch_size, device=device,
                        knn=KNNConfig(k=k, temperature=temperature))
    t0 = time.perf_counter()
    try:
        result = evaluate(weights, data, probes or ("knn", "linear"), config, out=out)
    except (EvalError, ModelFormatError) as err:
        raise click.ClickException(str(err)) from err
    from eoforge.eval.report import results_table

    click.echo(results_table(result.report["results"]))
    click.echo(f"({time.perf_counter() - t0:.1f} s) results: {result.json_path}, {result.markdown_path}")


@click.command("embed")
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="Exported backbone MODEL.safetensors (MODEL.json beside it), from `eoforge export`.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Dataset folder (shards + manifest.parquet), e.g. from `eoforge ingest`.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for part-NNNNNN.parquet + _embed.json; a rerun with the same settings resumes it.")
@click.option("--split", default="all", show_default=True, help="Split to embed (train, val, ...) or all.")
@click.option("--per-step", is_flag=True,
              help="One row per sample and time step [one per sample, at the time step eoforge eval reads].")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="Type of the embedding values.")
@click.option("--features", default="cls", show_default=True, type=click.Choice(["cls", "mean", "dinov2"]),
              help="Global feature: class token, mean patch token, or DINOv2's last-4-blocks concat.")
@click.option("--normalization", default="model", show_default=True, type=click.Choice(["model", "dataset"]),
              help="Per-band statistics from MODEL.json (what the model was trained with) or the dataset's stats.json.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per backbone forward pass.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto (CUDA when available).")
@click.option("--rows-per-part", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Samples per output part (with --per-step, all their steps); fixed for a folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_cmd(weights: Path, data: Path, out: Path, split: str, per_step: bool, dtype: str, features: str,
              normalization: str, batch_size: int, device: str, rows_per_part: int, quiet: bool) -> None:
    """Write a backbone's embedding of every sample as GeoParquet (DuckDB, GeoPandas, QGIS).

    One row per sample (or per sample and time step with --per-step): key, tile_id,
    split, datetime, time_step, geometry (lon/lat footprint), embedding (fixed-size
    list), model_sha256. The vectors are the features `eoforge eval` probes. An
    interrupted run resumes: finished parts are kept. A folder written with another
    model or settings is refused.

    \b
    Examples:
        eoforge embed --weights run/MODEL.safetensors --data demo/ds --out demo/emb
        eoforge embed --weights m.safetensors --data ds --out emb-f16 --per-step --dtype float16 --split val
    """
    from eoforge.train.model_format import ModelFormatError
    from eoforge.eval.embed import EmbedConfig, EmbedError, embed

    try:
        config = EmbedConfig(split=split, per_step=per_step, dtype=dtype, features=features,
                             normalization=normalization, rows_per_part=rows_per_part, batch_size=batch_size,
                             device=device, progress=not quiet)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    t0 = time.perf_counter()
    try:
        result = embed(weights, data, out, config)
    except (EmbedError, ModelFormatError) as err:
        raise click.ClickException(str(err)) from err
    skipped = f"; skipped {result.skipped}" if result.skipped else ""
    click.echo(f"({time.perf_counter() - t0:.1f} s) {result.rows} rows x {result.dim} ({dtype}) in "
               f"{len(result.parts)} part(s) ({result.computed_parts} written, {result.kept_parts} kept) "
               f"-> {result.out}{skipped}")


def _split_lists(values: tuple[str, ...]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for v in values:
        split, sep, path = v.partition("=")
        if not sep or not split or not path:
            raise click.BadParameter(f"{v!r} is not SPLIT=FILE", param_hint="--split-list")
        out[split] = path
    return out or None


def _report(result) -> None:  # noqa: ANN001  (AdaptResult; imported lazily)
    splits = ", ".join(f"{n} {s}" for s, n in sorted(result.samples.items()))
    click.echo(f"{result.total} samples ({splits}) -> {result.out}; report: {result.out / 'report.json'}")
    if result.skipped:
        click.echo(f"{len(result.skipped)} left out (e.g. {result.skipped[0][0]}: {result.skipped[0][1]})")
    if result.errors:
        click.echo(f"{len(result.errors)} input error(s), see {result.out / 'errors.parquet'}:", err=True)
        for path, reason in result.errors[:10]:
            click.echo(f"  {path}: {reason}", err=True)
        raise SystemExit(1)


def _common(f):  # noqa: ANN001, ANN202
    """Options every adapter shares."""
    for opt in reversed([
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="New dataset folder to write."),
        click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="Share of samples in the val split (seeded name hash) when no --split-list."),
        click.option("--split-list", "split_list", multiple=True, metavar="SPLIT=FILE", help=_SPLIT_LIST_HELP),
        click.option("--seed", default=0, show_default=True, type=int, help="Split hash and write-order seed."),
        click.option("--samples-per-shard", type=click.IntRange(min=1), help="Most samples per shard."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        f = opt(f)
    return f


def _run(fn, *args, **kwargs) -> None:  # noqa: ANN001
    from eoforge.eval.adapters.common import AdapterError

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        result = fn(*args, **kwargs)
    except AdapterError as err:
        raise click.ClickException(str(err)) from err
    _report(result)


@click.group("adapt")
def adapt() -> None:
    """Turn reference datasets into labelled eoforge datasets (shards + manifest + stats).

    The output is an ordinary dataset folder: `eoforge shards verify` checks it and
    `eoforge eval --data` probes models on it.
    """


@adapt.command("eurosat")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
def adapt_eurosat_cmd(src: Path, out: Path, val_fraction: float, split_list: tuple[str, ...], seed: int,
                      samples_per_shard: int | None, quiet: bool) -> None:
    """EuroSAT-MS (SRC/<Class>/<Class>_<n>.tif, 13 bands) -> single-label shards.

    \b
    Example:
        eoforge adapt eurosat data/EuroSAT_MS --out eurosat-ds
    """
    from eoforge.eval.adapters.eurosat import adapt_eurosat

    _run(adapt_eurosat, src, out, val_fraction=val_fraction, split_lists=_split_lists(split_list), seed=seed,
         samples_per_shard=samples_per_shard, progress=not quiet)


@adapt.command("bigearthnet")
@click.argument("src", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-s1", is_flag=True, help="Ignore S1 patches (BigEarthNet-S1) even when found.")
@click.option("--resampling", default="nearest", show_default=True, type=click.Choice(["nearest", "bilinear"]),
              help="How 20 m / 60 m bands reach the 10 m grid.")
@_common
def adapt_bigearthnet_cmd(src: tuple[Path, ...], no_s1: bool, resampling: str, out: Path, val_fraction: float,
                          split_list: tuple[str, ...], seed: int, samples_per_shard: int | None, quiet: bool) -> None:
    """BigEarthNet patch folders (S2, optionally S1) -> BigEarthNet-19 multi-label shards.

    SRC folders are searched for <patch>_labels_metadata.json; 12 S2 bands go to the 10 m
    grid with a zero B10, CORINE labels are mapped to the 19-class nomenclature.

    \b
    Examples:
        eoforge adapt bigearthnet BigEarthNet-v1.0 BigEarthNet-S1-v1.0 --out ben-ds \\
            --split-list train=train.csv --split-list val=val.csv --split-list test=test.csv
    """
    from eoforge.eval.adapters.bigearthnet import adapt_bigearthnet

    _run(adapt_bigearthnet, list(src), out, include_s1=not no_s1, resampling=resampling, val_fraction=val_fraction,
         split_lists=_split_lists(split_list), seed=seed, samples_per_shard=samples_per_shard, progress=not quiet)


@adapt.command("sen1floods11")
@click.argument("src", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sen1Floods11_Metadata.geojson for acquisition dates [found under SRC if present].")
@_common
def adapt_sen1floods11_cmd(src: tuple[Path, ...], metadata: Path | None, out: Path, val_fraction: float,
                           split_list: tuple[str, ...], seed: int, samples_per_shard: int | None,
                           quiet: bool) -> None:
    """Sen1Floods11 hand-labelled chips (S1Hand, S2Hand, LabelHand) -> shards with a water label.

    \b
    Example:
        eoforge adapt sen1floods11 v1.1/data/flood_events/HandLabeled --out floods-ds \\
            --split-list train=flood_train_data.csv --split-list val=flood_valid_data.csv
    """
    from eoforge.eval.adapters.sen1floods11 import adapt_sen1floods11

    _run(adapt_sen1floods11, list(src), out, metadata=metadata, val_fraction=val_fraction,
         split_lists=_split_lists(split_list), seed=seed, samples_per_shard=samples_per_shard, progress=not quiet)


@click.command("compare")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled dataset folder (ingested with land cover) every method trains and is probed on.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results.md / .json / .png and runs/<method>-seed<k>/.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Comparison recipe (YAML) [eval/recipes/compare-demo.yaml]; the options below override it.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Only the recipe's rows of this name (repeatable; a row's name, else its method), "
                   "e.g. --method pera --method softcon-hard-only.")
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps of every run.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step per process of every run.")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed(s) of every run and probe (repeatable).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="Where to train and probe.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes per run.")
@click.option("--quiet", is_flag=True, help="No progress bar per run (one line per run stays).")
def compare_cmd(data: Path, out: Path, config_file: Path | None, methods: tuple[str, ...], steps: int | None,
                batch_size: int | None, seeds: tuple[int, ...], device: str | None, workers: int | None,
                quiet: bool) -> None:
    """Pretrain every method on one dataset with one budget, probe each beside random init.

    One table (OUT/results.md), one picture (OUT/results.png: macro AP per method beside
    its random init, loss curves). A rerun continues: finished runs, exports and probes are
    kept.

    \b
    Examples:
        eoforge compare --data demo/ds --out demo/compare
        eoforge compare --data demo/ds --out cmp --method pera --method cmid --seed 0 --seed 1
        eoforge compare --data /data/ds --out cmp --config eval/recipes/compare-gpu.yaml --device cuda
    """
    from eoforge.eval.compare import COMPARE_RECIPES, CompareConfig, compare
    from eoforge.shards.config import ConfigError

    try:
        config = CompareConfig.load(config_file or COMPARE_RECIPES / "compare-demo.yaml")
        if methods:
            unknown = sorted(set(methods) - {m.label for m in config.methods})
            if unknown:
                raise ConfigError(f"--method {', '.join(unknown)}: not a row of the recipe "
                                  f"({', '.join(m.label for m in config.methods)})")
            config = config.replace(methods=tuple(m for m in config.methods if m.label in methods))
        config = config.replace(steps=steps, batch_size=batch_size, seeds=seeds or None, device=device,
                                workers=workers)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    t0 = time.perf_counter()
    try:
        compare(data, out, config, log=click.echo, progress=not quiet)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo((out / "results.md").read_text())
    click.echo(f"({time.perf_counter() - t0:.0f} s) {out / 'results.md'}, {out / 'results.png'}")
