"""How many places a training batch mixes: distinct source S2 scenes per batch.

An ingest in waves writes shards that each mix the places of one wave; the loader mixes the
waves (shard order shuffled per epoch, ``open_shards`` read at once, a shuffle buffer). This
measures the result the way a user would worry about it: for each batch of the real loader,
the number of distinct S2 products among its samples' time steps (from the manifest, by key).

Example::

    python -m eoforge.train.data.diversity DS --batch-size 256 --batches 20
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from eoforge.shards.manifest import read_manifest
from eoforge.train.data.loader import DataConfig, build_loader, identity_views


def batch_diversity(data: str | Path, cfg: DataConfig, num_batches: int, seed: int = 0) -> dict[str, Any]:
    """Distinct source S2 scenes per batch over ``num_batches`` batches of ``cfg`` (one rank).

    Returns ``{"per_batch": [...], "mean", "min", "scenes", "batch_size", "target"}`` where
    ``target`` = 0.9 x min(batch size, scenes in the split) (issue #15's bar)."""
    table = read_manifest(data, columns=["key", "split", "s2_product_ids"])
    products = {r["key"]: set(r["s2_product_ids"] or []) for r in table.to_pylist() if r["split"] == cfg.split}
    scenes = len(set().union(*products.values())) if products else 0
    loader = build_loader(cfg, str(data), identity_views, rank=0, world_size=1, seed=seed, start_step=0,
                          num_steps=num_batches)
    per_batch = [len(set().union(*(products[k] for k in batch["__key__"]))) for batch in loader]
    return {"per_batch": per_batch, "mean": float(np.mean(per_batch)), "min": int(min(per_batch)),
            "scenes": scenes, "batch_size": cfg.batch_size, "target": 0.9 * min(cfg.batch_size, scenes)}


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--open-shards", type=click.IntRange(min=1), default=DataConfig.open_shards, show_default=True)
@click.option("--shuffle-buffer", type=click.IntRange(min=1), default=DataConfig.shuffle_buffer, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def main(data: str, batch_size: int, batches: int, workers: int, open_shards: int, shuffle_buffer: int,
         seed: int) -> None:
    """Print distinct source S2 scenes per batch of the training loader (JSON)."""
    cfg = DataConfig(batch_size=batch_size, workers=workers, open_shards=open_shards, shuffle_buffer=shuffle_buffer,
                     shuffle_initial=min(shuffle_buffer, DataConfig.shuffle_initial))
    click.echo(json.dumps(batch_diversity(data, cfg, batches, seed)))


if __name__ == "__main__":  # pragma: no cover
    main()
