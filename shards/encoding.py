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

import functools
import io
import json
from typing import Any

import numpy as np
import zstandard

CODECS = ("npy", "zstd")
NPY_MAGIC = b"\x93NUMPY"
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


def decode_array(data: bytes, suffix: str, leading: int | None = None) -> np.ndarray:
    """Decode member bytes whose name ends in ``suffix`` (``"npy"`` or ``"npy.zst"``).

    Args:
        data: the member's bytes.
        suffix: ``"npy"`` or ``"npy.zst"``.
        leading: decode only the first ``leading`` entries along axis 0 (e.g. the time steps
            up to the one a loader keeps): a ``.npy.zst`` member is decompressed only that far.
            None: the whole array.

    Returns:
        A writable array (for ``.npy.zst``, a view of the one buffer it was decompressed into).
    """
    codec = _CODEC_OF_SUFFIX.get(suffix)
    if codec is None:
        raise DecodeError(f"not an array member suffix: {suffix!r}")
    try:
        if codec == "zstd":
            return _decode_zstd_npy(data, leading)
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        return arr if leading is None else arr[:leading]
    except (zstandard.ZstdError, ValueError, EOFError, OSError) as err:
        raise DecodeError(f"cannot decode .{suffix} member: {err}") from err


#: magic + version + the 4-byte header length of a format >= 2.0 ``.npy`` (1.0 uses 2 bytes)
_NPY_PREFIX_BYTES = len(NPY_MAGIC) + 2 + 4


def _npy_payload_offset(prefix: bytes) -> int:
    """Where the payload of a ``.npy`` starts, from its first bytes (magic, version, header length)."""
    if not prefix.startswith(NPY_MAGIC) or len(prefix) < len(NPY_MAGIC) + 4:
        raise ValueError(f"not a .npy payload (no NUMPY magic in its first {len(prefix)} bytes; truncated?)")
    major = prefix[len(NPY_MAGIC)]
    if major not in (1, 2, 3):
        raise ValueError(f"unsupported .npy format version {major}")
    length_bytes = 2 if major == 1 else 4
    header_len = int.from_bytes(prefix[len(NPY_MAGIC) + 2 : len(NPY_MAGIC) + 2 + length_bytes], "little")
    return len(NPY_MAGIC) + 2 + length_bytes + header_len


@functools.lru_cache(maxsize=256)
def _npy_layout(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) parsed by numpy's own header reader; object dtypes refused.

    Cached: the members of a dataset share a handful of headers, and numpy parses each with
    ``ast.literal_eval``, a noticeable cost next to decompressing a small member."""
    fp = io.BytesIO(header)
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fp)  # v3 differs from v2 only in how field names are encoded
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed (they would need pickle)")
    return tuple(shape), bool(fortran_order), dtype


def _decode_zstd_npy(data: bytes, leading: int | None) -> np.ndarray:
    """A ``.npy.zst`` member decompressed into one fresh buffer, the array a view of it.

    The ``.npy`` payload is not copied again after decompression, and with ``leading`` the
    stream is decompressed only up to the end of entry ``leading - 1`` of axis 0. Frames without
    a content size (``zstd`` reading a pipe) and multi-frame members (``pzstd``) are read whole.
    """
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    prefix = reader.read(_NPY_PREFIX_BYTES)
    start = _npy_payload_offset(prefix)
    header = prefix + reader.read(start - len(prefix))
    if len(header) < start:
        raise ValueError(f"truncated .npy header: {len(header)} of {start} bytes")
    shape, fortran_order, dtype = _npy_layout(header)
    if leading is not None and shape and not fortran_order:
        shape = (min(leading, shape[0]), *shape[1:])
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = np.empty(nbytes, dtype=np.uint8)
    got = reader.readinto(memoryview(payload)) if nbytes else 0
    if got < nbytes:
        raise ValueError(f"truncated .npy payload: {got} of {nbytes} bytes")
    arr = payload.view(dtype)
    return arr.reshape(shape[::-1]).T if fortran_order else arr.reshape(shape)


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
