"""The GeoParquet manifest: one row per sample, queryable without opening a tar.

``DS/manifest.parquet`` is GeoParquet 1.1: a WKB ``geometry`` column with each tile's
footprint in lon/lat (OGC:CRS84, i.e. EPSG:4326 with x = longitude), a ``bbox`` covering
column, and the ``geo`` file metadata. It opens with pyarrow, pandas, DuckDB, GeoPandas
and QGIS. Writers produce one part per shard (``DS/manifest-parts/<split>/*.parquet``);
:func:`merge_parts` joins them.

Columns (units in brackets):

- ``key``, ``shard`` (path relative to ``DS``), ``split``, ``tile_id``
- ``epsg``, ``transform`` (a, b, c, d, e, f) [m], ``width``, ``height`` [px],
  ``minx miny maxx maxy`` [m, tile CRS], ``lon lat`` (centre) [deg], ``geometry``, ``bbox``
- ``num_time_steps``, and per time step (lists, index t matches the arrays' T axis):
  ``datetimes`` [UTC], ``s2_product_ids``, ``s1_product_ids``, ``s1_orbit_directions``,
  ``dt_days`` [days, S1 − S2], ``s2_valid_fraction``, ``cloud_fraction``, ``s1_valid_fraction`` [0..1]
- ``has_s2 has_s1 has_scl has_lc``
- ``label_taxonomy``, ``labels`` (names of the classes present), ``label_multi_hot``,
  ``label_fractions``
- ``members`` (list of {name, sha256, nbytes, dtype, shape}), ``nbytes``, ``sha256``
  (hash of the member hashes: one value per sample's content)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer

from eoforge.shards.atomic import atomic_path
from eoforge.shards.meta import SampleMeta

if TYPE_CHECKING:
    from eoforge.shards.sample import MemberInfo

MANIFEST_NAME = "manifest.parquet"
GEOPARQUET_VERSION = "1.1.0"

_f32_list = pa.list_(pa.float32())
_str_list = pa.list_(pa.string())
MEMBER_TYPE = pa.struct(
    [
        ("name", pa.string()),
        ("sha256", pa.string()),
        ("nbytes", pa.int64()),
        ("dtype", pa.string()),
        ("shape", pa.list_(pa.int32())),
    ]
)
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("tile_id", pa.string()),
        ("epsg", pa.int32()),
        ("transform", pa.list_(pa.float64())),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("minx", pa.float64()),
        ("miny", pa.float64()),
        ("maxx", pa.float64()),
        ("maxy", pa.float64()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        ("geometry", pa.binary()),
        ("bbox", pa.struct([(n, pa.float64()) for n in ("xmin", "ymin", "xmax", "ymax")])),
        ("num_time_steps", pa.int16()),
        ("datetimes", pa.list_(pa.timestamp("ms", tz="UTC"))),
        ("s2_product_ids", _str_list),
        ("s1_product_ids", _str_list),
        ("s1_orbit_directions", _str_list),
        ("dt_days", _f32_list),
        ("s2_valid_fraction", _f32_list),
        ("cloud_fraction", _f32_list),
        ("s1_valid_fraction", _f32_list),
        ("has_s2", pa.bool_()),
        ("has_s1", pa.bool_()),
        ("has_scl", pa.bool_()),
        ("has_lc", pa.bool_()),
        ("label_taxonomy", pa.string()),
        ("labels", _str_list),
        ("label_multi_hot", pa.list_(pa.uint8())),
        ("label_fractions", _f32_list),
        ("members", pa.list_(MEMBER_TYPE)),
        ("nbytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


class ManifestError(ValueError):
    """A manifest or manifest part is missing or inconsistent; the message names the file."""


@lru_cache(maxsize=64)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True)


@lru_cache(maxsize=16)
def _outline_px(width: int, height: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, rows) of a ``width`` x ``height`` raster's outline, ``n`` points per edge,
    clockwise from the top-left corner in pixel space."""
    steps = np.arange(n)
    cols = np.concatenate([width * steps / n, np.full(n, float(width)), width * (n - steps) / n, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), height * steps / n, np.full(n, float(height)), height * (n - steps) / n])
    return cols, rows


def footprint_lonlat(meta: SampleMeta, points_per_edge: int = 8) -> shapely.Polygon:
    """The tile outline in lon/lat, edges densified so reprojection curvature is kept."""
    a, b, c, d, e, f = meta.transform
    cols, rows = _outline_px(meta.width, meta.height, points_per_edge)
    lon, lat = _to_lonlat(meta.epsg).transform(c + a * cols + b * rows, f + d * cols + e * rows)
    poly = shapely.polygons(np.column_stack([lon, lat]))
    return shapely.orient_polygons(poly)  # counter-clockwise shell, as the geo metadata says


def _timestamp(iso: str) -> datetime:
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def sample_hash(members: Iterable[MemberInfo]) -> str:
    """One hash for a sample's content: sha256 over ``name:sha256`` lines of its members."""
    text = "".join(f"{m.name}:{m.sha256}\n" for m in members)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_row(meta: SampleMeta, shard: str, members: list[MemberInfo]) -> dict[str, Any]:
    """The manifest row of one written sample."""
    poly = footprint_lonlat(meta)
    minx, miny, maxx, maxy = meta.bounds()
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    lon, lat = _to_lonlat(meta.epsg).transform(cx, cy)
    bx0, by0, bx1, by1 = poly.bounds
    names = {m.name.split(".")[0] for m in members}
    steps = meta.time_steps
    labels = meta.labels
    return {
        "key": meta.key,
        "shard": shard,
        "split": meta.split,
        "tile_id": meta.tile_id,
        "epsg": meta.epsg,
        "transform": list(meta.transform),
        "width": meta.width,
        "height": meta.height,
        "minx": minx,
        "miny": miny,
        "maxx": maxx,
        "maxy": maxy,
        "lon": lon,
        "lat": lat,
        "geometry": shapely.to_wkb(poly),
        "bbox": {"xmin": bx0, "ymin": by0, "xmax": bx1, "ymax": by1},
        "num_time_steps": len(steps),
        "datetimes": [_timestamp(t.datetime) if t.datetime else None for t in steps],
        "s2_product_ids": [t.s2_product_id for t in steps],
        "s1_product_ids": [t.s1_product_id for t in steps],
        "s1_orbit_directions": [t.s1_orbit_direction for t in steps],
        "dt_days": [t.dt_days for t in steps],
        "s2_valid_fraction": [t.s2_valid_fraction for t in steps],
        "cloud_fraction": [t.cloud_fraction for t in steps],
        "s1_valid_fraction": [t.s1_valid_fraction for t in steps],
        "has_s2": "s2" in names,
        "has_s1": "s1" in names,
        "has_scl": "scl" in names,
        "has_lc": "lc" in names,
        "label_taxonomy": labels.taxonomy if labels else None,
        "labels": [n for n, h in zip(labels.names, labels.multi_hot) if h] if labels else None,
        "label_multi_hot": list(labels.multi_hot) if labels else None,
        "label_fractions": labels.fractions if labels else None,
        "members": [
            {
                "name": m.name,
                "sha256": m.sha256,
                "nbytes": m.nbytes,
                "dtype": m.dtype,
                "shape": list(m.shape) if m.shape is not None else None,
            }
            for m in members
        ],
        "nbytes": sum(m.nbytes for m in members),
        "sha256": sample_hash(members),
    }


def geo_metadata(table: pa.Table | None = None, bbox: list[float] | None = None) -> dict[str, Any]:
    """The GeoParquet ``geo`` metadata for a manifest table (or for rows whose footprints
    span ``bbox`` = [xmin, ymin, xmax, ymax], lon/lat degrees)."""
    col: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": CRS.from_user_input("OGC:CRS84").to_json_dict(),
        "edges": "planar",
        "orientation": "counterclockwise",
        "covering": {
            "bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
        },
    }
    if table is not None and table.num_rows:
        bbox = _total_bbox(table.column("bbox"))
    if bbox is not None:
        col["bbox"] = bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": col}}


def _total_bbox(column: pa.ChunkedArray | pa.Array, start: list[float] | None = None) -> list[float]:
    """[xmin, ymin, xmax, ymax] over a ``bbox`` struct column (and ``start``)."""
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    out = [pc.min(column.field("xmin")).as_py(), pc.min(column.field("ymin")).as_py(),
           pc.max(column.field("xmax")).as_py(), pc.max(column.field("ymax")).as_py()]
    if start is not None:
        out = [min(out[0], start[0]), min(out[1], start[1]), max(out[2], start[2]), max(out[3], start[3])]
    return out


def rows_to_table(rows: list[dict[str, Any]], extra_metadata: dict[str, Any] | None = None) -> pa.Table:
    """Build the manifest table (with ``geo`` metadata) from manifest rows."""
    return _with_metadata(pa.Table.from_pylist(rows, schema=SCHEMA), extra_metadata)


def _with_metadata(table: pa.Table, extra_metadata: dict[str, Any] | None = None) -> pa.Table:
    meta = {b"geo": json.dumps(geo_metadata(table)).encode()}
    if extra_metadata:
        meta[b"eoforge"] = json.dumps(extra_metadata, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


@contextmanager
def atomic_parquet_writer(path: str | os.PathLike[str], schema: pa.Schema, fsync: bool = True
                          ) -> Iterator[pq.ParquetWriter]:
    """A ``ParquetWriter`` (zstd, statistics) on ``path.tmp``, renamed to ``path`` (after an
    fsync) when the block ends, so readers never see half a file; on an error the ``.tmp``
    file is removed and ``path`` is left as it was. For tables written in parts (row groups)."""
    with atomic_path(path, fsync=fsync) as tmp, \
            pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=True) as writer:
        yield writer


def write_parquet_atomic(table: pa.Table, path: Path, fsync: bool = True) -> None:
    """Write ``table`` to ``path`` via ``.tmp`` (+ fsync) + rename (readers never see half a file)."""
    with atomic_parquet_writer(path, table.schema, fsync=fsync) as writer:
        writer.write_table(table)


def write_part(rows: list[dict[str, Any]], path: str | os.PathLike[str], fsync: bool = True) -> Path:
    """Write one shard's manifest rows to ``path`` atomically (tmp file + rename)."""
    path = Path(path)
    write_parquet_atomic(rows_to_table(rows), path, fsync=fsync)
    return path


#: Rows per row group of the merged manifest (parts of ~64 rows are gathered up to this).
MERGE_ROW_GROUP = 65_536


def merge_parts(root: str | os.PathLike[str], extra_metadata: dict[str, Any] | None = None,
                fsync: bool = True) -> Path:
    """Merge ``DS/manifest-parts/**.parquet`` into ``DS/manifest.parquet``, streaming: memory
    holds one row group (:data:`MERGE_ROW_GROUP` rows), not the manifest.

    Rows are ordered by split, shard and position in the shard: part paths
    (``<split>/shard-NNNNNN.parquet``) sort like their shards, so concatenating the parts in
    path order is enough. A first pass reads each part's ``shard`` and ``bbox`` columns (the
    GeoParquet bbox goes into the file's metadata, written first); a part whose shard file is
    missing means an interrupted write and is an error (naming the part).
    """
    root = Path(root)
    parts = sorted((root / "manifest-parts").glob("*/*.parquet"))
    bbox: list[float] | None = None
    for part in parts:
        try:
            # ParquetFile, not read_table: the latter goes through pyarrow.dataset, whose
            # import pulls in pandas (0.6 s of every ingest's finalize, measured)
            t = pq.ParquetFile(part).read(columns=["shard", "bbox"])
        except (OSError, pa.ArrowInvalid) as err:
            raise ManifestError(f"{part}: unreadable manifest part: {err}") from err
        for shard in set(t.column("shard").to_pylist()):
            if not (root / shard).is_file():
                raise ManifestError(f"{part}: lists rows of {shard}, which does not exist")
        if t.num_rows:
            bbox = _total_bbox(t.column("bbox"), bbox)
    meta = {b"geo": json.dumps(geo_metadata(bbox=bbox)).encode()}
    if extra_metadata:
        meta[b"eoforge"] = json.dumps(extra_metadata, sort_keys=True).encode()
    schema = SCHEMA.with_metadata(meta)
    out = root / MANIFEST_NAME
    with atomic_parquet_writer(out, schema, fsync=fsync) as writer:
        pending: list[pa.Table] = []
        rows = 0
        for path in [*parts, None]:  # None: the end, flush what is pending
            if path is not None:
                try:
                    t = pq.ParquetFile(path).read().select(SCHEMA.names).cast(SCHEMA)
                except (OSError, pa.ArrowInvalid) as err:
                    raise ManifestError(f"{path}: unreadable manifest part: {err}") from err
                pending.append(t.replace_schema_metadata(meta))
                rows += t.num_rows
            if pending and (rows >= MERGE_ROW_GROUP or path is None):
                writer.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))
                pending, rows = [], 0
        if not parts:
            writer.write_table(schema.empty_table())
    return out


def manifest_rows(root: str | os.PathLike[str] | None) -> int:
    """Rows of a manifest (a dataset folder or the file) from its footer; 0 without one."""
    if root is None:
        return 0
    path = Path(root) / MANIFEST_NAME if Path(root).is_dir() else Path(root)
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


def iter_manifest(root: str | os.PathLike[str], columns: list[str], batch_rows: int = MERGE_ROW_GROUP
                  ) -> Iterable[pa.Table]:
    """The manifest's ``columns`` a batch of rows at a time (memory: one batch)."""
    path = Path(root)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowInvalid) as err:
        raise ManifestError(f"{path}: unreadable manifest: {err}") from err


def read_manifest(root: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read ``DS/manifest.parquet`` (or the file given), raising :class:`ManifestError` clearly."""
    path = Path(root)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (is this an eoforge dataset folder?)")
    try:
        return pq.ParquetFile(path).read(columns=columns)  # not read_table: see merge_parts
    except (OSError, pa.ArrowInvalid) as err:
        raise ManifestError(f"{path}: unreadable manifest: {err}") from err


def manifest_shards(table: pa.Table, split: str | None = None) -> list[str]:
    """The shard paths (relative to the dataset root) of a manifest table with ``shard`` and
    ``split`` columns, each once, in manifest order, optionally of one split."""
    seen: dict[str, None] = {}
    for shard, s in zip(table.column("shard").to_pylist(), table.column("split").to_pylist()):
        if split is None or s == split:
            seen.setdefault(shard, None)
    return list(seen)
