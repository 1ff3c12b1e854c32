"""The ingest's Dask engine: a real LocalCluster on loopback, started in the background
while light work runs on the client."""

from __future__ import annotations

import os

from eoforge.ingest.engine import Engine


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

