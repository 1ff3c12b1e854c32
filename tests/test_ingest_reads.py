"""Each source is read once, counted by the kernel rather than by eoforge: inotify sees every
open(2) of a raw file by any process (the Dask workers included) while ``eoforge ingest`` runs
its read stage over a dataset whose scan inventory is already there."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DEMO_INGEST

from eoforge.ingest.config import IngestConfig
from eoforge.ingest.pipeline import run_ingest
from eoforge.ingest.plan import plan_reads, plan_rows

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")]

IN_OPEN, IN_ISDIR, IN_Q_OVERFLOW = 0x20, 0x40000000, 0x4000


class OpenWatch:
    """Counts opens of the files under a folder (inotify IN_OPEN on every sub-folder)."""

    def __init__(self, root: Path) -> None:
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.dirs = {}
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            wd = self.libc.inotify_add_watch(self.fd, str(d).encode(), IN_OPEN)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.dirs[wd] = d

    def opens(self) -> Counter[Path]:
        counts: Counter[Path] = Counter()
        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            i = 0
            while i < len(buf):
                wd, mask, _, n = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
                i += 16 + n
                assert not mask & IN_Q_OVERFLOW, "inotify queue overflowed: counts would be short"
                if name and not mask & IN_ISDIR:
                    counts[self.dirs[wd] / name] += 1
        os.close(self.fd)
        return counts


def test_each_planned_source_is_opened_once_per_read_task_and_nothing_else(demo_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    config = IngestConfig(**{**DEMO_INGEST, "read_task_rows": 2})  # scenes read in parts: a file per part
    run_ingest([str(demo_raw)], out, config=config, workers=2, progress=False, dry_run=True)  # scan + inventory
    watch = OpenWatch(demo_raw)
    result = run_ingest([str(demo_raw)], out, config=config, workers=2, progress=False)
    opens = watch.opens()
    assert result.samples > 0

    # what the plan asks for, from plan.parquet and scenes.parquet (not from any task report)
    plan = plan_rows(pq.read_table(out / "plan.parquet"))
    scenes = {s["scene"]: s for s in pq.read_table(out / "scenes.parquet").to_pylist()}
    tasks = Counter(t.scene for t in plan_reads(plan, config, workers=2))
    expected: Counter[Path] = Counter()
    for scene, n in tasks.items():
        for path in scenes[scene]["paths"]:
            if Path(path).suffix == ".tif":  # sidecars (XML, JSON) are read by the scan only
                expected[Path(path)] += n
    used = {Path(p) for s in tasks for p in scenes[s]["paths"]}
    unused = {Path(p) for i, s in scenes.items() if i not in tasks for p in s["paths"]}
    assert unused, "the demo has duplicates and far-in-time scenes the plan leaves out"
    tifs = {p: c for p, c in opens.items() if p.suffix == ".tif"}
    assert not set(tifs) & (unused - used), "a scene the plan left out was opened"
    # every band file of a planned scene is opened, by at most each of its scene's read tasks
    # once (a part whose windows miss a file never opens it), and no other raster at all;
    # the shard tasks open none: they copy staged frames
    assert set(tifs) == set(expected) and len(expected) > 50
    over = {p: (tifs[p], n) for p, n in expected.items() if tifs[p] > n}
    assert not over, f"opened more often than read tasks of its scene: {over}"
    assert max(tifs.values()) > 1  # scenes read in parts: a file per part
