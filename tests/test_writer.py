"""ShardWriter: bounded, atomic, deterministic shards whose rows describe them exactly."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from eoforge.shards.keys import KeyRuleError
from eoforge.shards.reader import iter_dataset, read_samples
from eoforge.shards.schema import SchemaError
from eoforge.shards.writer import ShardWriter, part_path, shard_path, write_shard
from conftest import build_dataset, make_sample


def _write(root: Path, n: int, **kw) -> list[dict]:
    with ShardWriter(root, "train", **kw) as w:
        for i in range(n):
            w.write(make_sample(i))
    return w.rows


def test_same_input_gives_byte_identical_shards_and_parts(tmp_path):
    _write(tmp_path / "a", 5, max_samples=2)
    _write(tmp_path / "b", 5, max_samples=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 6  # 3 tars + 3 parts
    for rel in files_a:
        if rel.suffix == ".tar":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        else:
            assert pq.read_table(tmp_path / "a" / rel).equals(pq.read_table(tmp_path / "b" / rel))


def test_bounded_by_sample_count(tmp_path):
    rows = _write(tmp_path, 7, max_samples=3)
    counts = [sum(r["shard"] == s for r in rows) for s in sorted({r["shard"] for r in rows})]
    assert counts == [3, 3, 1]
    assert sorted(p.name for p in (tmp_path / "shards" / "train").iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"
    ]


def test_bounded_by_bytes(tmp_path):
    one = _write(tmp_path / "probe", 1)[0]
    limit = int(one["nbytes"] * 2.5) + 4096
    _write(tmp_path / "ds", 7, max_bytes=limit)
    tars = sorted((tmp_path / "ds" / "shards" / "train").glob("*.tar"))
    assert len(tars) >= 3
    for tar in tars:
        assert tar.stat().st_size <= limit + 1024 * 10  # + tar end-of-archive blocks
        with tarfile.open(tar) as t:
            assert len(t.getnames()) // 6 in (1, 2)


def test_no_samples_means_no_shard(tmp_path):
    with ShardWriter(tmp_path, "train") as w:
        pass
    assert w.rows == [] and not (tmp_path / "shards").exists()


def test_member_names_order_and_headers(tmp_path):
    _write(tmp_path, 1)
    with tarfile.open(shard_path(tmp_path, "train", 0)) as tar:
        infos = tar.getmembers()
    key = make_sample(0).key
    assert [i.name for i in infos] == [
        f"{key}.s2.npy.zst", f"{key}.s1.npy.zst", f"{key}.s1valid.npy.zst", f"{key}.scl.npy.zst",
        f"{key}.lc.npy.zst", f"{key}.json",
    ]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o444)}


def test_rows_hash_the_bytes_in_the_tar(tmp_path):
    rows = _write(tmp_path, 3, codec="npy")
    with tarfile.open(shard_path(tmp_path, "train", 0)) as tar:
        actual = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers()}
    for row in rows:
        for m in row["members"]:
            assert actual[f"{row['key']}.{m['name']}"] == m["sha256"]
    s2 = next(m for m in rows[0]["members"] if m["name"] == "s2.npy")
    assert s2["dtype"] == "uint16" and s2["shape"] == [2, 13, 32, 32]
    assert s2["nbytes"] == 2 * 13 * 32 * 32 * 2 + 128  # npy v1 header is 128 bytes here
    part = pq.read_table(part_path(tmp_path, "train", 0)).to_pylist()
    assert [r["key"] for r in part] == [r["key"] for r in rows]


@pytest.mark.parametrize("codec", ["npy", "zstd"])
def test_roundtrip_through_reader(tmp_path, codec):
    samples = [make_sample(i) for i in range(3)]
    with ShardWriter(tmp_path, "train", codec=codec) as w:
        for s in samples:
            w.write(s)
    out = list(read_samples([str(shard_path(tmp_path, "train", 0))]))
    assert [o["__key__"] for o in out] == [s.key for s in samples]
    for o, s in zip(out, samples):
        for name, arr in s.arrays.items():
            assert o[name].dtype == arr.dtype and o[name].shape == arr.shape
            assert np.array_equal(o[name], arr, equal_nan=arr.dtype.kind == "f"), name
        assert o["meta"] == json.loads(json.dumps(s.meta.to_dict()))


def test_failure_mid_shard_keeps_finished_shards_and_leaves_no_tmp(tmp_path):
    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with ShardWriter(tmp_path, "train", max_samples=2) as w:
            for i in range(3):
                w.write(make_sample(i))
            raise Boom
    train = tmp_path / "shards" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["shard-000000.tar"]
    assert len(list(read_samples([str(train / "shard-000000.tar")]))) == 2


def test_invalid_samples_are_rejected_before_writing(tmp_path):
    bad = make_sample(0)
    bad.arrays["s2"] = bad.arrays["s2"][:, :12]
    with pytest.raises(SchemaError, match="s2: 12 channels"):
        _ = ShardWriter(tmp_path, "train").write(bad)
    with pytest.raises(KeyRuleError, match="dot"):
        make_sample(0).meta.__class__(**{**make_sample(0).meta.__dict__, "key": "a.b"})
    short = make_sample(1)
    short.meta.time_steps = short.meta.time_steps[:1]
    with pytest.raises(SchemaError, match="metadata has 1"):
        ShardWriter(tmp_path, "train").write(short)
    assert not (tmp_path / "shards").exists()


def test_write_shard_exact_index_and_empty_marker(tmp_path):
    rows = write_shard(tmp_path, "val", 17, [make_sample(i, "val") for i in range(2)])
    assert {r["shard"] for r in rows} == {"shards/val/shard-000017.tar"}
    assert write_shard(tmp_path, "val", 18, []) == []
    assert not shard_path(tmp_path, "val", 18).exists()
    assert pq.read_table(part_path(tmp_path, "val", 18)).num_rows == 0


def test_iter_dataset_follows_manifest(tmp_path):
    build_dataset(tmp_path, n_train=5, n_val=2, max_samples=2)
    keys = [s["__key__"] for s in iter_dataset(tmp_path, "val")]
    assert keys == [make_sample(i).key for i in (5, 6)]
    assert len(list(iter_dataset(tmp_path))) == 7


# ------------------------------------------------------------------ member codecs


@pytest.mark.parametrize("arr", [
    np.arange(4 * 3 * 5 * 7, dtype=np.uint16).reshape(4, 3, 5, 7),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.zeros((0, 3), dtype=bool),
])
def test_zstd_members_decode_whole_or_one_entry_in_any_framing(arr):
    import zstandard

    from eoforge.shards.encoding import decode_array, decode_entry, encode_array, npy_bytes

    ours = encode_array(arr)
    raw = npy_bytes(arr)
    half = len(raw) // 2
    foreign = {
        "ours": ours,
        "one frame": zstandard.ZstdCompressor().compress(raw),
        "no content size (zstd reading a pipe)": zstandard.ZstdCompressor(write_content_size=False).compress(raw),
        "two frames (pzstd)": zstandard.ZstdCompressor().compress(raw[:half]) + zstandard.ZstdCompressor().compress(raw[half:]),
    }
    # what `zstd -d` sees: the frames of our member concatenate to the plain .npy
    assert zstandard.ZstdDecompressor().stream_reader(ours, read_across_frames=True).read() == raw
    for name, data in foreign.items():
        out = decode_array(data, "npy.zst")
        assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr), name
        assert out.flags.writeable, name
        out[...] = 0  # writable and not shared with anything else
        for i in range(arr.shape[0]):
            entry, shape = decode_entry(data, "npy.zst", i)
            assert shape == arr.shape and entry.flags.c_contiguous and entry.flags.writeable, (name, i)
            np.testing.assert_array_equal(entry, arr[i], err_msg=f"{name}, entry {i}")
    for i in range(arr.shape[0]):
        np.testing.assert_array_equal(decode_entry(raw, "npy", i)[0], arr[i])


def test_zstd_members_hold_one_frame_per_time_step_and_one_step_decodes_alone():
    """A loader that keeps step 2 of 4 decompresses that step's frame only: corrupting the
    frames of the other steps does not touch it (while a whole decode fails)."""
    import zstandard

    from eoforge.shards.encoding import DecodeError, _entry_frame, decode_array, decode_entry, encode_array, npy_bytes

    rng = np.random.default_rng(0)
    arr = rng.integers(1, 10_000, size=(4, 13, 40, 40), dtype=np.uint16)
    data = encode_array(arr)
    header = len(npy_bytes(arr)) - arr.nbytes
    ranges = [_entry_frame(data, i, header, arr[0].nbytes) for i in (1, 2, 3)]
    assert ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0] and ranges[2][1] == len(data)
    for i, (a, b) in zip((1, 2, 3), ranges):  # each range is one frame holding exactly that step
        assert zstandard.ZstdDecompressor().decompress(data[a:b]) == arr[i].tobytes()
    a, b = ranges[1]
    broken = bytearray(data)
    for lo, hi in (ranges[0], ranges[2]):  # garble the block bytes of steps 1 and 3
        broken[lo + 20 : hi - 20] = bytes(hi - lo - 40)
    broken = bytes(broken)
    np.testing.assert_array_equal(decode_entry(broken, "npy.zst", 2)[0], arr[2])
    with pytest.raises(DecodeError):
        decode_array(broken, "npy.zst")
    with pytest.raises(DecodeError, match="entry 4"):
        decode_entry(data, "npy.zst", 4)


def test_truncated_or_foreign_members_are_decode_errors_with_the_reason():
    import zstandard

    from eoforge.shards.encoding import DecodeError, decode_array, encode_array

    arr = np.arange(200_000, dtype=np.uint16).reshape(2, 100_000)
    data = encode_array(arr)
    with pytest.raises(DecodeError, match="truncated"):
        decode_array(data[: len(data) // 2], "npy.zst")
    with pytest.raises(DecodeError, match="NUMPY magic"):
        decode_array(zstandard.ZstdCompressor().compress(b"not an array"), "npy.zst")
    with pytest.raises(DecodeError, match="object arrays"):
        decode_array(zstandard.ZstdCompressor().compress(
            b"\x93NUMPY\x01\x00" + (118).to_bytes(2, "little")
            + b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n"), "npy.zst")


def test_a_member_assembled_from_entry_frames_is_encode_array_and_old_framing_still_decodes():
    """Ingest compresses each (tile, time step) when it reads it and concatenates the frames
    later: the bytes must be those of ``encode_array``; members of eoforge 0.1 (the header
    inside the first entry's frame) decode whole and by entry."""
    import zstandard

    from eoforge.shards.encoding import (
        decode_array, decode_entry, decode_entry_bytes, encode_array, encode_entry, member_header, npy_bytes,
    )

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 5000, size=(3, 13, 24, 24), dtype=np.uint16)
    for codec, suffix in (("zstd", "npy.zst"), ("npy", "npy")):
        frames = [encode_entry(np.ascontiguousarray(a), codec) for a in arr]
        assembled = member_header(arr.dtype, arr.shape, codec) + b"".join(frames)
        assert assembled == encode_array(arr, codec)
        np.testing.assert_array_equal(decode_array(assembled, suffix), arr)
        np.testing.assert_array_equal(decode_entry_bytes(frames[1], arr.dtype, arr.shape[1:], codec), arr[1])
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    assert npy_bytes(arr) == buf.getvalue()  # plain .npy, byte for byte
    raw = npy_bytes(arr)
    header = len(raw) - arr.nbytes
    entry = arr[0].nbytes
    c = zstandard.ZstdCompressor(level=1)
    old = c.compress(raw[: header + entry]) + b"".join(c.compress(raw[header + i * entry: header + (i + 1) * entry])
                                                      for i in (1, 2))
    np.testing.assert_array_equal(decode_array(old, "npy.zst"), arr)
    for i in range(3):
        np.testing.assert_array_equal(decode_entry(old, "npy.zst", i)[0], arr[i])


def test_tar_headers_are_tarfiles_bytes(tmp_path):
    import tarfile

    from eoforge.shards.writer import _tar_header

    for name, size in [("32n_00001_00002.s2.npy.zst", 1234567), ("a.json", 0), ("x" * 100, 8**11 - 1)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
        assert _tar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    with pytest.raises(ValueError, match="longer than 100"):
        _tar_header("y" * 101, 1)
    # a whole shard is the archive tarfile writes for the same members (end blocks and padding included)
    _write(tmp_path, 3)
    tar = shard_path(tmp_path, "train", 0)
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    again = tmp_path / "again.tar"
    with tarfile.open(again, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m, data in members:
            import io

            dst.addfile(m, io.BytesIO(data))
    assert again.read_bytes() == tar.read_bytes()
