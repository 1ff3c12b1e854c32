"""What a planned sample will take on disk, from the plan alone (the dry run's estimate and
the staging budget of a wave).

**Size estimate** (:func:`estimate_tile_bytes`), per tile with T planned steps, P of them
paired, tile edge n px: the members' raw bytes (``S2 [T, 13, n, n]`` uint16, ``SCL [T, n, n]``
uint8 for L2A, ``S1 [T, 2, n, n]`` in ``s1_dtype`` and ``s1valid [T, n, n]`` bool when P > 0,
``lc [n, n]`` uint8 with land cover) times a zstd ratio, plus the sample JSON and the tar
framing. The ratios (:data:`ZSTD_RATIO`): S2 0.72 and S1 0.78, measured on real S2 L2A
chips and real S1 dB (README, "Member encoding: measured"); SCL, ``s1valid`` and ``lc`` are
not measured and count at 1.0, an upper bound. With zstd the S1 entries of unpaired steps
(constant NaN / False fill, a few bytes compressed) count as 0. Codec ``npy``: ratio 1.0
everywhere. The JSON (:data:`JSON_BYTES`) was measured on the demo dataset (product ids,
dates and labels, not pixels, make its size).
"""

from __future__ import annotations

import numpy as np

from eoforge.ingest.config import IngestConfig
from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES

#: Stored / raw bytes of a member's entries with codec ``zstd`` (level 1): S2 and S1 measured
#: on real data (README, "Member encoding: measured"); the others not measured, 1.0 (upper bound).
ZSTD_RATIO = {"s2": 0.72, "s1": 0.78, "s1valid": 1.0, "scl": 1.0, "lc": 1.0}
#: Sample JSON bytes = base + per time step + per S1-paired step (labels included), measured
#: on the demo dataset: 1932-2532 bytes for 3-4 steps, this rule gives 3-4 % more.
JSON_BYTES = (700, 400, 100)
#: ``.npy`` header at the start of every array member (96-128 bytes).
NPY_HEADER_BYTES = 128
#: Tar framing per member: a 512-byte header and, on average, 256 bytes padding to 512.
TAR_MEMBER_BYTES = 512 + 256
#: Tar end per shard: two 512-byte blocks, then on average half a 10 KiB record of padding.
TAR_SHARD_BYTES = 1024 + 5120



def estimate_tile_bytes(steps: np.ndarray, paired: np.ndarray, landcover: np.ndarray,
                        config: IngestConfig) -> tuple[np.ndarray, np.ndarray]:
    """(raw member bytes, estimated stored bytes) per tile, from its planned time steps,
    S1-paired steps and whether it has land cover (arrays of one value per tile); the rule
    is the module docstring's."""
    steps, paired = np.asarray(steps, np.int64), np.asarray(paired, np.int64)
    landcover = np.asarray(landcover, bool)
    px = config.tile_size_px ** 2
    with_s1 = paired > 0
    raw = {
        "s2": steps * len(S2_BAND_NAMES) * px * 2,
        "scl": steps * px * (config.s2_level == "L2A"),
        "s1": with_s1 * steps * len(S1_BAND_NAMES) * px * np.dtype(config.s1_dtype).itemsize,
        "s1valid": with_s1 * steps * px,
        "lc": landcover * px,
    }
    if config.codec == "zstd":  # steps without S1 hold constant fill: a few bytes compressed
        stored = {k: v * ZSTD_RATIO[k] for k, v in raw.items()}
        stored["s1"] = paired * len(S1_BAND_NAMES) * px * np.dtype(config.s1_dtype).itemsize * ZSTD_RATIO["s1"]
        stored["s1valid"] = paired * px * ZSTD_RATIO["s1valid"]
    else:
        stored = dict(raw)
    arrays = 1 + (config.s2_level == "L2A") + 2 * with_s1 + landcover  # array members per sample
    base, per_step, per_pair = JSON_BYTES
    framing = arrays * NPY_HEADER_BYTES + (arrays + 1) * TAR_MEMBER_BYTES + base + per_step * steps + per_pair * paired
    total_raw = np.asarray(sum(raw.values()), np.int64)
    return total_raw, np.round(sum(stored.values()) + framing).astype(np.int64)
