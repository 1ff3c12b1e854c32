"""Command-line entry points of the ingest stage (gathered by the root ``eoforge`` group)."""

from __future__ import annotations

import time

import click


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, writable=True))
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the synthetic world; the same seed writes byte-identical files.")
@click.option("--extent-km", default=20.0, show_default=True, type=click.FloatRange(min=2.0, max=60.0),
              help="East-west size of the area in km (north-south is 0.7 x); use ~6 for fast tests.")
@click.option("--quiet", is_flag=True, help="Do not show the progress bar.")
def demo_data(out: str, seed: int, extent_km: float, quiet: bool) -> None:
    """Write realistic synthetic raw Sentinel-1/2 and WorldCover inputs to OUT.

    Sentinel-2 L2A/L1C SAFE products on two MGRS tiles (UTM 32N/33N) across seasons and
    processing baselines, an Earth Search COG item, Sentinel-1 GRD exports in dB and
    linear power, sparse full-size ESA WorldCover tiles, and OUT/truth.json describing
    every product (duplicates, reprocessing, orbit direction, offsets).

    \b
    Example:
        eoforge demo-data demo/raw --seed 0
        eoforge demo-data /tmp/raw-small --extent-km 6
    """
    from eoforge.ingest.demo import generate_demo_data

    t0 = time.perf_counter()
    result = generate_demo_data(out, seed=seed, extent_km=extent_km, progress=not quiet)
    products = result.truth["products"]
    by_sensor: dict[str, int] = {}
    for p in products:
        by_sensor[p["sensor"]] = by_sensor.get(p["sensor"], 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(by_sensor.items()))
    click.echo(
        f"wrote {len(products)} products ({counts}), {result.n_files} files, "
        f"{result.n_bytes / 1e6:.1f} MB to {result.out} in {time.perf_counter() - t0:.1f} s"
    )
    click.echo(f"description of every product: {result.out / 'truth.json'}")
