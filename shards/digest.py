"""sha256 of files: the identities a manifest, a training run and an export record.

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
