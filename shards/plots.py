"""Pictures of a dataset: a coverage map and a label histogram (PNG).

Figures are ``matplotlib.figure.Figure`` objects drawn straight to files: no pyplot, no
backend chosen (importing this module changes no global state; a user's interactive
backend stays theirs, clusters need no display). :func:`figure` and :func:`save_figure`
are what the other stages' pictures (ingest report, loss curves, method comparison) use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from eoforge.shards.atomic import atomic_path
from eoforge.shards.schema import TAXONOMIES

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


#: Above this many samples the coverage map is a density raster, not one polygon per sample.
COVERAGE_POLYGONS_MAX = 5000
#: Cells along the longer side of the density raster.
COVERAGE_RASTER_CELLS = 400


def coverage_map(source: pa.Table | str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """The dataset's coverage in lon/lat: tile footprints coloured by split, or, above
    :data:`COVERAGE_POLYGONS_MAX` samples, samples per cell of a lon/lat raster (tile centres,
    streamed from the manifest: memory does not grow with the dataset). ``source``: the
    manifest table or its file (or dataset folder)."""
    if not isinstance(source, pa.Table):
        from eoforge.shards.manifest import manifest_rows, read_manifest

        if manifest_rows(source) > COVERAGE_POLYGONS_MAX:
            return _coverage_density(Path(source), path)
        source = read_manifest(source, columns=["geometry", "split", "lat"])
    elif source.num_rows > COVERAGE_POLYGONS_MAX:
        return _coverage_density(source, path)
    table = source
    fig, ax = figure(figsize=(7, 6), dpi=120)
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    splits = table.column("split").to_pylist()
    for split in sorted(set(splits)):
        colour = SPLIT_COLOURS.get(split, "tab:gray")
        idx = [i for i, s in enumerate(splits) if s == split]
        # One collection per split: drawing 10^4-10^5 footprints stays fast.
        ax.add_collection(PolyCollection([np.asarray(geoms[i].exterior.coords) for i in idx], facecolors=colour,
                                         edgecolors="black", linewidths=0.3, alpha=0.6))
        ax.plot([], [], "s", color=colour, label=f"{split} ({len(idx)})")
    if len(geoms):
        x0, y0, x1, y1 = shapely.total_bounds(geoms)
        ax.update_datalim([(x0, y0), (x1, y1)])  # collections do not autoscale
        ax.autoscale_view()
    if len(geoms):
        lat = float(np.mean(table.column("lat").to_numpy()))
        ax.set_aspect(1.0 / max(np.cos(np.radians(lat)), 1e-3), adjustable="datalim")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title(f"Coverage: {table.num_rows} samples")
    ax.legend(loc="upper right", fontsize=8)  # "best" searches the polygons: seconds for 10^3 tiles
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def coverage_counts(batches: Any, cells: int = COVERAGE_RASTER_CELLS) -> dict[str, Any]:
    """Samples per cell of a lon/lat raster (cells square on the ground at the mean latitude,
    ``cells`` along the longer side) from tile centres. ``batches()`` yields tables with
    ``lon``, ``lat``, ``split``; it is called twice (bounds, then counts), so memory holds one
    batch. Returns ``counts`` ``[ny, nx]`` (row 0 south), ``extent`` (lon0, lon1, lat0, lat1),
    ``cell_km``, ``aspect``, ``splits`` (samples per split) and ``samples``."""
    lon0 = lat0 = np.inf
    lon1 = lat1 = -np.inf
    lat_sum, n = 0.0, 0
    splits: dict[str, int] = {}
    for b in batches():
        lon, lat = b.column("lon").to_numpy(), b.column("lat").to_numpy()
        if not len(lon):
            continue
        lon0, lon1 = min(lon0, lon.min()), max(lon1, lon.max())
        lat0, lat1 = min(lat0, lat.min()), max(lat1, lat.max())
        lat_sum, n = lat_sum + lat.sum(), n + len(lat)
        for split, count in zip(*np.unique(np.asarray(b.column("split").to_pylist()), return_counts=True)):
            splits[str(split)] = splits.get(str(split), 0) + int(count)
    aspect = max(float(np.cos(np.radians(lat_sum / max(n, 1)))), 1e-3)
    width, height = max(lon1 - lon0, 1e-6) * aspect, max(lat1 - lat0, 1e-6)  # degrees of latitude
    cell = max(width, height) / cells
    nx, ny = max(1, int(np.ceil(width / cell))), max(1, int(np.ceil(height / cell)))
    counts = np.zeros((ny, nx), dtype=np.int64)
    for b in batches():
        lon, lat = b.column("lon").to_numpy(), b.column("lat").to_numpy()
        ix = np.clip(((lon - lon0) * aspect / cell).astype(np.int64), 0, nx - 1)
        iy = np.clip(((lat - lat0) / cell).astype(np.int64), 0, ny - 1)
        np.add.at(counts, (iy, ix), 1)
    return {"counts": counts, "extent": (lon0, lon0 + nx * cell / aspect, lat0, lat0 + ny * cell),
            "cell_km": cell * 111.32, "aspect": aspect, "splits": splits, "samples": n}


def _coverage_density(source: pa.Table | Path, path: str | os.PathLike[str]) -> Path:
    """:func:`coverage_counts` as a picture."""
    from eoforge.shards.manifest import iter_manifest

    def batches() -> Any:
        return [source] if isinstance(source, pa.Table) else iter_manifest(source, ["lon", "lat", "split"])

    c = coverage_counts(batches)
    fig, ax = figure(figsize=(7, 6), dpi=120)
    image = ax.imshow(np.ma.masked_equal(c["counts"], 0), origin="lower", extent=c["extent"], cmap="viridis",
                      interpolation="nearest", aspect=1.0 / c["aspect"])
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"samples per {c['cell_km']:.1f} km cell")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    per_split = ", ".join(f"{k} {v:,}" for k, v in sorted(c["splits"].items()))
    ax.set_title(f"Coverage: {c['samples']:,} samples ({per_split})")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def label_histogram(summary_labels: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per class: samples with the class present, one bar group per split; one panel per taxonomy."""
    taxonomies = sorted(summary_labels)
    fig, axes = figure(len(taxonomies), 1, figsize=(9, 3.5 * len(taxonomies)), dpi=120, squeeze=False)
    for ax, tax in zip(axes[:, 0], taxonomies):
        present = summary_labels[tax]["present"]
        seen = {c for counts in present.values() for c in counts}
        known = TAXONOMIES[tax].names if tax in TAXONOMIES else ()
        classes = [c for c in known if c in seen] + sorted(seen - set(known))
        width = 0.8 / max(len(present), 1)
        for j, (split, counts) in enumerate(sorted(present.items())):
            xs = np.arange(len(classes)) + j * width
            ax.bar(xs, [counts.get(c, 0) for c in classes], width, label=split,
                   color=SPLIT_COLOURS.get(split, "tab:gray"))
        ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("samples with class")
        ax.set_title(f"Labels ({tax})")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], dpi: int = 100,
           **subplots: Any) -> tuple[Figure, Any]:
    """A figure and its axes (``Figure.subplots``: one ``Axes``, or an array of them)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Lay out and write ``fig`` as a PNG, whole or not at all."""
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:  # savefig takes the format from the extension
        fig.savefig(tmp)
    return Path(path)
