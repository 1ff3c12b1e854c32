"""The Dask engine: a cluster to run stage tasks on, with progress and retries.

``eoforge ingest`` starts a ``LocalCluster`` (one single-threaded worker process per core:
GDAL and numpy release the GIL only part of the time, processes scale better; forked from a
forkserver that imports the task modules once, :data:`WORKER_PRELOAD`) unless it is
given a scheduler address (``--scheduler tcp://host:8786`` or ``DASK_SCHEDULER_ADDRESS``),
in which case the same tasks run on that cluster: a SLURM allocation through
dask-jobqueue, a Kubernetes deployment, or ``dask scheduler`` + ``dask worker`` by hand.
Workers must be able to read the inputs and write ``--out`` under the same paths.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
from tqdm.auto import tqdm

#: glibc settings for worker processes. Dask sets ``MALLOC_TRIM_THRESHOLD_=65536``, which
#: also switches off glibc's adaptive mmap threshold: every tile-sized numpy buffer is then
#: mmapped, page-faulted and unmapped again, and ingest tasks ran 2x slower (measured, see
#: ``ingest/bench.py``). Buffers up to 32 MiB come from the heap again and up to 1 GiB of
#: freed heap is kept for reuse. Export the same two variables on an external cluster.
WORKER_MALLOC_ENV = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1 << 30,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 1 << 25,
}


#: Dask's housekeeping, slowed for a cluster that runs long single-threaded tasks: the worker
#: profiler samples the running task's stack every 10 ms (taking the GIL from it), event loops
#: tick every 20 ms, system monitors poll every 0.5 s. With Dask's defaults an idle 2-worker
#: LocalCluster spent 17 % of one core (each worker 5 %, the client's scheduler 7 %); with
#: these 5 % (measured with psutil on a 2-core VM). Set the same on an external cluster's workers
#: (``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False`` and so on).
QUIET_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.work-stealing-interval": "1s",
}


#: What the local cluster's worker processes are forked from a forkserver with already
#: imported: Dask's workers, pandas (pyarrow imports it on its first ``pa.array``) and the
#: module the ingest's tasks live in (with rasterio, pyarrow, OpenCV, shapely, pyproj). A
#: spawned worker imports all of it itself: ~0.9 s of CPU per worker, paid again for every
#: worker on the same cores (measured on 2 cores, a fresh process each time: a 2-worker COG
#: scene 0.27 s faster, a 1-worker one the same; ``ingest/README.md``). The forkserver is
#: one per client process and outlives the cluster: a second cluster in the same process
#: (tests, benchmarks, a notebook) forks from the one already running, whatever it preloaded.
WORKER_PRELOAD = ("distributed", "numpy", "pandas", "eoforge.ingest.pipeline")


class Engine:
    """A Dask client (own ``LocalCluster`` or an existing scheduler) for stage tasks.

    Args:
        scheduler: address of an existing scheduler; None uses ``DASK_SCHEDULER_ADDRESS``
            when set, else starts a ``LocalCluster``.
        workers: worker processes of the local cluster (default: CPU count).
        progress: show progress bars.
        retries: times a failed task is retried (also on another worker after a worker died).
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 progress: bool = True, retries: int = 2) -> None:
        self.scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress
        self.retries = retries
        self._client: Any = None
        self._cluster: Any = None
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def __enter__(self) -> Engine:
        self.start()
        self.client  # noqa: B018 - waits for the cluster, raises what its start raised
        return self

    def start(self) -> Engine:
        """Start the cluster (or connect) in a background thread and return at once; the first
        use of :attr:`client` waits for it. Work that runs on the client meanwhile
        (:meth:`map` with ``inline_below``) overlaps the ~0.6 s a LocalCluster takes to start."""
        if self._client is None and self._starting is None:
            self._starting = threading.Thread(target=self._connect, name="eoforge-engine-start", daemon=True)
            self._starting.start()
        return self

    def _connect(self) -> None:
        from dask.distributed import Client, LocalCluster

        try:
            if self.scheduler:
                self._client = Client(self.scheduler, timeout="60s")
            else:
                start_method = _preload_forkserver(WORKER_PRELOAD)
                with dask.config.set({**WORKER_MALLOC_ENV, **QUIET_CLUSTER_CONFIG, **start_method}):
                    self._cluster = LocalCluster(
                        n_workers=self.workers, threads_per_worker=1, processes=True,
                        dashboard_address=":0", silence_logs=logging.ERROR,  # any free port: no clash on shared hosts
                    )
                self._client = Client(self._cluster)
        except BaseException as err:  # noqa: BLE001 - raised where the client is first used
            self._start_error = err

    @property
    def client(self) -> Any:
        """The Dask client, once the cluster is up (:meth:`start` is called if it was not)."""
        if self._client is None:
            self.start()
            assert self._starting is not None
            self._starting.join()
            if self._start_error is not None:
                raise self._start_error
        return self._client

    def __exit__(self, *exc: object) -> None:
        if self._starting is not None:
            self._starting.join()
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    @property
    def task_slots(self) -> int:
        """Tasks the cluster runs at once now: the local cluster's workers, or an existing
        cluster's worker threads (at least 1; a cluster still scaling up counts what it has)."""
        if not self.scheduler:
            return self.workers
        return max(1, sum(self.client.nthreads().values()))

    @property
    def description(self) -> str:
        if self.scheduler:
            return f"Dask scheduler {self.scheduler}"
        return f"LocalCluster, {self.workers} worker process(es)"

    def map(self, fn: Callable[..., Any], items: Iterable[Any], desc: str, unit: str = "task",
            key_prefix: str | None = None, inline_below: int = 0) -> list[Any]:
        """Run ``fn(item)`` for every item; results in input order.

        A task that raises (after its retries) yields the exception object in its place,
        so one bad input never stops the others; the caller turns it into an error row.

        ``inline_below``: with an own LocalCluster, fewer items than this run on the client
        in ``workers`` threads instead (light work such as header reads, where a Dask round
        trip costs more than the task, and which need not wait for the cluster to start).
        An external cluster always runs them: its workers may see other paths and credentials.
        """
        items = list(items)
        if not self.scheduler and len(items) < inline_below:
            return self._map_inline(fn, items, desc, unit)
        results: list[Any] = [None] * len(items)
        for index, value in self.as_completed(fn, items, desc, unit, key_prefix):
            results[index] = value
        return results

    def _map_inline(self, fn: Callable[..., Any], items: list[Any], desc: str, unit: str) -> list[Any]:
        def call(item: Any) -> Any:
            try:
                return fn(item)
            except Exception as err:  # noqa: BLE001 - as a failed Dask task: the caller reports it
                return err

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(items)))) as pool, \
                tqdm(total=len(items), desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True) as bar:
            results = []
            for value in pool.map(call, items):
                results.append(value)
                bar.update()
        return results

    def as_completed(self, fn: Callable[..., Any], items: list[Any], desc: str, unit: str = "task",
                     key_prefix: str | None = None, on_submit: Callable[[], None] | None = None
                     ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result or exception)`` as tasks finish, with a progress bar.
        ``on_submit`` is called once the tasks are submitted (not when there are none): client
        work that can wait until then starts it there, off the cluster's critical path."""
        from dask.distributed import as_completed

        if not items:
            return
        # Unique keys: two runs sharing one scheduler must not collide.
        prefix = f"{key_prefix or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        futures = self.client.map(fn, items, retries=self.retries, pure=False,
                                  key=[f"{prefix}-{i}" for i in range(len(items))])
        index = {f.key: i for i, f in enumerate(futures)}
        if on_submit is not None:
            on_submit()
        with tqdm(total=len(items), desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True) as bar:
            for future in as_completed(futures):
                try:
                    value = future.result()
                except Exception as err:  # noqa: BLE001 - reported as an error row by the caller
                    value = err
                bar.update()
                yield index[future.key], value
                future.release()


def _preload_forkserver(modules: tuple[str, ...]) -> dict[str, str]:
    """Set the forkserver's preload to ``modules`` and return the Dask config that has
    local workers started from it ({} where the platform has no forkserver: Windows).

    Dask sets its own preload list on the first :func:`~distributed.utils.get_mp_context`
    with the forkserver method and never again, so that call comes first and this list
    replaces it. The workers' glibc settings (:data:`WORKER_MALLOC_ENV`) still hold: Dask
    puts them into the client's environment before the first worker starts, and that start
    is what starts the forkserver (one that something else started earlier in the process
    passes on its own environment instead)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    from distributed.utils import get_mp_context

    config = {"distributed.worker.multiprocessing-method": "forkserver"}
    with dask.config.set(config):
        get_mp_context().set_forkserver_preload(list(modules))
    return config
