"""`eoforge shards verify` accepts a whole dataset and names the shard and key of each defect."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from eoforge.cli import main
from eoforge.shards.manifest import read_manifest, rows_to_table
from eoforge.shards.verify import verify_dataset

SHARD = "shards/train/shard-000001.tar"


def _verify(ds: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["shards", "verify", str(ds), "--workers", "1"])
    return result.exit_code, result.output


def _rewrite(tar_path: Path, keep=lambda info: True, extra: list[tuple[str, bytes]] = ()) -> None:
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if keep(m)]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as dst:
        for info, data in members:
            dst.addfile(info, io.BytesIO(data))
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def _first_key(ds: Path, shard: str = SHARD) -> str:
    return next(r["key"] for r in read_manifest(ds, ["key", "shard"]).to_pylist() if r["shard"] == shard)


def test_untouched_dataset_passes(built_dataset):
    code, out = _verify(built_dataset)
    assert code == 0, out
    assert "4 shards, 12 samples, 72 members checked: OK" in out


def test_parallel_and_serial_agree(dataset_copy):
    path = dataset_copy / SHARD
    path.write_bytes(path.read_bytes()[:-12000])  # the last ~10 kB are tar padding: cut into data
    serial, parallel = verify_dataset(dataset_copy, workers=1), verify_dataset(dataset_copy, workers=2)
    assert serial.problems and sorted(map(str, serial.problems)) == sorted(map(str, parallel.problems))


def test_truncated_tar(dataset_copy):
    path = dataset_copy / SHARD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD}: unreadable tar (truncated or corrupt)" in out
    assert "missing member(s)" in out


def test_one_flipped_byte_in_a_member(dataset_copy):
    path = dataset_copy / SHARD
    key = _first_key(dataset_copy)
    with tarfile.open(path) as tar:
        info = tar.getmember(f"{key}.s2.npy.zst")
    data = bytearray(path.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD} [{key}]: s2.npy.zst: content hash differs from the manifest" in out


def test_one_flipped_byte_in_a_header(dataset_copy):
    path = dataset_copy / SHARD
    data = bytearray(path.read_bytes())
    data[5] ^= 0x20  # inside the first member's name: the header checksum no longer matches
    path.write_bytes(bytes(data))
    code, out = _verify(dataset_copy)
    assert code == 1 and f"{SHARD}: unreadable tar" in out


def test_member_deleted(dataset_copy):
    key = _first_key(dataset_copy)
    _rewrite(dataset_copy / SHARD, keep=lambda m: m.name != f"{key}.s1.npy.zst")
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD} [{key}]: missing member(s) s1.npy.zst" in out


def test_shard_of_a_manifest_row_missing(dataset_copy):
    (dataset_copy / SHARD).unlink()
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD}: shard file is missing (4 manifest rows)" in out


def test_extra_member_and_member_without_row(dataset_copy):
    key = _first_key(dataset_copy)
    _rewrite(dataset_copy / SHARD, extra=[(f"{key}.notes.txt", b"hi"), ("ghost.json", b"{}")])
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD} [{key}]: extra member 'notes.txt' not in the manifest" in out
    assert f"{SHARD} [ghost]: member 'json' has no manifest row" in out


def test_duplicate_key_in_tar_and_in_manifest(dataset_copy):
    key = _first_key(dataset_copy)
    with tarfile.open(dataset_copy / SHARD) as tar:
        again = tar.extractfile(f"{key}.json").read()
    _rewrite(dataset_copy / SHARD, extra=[(f"{key}.json", again)])
    rows = read_manifest(dataset_copy).to_pylist()
    pq.write_table(rows_to_table(rows + rows[:1]), dataset_copy / "manifest.parquet")
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"{SHARD} [{key}]: duplicate member 'json'" in out
    assert f"manifest.parquet [{rows[0]['key']}]: key appears in 2 manifest rows" in out


def test_shard_not_in_manifest_and_leftover_tmp(dataset_copy):
    stray = dataset_copy / "shards" / "train" / "shard-000099.tar"
    stray.write_bytes((dataset_copy / SHARD).read_bytes())
    (dataset_copy / "shards" / "train" / "shard-000100.tar.tmp").write_bytes(b"")
    code, out = _verify(dataset_copy)
    assert code == 1
    assert "shards/train/shard-000099.tar: shard file is not listed in the manifest" in out
    assert "warning: shards/train/shard-000100.tar.tmp: leftover temporary file" in out


def test_missing_manifest(tmp_path):
    code, out = _verify(tmp_path)
    assert code == 1 and "no manifest" in out


@pytest.mark.parametrize("field", ["shape", "dtype"])
def test_manifest_shape_or_dtype_disagrees_with_array(dataset_copy, field):
    rows = read_manifest(dataset_copy).to_pylist()
    member = rows[5]["members"][0]
    member[field] = [1, 2, 3] if field == "shape" else "int8"
    pq.write_table(rows_to_table(rows), dataset_copy / "manifest.parquet")
    code, out = _verify(dataset_copy)
    assert code == 1
    assert f"[{rows[5]['key']}]: s2: decoded uint16[2, 13, 32, 32], manifest says" in out
