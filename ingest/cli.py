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
    linear power, sparse full-size ESA WorldCover tiles, OUT/truth.json describing
    every product (duplicates, reprocessing, orbit direction, offsets) and OUT/items.json,
    a STAC ItemCollection of the products (ingesting it gives the folders' samples).

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


@click.command("ingest")
@click.argument("raw", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Dataset folder DS to write (shards, manifest, stats, reports).")
@click.option("--landcover", multiple=True, metavar="PATH",
              help="Land-cover class raster(s) or folders (WorldCover, Dynamic World, or any class raster "
                   "with --label-taxonomy). WorldCover/Dynamic World files found under RAW are used too.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML recipe of ingest settings (see ingest/recipes/); options below override it.")
@click.option("--scheduler", metavar="ADDR",
              help="Run on an existing Dask cluster (tcp://host:8786); default: DASK_SCHEDULER_ADDRESS, "
                   "else a LocalCluster.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the LocalCluster [CPU count].")
@click.option("--strict", is_flag=True, help="Stop at the first bad input instead of recording it and going on.")
@click.option("--dry-run", is_flag=True,
              help="Scan and plan only, then report what the archive will give (DS/dry-run.md): tiles, time "
                   "steps, S1 pairing, shards and estimated size, per split and plan region. No pixels are read.")
@click.option("--tile-size", "tile_size_px", type=click.IntRange(min=8), help="Tile edge in pixels [264].")
@click.option("--resolution", "resolution_m", type=click.FloatRange(min=0, min_open=True),
              help="Pixel size in metres [10].")
@click.option("--max-dt-days", type=click.FloatRange(min=0), help="Largest |S1 - S2| time for a pair, days [3].")
@click.option("--seasons", type=click.IntRange(1, 12), help="Time steps per tile, one per season [4].")
@click.option("--min-valid-fraction", type=click.FloatRange(0, 1),
              help="Smallest share of valid pixels for a time step to be kept [0.5].")
@click.option("--label-taxonomy", type=click.Choice(["worldcover", "dynamic_world"]),
              help="Taxonomy of --landcover rasters whose name does not say [worldcover].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ingest(raw: tuple[str, ...], out: str, landcover: tuple[str, ...], config_file: str | None,
           scheduler: str | None, workers: int | None, strict: bool, dry_run: bool, quiet: bool,
           **overrides: object) -> None:
    """Tile raw Sentinel-1/2 products or STAC items (and land cover) into WebDataset shards in --out.

    RAW are folders, files or URLs (s3://, https://) holding S2 SAFE products, Earth
    Search / Planetary Computer COGs, BigEarthNet-style band files, S1 GRD GeoTIFFs (dB or
    linear) and land-cover rasters, or STAC items: an ItemCollection JSON (a saved
    pystac-client search), a folder of item JSONs or a stac-geoparquet file. Stages: scan (headers) -> plan (grid tiles, dedup,
    seasons, S1 pairing, split, shards) -> read (each source once, in raster order, into
    encoded per-tile pieces) -> materialize (one Dask task per shard, assembled from the
    pieces) -> finalize (manifest.parquet, stats.json, errors.parquet, report.md).

    Rerunning the same command resumes: finished read tasks and shards are kept, the rest is redone;
    headers of unchanged files are not read again (DS/scan-inventory.parquet).
    The exit status is 1 when any input failed (everything else is still written).
    --dry-run stops after the plan and writes DS/dry-run.json and DS/dry-run.md instead of shards.

    \b
    Examples:
        eoforge ingest demo/raw --out demo/ds
        eoforge ingest s2-items.json s1-items.json --landcover worldcover.json --out ds
        eoforge ingest /data/s2 /data/s1 --out ds --dry-run
        eoforge ingest /data/s2 /data/s1 --landcover /data/worldcover --out ds --workers 16
        eoforge ingest s3://bucket/scenes --out ds --scheduler tcp://head:8786 --config recipe.yaml
    """
    from eoforge.ingest.config import IngestConfig
    from eoforge.shards.config import ConfigError
    from eoforge.ingest.pipeline import IngestError, run_ingest

    if scheduler and workers:
        raise click.UsageError("--scheduler and --workers exclude each other (the cluster has its own workers)")
    try:
        config = IngestConfig.load(config_file) if config_file else IngestConfig()
        config = config.replace(**overrides)
        t0 = time.perf_counter()
        result = run_ingest(list(raw), out, landcover=list(landcover), config=config, scheduler=scheduler,
                            workers=workers, strict=strict, progress=not quiet, dry_run=dry_run)
    except (ConfigError, IngestError) as err:
        raise click.ClickException(str(err)) from err
    if dry_run:
        p = result.report["plan"]
        rate = "n/a" if p["pairing_rate"] is None else f"{p['pairing_rate']:.1%}"
        click.echo(f"dry run: {p['tiles']} tiles, {p['time_steps']} time steps ({p['paired_steps']} with S1, {rate}) "
                   f"from {p['s2_scenes_used']} S2 + {p['s1_scenes_used']} S1 scenes -> {p['shards']} shard(s), "
                   f"~{p['estimated_bytes'] / 1e9:.3g} GB ({time.perf_counter() - t0:.1f} s); "
                   f"report: {result.out / 'dry-run.md'}")
    else:
        click.echo(f"{result.samples} samples in {result.shards} shard(s) -> {result.out} "
                   f"({time.perf_counter() - t0:.1f} s); report: {result.out / 'report.md'}")
    if result.errors:
        where = result.out / ("dry-run.json" if dry_run else "errors.parquet")
        click.echo(f"{len(result.errors)} input error(s), see {where}:", err=True)
        for e in result.errors[:10]:
            pid = e.product_id
            which = f" ({pid})" if pid and pid not in e.path else ""  # a folder shared by several products
            click.echo(f"  {e.path}{which}: {e.reason}", err=True)
        if len(result.errors) > 10:
            click.echo(f"  ... and {len(result.errors) - 10} more", err=True)
        raise SystemExit(1)
