"""Files written whole or not at all: a temporary file beside the target, then a rename.

A reader, a resumed run or a crash never sees half a file: the temporary file lives in the
target's folder and ``os.replace`` swaps it in atomically (POSIX, one file system).
``fsync=True`` also puts the data and the folder entry on disk before returning, for files
whose loss a power cut must not cause (training checkpoints; ``ShardWriter``'s shards by
default); ingest's outputs skip it, as its resume checks the sizes of what is on disk rather
than trusting that it was flushed (ingest/README.md). Every writer of eoforge that replaces a
file goes through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends, removed if it raises. ``suffix`` keeps an extension a writer infers the format from
    (``".tmp.png"`` for ``savefig``, ``".tmp.npz"`` for ``np.savez``). The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    publish(tmp, path, fsync=fsync)


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str], *, fsync: bool = False) -> None:
    """Rename a finished temporary file onto ``path`` (and, with ``fsync``, flush the folder
    entry): the last step of :func:`atomic_path` and of the streaming writers that keep their
    ``.tmp`` file open across calls (shard tars, staged frames). The caller has flushed the data."""
    os.replace(tmp, path)
    if fsync:
        fsync_dir(Path(path).parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; return the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
