"""Write samples into WebDataset tar shards, atomically and reproducibly.

- A shard is written to ``shard-NNNNNN.tar.tmp`` and renamed when complete, so a
  ``shard-NNNNNN.tar`` that exists is whole; an interrupted write leaves only a ``.tmp``.
  With ``fsync`` (the default) its bytes are on disk before the rename; a caller that writes
  many shards in one job and can check them on resume (ingest: the tar's size) may skip it.
- Its manifest part (``manifest-parts/<split>/shard-NNNNNN.parquet``) is renamed into place
  just before the tar, so every finished shard has its rows.
- Shards are bounded by sample count and by bytes; no shard is ever empty.
- Member order, tar headers (mtime 0, uid/gid 0, mode 0444, ustar) and encodings are fixed,
  so the same samples give byte-identical tars.

Layout under the dataset root ``DS``::

    DS/shards/train/shard-000000.tar
    DS/manifest-parts/train/shard-000000.parquet
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from eoforge.shards.atomic import publish
from eoforge.shards.encoding import DEFAULT_CODEC
from eoforge.shards.manifest import manifest_row, write_part
from eoforge.shards.sample import EncodedSample, Sample, encode_sample

SHARD_PATTERN = "shard-{index:06d}.tar"


def shard_path(root: str | os.PathLike[str], split: str, index: int) -> Path:
    """``DS/shards/<split>/shard-NNNNNN.tar``."""
    return Path(root) / "shards" / split / SHARD_PATTERN.format(index=index)


def part_path(root: str | os.PathLike[str], split: str, index: int) -> Path:
    """``DS/manifest-parts/<split>/shard-NNNNNN.parquet``."""
    return Path(root) / "manifest-parts" / split / f"shard-{index:06d}.parquet"


def _tar_size(nbytes: int) -> int:
    """Bytes a member occupies in a tar: a 512-byte header plus data padded to 512."""
    return 512 + -(-nbytes // 512) * 512


def _tar_header(name: str, size: int) -> bytes:
    """The ustar header of a regular file member: mtime 0, uid/gid 0, mode 0444, empty user
    and group names (same bytes every run; the bytes ``tarfile`` writes for that ``TarInfo``,
    built here directly since ``TarInfo.tobuf`` costs ~60 us a member)."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(512)
    header[0:len(encoded)] = encoded
    header[100:108] = b"0000444\0"  # mode
    header[108:116] = header[116:124] = b"0000000\0"  # uid, gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime
    header[148:156] = b" " * 8  # checksum placeholder
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC  # device numbers stay NUL, as tarfile leaves them for files
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


class _ShardFile:
    """One shard being written: a ustar stream into ``<final>.tmp``.

    Members are written as header + data + padding in three writes (``tarfile.addfile``
    copies through 16 KiB chunks); the end of the archive is what ``tarfile`` writes: two
    zero blocks, padded to a multiple of its 10 240-byte record."""

    def __init__(self, root: Path, split: str, index: int, fsync: bool = True) -> None:
        self.root, self.split, self.index = root, split, index
        self.path = shard_path(root, split, index)
        self.relpath = self.path.relative_to(root).as_posix()  # the manifest's ``shard`` of every row
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._file = open(self.tmp, "wb")
        self.rows: list[dict[str, Any]] = []
        self.nbytes = 0

    def add(self, key: str, members: list[tuple[str, tuple[bytes, ...]]]) -> None:
        for name, parts in members:
            size = sum(map(len, parts))
            self._file.write(_tar_header(f"{key}.{name}", size))
            for part in parts:
                self._file.write(part)
            pad = -size % 512
            if pad:
                self._file.write(bytes(pad))
            self.nbytes += _tar_size(size)

    def commit(self, write_manifest_part: bool) -> None:
        end = 2 * 512
        end += -(self.nbytes + end) % tarfile.RECORDSIZE
        self._file.write(bytes(end))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        if write_manifest_part:
            write_part(self.rows, part_path(self.root, self.split, self.index), fsync=self.fsync)
        publish(self.tmp, self.path, fsync=self.fsync)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Write samples of one split into size-bounded shards.

    Args:
        root: dataset folder ``DS``.
        split: split name; shards go to ``DS/shards/<split>/``.
        max_samples: most samples per shard.
        max_bytes: most tar bytes per shard (a single larger sample gets a shard of its own).
        start_index: number of the first shard.
        codec: array member codec (``"zstd"`` or ``"npy"``).
        write_manifest_parts: also write ``DS/manifest-parts/<split>/shard-NNNNNN.parquet``.
        fsync: flush each shard (and part) to disk before renaming it into place.

    Example::

        with ShardWriter("ds", "train", max_samples=256) as writer:
            for sample in samples:
                writer.write(sample)
        rows = writer.rows  # one manifest row per sample, member hashes included

    On an exception inside the ``with`` block the unfinished shard's ``.tmp`` is removed;
    finished shards stay.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        max_samples: int = 1000,
        max_bytes: int = 1 << 30,
        start_index: int = 0,
        codec: str = DEFAULT_CODEC,
        write_manifest_parts: bool = True,
        fsync: bool = True,
    ) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.root = Path(root)
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.next_index = start_index
        self.codec = codec
        self.write_manifest_parts = write_manifest_parts
        self.fsync = fsync
        self.rows: list[dict[str, Any]] = []
        self.shards: list[Path] = []
        self._current: _ShardFile | None = None

    def write(self, sample: Sample | EncodedSample) -> dict[str, Any]:
        """Append ``sample`` (encoded here, or already encoded) to the current shard and
        return its manifest row."""
        encoded = sample if isinstance(sample, EncodedSample) else encode_sample(sample, self.codec)
        size = sum(_tar_size(info.nbytes) for info, _ in encoded.members)
        cur = self._current
        if cur is not None and (
            len(cur.rows) >= self.max_samples or cur.nbytes + size > self.max_bytes
        ):
            self._finish()
            cur = None
        if cur is None:
            cur = self._current = _ShardFile(self.root, self.split, self.next_index, self.fsync)
            self.next_index += 1
        cur.add(encoded.key, [(info.name, parts) for info, parts in encoded.members])
        row = manifest_row(encoded.meta, cur.relpath, [info for info, _ in encoded.members])
        cur.rows.append(row)
        return row

    def _finish(self) -> None:
        cur, self._current = self._current, None
        if cur is None:
            return
        cur.commit(self.write_manifest_parts)
        self.rows.extend(cur.rows)
        self.shards.append(cur.path)

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; return every manifest row written."""
        self._finish()
        return self.rows

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._current is not None:
            self._current.abort()
            self._current = None


def write_shard(
    root: str | os.PathLike[str],
    split: str,
    index: int,
    samples: Iterable[Sample | EncodedSample],
    codec: str = DEFAULT_CODEC,
    fsync: bool = True,
) -> list[dict[str, Any]]:
    """Write exactly one shard ``DS/shards/<split>/shard-<index>.tar`` (plus its manifest part).

    This is what one ingest task calls. When ``samples`` is empty no tar is written, but an
    empty manifest part is, so a resumed run knows the shard was done.
    """
    writer = ShardWriter(root, split, max_samples=1 << 62, max_bytes=1 << 62, start_index=index, codec=codec,
                         fsync=fsync)
    with writer:
        for sample in samples:
            writer.write(sample)
    if not writer.rows:
        write_part([], part_path(root, split, index), fsync=fsync)
    return writer.rows
