"""The ``eoforge synth-catalog`` command (gathered by the root ``eoforge`` group): synthetic
scene headers for planning at scale (:mod:`eoforge.ingest.synthetic_catalog`)."""

from __future__ import annotations

import time

import click


@click.command("synth-catalog")
@click.option("--n-s2", "n_s2", required=True, type=click.IntRange(min=1), metavar="N",
              help="Sentinel-2 products to write (Sentinel-1: about N/4).")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder to write scenes.parquet to.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of dates, clouds, sizes and ids.")
def synth_catalog(n_s2: int, out: str, seed: int) -> None:
    """Write synthetic scene headers (no pixels) of an S2 + S1 archive, for planning at scale.

    A continent of MGRS tiles around 12°E 45.6°N (several UTM zones) with ~60 S2 L2A dates
    per tile in 2023 and S1 IW GRD slices (250 x 170 km, ascending and descending, 12-day
    repeat), as scan's DIR/scenes.parquet.

    \b
    Example:
        eoforge synth-catalog --n-s2 100000 --out build/catalog-100k
    """
    import pyarrow.parquet as pq

    from eoforge.ingest.synthetic_catalog import write_synthetic_catalog

    t0 = time.perf_counter()
    path = write_synthetic_catalog(out, n_s2, seed)
    counts = pq.read_table(path, columns=["sensor"]).column("sensor").value_counts().to_pylist()
    summary = ", ".join(f"{c['counts']} {c['values']}" for c in counts)
    click.echo(f"{summary} scenes -> {path} ({time.perf_counter() - t0:.1f} s)")
