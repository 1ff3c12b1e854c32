"""Pictures of a dataset: a coverage map and a label histogram (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
import pyarrow as pa  # noqa: E402
import shapely  # noqa: E402

from eoforge.shards.schema import TAXONOMIES  # noqa: E402

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def coverage_map(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Tile footprints in lon/lat, coloured by split, with the number of samples per split."""
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
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
    return _save(fig, path)


def label_histogram(summary_labels: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per class: samples with the class present, one bar group per split; one panel per taxonomy."""
    taxonomies = sorted(summary_labels)
    fig, axes = plt.subplots(len(taxonomies), 1, figsize=(9, 3.5 * len(taxonomies)), dpi=120, squeeze=False)
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
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
