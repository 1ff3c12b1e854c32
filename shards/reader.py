"""Read shards back as decoded samples: a small webdataset pipeline.

Stages, each usable alone (webdataset style)::

    shard urls ─▶ tarfile_to_samples ─▶ decode_sample ─▶ {"__key__", "s2", "s1", ..., "meta"}

Arrays come back exactly as stored (see :mod:`eoforge.shards.schema` for dtypes and
shapes); ``meta`` is the decoded ``<key>.json`` dict. Members are decoded explicitly by
name and suffix, never by pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import webdataset as wds

from eoforge.shards.encoding import DecodeError, decode_array, decode_json
from eoforge.shards.manifest import read_manifest
from eoforge.shards.schema import MEMBERS, META_MEMBER


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Decode one raw webdataset sample (member suffix -> bytes) into arrays + ``meta``.

    Raises:
        DecodeError: naming the key (and shard url) and the member that failed.
    """
    key = raw.get("__key__")
    out: dict[str, Any] = {"__key__": key, "__url__": raw.get("__url__")}
    for ext, data in raw.items():
        if ext.startswith("__"):
            continue
        member, _, suffix = ext.partition(".")
        try:
            if member == META_MEMBER and not suffix:
                out["meta"] = decode_json(data)
            elif member in MEMBERS:
                out[member] = decode_array(data, suffix)
            else:
                raise DecodeError(f"unknown member {ext!r}")
        except DecodeError as err:
            raise DecodeError(f"{raw.get('__url__')}: {key}.{ext}: {err}") from err
    if "meta" not in out:
        raise DecodeError(f"{raw.get('__url__')}: {key}: no .json member")
    return out


def shard_urls(root: str | os.PathLike[str], split: str | None = None) -> list[str]:
    """Shard paths of a dataset, in manifest order, optionally for one split."""
    table = read_manifest(root, columns=["shard", "split"])
    seen: dict[str, None] = {}
    for shard, s in zip(table.column("shard").to_pylist(), table.column("split").to_pylist()):
        if split is None or s == split:
            seen.setdefault(shard, None)
    return [str(Path(root) / shard) for shard in seen]


def read_samples(
    urls: list[str] | str,
    handler: Callable[[Exception], bool] = wds.reraise_exception,
) -> wds.DataPipeline:
    """A pipeline over ``urls`` (local paths, ``file:``, ``pipe:`` or http URLs) yielding decoded samples.

    Example::

        for sample in read_samples(shard_urls("ds", "train")):
            s2 = sample["s2"]            # uint16 [T, 13, H, W]
            tile = sample["meta"]["tile_id"]
    """
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(handler=handler),
        wds.map(decode_sample, handler=handler),
    )


def iter_dataset(root: str | os.PathLike[str], split: str | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a dataset folder, decoded, in manifest order."""
    urls = shard_urls(root, split)
    if urls:
        yield from read_samples(urls)
