"""``eoforge embed`` on the ingested demo dataset with a tiny exported ViT: the GeoParquet opens in
DuckDB and GeoPandas, its vectors are the eval feature extractor's, per-step rows, float16,
resume after a kill, and a different model into the same folder is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import torch
from _eval_helpers import export_tiny_vit
from click.testing import CliRunner

from eoforge.cli import main
from eoforge.train.model_format import ModelFormatError, load_backbone
from eoforge.eval.embed import META_NAME, SUCCESS_NAME, EmbedConfig, EmbedError, embed
from eoforge.eval.features import FeatureExtractor, extract_features
from eoforge.eval.inputs import input_spec
from eoforge.shards.manifest import read_manifest
from eoforge.shards.reader import iter_dataset

BATCH = 8
PART = 16  # samples per part: a multiple of BATCH, so batches line up with eval's batching


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_vit(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture(scope="module")
def emb(demo_ingest, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb"
    embed(model, demo_ingest.out, out, EmbedConfig(rows_per_part=PART, batch_size=BATCH, device="cpu",
                                                   progress=False))
    return out


def _reference(weights: Path, data: Path, per_step: bool = False) -> tuple[list[tuple[str, int]], torch.Tensor]:
    """The eval feature extractor's pooled features over the same samples (and steps)."""
    backbone, info = load_backbone(weights)
    spec = input_spec(info, data)
    ex = FeatureExtractor(backbone, "cls", "cpu")

    def items():
        for s in iter_dataset(data):
            for t in range(len(s["s2"])) if per_step else (spec.time_step(s),):
                yield spec.prepare(s, t), (s["__key__"], t)

    feats, payloads = extract_features({"m": ex}, items(), BATCH)
    return payloads, feats["m"]["pooled"]


def _vectors(table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def test_embed_equals_eval_features_and_opens_in_duckdb_and_geopandas(demo_ingest, model: Path, emb: Path) -> None:
    import duckdb
    import geopandas as gpd

    data = demo_ingest.out
    manifest = read_manifest(data, columns=["key", "tile_id", "split", "geometry", "datetimes"]).to_pylist()
    meta = json.loads((emb / META_NAME).read_text())
    assert meta["complete"] and (emb / SUCCESS_NAME).is_file() and meta["time_step"] == "first"
    assert meta["parts"] == len(list(emb.glob("part-*.parquet"))) == -(-len(manifest) // PART) > 1

    table = pq.read_table(sorted(emb.glob("part-*.parquet")))
    payloads, ref = _reference(model, data)
    assert table.column("key").to_pylist() == [k for k, _ in payloads] == [r["key"] for r in manifest]
    assert np.array_equal(_vectors(table), ref.numpy())  # bit-identical to eval's features
    assert set(table.column("model_sha256").to_pylist()) == {meta["model"]["weights_sha256"]}
    assert table.column("datetime").to_pylist() == [r["datetimes"][0] for r in manifest]
    assert table.column("geometry").to_pylist() == [r["geometry"] for r in manifest]

    # DuckDB: the nearest neighbours of one tile by cosine similarity, as the README shows
    tile = manifest[0]["tile_id"]
    rows = duckdb.sql(f"""
        WITH e AS (SELECT * FROM read_parquet('{emb}/*.parquet'))
        SELECT b.tile_id, list_cosine_similarity(a.embedding, b.embedding) AS sim
        FROM e a JOIN e b ON a.tile_id = '{tile}' AND b.tile_id <> a.tile_id
        ORDER BY sim DESC LIMIT 5""").fetchall()
    v = ref.numpy().astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v[1:] @ v[0]
    assert [r[0] for r in rows] == [manifest[1 + i]["tile_id"] for i in np.argsort(-sims)[:5]]

    # GeoPandas: the folder reads as one GeoDataFrame in lon/lat with the manifest's footprints
    gdf = gpd.read_parquet(emb)
    assert len(gdf) == len(manifest) and gdf.crs.equals("OGC:CRS84")
    assert gdf.geometry.iloc[0].equals(shapely.from_wkb(manifest[0]["geometry"]))
    gdf["dim0"] = gdf["embedding"].map(lambda e: float(e[0]))
    assert np.allclose(gdf["dim0"].to_numpy(), ref[:, 0].numpy())


def test_per_step_float16_rows(demo_ingest, model: Path, tmp_path: Path) -> None:
    data = demo_ingest.out
    result = embed(model, data, tmp_path / "emb", EmbedConfig(per_step=True, dtype="float16", rows_per_part=PART,
                                                              batch_size=BATCH, device="cpu", progress=False))
    manifest = read_manifest(data, columns=["key", "datetimes", "num_time_steps"]).to_pylist()
    table = pq.read_table(result.parts)
    assert result.rows == table.num_rows == sum(r["num_time_steps"] for r in manifest)
    assert str(table.schema.field("embedding").type.value_type) == "halffloat"
    expected = [(r["key"], t, r["datetimes"][t]) for r in manifest for t in range(r["num_time_steps"])]
    got = list(zip(*(table.column(c).to_pylist() for c in ("key", "time_step", "datetime"))))
    assert got == expected
    _, ref = _reference(model, data, per_step=True)
    assert np.array_equal(_vectors(table), ref.numpy().astype(np.float16))


def test_rerun_after_kill_keeps_finished_parts(demo_ingest, model: Path, emb: Path, tmp_path: Path) -> None:
    import shutil

    out = Path(shutil.copytree(emb, tmp_path / "emb"))
    parts = sorted(out.glob("part-*.parquet"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in parts}
    # a kill while the last part was being written: it is missing, its .tmp half-written
    parts[-1].unlink()
    (out / (parts[-1].name + ".tmp")).write_bytes(b"PAR1 half")
    (out / SUCCESS_NAME).unlink()
    old = 1_000_000_000 * 10**9
    for p in parts[:-1]:
        os.utime(p, ns=(old, old))
    config = EmbedConfig(rows_per_part=PART, batch_size=BATCH, device="cpu", progress=False)
    result = embed(model, demo_ingest.out, out, config)
    assert (result.computed_parts, result.kept_parts) == (1, len(parts) - 1)
    assert all(p.stat().st_mtime_ns == old for p in parts[:-1])  # untouched
    assert parts[-1].read_bytes() == before[parts[-1].name][1]  # recomputed identically
    assert not list(out.glob("*.tmp")) and (out / SUCCESS_NAME).is_file()
    assert embed(model, demo_ingest.out, out, config).computed_parts == 0  # complete: nothing to do


def test_other_model_or_settings_into_same_folder_is_refused(demo_ingest, emb: Path, tmp_path: Path) -> None:
    other = export_tiny_vit(tmp_path / "other.safetensors", seed=7)
    before = {p.name: p.stat().st_mtime_ns for p in emb.iterdir()}
    with pytest.raises(EmbedError, match=r"_embed\.json: .*model_sha256.*new --out"):
        embed(other, demo_ingest.out, emb, EmbedConfig(rows_per_part=PART, device="cpu", progress=False))
    res = CliRunner().invoke(main, ["embed", "--weights", str(other), "--data", str(demo_ingest.out), "--out",
                                    str(emb), "--rows-per-part", str(PART), "--dtype", "float16", "--quiet"])
    assert res.exit_code == 1 and "dtype" in res.output and "model_sha256" in res.output, res.output
    assert {p.name: p.stat().st_mtime_ns for p in emb.iterdir()} == before  # nothing touched


def test_clear_errors_name_the_file(demo_ingest, model: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(model.read_bytes())
    with pytest.raises(ModelFormatError, match="bare.safetensors: no bare.json"):
        embed(bare, demo_ingest.out, tmp_path / "a")
    (tmp_path / "ds").mkdir()
    with pytest.raises(EmbedError, match=r"ds/manifest\.parquet: no manifest"):
        embed(model, tmp_path / "ds", tmp_path / "b")
    with pytest.raises(EmbedError, match="no samples in split 'test'"):
        embed(model, demo_ingest.out, tmp_path / "c", EmbedConfig(split="test", progress=False))
    res = CliRunner().invoke(main, ["embed", "--weights", str(tmp_path / "none.safetensors"), "--data",
                                    str(demo_ingest.out), "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "none.safetensors: no such weights file" in res.output, res.output


def test_cli_split_and_s1_model_reads_first_step_with_s1(demo_ingest, tmp_path: Path) -> None:
    s1 = export_tiny_vit(tmp_path / "s1.safetensors", in_chans=2)
    res = CliRunner().invoke(main, ["embed", "--weights", str(s1), "--data", str(demo_ingest.out), "--out",
                                    str(tmp_path / "emb"), "--split", "val", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "emb" / META_NAME).read_text())
    assert meta["time_step"] == "first with S1 data" and meta["settings"]["split"] == "val"
    table = pq.read_table(tmp_path / "emb" / "part-000000.parquet")
    assert set(table.column("split").to_pylist()) == {"val"}
    samples = {s["__key__"]: s for s in iter_dataset(demo_ingest.out, "val")}
    for key, t in zip(table.column("key").to_pylist(), table.column("time_step").to_pylist()):
        assert samples[key]["s1valid"][t].any() and not samples[key]["s1valid"][:t].any()
    assert meta["rows"] + sum(meta["skipped"].values()) == len(samples)
