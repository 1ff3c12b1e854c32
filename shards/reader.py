"""Read shards back as decoded samples: a small webdataset pipeline.

Stages, each usable alone (webdataset style)::

    shard urls ─▶ tarfile_to_samples ─▶ decode_sample ─▶ {"__key__", "s2", "s1", ..., "meta"}

Arrays come back exactly as stored (see :mod:`eoforge.shards.schema` for dtypes and
shapes); ``meta`` is the decoded ``<key>.json`` dict. Members are decoded explicitly by
name and suffix, never by pickle. A reader that needs one time step asks
:func:`decode_sample` for it (``step=``): of each ``[T, ...]`` member only that step's zstd
frame is decompressed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds

from eoforge.shards.encoding import DecodeError, decode_array, decode_entry, decode_json
from eoforge.shards.manifest import manifest_shards, read_manifest
from eoforge.shards.schema import MEMBERS, META_MEMBER


#: ``scheme://`` or webdataset's ``pipe:`` prefix: a URL, not a local path.
_URL_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://|pipe:)")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` and ``pipe:...``; False for local paths."""
    return isinstance(path, str) and bool(_URL_RE.match(path))


def decode_sample(raw: dict[str, Any], members: Collection[str] | None = None,
                  step: int | None = None) -> dict[str, Any]:
    """Decode one raw webdataset sample (member suffix -> bytes) into arrays + ``meta``.

    Args:
        raw: ``{"__key__", "__url__", "s2.npy.zst": bytes, ..., "json": bytes}``.
        members: array members to decode (default: all); the others are left undecoded.
        step: decode only this time step of each member: arrays keep a time axis of length 1
            (``s2`` ``[1, 13, H, W]``); a static ``lc`` (``T == 1``) gives its one map.

    Raises:
        DecodeError: naming the key (and shard url) and the member that failed, or ``step``
            outside a member's time axis.
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
            elif member not in MEMBERS:
                raise DecodeError(f"unknown member {ext!r}")
            elif members is not None and member not in members:
                continue
            elif step is None:
                out[member] = decode_array(data, suffix)
            else:
                entry, shape = decode_entry(data, suffix, 0 if member == "lc" else step)
                if member == "lc" and shape[0] > 1 and step > 0:
                    entry, shape = decode_entry(data, suffix, step)
                out[member] = entry[None]
        except DecodeError as err:
            raise DecodeError(f"{raw.get('__url__')}: {key}.{ext}: {err}") from err
    if "meta" not in out:
        raise DecodeError(f"{raw.get('__url__')}: {key}: no .json member")
    return out


def shard_urls(root: str | os.PathLike[str], split: str | None = None) -> list[str]:
    """Shard paths of a dataset, in manifest order, optionally for one split."""
    shards = manifest_shards(read_manifest(root, columns=["shard", "split"]), split)
    return [str(Path(root) / shard) for shard in shards]


def read_samples(
    urls: list[str] | str,
    handler: Callable[[Exception], bool] = wds.reraise_exception,
    decode: Callable[[dict[str, Any]], dict[str, Any]] | None = decode_sample,
) -> wds.DataPipeline:
    """A pipeline over ``urls`` (local paths, ``file:``, ``pipe:`` or http URLs) yielding decoded samples.

    ``decode``: the decoding stage (default :func:`decode_sample`, every member); None yields
    the raw samples (member suffix -> bytes), for a reader that decodes only what it keeps.

    Example::

        for sample in read_samples(shard_urls("ds", "train")):
            s2 = sample["s2"]            # uint16 [T, 13, H, W]
            tile = sample["meta"]["tile_id"]
    """
    stages: list[Any] = [wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler)]
    if decode is not None:
        stages.append(wds.map(decode, handler=handler))
    return wds.DataPipeline(*stages)


def iter_dataset(root: str | os.PathLike[str], split: str | None = None,
                 decode: Callable[[dict[str, Any]], dict[str, Any]] | None = decode_sample) -> Iterator[dict[str, Any]]:
    """Every sample of a dataset folder, in manifest order (decoded by ``decode``, or raw for None)."""
    urls = shard_urls(root, split)
    if urls:
        yield from read_samples(urls, decode=decode)
