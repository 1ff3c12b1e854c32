"""sha256 digests: of files (the identities a manifest, a training run and an export record)
and of values (:func:`stable_hash`, every seeded draw that must not depend on the process).

``DS/manifest.parquet``'s digest names the dataset a run trained on (``RUN/dataset.json``,
``MODEL.json``, eval reports); a weights file's digest names the model (MLM item ids,
embeddings, compare tables). Read in 1 MiB blocks: memory does not grow with the file.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stable_hash(*parts: object) -> int:
    """A 64-bit integer from ``parts`` (joined as ``str`` with ``|``), the same in every process
    and Python run (``hash()`` is salted per process).

    The one hash behind seeded choices: ingest's split and season draws, training's stream
    seeds, the eval adapters' splits and orders. (The demo generator keeps its own 32-bit key,
    ``eoforge.ingest.demo.landscape.stable_key``: the sample data is defined by it.)
    """
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")
