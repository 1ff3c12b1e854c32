"""The manifest is valid GeoParquet 1.x, its footprints are right, and users can query it."""

from __future__ import annotations

import json

import duckdb
import geopandas
import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import CRS, Transformer

from eoforge.shards.manifest import ManifestError, merge_parts, read_manifest
from eoforge.shards.writer import shard_path

# GeoParquet 1.x metadata schema (after format-specs/schema.json of the specification),
# with the version pinned to 1.x releases and PROJJSON checked as an object with a type.
GEOPARQUET_1X = {
    "type": "object",
    "required": ["version", "primary_column", "columns"],
    "properties": {
        "version": {"type": "string", "pattern": r"^1\.\d+\.\d+$"},
        "primary_column": {"type": "string", "minLength": 1},
        "columns": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["encoding", "geometry_types"],
                "properties": {
                    "encoding": {"const": "WKB"},
                    "geometry_types": {
                        "type": "array",
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": "^(GeometryCollection|(Multi)?(Point|LineString|Polygon))( Z)?$"},
                    },
                    "crs": {"oneOf": [{"type": "object", "required": ["type"]}, {"type": "null"}]},
                    "edges": {"enum": ["planar", "spherical"]},
                    "orientation": {"const": "counterclockwise"},
                    "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 6},
                    "covering": {
                        "type": "object",
                        "properties": {
                            "bbox": {
                                "type": "object",
                                "required": ["xmin", "xmax", "ymin", "ymax"],
                                "additionalProperties": {
                                    "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string"}
                                },
                            }
                        },
                    },
                },
            },
        },
    },
}


def test_geo_metadata_validates_as_geoparquet_1x(built_dataset):
    meta = pq.read_schema(built_dataset / "manifest.parquet").metadata
    geo = json.loads(meta[b"geo"])
    jsonschema.validate(geo, GEOPARQUET_1X)
    col = geo["columns"][geo["primary_column"]]
    assert CRS.from_json_dict(col["crs"]).equals(CRS.from_user_input("OGC:CRS84"))
    table = read_manifest(built_dataset)
    assert table.schema.field("geometry").type == "binary"
    # the file-level bbox covers every footprint; covering columns exist
    x0, y0, x1, y1 = col["bbox"]
    for wkb, bb in zip(table.column("geometry").to_pylist(), table.column("bbox").to_pylist()):
        g = shapely.from_wkb(wkb)
        assert g.is_valid and g.exterior.is_ccw
        assert np.allclose(g.bounds, (bb["xmin"], bb["ymin"], bb["xmax"], bb["ymax"]))
        assert x0 <= bb["xmin"] and bb["xmax"] <= x1 and y0 <= bb["ymin"] and bb["ymax"] <= y1


def test_footprint_matches_independent_reprojection(built_dataset):
    row = read_manifest(built_dataset).slice(0, 1).to_pylist()[0]
    to_ll = Transformer.from_crs(row["epsg"], 4326, always_xy=True)
    a, b, c, d, e, f = row["transform"]
    corners = [(c, f), (c + a * row["width"], f), (c + a * row["width"], f + e * row["height"]), (c, f + e * row["height"])]
    poly = shapely.from_wkb(row["geometry"])
    for x, y in corners:
        lon, lat = to_ll.transform(x, y)
        assert poly.exterior.distance(shapely.Point(lon, lat)) < 1e-9
    assert poly.contains(shapely.Point(row["lon"], row["lat"]))
    assert (row["minx"], row["maxy"]) == (c, f)


def test_opens_in_geopandas_and_duckdb(built_dataset):
    gdf = geopandas.read_parquet(built_dataset / "manifest.parquet")
    assert len(gdf) == 12 and gdf.crs.equals(CRS.from_user_input("OGC:CRS84"))
    assert gdf.geometry.iloc[0].geom_type == "Polygon"
    path = str(built_dataset / "manifest.parquet")
    per_split = duckdb.sql(f"SELECT split, count(*) AS n FROM '{path}' GROUP BY split ORDER BY split").fetchall()
    assert per_split == [("train", 9), ("val", 3)]
    # the README's query: clear samples containing cropland, one row per time step
    n = duckdb.sql(
        f"""SELECT count(*) FROM (
              SELECT key, unnest(cloud_fraction) AS cloud FROM '{path}'
              WHERE list_contains(labels, 'cropland')) WHERE cloud < 0.1"""
    ).fetchall()[0][0]
    expected = sum(r["num_time_steps"] for r in read_manifest(built_dataset).to_pylist() if "cropland" in r["labels"])
    assert n == expected > 0


def test_rows_follow_split_shard_and_tar_order(built_dataset):
    t = read_manifest(built_dataset, columns=["key", "split", "shard"]).to_pylist()
    assert [r["split"] for r in t] == ["train"] * 9 + ["val"] * 3
    assert [r["shard"] for r in t[:5]] == ["shards/train/shard-000000.tar"] * 4 + ["shards/train/shard-000001.tar"]


def test_merge_refuses_a_part_without_its_shard(dataset_copy):
    shard_path(dataset_copy, "train", 1).unlink()
    with pytest.raises(ManifestError, match=r"shard-000001.parquet: lists rows of shards/train/shard-000001.tar"):
        merge_parts(dataset_copy)


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="manifest.parquet: unreadable"):
        read_manifest(tmp_path)


def test_merge_streams_row_groups_and_keeps_the_rows_and_geo_bbox(dataset_copy, monkeypatch):
    import json

    import pyarrow.parquet as pq

    from eoforge.shards import manifest as M
    from eoforge.shards.inspect import LABEL_COLUMNS, label_distribution

    whole = read_manifest(dataset_copy)
    monkeypatch.setattr(M, "MERGE_ROW_GROUP", 5)  # parts of 4 rows: row groups of 8 and the rest
    merge_parts(dataset_copy)
    streamed = read_manifest(dataset_copy)
    assert streamed.equals(whole)
    assert pq.ParquetFile(dataset_copy / "manifest.parquet").metadata.num_row_groups > 1
    geo = json.loads(streamed.schema.metadata[b"geo"])["columns"]["geometry"]["bbox"]
    bbox = whole.column("bbox").to_pylist()
    assert geo == [min(b["xmin"] for b in bbox), min(b["ymin"] for b in bbox),
                   max(b["xmax"] for b in bbox), max(b["ymax"] for b in bbox)]
    # the label distribution from batches of 3 rows equals the one from the whole table
    batches = list(M.iter_manifest(dataset_copy, LABEL_COLUMNS, batch_rows=3))
    assert len(batches) == 4
    assert label_distribution(batches) == label_distribution(whole)


def test_coverage_map_is_a_density_raster_for_large_datasets(tmp_path):
    import numpy as np
    import pyarrow as pa

    from eoforge.shards.plots import COVERAGE_POLYGONS_MAX, coverage_counts, coverage_map

    n = COVERAGE_POLYGONS_MAX + 1000
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(10, 14, n), rng.uniform(44, 46, n)
    split = np.where(rng.random(n) < 0.1, "val", "train")
    table = pa.table({"lon": lon, "lat": lat, "split": split})
    c = coverage_counts(lambda: [table.slice(0, 3000), table.slice(3000)], cells=40)
    assert c["counts"].sum() == n and c["samples"] == n
    assert c["splits"] == {"train": int((split == "train").sum()), "val": int((split == "val").sum())}
    assert c["counts"].shape[1] == 40  # the longer side on the ground: 4° of longitude at 45° N > 2° of latitude
    # the sample at the south-west corner is counted in cell (0, 0)
    corner = int(np.argmin(lon + lat))
    lon0, _, lat0, _ = c["extent"]
    assert (lon[corner] - lon0) * c["aspect"] < c["cell_km"] / 111.32 and (lat[corner] - lat0) < c["cell_km"] / 111.32
    assert c["counts"][0].sum() + c["counts"][:, 0].sum() > 0
    assert coverage_map(table, tmp_path / "coverage.png").stat().st_size > 10_000
