"""What scan learned last time: ``DS/scan-inventory.parquet``, so a rerun never rescans an archive.

Scan reads one header per raster file and probes a few pixels per scene (:mod:`.scan`).
On an archive of a million files that is most of a rerun's metadata time, and nearly all
of it repeats what the last run found. The inventory keeps, from the last scan into the
same dataset folder:

- per file: its size (bytes) and modification time (ns, ``st_mtime_ns``) when it was
  read, and the record :func:`.scan.read_header` returned for it;
- per scene: the result of :func:`.scan.probe_scene`, keyed by :func:`probe_key`: the
  (path, size, mtime) of every file of the scene and the scene fields the probe reads.

A rerun reads a header again only for a file whose size or mtime changed (or that is
new), and probes again only a scene whose key changed; the rest comes from the inventory.
The scan result is the same either way: records are stored as JSON with their Python
types tagged (tuples, bytes, NaN nodata), so they load back equal to a fresh read.

Not cached (always read again): URLs (``s3://``, ``https://``…; their size and time would
cost a request per object from the client, about what the header read on a worker costs,
so nothing would be saved), results of tasks that raised (a dead worker is not a property
of the file), and anything written by another inventory format or eoforge version. Delete
the file to force a full rescan (a local file rewritten within the same nanosecond with the
same size, or a filesystem that does not update mtimes, is not noticed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from eoforge import __version__
from eoforge.ingest.scene import FileHeader, Scene
from eoforge.shards.manifest import write_parquet_atomic

INVENTORY_NAME = "scan-inventory.parquet"
#: Bump when the records' meaning changes (read_header / probe_scene return other fields).
INVENTORY_FORMAT = 1
_META_KEY = b"eoforge_scan_inventory"
SCHEMA = pa.schema([
    ("kind", pa.string()),      # "header" (key: the file's path) or "probe" (key: probe_key)
    ("key", pa.string()),
    ("size", pa.int64()),       # bytes, headers only
    ("mtime_ns", pa.int64()),   # st_mtime_ns, headers only
    ("record", pa.string()),    # the header record or probe result, tagged JSON
])

#: (size in bytes, mtime in ns) of a file.
Stat = tuple[int, int]


def file_stat(path: str) -> Stat | None:
    """(size bytes, mtime ns) of a local file; None for a URL (always rescanned) or a file
    that cannot be stat'ed (its header read reports why)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def probe_key(scene: Scene, stats: dict[str, Stat | None]) -> str | None:
    """What a probe result depends on, hashed: every file of the scene with its size and
    mtime, and the scene fields :func:`.scan.probe_scene` reads (sensor, product id for its
    messages, the band table, the S1 unit from tags). None when a file has no stat (a URL)."""
    files = []
    for path in scene.paths:
        stat = stats.get(path)
        if stat is None:
            return None
        files.append([path, *stat])
    basis: dict[str, Any] = {"files": files, "sensor": scene.sensor, "product_id": scene.product_id,
             "bands": {b: f.to_dict() for b, f in scene.bands.items()}, "s1_unit": scene.s1_unit}
    if scene.from_item:  # probed for its S1 unit only (:func:`.scan.probe_scene`)
        basis["from_item"] = True
    return hashlib.sha256(encode_record(basis).encode()).hexdigest()


# ------------------------------------------------------------------ records <-> JSON

_TAGS = ("__tuple__", "__bytes__", "__dict__")


def _tagged(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_tagged(v) for v in value]}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            raise TypeError("only str keys round-trip through JSON")
        items = {k: _tagged(v) for k, v in value.items()}
        # a plain dict that looks like a tag (a raster tag named "__tuple__") is wrapped
        return {"__dict__": list(items.items())} if len(items) == 1 and next(iter(items)) in _TAGS else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} does not round-trip through the inventory")


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "__tuple__":
            return tuple(value)
        if key == "__bytes__":
            return base64.b64decode(value)
        if key == "__dict__":
            return dict(value)  # [key, value] pairs: lists are not passed through this hook
    return obj


def encode_record(value: Any) -> str:
    """JSON text of a header record or probe result that :func:`decode_record` turns back
    into an equal value (tuples stay tuples, bytes stay bytes, floats exact, NaN kept)."""
    return json.dumps(_tagged(value), separators=(",", ":"))  # key order kept, as read


def decode_record(text: str) -> Any:
    return json.loads(text, object_hook=_untag)


# ------------------------------------------------------------------ the file


@dataclass
class ScanInventory:
    """Header records by path (with the stat they were read at) and probe results by key,
    held as their JSON text (decoded when used, so carrying a record over costs nothing)."""

    headers: dict[str, tuple[Stat, str]] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)

    def header(self, path: str, stat: Stat | None) -> FileHeader | None:
        """The stored header of ``path`` if it was read at this very ``stat``, else None."""
        found = self.headers.get(path)
        if found is None or stat is None or found[0] != stat:
            return None
        return FileHeader.from_dict(decode_record(found[1]))

    def probe(self, key: str | None) -> dict[str, Any] | None:
        found = self.probes.get(key) if key is not None else None
        return decode_record(found) if found is not None else None

    def keep_header(self, path: str, stat: Stat | None, header: FileHeader) -> None:
        """Record a header read at ``stat`` (not without a stat, nor one that would not round-trip)."""
        text = _encoded(header.to_dict()) if stat is not None else None
        if text is not None:
            self.headers[path] = (stat, text)  # type: ignore[assignment]  # stat is not None here

    def keep_probe(self, key: str | None, result: dict[str, Any]) -> None:
        text = _encoded(result) if key is not None else None
        if text is not None:
            self.probes[key] = text  # type: ignore[index]  # key is not None here

    def carry_header(self, old: ScanInventory, path: str) -> None:
        """Keep ``old``'s record of ``path`` (it was just used: the file is unchanged)."""
        self.headers[path] = old.headers[path]

    def carry_probe(self, old: ScanInventory, key: str) -> None:
        self.probes[key] = old.probes[key]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ScanInventory:
        """The inventory at ``path``; empty when there is none, it cannot be read, or another
        format or eoforge version wrote it (everything is then scanned again)."""
        if not Path(path).is_file():
            return cls()
        try:
            # ParquetFile, not read_table: the latter imports pyarrow.dataset, and with it
            # pandas (0.25 s of a cold run's scan, while the cluster starts)
            table = pq.ParquetFile(path).read()
            meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        except (OSError, ValueError, pa.ArrowException):
            return cls()
        if meta != {"format": INVENTORY_FORMAT, "eoforge": __version__} or table.schema.names != SCHEMA.names:
            return cls()
        inventory = cls()
        columns = [table.column(name).to_pylist() for name in SCHEMA.names]
        for kind, key, size, mtime_ns, record in zip(*columns):
            if kind == "header":
                inventory.headers[key] = ((size, mtime_ns), record)
            elif kind == "probe":
                inventory.probes[key] = record
        return inventory

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (tmp file + rename), rows sorted: the same scan writes the same bytes."""
        path = Path(path)
        headers = sorted(self.headers.items())
        probes = sorted(self.probes.items())
        table = pa.table({
            "kind": ["header"] * len(headers) + ["probe"] * len(probes),
            "key": [p for p, _ in headers] + [k for k, _ in probes],
            "size": [stat[0] for _, (stat, _) in headers] + [None] * len(probes),
            "mtime_ns": [stat[1] for _, (stat, _) in headers] + [None] * len(probes),
            "record": [text for _, (_, text) in headers] + [text for _, text in probes],
        }, schema=SCHEMA.with_metadata(
            {_META_KEY: json.dumps({"format": INVENTORY_FORMAT, "eoforge": __version__}).encode()}))
        write_parquet_atomic(table, path, fsync=False)  # derived data: a lost file means a full rescan
        return path


def _encoded(value: Any) -> str | None:
    """:func:`encode_record`, or None for a value that would not round-trip (not kept)."""
    try:
        return encode_record(value)
    except (TypeError, ValueError):
        return None
