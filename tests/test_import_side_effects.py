"""Importing eoforge's modules changes no global state: no matplotlib backend, no OpenCV thread pool.

A user's notebook keeps its interactive backend and its OpenCV threads after ``import
eoforge...``; the settings ingest needs are made where the work starts (a read task's
``SourceCache``), the pictures are drawn on ``Figure`` objects without pyplot.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import cv2, matplotlib
cv2.setNumThreads(3)
matplotlib.use("svg")  # a user's choice, before eoforge is imported
import eoforge.cli, eoforge.shards.plots, eoforge.ingest.read, eoforge.ingest.pieces, eoforge.train.engine
import eoforge.eval.compare, eoforge.ingest.report
print(matplotlib.get_backend(), cv2.getNumThreads())
from eoforge.ingest.read import SourceCache
SourceCache()
print(cv2.getNumThreads())
"""


def test_imports_leave_the_matplotlib_backend_and_opencv_threads_alone() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=True)
    first, second = out.stdout.split("\n")[:2]
    assert first == "svg 3", out.stdout
    assert second == "1"  # a read task sets it where it starts


def test_pictures_are_written_without_pyplot(tmp_path) -> None:
    code = ("import sys; from eoforge.train.engine import plot_metrics; import json, pathlib; "
            f"p = pathlib.Path({str(tmp_path)!r}); "
            "(p / 'm.jsonl').write_text(''.join(json.dumps({'step': s, 'loss': 1 / s}) + '\\n' for s in range(1, 5))); "
            "plot_metrics(p / 'm.jsonl', p / 'loss.png'); print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
