"""The ingest's Dask engine: a real LocalCluster on loopback, started in the background
while light work runs on the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eoforge.ingest.engine import WORKER_MALLOC_ENV, Engine


def _pid_or_fail(item: int) -> int:
    if item == 2:
        raise ValueError("bad item 2")
    return os.getpid()


def test_small_maps_run_on_the_client_while_the_cluster_starts() -> None:
    engine = Engine(workers=1, progress=False, retries=0).start()
    try:
        # inline: the client's threads, before the cluster is needed; a failure sits in its place
        inline = engine.map(_pid_or_fail, [0, 1, 2, 3], desc="inline", inline_below=8)
        assert inline[:2] == [os.getpid()] * 2 and inline[3] == os.getpid()
        assert isinstance(inline[2], ValueError) and "bad item 2" in str(inline[2])
        # at or above the threshold: Dask tasks on the worker process, same result layout
        remote = engine.map(_pid_or_fail, [0, 1, 2, 3], desc="tasks", inline_below=4)
        assert len({remote[0], remote[1], remote[3]}) == 1 and remote[0] != os.getpid()
        assert isinstance(remote[2], ValueError)
        assert engine.task_slots == 1
    finally:
        engine.__exit__(None, None, None)


def test_an_external_scheduler_always_runs_the_tasks() -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Engine(scheduler=cluster.scheduler_address, progress=False, retries=0) as engine:
        pids = engine.map(_pid_or_fail, [0, 1], desc="tasks", inline_below=100)
        assert all(pid != os.getpid() for pid in pids)  # its workers may see other paths and credentials



#: Run in a fresh interpreter: the forkserver is one per process, and an earlier test's
#: cluster may have started it with other modules.
_FORKSERVER_PROBE = '''
import json, os, sys
from eoforge.ingest.engine import Engine

def probe(_):
    parent = open(f"/proc/{os.getppid()}/cmdline").read().replace("\\0", " ")
    return {"parent_pid": os.getppid(), "parent": parent, "preloaded": "eoforge.ingest.pipeline" in sys.modules,
            "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}

if __name__ == "__main__":
    assert "eoforge.ingest.pipeline" not in sys.modules
    with Engine(workers=2, progress=False) as engine:
        print(json.dumps({"client": os.getpid(), "workers": engine.map(probe, [0, 1], desc="probe")}))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_workers_are_forked_from_a_forkserver_with_the_task_modules_imported(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(_FORKSERVER_PROBE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    workers = result["workers"]
    assert len(workers) == 2
    # one forkserver, not the client, is the parent of both; it imported the ingest's
    # task module before forking (the probe itself imports nothing of eoforge)
    assert len({w["parent_pid"] for w in workers}) == 1 and workers[0]["parent_pid"] != result["client"]
    assert all("multiprocessing.forkserver" in w["parent"] for w in workers)
    assert all(w["preloaded"] for w in workers)
    # glibc read the workers' malloc settings when the forkserver started: they must be there
    assert {(w["mmap_threshold"], w["trim_threshold"]) for w in workers} == {
        (str(WORKER_MALLOC_ENV["distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_"]),
         str(WORKER_MALLOC_ENV["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"]))}
