"""The scene record: one product as scan found it, a row of ``DS/scenes.parquet``; and the
records it is made of (:class:`FileHeader` per file, :class:`BandFile` per band).

A scene is an S2 or S1 product or a land-cover raster, however it came (a SAFE, a folder
of per-band COGs, a multiband file, a STAC item). Scan makes one :class:`Scene` per
usable product (:func:`~eoforge.ingest.scan.scan`); planning reads the scenes as columns
(:class:`~eoforge.ingest.plan.Scenes`, from :func:`scenes_table` or ``scenes.parquet``);
each read and shard task gets the scenes whose pixels it touches (:mod:`.pieces`,
:mod:`.materialize`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: ``scenes.parquet``: one row per scene, in scene-number order. ``bands`` is the band
#: table as JSON text (``{band: {path, index, res, nodata, dtype}}``) so the table stays flat.
SCENES_SCHEMA = pa.schema([
    ("sensor", pa.string()), ("product_id", pa.string()), ("location", pa.string()), ("level", pa.string()),
    ("datetime", pa.string()), ("baseline", pa.string()), ("dn_offset", pa.int64()), ("offset_rule", pa.string()),
    ("relative_orbit", pa.int64()), ("orbit_direction", pa.string()), ("orbit_rule", pa.string()),
    ("mgrs_tile", pa.string()), ("cloud_percentage", pa.float64()), ("s1_unit", pa.string()),
    ("taxonomy", pa.string()), ("crs_wkt", pa.string()), ("epsg", pa.int64()), ("bounds", pa.list_(pa.float64())),
    ("footprint", pa.binary()), ("paths", pa.list_(pa.string())), ("nbytes", pa.int64()), ("sidecar", pa.string()),
    ("from_item", pa.bool_()), ("bands", pa.string()), ("valid_profile", pa.binary()),
    ("decode_rows", pa.binary()), ("source_id", pa.string()), ("scene", pa.int64()),
])


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What scan knows of one raster file before grouping it into a scene: its header, read
    by GDAL (:func:`~eoforge.ingest.scan.read_header`) or taken from the STAC item that lists
    it (:func:`~eoforge.ingest.stac.item_product`), or why it cannot be used.

    Attributes:
        path: the file or URL.
        error: why the file cannot be used (then the other fields are left empty).
        crs_wkt, epsg: its CRS (``epsg`` None when it has no EPSG code).
        transform: the affine pixel-to-CRS transform (a, b, c, d, e, f) as rasterio's.
        width, height, count: size in pixels and number of bands.
        dtypes, descriptions: per band, the numpy dtype name and the band description ("" if none).
        nodata: the nodata value, None when it declares none.
        tags: the file's GDAL metadata (values under 2000 characters).
        res: pixel size (x, y) in CRS units; bounds: (left, bottom, right, top) in the CRS.
        footprint: WKB lon/lat polygon of ``bounds`` (None when a STAC item gives the outline).
        size: bytes on disk (None for URLs when unknown).
    """

    path: str
    error: str | None = None
    crs_wkt: str = ""
    epsg: int | None = None
    transform: tuple[float, ...] = ()
    width: int = 0
    height: int = 0
    count: int = 0
    dtypes: tuple[str, ...] = ()
    nodata: float | None = None
    descriptions: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    res: tuple[float, float] = (0.0, 0.0)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    footprint: bytes | None = None
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The header as plain values (tuples, bytes), as the scan inventory stores it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileHeader:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        for name in ("transform", "dtypes", "descriptions", "res", "bounds"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BandFile:
    """Where one band of a scene is read from.

    Attributes:
        path: the file or URL (as given; GDAL opens it through :func:`~eoforge.ingest.scan.gdal_path`).
        index: the band's 1-based index in that file.
        res: the file's pixel size (x, y) in its CRS units, as rasterio's ``src.res``.
        nodata: the file's nodata value, None when it declares none.
        dtype: the band's numpy dtype name (``"uint16"``, ``"float32"``).
    """

    path: str
    index: int
    res: tuple[float, float]
    nodata: float | None
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "index": self.index, "res": list(self.res), "nodata": self.nodata,
                "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BandFile:
        return cls(d["path"], int(d["index"]), (float(d["res"][0]), float(d["res"][1])),
                   None if d["nodata"] is None else float(d["nodata"]), d["dtype"])


@dataclass(frozen=True, slots=True)
class Scene:
    """One product (see the module docstring).

    Attributes:
        sensor: ``"s2"``, ``"s1"`` or ``"landcover"``.
        product_id: the product's name (an S2 product URI without ``.SAFE``, an S1 product
            name, a land-cover raster's stem or STAC item id).
        location: the product's folder, file or STAC item: what error rows name.
        datetime: acquisition start, ISO 8601 UTC (``2023-06-14T10:30:31Z``); None for a
            land-cover raster without one.
        crs_wkt, epsg: the files' CRS (one per product; ``epsg`` None when it has no code).
        bounds: (left, bottom, right, top) in that CRS, of the 10 m bands when there are any.
        footprint: WKB polygon in lon/lat (EPSG:4326) of the data, at least the raster's box.
        paths: every file of the product, sorted.
        bands: band name (``B1`` .. ``B12``, ``B8A``, ``SCL``, ``VV``, ``VH``, ``class``) ->
            where it is read from; per band the file at its native pixel size.
        level: ``"L1C"`` / ``"L2A"`` for S2.
        baseline: the S2 processing baseline (``"05.09"``), when known.
        dn_offset: DN to subtract from S2 reflectances (1000 from baseline 04.00 on).
        offset_rule: how ``dn_offset`` was decided (sidecar, baseline or date).
        relative_orbit: S2 relative orbit (R001-R143) or S1 relative orbit number.
        orbit_direction: S1 ``"ascending"`` / ``"descending"``; ``orbit_rule``: from metadata
            or from local solar time.
        mgrs_tile: the S2 product's MGRS tile (``"32TQR"``).
        cloud_percentage: the product's cloud cover in percent, from its metadata.
        s1_unit: ``"db"`` or ``"linear"`` (stated by metadata or found by the probe).
        taxonomy: a land-cover raster's class taxonomy (:data:`~eoforge.shards.schema.TAXONOMIES`).
        nbytes: bytes of all files (0 for URLs).
        sidecar: the metadata file read (``MTD_MSIL2A.xml``, a STAC JSON), if any.
        from_item: made from a STAC item that gave every file's grid (probed less).
        valid_profile: S2: the percent of valid pixels in each of 64 equal bands of rows,
            north to south, one byte each, from the scan probe's coarse read of B1 (None when
            not probed, e.g. a scene from a STAC item).
        decode_rows: S2: the estimated time to decode each block row of its band files, float32
            triples (first row, end row as fractions of the height from the north, ms;
            :func:`~eoforge.ingest.blocks.decode_estimate`, from the compressed sizes in the files'
            headers; None for remote files and other formats).
        source_id: the product's name in its file names when its metadata renamed it.
        number: the scene number, its row in ``scenes.parquet``; plan rows and read tasks
            refer to scenes by it (-1 until scan numbers the scenes it keeps).
    """

    sensor: str
    product_id: str
    location: str
    datetime: str | None
    crs_wkt: str
    epsg: int | None
    bounds: tuple[float, float, float, float]
    footprint: bytes
    paths: tuple[str, ...]
    bands: Mapping[str, BandFile] = field(default_factory=dict)
    level: str | None = None
    baseline: str | None = None
    dn_offset: int = 0
    offset_rule: str | None = None
    relative_orbit: int | None = None
    orbit_direction: str | None = None
    orbit_rule: str | None = None
    mgrs_tile: str | None = None
    cloud_percentage: float | None = None
    s1_unit: str | None = None
    taxonomy: str | None = None
    nbytes: int = 0
    sidecar: str | None = None
    from_item: bool = False
    valid_profile: bytes | None = None
    decode_rows: bytes | None = None
    source_id: str | None = None
    number: int = -1

    def replace(self, **changes: Any) -> Scene:
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """The scene as a ``scenes.parquet`` row (:data:`SCENES_SCHEMA`)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "number"}
        row.update(bounds=list(self.bounds), paths=list(self.paths), scene=self.number,
                   bands=json.dumps({b: f.to_dict() for b, f in self.bands.items()}, sort_keys=True))
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Scene:
        """A scene from a ``scenes.parquet`` row, or from a row scan is still building
        (``bands`` then holds :class:`BandFile` s); ``scene`` becomes :attr:`number`."""
        bands = row.get("bands") or {}
        if isinstance(bands, str):
            bands = json.loads(bands)
        names = {f.name for f in dataclasses.fields(cls)} - {"bands", "bounds", "paths", "number"}
        return cls(**{k: row[k] for k in names if k in row},
                   bands={b: f if isinstance(f, BandFile) else BandFile.from_dict(f) for b, f in bands.items()},
                   bounds=tuple(row["bounds"]), paths=tuple(row["paths"]),
                   number=-1 if row.get("scene") is None else int(row["scene"]))


def scenes_table(scenes: Iterable[Scene]) -> pa.Table:
    """Scenes as a ``scenes.parquet`` table (:data:`SCENES_SCHEMA`)."""
    return pa.Table.from_pylist([s.to_row() for s in scenes], schema=SCENES_SCHEMA)
