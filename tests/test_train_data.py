"""The training data path (`train/data`): shard lists, normalisation, the loader, on real shards."""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import random
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from eoforge.shards.reader import iter_dataset, shard_urls
from eoforge.shards.stats import compute_stats
from eoforge.train.data.loader import (
    DataConfig, build_loader, identity_views, interleave, read_shard, SkipCounter,
)
from eoforge.shards.normalize import band_norm, normalize_s1, normalize_s2, read_stats
from eoforge.train.data.shardlists import (
    check_enough_shards, join_url, resampled, resolve_shards, split_by_rank, split_by_worker,
)

from conftest import build_dataset

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ds(built_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``built_dataset`` (train: 9 samples in 3 shards of 4, 4, 1) plus its stats.json."""
    root = Path(shutil.copytree(built_dataset, tmp_path_factory.mktemp("train_data") / "ds"))
    compute_stats(root, workers=1)
    return root


@pytest.fixture
def ds_copy(dataset_copy: Path, ds: Path) -> Path:
    """A private copy to corrupt, with the stats of ``ds``."""
    shutil.copy(ds / "stats.json", dataset_copy / "stats.json")
    return dataset_copy


@pytest.fixture(scope="module")
def uneven(ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 10 samples in shards of 3, 3, 3, 1."""
    root = build_dataset(tmp_path_factory.mktemp("uneven") / "ds", n_train=10, n_val=1, max_samples=3)
    shutil.copy(ds / "stats.json", root / "stats.json")
    return root


def crop_views(inputs: dict, generator: torch.Generator) -> dict:
    """A random 16 px crop + a random offset: exercises the per-sample generator."""
    x = inputs["s2"]
    i, j = torch.randint(0, x.shape[-1] - 16 + 1, (2,), generator=generator).tolist()
    return {"x": x[:, i : i + 16, j : j + 16] + torch.rand(1, generator=generator), "labels": inputs["labels"]}


def run(root, *, cfg: DataConfig | None = None, views=crop_views, rank=0, world_size=1, seed=0,
        start_step=0, num_steps=4, **overrides) -> list[dict]:
    cfg = cfg or DataConfig(**{"batch_size": 3, "workers": 0, "shuffle_buffer": 6, "shuffle_initial": 3, **overrides})
    return list(build_loader(cfg, root, views, rank=rank, world_size=world_size, seed=seed,
                             start_step=start_step, num_steps=num_steps))


def same_batches(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys() or x["__key__"] != y["__key__"]:
            return False
        if not all(torch.equal(x[k], y[k]) for k in x if isinstance(x[k], torch.Tensor)):
            return False
    return True


def rewrite_shard(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Rewrite a tar with member bytes passed through ``change`` (tar structure stays valid)."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = change(info.name, data)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def train_keys(root: Path) -> set[str]:
    return {s["__key__"] for s in iter_dataset(root, "train")}


# ----------------------------------------------------------------------- normalise


def _stats() -> dict:
    s2_mean = [1000.0] * 13
    s2_std = [250.0] * 13
    s2_mean[10] = s2_std[10] = None  # B10 of L2A: no statistics
    s2_std[12] = 0.0  # a constant band
    return {
        "s2": {"bands": [f"b{i}" for i in range(13)], "mean": s2_mean, "std": s2_std},
        "s1": {"bands": ["VV", "VH"], "mean": [-12.0, -20.0], "std": [2.0, 4.0]},
    }


def test_minmax2sigma_and_zscore_values_by_hand(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps(_stats()))
    stats = read_stats(tmp_path)  # a folder reads folder/stats.json
    dn = np.array([0, 500, 1000, 1500, 2000], dtype=np.uint16)
    x = np.broadcast_to(dn, (13, 1, 5)).copy()

    out = normalize_s2(x, band_norm(stats, "s2", "minmax2sigma"))
    assert out.dtype == np.float32 and out.shape == (13, 1, 5)
    # mean ± 2σ = 500..1500 -> 0..1; not clipped; DN 0 (nodata) -> 0
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(out[10], 0.0)  # no stats -> 0, not NaN
    np.testing.assert_array_equal(out[12], 0.0)  # σ = 0 -> 0, not inf
    clipped = normalize_s2(x, band_norm(stats, "s2", "minmax2sigma", clip=True))
    np.testing.assert_allclose(clipped[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])

    z = normalize_s2(x, band_norm(stats, "s2", "zscore"))
    np.testing.assert_allclose(z[0, 0], [0.0, -2.0, 0.0, 2.0, 4.0])
    assert np.isfinite(z).all() and np.isfinite(out).all()

    db = np.array([[[-16.0, -12.0, -8.0, np.nan, -10.0]], [[-28.0, -20.0, -12.0, -20.0, np.inf]]], dtype=np.float16)
    valid = np.array([[True, True, True, False, True]])
    s1, ok = normalize_s1(db, valid, band_norm(stats, "s1", "minmax2sigma"))
    # VV: -16..-8 -> 0..1; VH: -28..-12 -> 0..1; NaN (invalid) and inf -> 0, and marked invalid
    np.testing.assert_allclose(s1[0, 0], [0.0, 0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(s1[1, 0], [0.0, 0.5, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(ok, [[True, True, True, False, False]])
    s1z, _ = normalize_s1(db, valid, band_norm(stats, "s1", "zscore"))
    np.testing.assert_allclose(s1z[:, 0, :3], [[-2.0, 0.0, 2.0], [-2.0, 0.0, 2.0]])


def test_stats_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="eoforge shards stats"):
        read_stats(tmp_path)
    with pytest.raises(ValueError, match="unknown normalization"):
        band_norm(_stats(), "s2", "minmax")
    with pytest.raises(ValueError, match="no 's1' statistics"):
        band_norm({"s2": _stats()["s2"]}, "s1")


# --------------------------------------------------------------------- shard lists


def test_rank_and_worker_split_is_disjoint_and_covering():
    urls = [f"shard-{i:03d}.tar" for i in range(11)]
    world, workers = 3, 2
    parts = [split_by_worker(split_by_rank(urls, r, world), w, workers) for r in range(world) for w in range(workers)]
    assert all(parts), "every reader has a shard"
    flat = [u for p in parts for u in p]
    assert sorted(flat) == urls and len(set(flat)) == len(flat)
    assert split_by_rank(urls, 1, 3) == urls[1::3]


def test_too_few_shards_is_a_clear_startup_error(ds):
    source = resolve_shards(ds, "train")
    check_enough_shards(source, world_size=3, workers=1)  # 3 shards, 3 readers: fine
    with pytest.raises(ValueError) as err:
        build_loader(DataConfig(workers=2), ds, identity_views, rank=0, world_size=2, seed=0, start_step=0, num_steps=1)
    msg = str(err.value)
    for part in (str(ds), "'train'", "3 shards", "2 ranks", "2 DataLoader workers"):
        assert part in msg, msg


def test_resolve_dataset_urls_and_lists(ds):
    local = resolve_shards(ds, "train")
    assert local.urls == shard_urls(ds, "train") and len(local.urls) == 3
    assert local.stats == str(ds / "stats.json")
    assert resolve_shards(local.urls, "ignored").urls == local.urls
    assert join_url("https://host/ds", "shards/train/a.tar") == "https://host/ds/shards/train/a.tar"
    assert join_url("s3://bucket/ds/", "shards/a.tar") == "s3://bucket/ds/shards/a.tar"
    pattern = resolve_shards("https://host/ds/train-{000..002}.tar", "train")
    assert pattern.urls == [f"https://host/ds/train-{i:03d}.tar" for i in range(3)] and pattern.stats is None
    with pytest.raises(ValueError, match="no shards in split 'test'"):
        resolve_shards(ds, "test")
    with pytest.raises(ValueError, match="DataConfig.stats"):
        build_loader(DataConfig(workers=0), local.urls, identity_views, rank=0, world_size=1, seed=0,
                     start_step=0, num_steps=1)
    cfg = DataConfig(workers=0, batch_size=2, stats=str(ds / "stats.json"))
    assert len(run(local.urls, cfg=cfg, num_steps=2)) == 2


def test_resampling_is_seeded_and_stays_in_the_subset():
    urls = ["a", "b", "c"]
    first = [u for _, u in zip(range(50), resampled(urls, random.Random(7)))]
    again = [u for _, u in zip(range(50), resampled(urls, random.Random(7)))]
    assert first == again and set(first) == set(urls)


def test_interleave_reads_several_shards_in_turn():
    shards = {"a": ["a0", "a1", "a2"], "b": ["b0"], "c": ["c0", "c1"]}
    out = list(interleave(iter(["a", "b", "c"]), lambda u: iter(shards[u]), open_shards=2))
    assert out == ["a0", "b0", "a1", "c0", "a2", "c1"]


def test_remote_root_over_http_gives_the_same_batches(ds):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ds))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}"
        source = resolve_shards(root, "train")
        assert source.urls == [f"{root}/{Path(u).relative_to(ds).as_posix()}" for u in shard_urls(ds, "train")]
        assert source.stats == f"{root}/stats.json"
        assert same_batches(run(root, num_steps=3), run(ds, num_steps=3))
    finally:
        server.shutdown()
        server.server_close()


def test_pipe_shard_urls_give_the_same_batches(ds, tmp_path):
    """``pipe:`` URLs (webdataset's way to stream through a command: ``aws s3 cp ... -``,
    ``gsutil cat``) read like the local shards; ``cat`` of a copy stands in for the download
    tool. A command that fails is a failed shard, not a hang."""
    moved = tmp_path / "moved"
    shutil.copytree(ds, moved)
    urls = [f"pipe:cat {moved / Path(u).relative_to(ds)}" for u in shard_urls(ds, "train")]
    cfg = DataConfig(batch_size=3, workers=0, shuffle_buffer=6, shuffle_initial=3, stats=str(ds / "stats.json"))
    assert same_batches(run(urls, cfg=cfg, num_steps=3), run(ds, num_steps=3))
    broken = [f"pipe:cat {tmp_path / 'missing.tar'}"]
    with pytest.raises(RuntimeError, match="failures in a row|missing.tar"):
        run(broken, cfg=DataConfig(batch_size=3, workers=0, stats=str(ds / "stats.json"), max_consecutive_errors=2),
            num_steps=1)



# ---------------------------------------------------------------------- the loader


def test_inputs_are_normalised_samples_with_keys(ds):
    stats = read_stats(ds)
    stored = {s["__key__"]: s for s in iter_dataset(ds, "train")}
    batches = run(ds, views=identity_views, num_steps=3, time_step="first", modality="s1s2")
    norm2, norm1 = band_norm(stats, "s2"), band_norm(stats, "s1")
    for batch in batches:
        assert set(batch) == {"s2", "s1", "s1valid", "labels", "__key__", "__skipped__"}
        assert batch["s2"].shape == (3, 13, 32, 32) and batch["s2"].dtype == torch.float32
        assert batch["s1valid"].dtype == torch.bool and batch["labels"].shape == (3, 11)
        assert isinstance(batch["__key__"], list) and len(batch["__key__"]) == 3
        for i, key in enumerate(batch["__key__"]):
            s = stored[key]  # a train key (val keys never appear)
            np.testing.assert_array_equal(batch["s2"][i].numpy(), normalize_s2(s["s2"][0], norm2))
            expected, _ = normalize_s1(s["s1"][0], s["s1valid"][0], norm1)
            np.testing.assert_array_equal(batch["s1"][i].numpy(), expected)
            np.testing.assert_array_equal(batch["labels"][i].numpy(), s["meta"]["labels"]["multi_hot"])


def test_time_step_all_keeps_the_time_axis(ds):
    (batch,) = run(ds, views=identity_views, num_steps=1, modality="s1s2", time_step="all", batch_size=2)
    assert batch["s2"].shape == (2, 2, 13, 32, 32) and batch["s1"].shape == (2, 2, 2, 32, 32)
    assert batch["s1valid"].shape == (2, 2, 32, 32) and not batch["s1valid"][..., -3:].any()
    assert torch.isfinite(batch["s1"]).all()


def test_s1_invalid_pixels_are_zero_and_flagged(ds):
    (batch,) = run(ds, views=identity_views, num_steps=1, modality="s1", batch_size=4)
    assert set(batch) == {"s1", "s1valid", "labels", "__key__", "__skipped__"}
    s1, valid = batch["s1"], batch["s1valid"]
    assert torch.isfinite(s1).all()
    assert not valid[..., -3:].any() and valid[..., :-3].all()  # conftest: NaN strip of 3 columns
    assert (s1[..., -3:] == 0).all() and (s1[..., :-3] != 0).any()


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_num_steps_on_uneven_shards_and_disjoint_ranks(uneven, workers):
    assert [n for n in (len(list(tarfile.open(u))) // 6 for u in shard_urls(uneven, "train"))] == [3, 3, 3, 1]
    keys = []
    for rank in range(2):
        loader = build_loader(DataConfig(batch_size=4, workers=workers, shuffle_buffer=5, shuffle_initial=2),
                              uneven, crop_views, rank=rank, world_size=2, seed=1, start_step=0, num_steps=7)
        batches = list(loader)
        assert len(loader) == len(batches) == 7  # 28 samples from a rank holding 6 or 4: resampled
        assert all(len(b["__key__"]) == 4 and b["x"].shape[0] == 4 for b in batches)
        keys.append({k for b in batches for k in b["__key__"]})
    assert keys[0] and keys[1] and not keys[0] & keys[1], "ranks read disjoint shards"
    assert keys[0] | keys[1] <= train_keys(uneven)


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_and_segment_rule(ds, workers):
    cfg = DataConfig(batch_size=3, workers=workers, shuffle_buffer=6, shuffle_initial=3)
    a = run(ds, cfg=cfg, start_step=4, num_steps=3)
    run(ds, cfg=cfg, start_step=0, num_steps=4)  # whatever ran before ...
    b = run(ds, cfg=cfg, start_step=4, num_steps=3)
    assert same_batches(a, b)  # ... the segment starting at step 4 is the same
    assert same_batches(run(ds, cfg=cfg, start_step=4, num_steps=5)[:3], a)  # num_steps only truncates
    assert not same_batches(run(ds, cfg=cfg, start_step=5, num_steps=3), a)
    assert not same_batches(run(ds, cfg=cfg, start_step=4, num_steps=3, seed=1), a)


def test_corrupt_member_is_skipped_and_counted(ds_copy, caplog):
    shard = Path(shard_urls(ds_copy, "train")[0])
    bad_key = sorted(train_keys(ds_copy) & {n.split(".")[0] for n in tarfile.open(shard).getnames()})[1]
    garbage = b"\x28\xb5\x2f\xfd garbage" * 50  # zstd magic, then nonsense
    rewrite_shard(shard, lambda name, data: garbage if name.startswith(f"{bad_key}.s2") else data)
    with caplog.at_level(logging.WARNING, logger="eoforge.train.data.loader"):
        loader = build_loader(DataConfig(batch_size=3, workers=0, shuffle_buffer=4), ds_copy, crop_views,
                              rank=0, world_size=1, seed=0, start_step=0, num_steps=12)
        batches = list(loader)
    assert len(batches) == 12
    assert bad_key not in {k for b in batches for k in b["__key__"]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert loader.skipped == batches[-1]["__skipped__"] == len(warnings) >= 1
    assert all(str(shard) in w and bad_key in w for w in warnings)
    assert [b["__skipped__"] for b in batches] == sorted(b["__skipped__"] for b in batches)  # cumulative


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_is_skipped_never_a_hang(ds_copy, workers):
    shard = Path(shard_urls(ds_copy, "train")[0])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    cfg = DataConfig(batch_size=3, workers=workers, shuffle_buffer=4, worker_timeout_s=60)
    loader = build_loader(cfg, ds_copy, identity_views, rank=0, world_size=1, seed=0, start_step=0, num_steps=10)
    batches = list(loader)
    assert len(batches) == 10 and loader.skipped >= 1
    assert all(b["s2"].shape == (3, 13, 32, 32) and torch.isfinite(b["s2"]).all() for b in batches)


def test_read_shard_counts_a_truncation_once_and_drops_the_partial_sample(ds_copy):
    shard = shard_urls(ds_copy, "train")[0]
    full = list(read_shard(shard, {"s2", "json"}, SkipCounter()))
    assert len(full) == 4 and all(set(s) == {"__key__", "__url__", "s2.npy.zst", "json"} for s in full)
    data = Path(shard).read_bytes()
    Path(shard).write_bytes(data[: len(data) // 2])
    counter = SkipCounter()
    partial = list(read_shard(shard, {"s2", "json"}, counter))
    assert counter.count == 1 and 0 < len(partial) < 4
    assert all("json" in s for s in partial)  # only complete samples come out
    Path(shard).write_bytes(b"")
    empty = SkipCounter()
    assert list(read_shard(shard, {"s2", "json"}, empty)) == [] and empty.count == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_all_shards_broken_is_an_error_not_a_hang(ds_copy, workers):
    for url in shard_urls(ds_copy, "train"):
        Path(url).write_bytes(b"not a tar file at all" * 100)
    cfg = DataConfig(batch_size=2, workers=workers, max_consecutive_errors=20, worker_timeout_s=60)
    with pytest.raises(RuntimeError, match="failures in a row"):
        list(build_loader(cfg, ds_copy, identity_views, rank=0, world_size=1, seed=0, start_step=0, num_steps=2))


def test_config_is_validated():
    with pytest.raises(ValueError, match="modality"):
        DataConfig(modality="rgb")
    with pytest.raises(ValueError, match="time_step"):
        DataConfig(time_step="last")
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)


def test_random_time_step_is_one_stored_step_decoded_only_that_far(ds):
    stats = read_stats(ds)
    norm2 = band_norm(stats, "s2")
    stored = {s["__key__"]: s for s in iter_dataset(ds, "train")}
    steps_seen = set()
    for batch in run(ds, views=identity_views, num_steps=6, time_step="random", modality="s2"):
        for i, key in enumerate(batch["__key__"]):
            candidates = [normalize_s2(step, norm2) for step in stored[key]["s2"]]
            matches = [t for t, c in enumerate(candidates) if np.array_equal(batch["s2"][i].numpy(), c)]
            assert matches, key
            steps_seen.update(matches)
    assert steps_seen == {0, 1}  # conftest samples have 2 steps; both get drawn


def test_metadata_listing_more_steps_than_stored_is_skipped(ds_copy, caplog):
    def add_step(name: str, data: bytes) -> bytes:
        if not name.endswith(".json") or "__" in name:
            return data
        meta = json.loads(data)
        meta["time_steps"].append(meta["time_steps"][-1])
        return json.dumps(meta).encode()

    for url in shard_urls(ds_copy, "train")[:1]:
        rewrite_shard(Path(url), add_step)
    counter = SkipCounter("test")
    from eoforge.train.data.loader import MemberSelector, decode_inputs

    raws = list(read_shard(shard_urls(ds_copy, "train")[0], MemberSelector({"s2", "json"}), counter))
    with caplog.at_level(logging.WARNING):
        kept = list(decode_inputs(raws, "s2", "all", random.Random(0), counter))
    assert kept == [] and counter.count == len(raws) > 0
    assert "metadata lists 3 time steps" in caplog.text


def _identity_by_another_name(inputs: dict, generator: torch.Generator) -> dict:
    return identity_views(inputs, generator)  # not ``identity_views`` itself: the general path


@pytest.mark.parametrize("workers", [0, 2])
def test_identity_views_fast_path_gives_the_general_paths_batches(ds, workers):
    """``identity_views`` normalises straight into the (shared-memory) batch; any other views
    go through normalise -> views -> collate: the same tensors, crops included."""
    for overrides in ({"modality": "s1s2", "crop_px": 20}, {"modality": "s2"}, {"modality": "s1", "crop_px": 32}):
        fast = run(ds, views=identity_views, num_steps=4, workers=workers, **overrides)
        general = run(ds, views=_identity_by_another_name, num_steps=4, workers=workers, **overrides)
        assert same_batches(fast, general), overrides
        assert fast[0][overrides["modality"][:2]].shape[-1] == overrides.get("crop_px", 32)


def test_crops_are_seeded_windows_of_the_stored_tiles(ds):
    stats = read_stats(ds)
    norm2 = band_norm(stats, "s2")
    stored = {s["__key__"]: normalize_s2(s["s2"][0], norm2) for s in iter_dataset(ds, "train")}
    batches = run(ds, views=identity_views, num_steps=3, time_step="first", crop_px=12)
    offsets = set()
    for batch in batches:
        assert batch["s2"].shape == (3, 13, 12, 12)
        for crop, key in zip(batch["s2"].numpy(), batch["__key__"]):
            tile = stored[key]
            hits = [(i, j) for i in range(32 - 12 + 1) for j in range(32 - 12 + 1)
                    if np.array_equal(tile[:, i:i + 12, j:j + 12], crop)]
            assert hits, key
            offsets.add(hits[0])
    assert len(offsets) > 3  # positions vary
    assert same_batches(batches, run(ds, views=identity_views, num_steps=3, time_step="first", crop_px=12))
    with pytest.raises(ValueError, match="crop_px"):
        DataConfig(crop_px=0)


# ----------------------------------------------------------------------- time steps and labels


def test_random_pair_draws_two_steps_independently_with_their_labels(ds):
    stored = {s["__key__"]: s for s in iter_dataset(ds, "train")}
    stats = read_stats(ds)
    norm = band_norm(stats, "s2")
    batches = run(ds, views=identity_views, num_steps=6, time_step="random_pair", batch_size=3)
    drawn = set()
    for batch in batches:
        assert batch["s2"].shape == (3, 2, 13, 32, 32) and batch["labels"].shape == (3, 2, 11)
        for i, key in enumerate(batch["__key__"]):
            steps = []
            for v in range(2):  # each view is one of the sample's stored steps, normalised
                matches = [t for t in range(2)
                           if np.array_equal(batch["s2"][i, v].numpy(), normalize_s2(stored[key]["s2"][t], norm))]
                assert len(matches) == 1
                steps.append(matches[0])
            drawn.add(tuple(steps))
            np.testing.assert_array_equal(batch["labels"][i, 0].numpy(), stored[key]["meta"]["labels"]["multi_hot"])
    assert drawn == {(0, 0), (0, 1), (1, 0), (1, 1)}  # independent draws, repeats included


def _labelled_variants(root: Path) -> Path:
    """Train: sample 0 unlabelled, sample 1 with per-step labels, the rest WorldCover labels."""
    from conftest import make_sample
    from eoforge.shards.manifest import merge_parts
    from eoforge.shards.writer import ShardWriter

    with ShardWriter(root, "train", max_samples=2) as writer:
        for i in range(4):
            s = make_sample(i, "train")
            if i == 0:
                s.meta.labels = None
            elif i == 1:
                s.meta.labels.per_step_multi_hot = [[1] + [0] * 10, [0, 1] + [0] * 9]
            writer.write(s)
    merge_parts(root)
    compute_stats(root, workers=1)
    return root


def test_labels_per_step_converted_and_zero_for_unlabelled(tmp_path):
    from eoforge.shards.schema import DYNAMIC_WORLD, WORLDCOVER, convert_label_vector

    root = _labelled_variants(tmp_path / "ds")
    stored = {s["__key__"]: s["meta"] for s in iter_dataset(root, "train")}
    for taxonomy, width in ((None, 11), ("dynamic_world", 9)):
        batches = run(root, views=identity_views, num_steps=4, time_step="all", batch_size=2,
                      label_taxonomy=taxonomy, shuffle_buffer=1)
        for batch in batches:
            for i, key in enumerate(batch["__key__"]):
                labels, meta = batch["labels"][i].numpy(), stored[key]
                assert labels.shape == (2, width)
                if meta["labels"] is None:
                    assert not labels.any()
                elif meta["labels"].get("per_step_multi_hot"):
                    rows = np.asarray(meta["labels"]["per_step_multi_hot"], np.float32)
                    expected = rows if taxonomy is None else convert_label_vector(rows, "worldcover", taxonomy)
                    np.testing.assert_array_equal(labels, expected)
                    assert not np.array_equal(labels[0], labels[1])
                elif taxonomy is None:
                    np.testing.assert_array_equal(labels[0], meta["labels"]["multi_hot"])
                else:  # fractions of merged classes add up, then the sample's threshold
                    f = np.asarray(meta["labels"]["fractions"])
                    dw = np.zeros(9)
                    for wc, code in ((10, 1), (20, 5), (30, 2), (40, 4), (50, 6)):
                        dw[DYNAMIC_WORLD.codes.index(code)] += f[WORLDCOVER.codes.index(wc)]
                    np.testing.assert_array_equal(labels[1], (dw >= 0.01).astype(np.float32))


def test_the_label_taxonomy_comes_from_the_manifest_or_the_config(tmp_path):
    from eoforge.train.data.shardlists import dataset_label_taxonomy

    root = _labelled_variants(tmp_path / "ds")
    assert dataset_label_taxonomy(resolve_shards(root, "train")) == "worldcover"
    assert dataset_label_taxonomy(resolve_shards(shard_urls(root, "train"), None)) is None
    with pytest.raises(ValueError, match="data.label_taxonomy"):
        DataConfig(label_taxonomy="corine")
