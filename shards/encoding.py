"""How array members are turned into bytes and back.

Two codecs, both plain ``.npy`` underneath so any tool can read a member without eoforge
(``zstd -d x.s2.npy.zst && python -c "import numpy; numpy.load('x.s2.npy')"``):

- ``npy``: the raw ``.npy`` bytes (member suffix ``.npy``);
- ``zstd``: the same bytes compressed with Zstandard (member suffix ``.npy.zst``).

``zstd`` at level 1 is the default, chosen by measurement (``make bench``; figures in
README "Member encoding"): on real S2 L2A chips it stores ~0.72x the bytes of ``npy`` and
decodes ~100 four-season 13-band samples/s per core; level 3 saves only ~3% more bytes
but encodes 4x slower, which ingest pays on every sample. A byte-shuffled variant would
save ~20% more but would no longer be a plain ``.npy``. Decoding never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import zstandard

CODECS = ("npy", "zstd")
DEFAULT_CODEC = "zstd"
DEFAULT_ZSTD_LEVEL = 1
SUFFIX = {"npy": "npy", "zstd": "npy.zst"}
_CODEC_OF_SUFFIX = {v: k for k, v in SUFFIX.items()}


class DecodeError(ValueError):
    """A member's bytes could not be decoded."""


def npy_bytes(arr: np.ndarray) -> bytes:
    """The ``.npy`` file bytes of ``arr`` (C order, version 1.0 header)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_array(arr: np.ndarray, codec: str = DEFAULT_CODEC, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """Serialise one array; deterministic for equal inputs and settings."""
    raw = npy_bytes(arr)
    if codec == "npy":
        return raw
    if codec == "zstd":
        # Single-threaded with the content size in the frame: same bytes on every machine.
        return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    raise ValueError(f"unknown codec {codec!r} (known: {CODECS})")


def decode_array(data: bytes, suffix: str) -> np.ndarray:
    """Decode member bytes whose name ends in ``suffix`` (``"npy"`` or ``"npy.zst"``)."""
    codec = _CODEC_OF_SUFFIX.get(suffix)
    if codec is None:
        raise DecodeError(f"not an array member suffix: {suffix!r}")
    try:
        if codec == "zstd":
            data = zstandard.ZstdDecompressor().decompress(data)
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (zstandard.ZstdError, ValueError, EOFError, OSError) as err:
        raise DecodeError(f"cannot decode .{suffix} member: {err}") from err


def encode_json(meta: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, compact, UTF-8) so equal metadata gives equal bytes."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    try:
        out = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DecodeError(f"cannot decode .json member: {err}") from err
    if not isinstance(out, dict):
        raise DecodeError(".json member is not an object")
    return out


def split_member_name(name: str) -> tuple[str, str, str]:
    """``"32n_00123_01234.s2.npy.zst"`` -> ``("32n_00123_01234", "s2", "npy.zst")``.

    For the metadata member, ``"key.json"`` -> ``("key", "json", "")``.
    """
    key, _, rest = name.partition(".")
    member, _, suffix = rest.partition(".")
    return key, member, suffix
