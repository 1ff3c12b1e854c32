"""The on-disk contract: what a sample is, how shards and the manifest are written, read
and verified. Depends on nothing else in eoforge; everything else depends on it.

Names are imported lazily (PEP 562): ``import eoforge.shards.schema`` in an ingest worker
must not pull in the reader's webdataset (and, through it, torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Labels": "meta", "SampleMeta": "meta", "TimeStep": "meta",
    "Sample": "sample",
    "ShardWriter": "writer", "write_shard": "writer",
    "TileId": "keys", "check_key": "keys",
    "compute_stats": "stats",
    "decode_sample": "reader", "iter_dataset": "reader", "read_samples": "reader", "shard_urls": "reader",
    "merge_parts": "manifest", "read_manifest": "manifest",
    "verify_dataset": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
