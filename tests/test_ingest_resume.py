"""Resumability of ``eoforge ingest`` under real failures (shards/DESIGN.md#how-it-is-tested).

- Whole-run interruption: the command's whole process group (CLI + LocalCluster workers)
  is SIGKILLed while sources are being read (after the first read task), or after the first
  shard is done; rerunning the same command must keep what was finished (read tasks,
  shards), redo the rest and end with the bytes of an uninterrupted run.
- A shard deleted from a finished dataset (whose staging pieces are gone) is rebuilt by
  rerunning: the read tasks it needs run again and the bytes are the same.
- Worker death: on a loopback ``dask scheduler`` + two ``dask worker --no-nanny``, one
  worker executing a shard task is SIGKILLed mid-run (no nanny, so it stays dead); the run
  must finish on the other worker with the bytes of the uninterrupted run.

The reference is one uninterrupted ``--workers 1`` run shared by both tests, so the
worker-death test also checks that a remote cluster writes what a LocalCluster writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from eoforge.ingest.demo import generate_demo_data
from eoforge.shards.manifest import read_manifest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EOFORGE = str(BIN / "eoforge") if (BIN / "eoforge").exists() else shutil.which("eoforge") or "eoforge"
DASK = str(BIN / "dask") if (BIN / "dask").exists() else shutil.which("dask") or "dask"

# Small tiles, few samples per shard: ~40 samples in ~9 shards from a 3 km demo area,
# a few seconds per run, so there is a run to interrupt between the first and last shard.
RECIPE = """\
ingest:
  tile_size_px: 32
  samples_per_shard: 8
  split_block_tiles: 4
"""
RUN_TIMEOUT_S = 300  # one ingest run; a hang fails the test instead of stalling CI
POLL_S = 0.02


def _env() -> dict[str, str]:
    """The test's environment without a scheduler address (``--workers`` must mean a LocalCluster)."""
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_files(ds: Path) -> dict[str, str]:
    """Every file under ``DS/shards`` (stray ``.tmp`` files included) -> sha256."""
    return {p.relative_to(ds).as_posix(): _sha256(p) for p in sorted((ds / "shards").rglob("*")) if p.is_file()}


def _reports(ds: Path) -> list[Path]:
    return sorted((ds / "task-reports").glob("*/shard-*.json"))


def _read_reports(ds: Path) -> list[Path]:
    return sorted((ds / "task-reports" / "read").glob("*.json"))


def _nan_safe(value: Any) -> Any:
    """Rows compared with ``==``: NaN (never equal to itself) replaced by a marker."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_nan_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    return value


def _tar_keys(ds: Path) -> list[str]:
    """Sample keys in the order they occur in the tars (one per ``.json`` member)."""
    keys = []
    for tar in sorted((ds / "shards").glob("*/shard-*.tar")):
        with tarfile.open(tar) as f:
            keys += [name.split(".", 1)[0] for name in f.getnames() if name.endswith(".json")]
    return keys


def assert_same_dataset(ds: Path, ref: Path) -> None:
    """Same shard files with the same bytes, same manifest rows, every key exactly once."""
    assert _shard_files(ds) == _shard_files(ref)
    table, ref_table = read_manifest(ds), read_manifest(ref)
    rows, ref_rows = table.to_pylist(), ref_table.to_pylist()
    assert len(rows) == len(ref_rows)
    for i, (row, ref_row) in enumerate(zip(rows, ref_rows)):
        assert _nan_safe(row) == _nan_safe(ref_row), f"manifest row {i} ({ref_row['key']}) differs"
    assert table.schema.metadata == ref_table.schema.metadata
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "duplicate keys in the manifest"
    assert set(keys) == set(ref_table.column("key").to_pylist())
    tar_keys = _tar_keys(ds)
    assert len(tar_keys) == len(set(tar_keys)), "a key occurs in two tars (or twice in one)"
    assert sorted(tar_keys) == sorted(keys), "manifest and tars disagree on the keys"
    assert [p.relative_to(ds) for p in _reports(ds)] == [p.relative_to(ref) for p in _reports(ref)]
    assert json.loads((ds / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())


def _ingest_cmd(inputs: list[Path], out: Path, recipe: Path, *extra: str) -> list[str]:
    return [EOFORGE, "ingest", *map(str, inputs), "--out", str(out), "--config", str(recipe), "--quiet", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _check_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"


def _wait_for(condition: Any, proc: subprocess.Popen[Any], what: str, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Poll ``condition()`` until true; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the ingest ended (exit {proc.returncode}) before {what}; "
                        "the test needs a run long enough to interrupt")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _stop(procs: list[subprocess.Popen[Any]], group: bool = False) -> None:
    """Terminate, then kill, processes this test started (their groups when ``group``)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM) if group else p.terminate()
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL) if group else p.kill()
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def inputs(workdir: Path) -> list[Path]:
    """A small demo area: two S2 L2A products of one MGRS tile, all S1, WorldCover."""
    raw = workdir / "raw"
    generate_demo_data(raw, seed=0, extent_km=3, progress=False)
    s2 = sorted(p for p in (raw / "s2").glob("S2*_MSIL2A_*_T33TTL_*.SAFE"))[:2]
    assert len(s2) == 2, sorted((raw / "s2").iterdir())
    return [*s2, raw / "s1", raw / "worldcover"]


@pytest.fixture(scope="module")
def recipe(workdir: Path) -> Path:
    path = workdir / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def reference(workdir: Path, inputs: list[Path], recipe: Path) -> Path:
    """One uninterrupted run (LocalCluster, one worker)."""
    ds = workdir / "reference"
    _check_ok(_run(_ingest_cmd(inputs, ds, recipe, "--workers", "1")))
    reports = _reports(ds)
    assert len(reports) >= 6, f"the recipe should give several shards, got {len(reports)}"
    assert len(list((ds / "shards").glob("*/shard-*.tar"))) >= 6
    assert read_manifest(ds).num_rows >= 24
    return ds


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[tuple[str, Any, list[subprocess.Popen[bytes]]]]:
    """``dask scheduler`` + two single-threaded ``dask worker --no-nanny`` on 127.0.0.1.

    Without a nanny a killed worker stays dead, so the run has to finish on the other one.
    Yields (address, client, worker processes).
    """
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    client = None

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            p = subprocess.Popen([DASK, *args], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        procs.append(p)
        return p

    try:
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--scheduler-file", str(scheduler_file), "--no-dashboard")
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            if scheduler.poll() is not None:
                pytest.fail(f"dask scheduler exited: {(logs / 'scheduler.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("dask scheduler did not write its scheduler file")
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        workers = [
            start(f"worker-{i}", "worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                  "--name", f"worker-{i}", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--death-timeout", "60")
            for i in range(2)
        ]
        client = Client(scheduler_file=str(scheduler_file), timeout="60s")
        client.wait_for_workers(2, timeout=120)
        info = client.scheduler_info()["workers"]
        pids = {info[addr]["name"]: pid for addr, pid in client.run(os.getpid).items()}
        assert pids == {f"worker-{i}": w.pid for i, w in enumerate(workers)}, "unexpected workers"
        yield address, client, workers
    finally:
        if client is not None:
            client.close()
        _stop(procs[::-1], group=True)


# ---------------------------------------------------------------------------- tests


def _kill_when(cmd: list[str], ds: Path, marker: Any, what: str, tmp_path: Path) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group as soon as
    ``marker(ds)`` is true (``what`` names that moment)."""
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: bool(marker(ds)), proc, f"the {what} was done")
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its LocalCluster (scheduler, nanny, worker)
        proc.wait(timeout=30)
    finally:
        _stop([proc], group=True)
    assert proc.returncode == -signal.SIGKILL
    # Give orphaned group members (already SIGKILLed) a moment to vanish; none may write on.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


@pytest.mark.parametrize("kill_after", ["first read task", "first shard"])
def test_killed_run_resumes_to_the_uninterrupted_bytes(
    inputs: list[Path], recipe: Path, reference: Path, tmp_path: Path, kill_after: str
) -> None:
    ds = tmp_path / "ds"
    cmd = _ingest_cmd(inputs, ds, recipe, "--workers", "1")
    _kill_when(cmd, ds, _read_reports if kill_after == "first read task" else _reports, kill_after, tmp_path)

    def identity(paths: list[Path]) -> dict[Path, tuple[int, int, str]]:
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns, _sha256(p)) for p in paths if p.exists()}

    done = _reports(ds)
    reads_done = _read_reports(ds)
    if kill_after == "first read task":
        assert reads_done and not done, "the kill should land while sources are read"
        assert len(reads_done) < len(_read_reports(reference)), "every read task was already done"
    else:
        assert done, "no shard was finished before the kill"
        assert len(done) < len(_reports(reference)), "the run was not interrupted: every shard was already done"
    assert not (ds / "manifest.parquet").exists(), "the run was not interrupted: it got to finalize"
    finished = identity(done + [ds / "shards" / r.parent.name / f"{r.stem}.tar" for r in done] + reads_done)

    _check_ok(_run(cmd))

    # Finished read tasks and shards (report, tar) were kept as they were, not redone; the rest was done.
    assert identity(list(finished)) == finished
    assert_same_dataset(ds, reference)
    assert not (ds / "staging").exists()


def test_a_deleted_shard_is_rebuilt_from_the_sources(reference: Path, inputs: list[Path], recipe: Path,
                                                     tmp_path: Path) -> None:
    ds = Path(shutil.copytree(reference, tmp_path / "ds"))
    assert not (ds / "staging").exists()
    victim = _reports(ds)[len(_reports(ds)) // 2]
    (ds / "shards" / victim.parent.name / f"{victim.stem}.tar").unlink()
    others = identity_of([r for r in _reports(ds) if r != victim])
    _check_ok(_run(_ingest_cmd(inputs, ds, recipe, "--workers", "1")))
    assert_same_dataset(ds, reference)
    assert identity_of(list(others)) == others  # the other shards were not touched


def test_files_cut_short_by_a_machine_crash_are_redone(inputs: list[Path], recipe: Path, reference: Path,
                                                        tmp_path: Path) -> None:
    """Nothing is fsynced, so a machine crash can leave files that were renamed into place
    short or empty (ext4 writes a new file's blocks later). Cut a finished shard's manifest
    part and a finished read task's frames short, as such a crash would: the rerun must
    notice both by their recorded sizes, redo them and end with the uninterrupted bytes."""
    ds = tmp_path / "ds"
    cmd = _ingest_cmd(inputs, ds, recipe, "--workers", "1")
    _kill_when(cmd, ds, _reports, "first shard", tmp_path)
    done = _reports(ds)
    assert done and len(done) < len(_reports(reference)), "the kill should land between the first and last shard"
    shard = done[0]
    part = ds / "manifest-parts" / shard.parent.name / f"{shard.stem}.parquet"
    tar = ds / "shards" / shard.parent.name / f"{shard.stem}.tar"
    tar_before = identity_of([tar])
    part.write_bytes(b"")
    task = _read_reports(ds)[0].stem
    frames = ds / "staging" / f"{task}.bin"
    assert frames.stat().st_size > 0
    with open(frames, "r+b") as f:
        f.truncate(frames.stat().st_size // 2)

    _check_ok(_run(cmd))

    assert identity_of([tar]) != tar_before, "the shard with an empty manifest part was not redone"
    assert_same_dataset(ds, reference)
    assert not (ds / "staging").exists()


def identity_of(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_worker_killed_mid_run_on_a_loopback_cluster(
    inputs: list[Path], recipe: Path, reference: Path, tmp_path: Path,
    loopback_cluster: tuple[str, Any, list[subprocess.Popen[bytes]]],
) -> None:
    address, client, workers = loopback_cluster
    ds = tmp_path / "ds"
    cmd = _ingest_cmd(inputs, ds, recipe, "--scheduler", address)
    with open(tmp_path / "ingest.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: bool(_reports(ds)), proc, "the first shard was done")
        # Kill a worker while it is executing a shard task (its tar is being written).
        def executing(dask_worker: Any) -> list[str]:  # runs on each worker; pickled by value
            return [str(ts.key) for ts in dask_worker.state.executing]

        by_name = {f"worker-{i}": w for i, w in enumerate(workers)}
        victim = None
        deadline = time.monotonic() + 60
        while victim is None:
            info = client.scheduler_info()["workers"]
            for addr, keys in client.run(executing).items():
                if addr in info and any(k.startswith("materialize-") for k in keys):
                    victim = by_name[info[addr]["name"]]
                    break
            else:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("no worker was executing a shard task to kill")
                time.sleep(POLL_S)
        reports_at_kill = len(_reports(ds))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert reports_at_kill < len(_reports(reference)), "the run was over before the worker died"

        proc.wait(timeout=RUN_TIMEOUT_S)
        log_text = (tmp_path / "ingest.log").read_text(errors="replace")
        assert proc.returncode == 0, f"exit {proc.returncode}\n{log_text[-4000:]}"
    finally:
        _stop([proc], group=True)

    assert victim.returncode == -signal.SIGKILL
    survivors = [w for w in workers if w is not victim]
    assert all(w.poll() is None for w in survivors)
    assert list(client.run(os.getpid).values()) == [survivors[0].pid]
    assert_same_dataset(ds, reference)


def test_a_read_task_that_crashes_leaves_its_shards_for_a_rerun(reference: Path, inputs: list[Path], recipe: Path,
                                                               tmp_path: Path) -> None:
    """A read task that raises (here: its staging file cannot be created) fails after its
    retries; the shards that need its pieces are not written (error rows, exit 1), the others
    are; a rerun once the cause is gone writes the rest, and the dataset equals the reference."""
    victim = next(p.stem for p in _read_reports(reference) if p.stem.startswith("s2-"))
    ds = tmp_path / "ds"
    obstacle = ds / "staging" / f"{victim}.bin.tmp"
    obstacle.mkdir(parents=True)  # open(..., "wb") on it raises IsADirectoryError
    first = _run(_ingest_cmd(inputs, ds, recipe, "--workers", "1"))
    assert first.returncode == 1, first.stderr[-3000:]
    rows = pq.read_table(ds / "errors.parquet").to_pylist()
    assert any(victim in r["reason"] and "failed" in r["reason"] for r in rows), rows
    blocked = [r for r in rows if r["reason"].startswith("shard not written")]
    assert blocked, rows
    assert len(blocked) + len(_reports(ds)) == len(_reports(reference))  # each shard written or reported
    assert (ds / "staging").is_dir()  # kept for the rerun
    obstacle.rmdir()
    _check_ok(_run(_ingest_cmd(inputs, ds, recipe, "--workers", "1")))
    assert_same_dataset(ds, reference)
    assert not pq.read_table(ds / "errors.parquet").num_rows


# ---------------------------------------------------------------------------- waves


def _staged_bytes(ds: Path) -> int:
    staging = ds / "staging"
    total = 0
    for p in (staging.iterdir() if staging.is_dir() else []):
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # deleted between listing and stat
            pass
    return total


@pytest.fixture(scope="module")
def waved(workdir: Path, inputs: list[Path], reference: Path) -> tuple[Path, Path, int, int]:
    """One uninterrupted run whose staging budget (a fifth of the dataset) forces several
    waves, with the staging folder's size sampled every 20 ms while it runs. Returns (the
    dataset, its recipe, the budget in bytes, the largest staging size seen)."""
    shard_bytes = sum(p.stat().st_size for p in (reference / "shards").rglob("*.tar"))
    budget = shard_bytes // 5
    recipe = workdir / "recipe-waves.yaml"
    recipe.write_text(RECIPE + f"  staging_budget_gb: {budget / 1e9!r}\n")
    ds = workdir / "waved"
    with open(workdir / "waved.log", "wb") as log:
        proc = subprocess.Popen(_ingest_cmd(inputs, ds, recipe, "--workers", "1"), env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    high_water = 0
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            high_water = max(high_water, _staged_bytes(ds))
            time.sleep(POLL_S)
        proc.wait(timeout=30)
    finally:
        _stop([proc], group=True)
    assert proc.returncode == 0, (workdir / "waved.log").read_text()[-4000:]
    return ds, recipe, budget, high_water


def test_waves_bound_staging_and_keep_every_sample(waved: tuple[Path, Path, int, int], reference: Path) -> None:
    from eoforge.shards.verify import verify_dataset

    ds, _, budget, seen = waved
    report = json.loads((ds / "report.json").read_text())["stages"]["read"]
    assert report["waves"] >= 3
    assert report["staging_budget_bytes"] == pytest.approx(budget, abs=1)
    largest_task = max(json.loads(p.read_text())["frames_bytes"] + json.loads(p.read_text())["index_bytes"]
                       for p in _read_reports(ds))
    # the high-water mark, as the run measured it and as sampled from outside
    assert 0 < seen <= budget + largest_task
    assert report["staging_high_water_bytes"] <= budget + largest_task
    assert report["bytes_written_per_output_byte"] > 1.5  # every byte twice: staging, then shards
    assert not (ds / "staging").exists()
    assert verify_dataset(ds).ok
    # the same samples as one wave writes (keys, labels, pairing, the bytes of each sample),
    # in other shards: each wave's shards mix only that wave's places
    plan = pq.read_table(ds / "plan.parquet").to_pylist()
    assert len({r["wave"] for r in plan}) == report["waves"]
    shards_per_wave = {}
    for r in plan:
        shards_per_wave.setdefault(r["wave"], set()).add((r["split"], r["shard"]))
    assert all(a.isdisjoint(b) for w, a in shards_per_wave.items() for v, b in shards_per_wave.items() if w < v)

    def by_key(table: Any) -> dict[str, dict[str, Any]]:
        return {r["key"]: {k: v for k, v in _nan_safe(r).items() if k not in ("shard", "members")}
                for r in table.to_pylist()}

    assert by_key(read_manifest(ds)) == by_key(read_manifest(reference))


def test_killed_in_the_second_wave_resumes_to_the_uninterrupted_bytes(
    inputs: list[Path], waved: tuple[Path, Path, int, int], tmp_path: Path
) -> None:
    reference_ds, recipe, _, _ = waved
    ds = tmp_path / "ds"
    cmd = _ingest_cmd(inputs, ds, recipe, "--workers", "1")

    def second_wave_started(ds: Path) -> bool:
        return any("-w001-" in p.name for p in _read_reports(ds))

    _kill_when(cmd, ds, second_wave_started, "first read task of the second wave", tmp_path)
    plan = pq.read_table(ds / "plan.parquet").to_pylist()
    first_wave = {(r["split"], r["shard"]) for r in plan if r["wave"] == 0}
    done = {(p.parent.name, int(p.stem.split("-")[1])) for p in _reports(ds)}
    assert first_wave <= done, "the first wave's shards are all written before the second wave reads"
    assert len(done) < len(_reports(reference_ds)), "the run was not interrupted"
    assert not any("-w000-" in p.name for p in (ds / "staging").iterdir()), "the first wave's staging is deleted"

    _check_ok(_run(cmd))
    assert_same_dataset(ds, reference_ds)
    assert not (ds / "staging").exists()


def test_a_shard_deleted_mid_wave_is_rebuilt_from_the_sources_not_from_freed_frames(
    inputs: list[Path], waved: tuple[Path, Path, int, int], tmp_path: Path
) -> None:
    """A finished shard frees its staged frames (punched out of the frame file, which keeps
    its size). Kill the run after its first shard, delete that shard's tar, rerun: the read
    tasks whose frames it freed must be read again (not reused, which would write zeros),
    and the dataset must be the uninterrupted one."""
    reference_ds, recipe, _, _ = waved
    ds = tmp_path / "ds"
    cmd = _ingest_cmd(inputs, ds, recipe, "--workers", "1")
    def frames_freed(ds: Path) -> bool:
        return (ds / "staging").is_dir() and any((ds / "staging").glob("*.released"))

    _kill_when(cmd, ds, frames_freed, "first shard's frames were freed", tmp_path)
    done = _reports(ds)
    assert done, "no shard was finished before the kill"
    freed = {line for p in (ds / "staging").glob("*.released") for line in p.read_text().split()}
    plan = pq.read_table(ds / "plan.parquet").to_pylist()
    tiles_of = {}
    for r in plan:
        tiles_of.setdefault((r["split"], r["shard"]), set()).add(r["tile_id"])
    # a finished shard whose frames are freed (its report is written before it frees them)
    victim = next(p for p in done if tiles_of[(p.parent.name, int(p.stem.split("-")[1]))] & freed)
    (ds / "shards" / victim.parent.name / f"{victim.stem}.tar").unlink()

    _check_ok(_run(cmd))
    assert_same_dataset(ds, reference_ds)
    rebuilt = json.loads((ds / "report.json").read_text())
    assert rebuilt["stages"]["materialize"]["shards"] >= 1 and freed
