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

A ``zstd`` member is written as one Zstandard frame holding the ``.npy`` header, then one
frame per entry of axis 0 (per time step of a ``[T, ...]`` stack). Concatenated frames are
one valid stream (``zstd -d`` reads them as one file), and:

- a loader that keeps one time step decompresses only that step's frame
  (:func:`decode_entry`): frame boundaries are found from the frames' block headers without
  decompressing anything;
- a writer can compress each entry as soon as it exists and assemble the member later
  (:func:`encode_entry`, :func:`member_header`): ingest compresses each (tile, time step)
  once, when it reads the source, and only concatenates frames when it writes the shard;
  ``encode_array(a) == member_header(a.dtype, a.shape) + b"".join(encode_entry(e) for e in a)``.

Members framed any other way (one frame, the header inside the first entry's frame as
eoforge 0.1 wrote them, ``pzstd`` chunks, no content sizes) decode too.
"""

from __future__ import annotations

import functools
import io
import json
import threading
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


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The header of a C-order ``.npy`` file (format 1.0) holding ``dtype`` and ``shape``."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    """The ``.npy`` file bytes of ``arr`` (C order, version 1.0 header)."""
    arr = np.ascontiguousarray(arr)
    return npy_header(arr.dtype, arr.shape) + arr.tobytes()


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level (zstandard's are not thread-safe; making one per
    call costs its context allocation every time). Single-threaded with the content size in
    every frame: the same bytes on every machine, and each frame's size is known before it
    is decompressed."""
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


@functools.lru_cache(maxsize=256)
def member_header(dtype: np.dtype, shape: tuple[int, ...], codec: str = DEFAULT_CODEC,
                  level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """The bytes that open an array member of ``dtype`` and ``shape``: the ``.npy`` header
    (``npy``), or a zstd frame holding it (``zstd``). Entries follow (:func:`encode_entry`).
    Cached: a shard's members share a few shapes, and each header costs a zstd context."""
    header = npy_header(dtype, shape)
    _check_codec(codec)
    return header if codec == "npy" else _compressor(level).compress(header)


def encode_entry(entry: np.ndarray, codec: str = DEFAULT_CODEC, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """One entry of axis 0 of a member (``arr[i]``): its C-order bytes (``npy``) or one zstd frame."""
    _check_codec(codec)
    data = np.ascontiguousarray(entry)
    if codec == "npy":
        return data.tobytes()
    return _compressor(level).compress(data.data.cast("B") if data.nbytes else b"")


def decode_entry_bytes(data: bytes, dtype: np.dtype | str, shape: tuple[int, ...], codec: str = DEFAULT_CODEC) -> np.ndarray:
    """The inverse of :func:`encode_entry`: one entry of ``dtype`` and ``shape`` (a writable array)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        raw = data if codec == "npy" else zstandard.ZstdDecompressor().decompress(data, max_output_size=nbytes)
    except zstandard.ZstdError as err:
        raise DecodeError(f"cannot decode an entry frame: {err}") from err
    if len(raw) != nbytes:
        raise DecodeError(f"entry frame holds {len(raw)} bytes, {nbytes} expected for {dtype} {tuple(shape)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (known: {CODECS})")


def encode_array(arr: np.ndarray, codec: str = DEFAULT_CODEC, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """Serialise one array; deterministic for equal inputs and settings.

    ``zstd``: a header frame, then one frame per entry of axis 0 (module docstring).
    """
    _check_codec(codec)
    arr = np.ascontiguousarray(arr)
    if codec == "npy":
        return npy_bytes(arr)
    if arr.ndim == 0 or arr.nbytes == 0:
        return _compressor(level).compress(npy_bytes(arr))
    return member_header(arr.dtype, arr.shape, codec, level) + b"".join(encode_entry(e, codec, level) for e in arr)


def decode_array(data: bytes, suffix: str) -> np.ndarray:
    """Decode member bytes whose name ends in ``suffix`` (``"npy"`` or ``"npy.zst"``).

    Returns:
        A writable array (for ``.npy.zst``, a view of the one buffer it was decompressed into).
    """
    codec = _codec(suffix)
    try:
        if codec == "zstd":
            return _decode_zstd_npy(data)
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (zstandard.ZstdError, ValueError, EOFError, OSError) as err:
        raise DecodeError(f"cannot decode .{suffix} member: {err}") from err


def decode_entry(data: bytes, suffix: str, index: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Entry ``index`` of axis 0 of a member (one time step of ``[T, C, H, W]``), and the member's shape.

    A ``.npy.zst`` member framed one frame per entry (as :func:`encode_array` writes them)
    decompresses the header and that entry's frame only; other framings are decompressed up to
    the entry, the entries before it into one small scratch buffer. A ``.npy`` member copies the
    entry out of its bytes.

    Returns:
        (a writable C-contiguous array of shape ``shape[1:]``, the member's whole shape).

    Raises:
        DecodeError: undecodable bytes, a 0-d array or ``index`` outside axis 0.
    """
    codec = _codec(suffix)
    try:
        if codec == "zstd":
            return _decode_zstd_entry(data, index)
        arr = _npy_view(data)
        _check_index(arr.shape, index)
        return np.array(arr[index], order="C"), arr.shape
    except (zstandard.ZstdError, ValueError, EOFError, OSError) as err:
        raise DecodeError(f"cannot decode .{suffix} member: {err}") from err


def _codec(suffix: str) -> str:
    codec = _CODEC_OF_SUFFIX.get(suffix)
    if codec is None:
        raise DecodeError(f"not an array member suffix: {suffix!r}")
    return codec


def _check_index(shape: tuple[int, ...], index: int) -> None:
    if not shape:
        raise ValueError("a 0-d array has no entries")
    if not 0 <= index < shape[0]:
        raise ValueError(f"entry {index} asked of an array of shape {shape}")


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


def _npy_view(data: bytes | bytearray | memoryview) -> np.ndarray:
    """A read-only array over the payload of ``.npy`` bytes (no copy)."""
    start = _npy_payload_offset(bytes(data[:_NPY_PREFIX_BYTES]))
    shape, fortran_order, dtype = _npy_layout(bytes(data[:start]))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - start < count * dtype.itemsize:
        raise ValueError(f"truncated .npy payload: {len(data) - start} of {count * dtype.itemsize} bytes")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return arr.reshape(shape[::-1]).T if fortran_order else arr.reshape(shape)


def _open_zstd_npy(data: bytes) -> tuple[Any, int, tuple[int, ...], bool, np.dtype]:
    """A stream reader positioned at the ``.npy`` payload, the header's length and the layout."""
    # the whole member as one input chunk: fewer, larger decompression calls (~10% faster)
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_size=max(len(data), 1), read_across_frames=True)
    prefix = reader.read(_NPY_PREFIX_BYTES)
    start = _npy_payload_offset(prefix)
    header = prefix + reader.read(start - len(prefix))
    if len(header) < start:
        raise ValueError(f"truncated .npy header: {len(header)} of {start} bytes")
    return (reader, start, *_npy_layout(header))


def _read_exactly(reader: Any, buffer: np.ndarray) -> None:
    got = reader.readinto(buffer.data.cast("B")) if buffer.nbytes else 0
    if got < buffer.nbytes:
        raise ValueError(f"truncated .npy payload: {got} of {buffer.nbytes} bytes")


def _decode_zstd_npy(data: bytes) -> np.ndarray:
    """A ``.npy.zst`` member decompressed into one fresh buffer, the array a view of it.

    The ``.npy`` payload is not copied again after decompression. Frames without a content
    size (``zstd`` reading a pipe) and multi-frame members (``pzstd``) are read whole.
    """
    reader, _, shape, fortran_order, dtype = _open_zstd_npy(data)
    payload = np.empty(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, dtype=np.uint8)
    _read_exactly(reader, payload)
    arr = payload.view(dtype)
    return arr.reshape(shape[::-1]).T if fortran_order else arr.reshape(shape)


def _decode_zstd_entry(data: bytes, index: int) -> tuple[np.ndarray, tuple[int, ...]]:
    reader, start, shape, fortran_order, dtype = _open_zstd_npy(data)
    _check_index(shape, index)
    if fortran_order:  # entries are not contiguous in the stream: decode all, copy one out
        return np.array(_decode_zstd_npy(data)[index], order="C"), shape
    out = np.empty(shape[1:], dtype=dtype)
    entry_bytes = out.nbytes
    if index > 0:
        frame = _entry_frame(data, index, start, entry_bytes)
        if frame is not None:
            reader = zstandard.ZstdDecompressor().stream_reader(memoryview(data)[frame[0] : frame[1]],
                                                                read_size=frame[1] - frame[0])
        else:  # another framing: decompress the entries before ``index`` into a scratch buffer
            scratch = np.empty(entry_bytes, dtype=np.uint8)
            for _ in range(index):
                _read_exactly(reader, scratch)
    _read_exactly(reader, out)
    return out, shape


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK, _ZSTD_SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


def _entry_frame(data: bytes, index: int, header_bytes: int, entry_bytes: int) -> tuple[int, int] | None:
    """Byte range of the frame that holds exactly entry ``index`` (``index >= 1``), or None.

    Walks the frames before it by their headers and block headers (RFC 8878, nothing is
    decompressed) and checks the layout by the frames' content sizes: a first frame of
    ``header_bytes`` (the header alone, entry ``i`` in frame ``i + 1``) or of ``header_bytes +
    entry_bytes`` (the header with entry 0, entry ``i`` in frame ``i``), ``entry_bytes`` for each
    other. None for any other layout, or when a frame does not record its content size.
    """
    buf = memoryview(data)
    pos = 0
    frame = 0
    target = None
    while pos + 8 <= len(buf):
        magic = int.from_bytes(buf[pos : pos + 4], "little")
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            pos += 8 + int.from_bytes(buf[pos + 4 : pos + 8], "little")
            continue
        if magic != _ZSTD_MAGIC:
            return None
        descriptor = buf[pos + 4]
        single_segment = descriptor >> 5 & 1
        size_field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        if size_field == 0:
            return None  # content size not recorded
        p = pos + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
        content = int.from_bytes(buf[p : p + size_field], "little") + (256 if size_field == 2 else 0)
        if frame == 0:
            target = {header_bytes: index + 1, header_bytes + entry_bytes: index}.get(content)
            if target is None:
                return None
        elif content != entry_bytes:
            return None
        p += size_field
        while True:  # blocks: 3-byte header (last flag, type, size), then the block's bytes
            if p + 3 > len(buf):
                return None
            block = int.from_bytes(buf[p : p + 3], "little")
            kind = block >> 1 & 3
            if kind == 3:
                return None  # reserved block type: corrupt
            p += 3 + (1 if kind == 1 else block >> 3)  # an RLE block stores one byte
            if block & 1:
                break
        p += 4 if descriptor >> 2 & 1 else 0  # content checksum
        if frame == target:
            return (pos, p) if p <= len(buf) else None
        pos = p
        frame += 1
    return None


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


def encoding_version() -> str:
    """A short digest of how members are encoded by this code (12 hex digits): caches of
    encoded datasets (the benchmarks') are rebuilt when it changes."""
    import hashlib

    probe = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    return hashlib.sha256(encode_array(probe)).hexdigest()[:12]
