"""``eoforge shards``: inspect, verify and summarise a dataset folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from eoforge.shards.inspect import format_summary, inspect_dataset
from eoforge.shards.manifest import ManifestError
from eoforge.shards.stats import STATS_NAME, compute_stats
from eoforge.shards.verify import verify_dataset

_DS = click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))


@click.group()
def shards() -> None:
    """Inspect, verify and summarise a dataset of WebDataset shards."""


@shards.command()
@_DS
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes checking shards in parallel [CPU count].")
@click.option("--max-problems", type=int, default=50, show_default=True, help="Problems to print before summarising.")
def verify(dataset: Path, workers: int | None, max_problems: int) -> None:
    """Check that every manifest row is in its tar with the recorded hash and shape.

    Exit status 0 when the dataset is whole, 1 on any mismatch (each one printed with its
    shard and key), 2 on usage errors.

    \b
    Example:
        eoforge shards verify /data/ssl4eo-ds
    """
    report = verify_dataset(dataset, workers=workers, progress=sys.stderr.isatty())
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for p in report.problems[:max_problems]:
        click.echo(f"error: {p}", err=True)
    if len(report.problems) > max_problems:
        click.echo(f"error: ... and {len(report.problems) - max_problems} more", err=True)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    click.echo(
        f"{dataset}: {report.shards_checked} shards, {report.samples_checked} samples,"
        f" {report.members_checked} members checked: {status}"
    )
    sys.exit(0 if report.ok else 1)


@shards.command()
@_DS
@click.option("--plot", is_flag=True, help="Also write coverage.png and labels.png.")
@click.option("--plot-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the PNGs [default: DATASET/inspect].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(dataset: Path, plot: bool, plot_dir: Path | None, as_json: bool) -> None:
    """Summarise the manifest: splits, modalities, time steps, labels, QA quantiles.

    \b
    Example:
        eoforge shards inspect /data/ssl4eo-ds --plot
    """
    try:
        table, summary = inspect_dataset(dataset)
    except ManifestError as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if plot:
        from eoforge.shards.plots import coverage_map, label_histogram

        out = plot_dir or dataset / "inspect"
        click.echo(f"wrote {coverage_map(table, out / 'coverage.png')}", err=True)
        if summary["labels"]:
            click.echo(f"wrote {label_histogram(summary['labels'], out / 'labels.png')}", err=True)


@shards.command()
@_DS
@click.option("--split", default="train", show_default=True, help="Split to compute statistics on.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes reading shards in parallel [CPU count].")
@click.option("--pixel-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Count every N-th pixel of every N-th row (1: all pixels, exact; ingest uses 2).")
def stats(dataset: Path, split: str, workers: int | None, pixel_stride: int) -> None:
    """Compute per-band mean/std/percentiles over valid pixels -> DATASET/stats.json.

    \b
    Example:
        eoforge shards stats /data/ssl4eo-ds --split train
    """
    try:
        out = compute_stats(dataset, split=split, workers=workers, progress=sys.stderr.isatty(),
                            pixel_stride=pixel_stride)
    except (ManifestError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"{dataset / STATS_NAME}: {out['num_samples']} samples of split {split!r}")
    for mod in ("s2", "s1"):
        if mod in out:
            s = out[mod]
            pairs = ", ".join(
                f"{b} {m:.1f}±{d:.1f}" for b, m, d in zip(s["bands"], s["mean"], s["std"]) if m is not None
            )
            click.echo(f"  {mod} [{s['unit']}]: {pairs}")
