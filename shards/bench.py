"""Benchmark: which member encoding? Bytes per sample vs decoded samples/s per core.

Candidates: plain ``npy``, ``npy.gz`` (gzip 6, webdataset's usual compressed form),
``npy.zst`` at zstd levels 1, 3 and 9, and a byte-shuffled zstd variant (Blosc-style; not
plain ``.npy`` any more, measured to show what interoperability costs). Each is measured on the same
S2 samples (uint16 ``[4, 13, 264, 264]``, DN harmonised, zero B10, as ingest writes them)
and S1 samples (float16 dB ``[4, 2, 264, 264]``), in one process on one core, side by side.

Data, best first: real S2 L2A chips cut from the SAFE product under ``--real-data``
(``$EOFORGE_REAL_DATA``) and real S1 dB chips from the Sen1Floods11 sample; without them,
the synthetic demo landscape.

Run with ``make bench``; writes ``build/bench/results.json`` (merged by section) and
``results.md``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
import zstandard

from eoforge.shards.encoding import decode_array, npy_bytes
from eoforge.shards.schema import S2_B10_INDEX, S2_BAND_NAMES, s2_file_label

TILE = 264
STEPS = 4


def _real_s2_chips(real: Path) -> np.ndarray | None:
    """``[N, 13, 264, 264]`` uint16 chips from the real S2 L2A SAFE (60 m bands; B8 from B8A)."""
    import rasterio

    safes = sorted(real.glob("S2*_MSIL2A_*.SAFE"))
    if not safes:
        return None
    files = {p.name.split("_")[-2]: p for p in safes[0].glob("GRANULE/*/IMG_DATA/R60m/*_B*_60m.jp2")}
    bands: list[np.ndarray | None] = []
    for name in S2_BAND_NAMES:
        path = files.get(s2_file_label(name)) or (files.get("B8A") if name == "B8" else None)
        if name == "B10" or path is None:
            bands.append(None)
            continue
        with rasterio.open(path) as src:
            bands.append(src.read(1))
    shape = next(b for b in bands if b is not None).shape
    stack = np.stack([b if b is not None else np.zeros(shape, np.uint16) for b in bands])
    # baseline 04.00: remove the +1000 offset as ingest does (valid pixels stay >= 1)
    valid = stack != 0
    stack = np.where(valid, np.maximum(stack.astype(np.int32) - 1000, 1), 0).astype(np.uint16)
    stack[S2_B10_INDEX] = 0
    chips = [
        stack[:, r : r + TILE, c : c + TILE]
        for r in range(0, shape[0] - TILE + 1, TILE)
        for c in range(0, shape[1] - TILE + 1, TILE)
    ]
    # keep chips that are mostly data (the product has a nodata wedge)
    chips = [c for c in chips if (c[1] != 0).mean() > 0.9]
    return np.stack(chips) if chips else None


def _real_s1_chips(real: Path) -> np.ndarray | None:
    import rasterio

    files = sorted(real.glob("sen1floods11*/*S1Hand.tif"))
    if not files:
        return None
    with rasterio.open(files[0]) as src:
        a = src.read().astype(np.float16)  # [2, 512, 512] dB, NaN nodata
    return np.stack([a[:, r : r + TILE, c : c + TILE] for r in (0, 248) for c in (0, 248)])


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fallback without real data: smooth fields + noise, plausible DN and dB ranges."""
    rng = np.random.default_rng(seed)
    n = 8
    base = rng.uniform(300, 3500, (n, 13, 1, 1))
    coarse = rng.normal(0, 1, (n, 13, TILE // 8, TILE // 8)).repeat(8, 2).repeat(8, 3)
    s2 = (base * (1 + 0.3 * coarse) + rng.normal(0, 60, (n, 13, TILE, TILE))).clip(1, 12000).astype(np.uint16)
    s2[:, S2_B10_INDEX] = 0
    s1 = (-14 + 3 * coarse[:, :2] + 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (n, 2, TILE, TILE)))).astype(np.float16)
    return s2, s1


def _samples(chips: np.ndarray, count: int) -> list[np.ndarray]:
    """Group chips into [T=4, C, H, W] samples (time steps from different chips, as seasons)."""
    idx = np.arange(count * STEPS) % len(chips)
    return [chips[idx[i * STEPS : (i + 1) * STEPS]] for i in range(count)]


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], str]]:
    return {
        "npy": (lambda b: b, "npy"),
        "npy.gz (gzip 6)": (lambda b: gzip.compress(b, 6, mtime=0), "npy.gz"),
        "npy.zst (zstd 1, default)": (lambda b: zstandard.ZstdCompressor(level=1).compress(b), "npy.zst"),
        "npy.zst (zstd 3)": (lambda b: zstandard.ZstdCompressor(level=3).compress(b), "npy.zst"),
        "npy.zst (zstd 9)": (lambda b: zstandard.ZstdCompressor(level=9).compress(b), "npy.zst"),
        "byte-shuffled npy.zst (zstd 3; not adopted)": (_shuffle_compress, "shuffle.zst"),
    }


def _shuffle_compress(npy: bytes) -> bytes:
    """Blosc-style byte shuffle of the array body, then zstd: smaller, but not plain .npy."""
    arr = np.lib.format.read_array(io.BytesIO(npy))
    planes = np.ascontiguousarray(arr.view(np.uint8).reshape(-1, arr.itemsize).T)
    header = json.dumps({"dtype": arr.dtype.str, "shape": arr.shape}).encode()
    return len(header).to_bytes(4, "little") + header + zstandard.ZstdCompressor(level=3).compress(planes.tobytes())


def _shuffle_decompress(data: bytes) -> np.ndarray:
    n = int.from_bytes(data[:4], "little")
    head = json.loads(data[4 : 4 + n])
    dtype = np.dtype(head["dtype"])
    planes = np.frombuffer(zstandard.ZstdDecompressor().decompress(data[4 + n :]), np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(head["shape"])


def _decode(data: bytes, suffix: str) -> np.ndarray:
    # npy.gz and the shuffled variant are measured for comparison only; eoforge does not write them
    if suffix == "npy.gz":
        return decode_array(gzip.decompress(data), "npy")
    if suffix == "shuffle.zst":
        return _shuffle_decompress(data)
    return decode_array(data, suffix)


def measure(samples: list[np.ndarray], min_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Bytes/sample, encode and decode samples/s (one core) for every candidate codec."""
    raws = [npy_bytes(s) for s in samples]
    rows = []
    for name, (compress, suffix) in _codecs().items():
        t0 = time.perf_counter()
        encoded = [compress(r) for r in raws]
        enc_s = time.perf_counter() - t0
        for e, s in zip(encoded, samples):  # correctness before speed
            assert np.array_equal(_decode(e, suffix), s, equal_nan=s.dtype.kind == "f"), name
        n, t0 = 0, time.perf_counter()
        while True:
            for e in encoded:
                _decode(e, suffix)
            n += len(encoded)
            if time.perf_counter() - t0 >= min_seconds:
                break
        dec_s = (time.perf_counter() - t0) / n
        nbytes = float(np.mean([len(e) for e in encoded]))
        rows.append({
            "codec": name,
            "bytes_per_sample": nbytes,
            "ratio_vs_npy": nbytes / len(raws[0]),
            "encode_samples_per_s": len(samples) / enc_s,
            "decode_samples_per_s": 1.0 / dec_s,
            "decode_mb_per_s": len(raws[0]) / dec_s / 1e6,
        })
    return rows


def write_results(out: Path, section: str, result: dict, markdown: str) -> None:
    """Merge one section into ``results.json`` and rewrite ``results.md`` from all sections."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = result
    path.write_text(json.dumps(results, indent=2) + "\n")
    md_dir = out / "sections"
    md_dir.mkdir(exist_ok=True)
    (md_dir / f"{section}.md").write_text(markdown)
    parts = [p.read_text() for p in sorted(md_dir.glob("*.md"))]
    (out / "results.md").write_text("# eoforge benchmarks\n\n" + "\n".join(parts))


def _table(rows: list[dict]) -> str:
    lines = [
        "| codec | bytes/sample | vs npy | decode samples/s/core | decode MB/s | encode samples/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['bytes_per_sample'] / 1e6:.2f} MB | {r['ratio_vs_npy']:.2f} |"
            f" {r['decode_samples_per_s']:.0f} | {r['decode_mb_per_s']:.0f} | {r['encode_samples_per_s']:.1f} |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--real-data", type=click.Path(path_type=Path), default=lambda: os.environ.get("EOFORGE_REAL_DATA"),
              help="Folder of real products [default: $EOFORGE_REAL_DATA].")
@click.option("--samples", type=int, default=8, show_default=True, help="Samples per modality.")
def main(out: Path, real_data: Path | None, samples: int) -> None:
    """Measure member encodings and write the 'encoding' section of the benchmark report."""
    s2_chips = s1_chips = None
    if real_data:
        s2_chips, s1_chips = _real_s2_chips(Path(real_data)), _real_s1_chips(Path(real_data))
    syn_s2, syn_s1 = _synthetic()
    sources = {
        "s2": ("real S2 L2A T29UNU (60 m bands, 264 px chips)" if s2_chips is not None else "synthetic", s2_chips if s2_chips is not None else syn_s2),
        "s1": ("real S1 dB, Sen1Floods11 Spain chip" if s1_chips is not None else "synthetic", s1_chips if s1_chips is not None else syn_s1),
    }
    result: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "sample_shape": {"s2": [STEPS, 13, TILE, TILE], "s1": [STEPS, 2, TILE, TILE]},
    }
    md = ["## Member encoding (`shards/bench.py`)", ""]
    for modality, (source, chips) in sources.items():
        rows = measure(_samples(chips, samples))
        result[modality] = {"source": source, "codecs": rows}
        md += [f"**{modality}** — {source}, {samples} samples of {result['sample_shape'][modality]}, one core:", "", _table(rows), ""]
        click.echo(f"{modality}: {source}\n{_table(rows)}\n")
    write_results(out, "encoding", result, "\n".join(md))
    click.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()
