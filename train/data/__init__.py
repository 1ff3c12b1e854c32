"""Training data path: dataset shards -> normalised, augmented, batched tensors (issue #4).

- :mod:`.shardlists`: dataset/URLs -> shard urls, split by rank and worker, seeded resampling.
- normalisation: :mod:`eoforge.shards.normalize` (one rule for training, eval and embed).
- :mod:`.loader`: :class:`DataConfig` and :func:`build_loader`, the webdataset pipeline.
- :mod:`.bench`: loader benchmarks for ``make bench``.
"""

from __future__ import annotations

from eoforge.train.data.loader import DataConfig, ShardLoader, Views, build_loader, identity_views
from eoforge.shards.normalize import BandNorm, band_norm, read_stats
from eoforge.train.data.shardlists import ShardSource, resolve_shards

__all__ = [
    "BandNorm", "DataConfig", "ShardLoader", "ShardSource", "Views", "band_norm", "build_loader",
    "identity_views", "read_stats", "resolve_shards",
]
