"""The on-disk contract: what a sample is, how shards and the manifest are written, read
and verified. Depends on nothing else in eoforge; everything else depends on it."""

from eoforge.shards.keys import TileId, check_key
from eoforge.shards.manifest import merge_parts, read_manifest
from eoforge.shards.meta import Labels, SampleMeta, TimeStep
from eoforge.shards.reader import decode_sample, iter_dataset, read_samples, shard_urls
from eoforge.shards.sample import Sample
from eoforge.shards.stats import compute_stats
from eoforge.shards.verify import verify_dataset
from eoforge.shards.writer import ShardWriter, write_shard

__all__ = [
    "Labels",
    "Sample",
    "SampleMeta",
    "ShardWriter",
    "TileId",
    "TimeStep",
    "check_key",
    "compute_stats",
    "decode_sample",
    "iter_dataset",
    "merge_parts",
    "read_manifest",
    "read_samples",
    "shard_urls",
    "verify_dataset",
    "write_shard",
]
