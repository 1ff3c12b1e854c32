"""``embed``: an exported backbone's features for every sample of a dataset, as GeoParquet.

The vectors are exactly what the probes of ``eoforge eval`` see: the same input preparation
(:meth:`eoforge.eval.inputs.InputSpec.prepare`: bands in model order, the model's
normalisation, resize to its ``img_size``) and the same :class:`~eoforge.eval.features.FeatureExtractor`
(``cls``, ``mean`` or ``dinov2``). By default one row per sample at the time step eval reads
(the first; for a model that reads S1, the first with S1 data); with ``per_step`` one row per
sample and time step (steps without S1 data are skipped for S1 models)::

    manifest.parquet ─▶ plan (sample order, parts) ─▶ shards of missing parts ─▶ prepare ─▶
    FeatureExtractor (batched) ─▶ EMB/part-NNNNNN.parquet (tmp + rename) ─▶ _embed.json, _SUCCESS

``EMB`` holds ``part-000000.parquet``, ... (GeoParquet 1.1, the manifest's ``geo`` metadata
conventions: WKB footprint in OGC:CRS84 lon/lat plus a ``bbox`` covering column), ``_embed.json``
(model sha256, settings, columns, counts) and ``_SUCCESS`` once every part is written.
Columns: ``key``, ``tile_id``, ``split``, ``datetime`` (UTC, the step's S2 acquisition),
``time_step`` (int32), ``geometry`` (WKB polygon, lon/lat degrees), ``bbox`` (struct, degrees),
``embedding`` (fixed-size list of float32 or float16, ``D`` values), ``model_sha256``.

Parts are fixed by sample order: part ``i`` holds manifest samples ``[i*n, (i+1)*n)`` of the
selected split(s) (``n = rows_per_part``; with ``per_step`` a part holds all steps of those
samples). A rerun keeps every finished part written with the same settings (part metadata
carries their fingerprint) and computes only the missing ones, reading only their shards.
An ``EMB`` folder written with another model, dataset manifest or settings is refused
(:class:`EmbedError`); choose a new ``--out`` folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds

from eoforge.eval.features import FEATURE_MODES, FeatureExtractor, extract_features, resolve_device
from eoforge.eval.inputs import NORMALIZATION_SOURCES, InputSpec, MissingInput, input_spec
from eoforge.shards.atomic import write_text_atomic
from eoforge.shards.digest import file_sha256
from eoforge.shards.manifest import MANIFEST_NAME, ManifestError, geo_metadata, read_manifest, write_parquet_atomic
from eoforge.shards.reader import decode_sample
from eoforge.train.model_format import load_backbone

EMBED_FORMAT = "eoforge-embeddings/1"
META_NAME = "_embed.json"  # "_": pyarrow, pandas and GeoPandas skip it when reading the folder
SUCCESS_NAME = "_SUCCESS"
PART_META_KEY = b"eoforge_embed"
DTYPES = ("float32", "float16")
DEVICES = ("cpu", "cuda", "auto")
_MANIFEST_COLUMNS = ["key", "shard", "split", "tile_id", "datetimes", "geometry", "bbox"]


class EmbedError(ValueError):
    """The model, the dataset and the output folder cannot be used together; the message names the file."""


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding settings (all but ``batch_size``, ``device`` and ``progress`` fix the output).

    Attributes:
        split: split name, or ``"all"`` (every split, in manifest order).
        per_step: one row per sample and time step instead of one per sample.
        dtype: ``"float32"`` or ``"float16"`` embedding values.
        features: ``"cls"``, ``"mean"`` or ``"dinov2"`` (see :mod:`eoforge.eval.features`).
        normalization: ``"model"`` (MODEL.json) or ``"dataset"`` (stats.json), as in eval.
        rows_per_part: samples per output part (defines the parts; resuming needs the same value).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"`` (``cuda:N``) or ``"auto"`` (CUDA when available).
        progress: show a tqdm bar.
    """

    split: str = "all"
    per_step: bool = False
    dtype: str = "float32"
    features: str = "cls"
    normalization: str = "model"
    rows_per_part: int = 4096
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.normalization not in NORMALIZATION_SOURCES:
            raise ValueError(f"normalization must be one of {NORMALIZATION_SOURCES}, got {self.normalization!r}")
        if self.rows_per_part < 1 or self.batch_size < 1:
            raise ValueError("rows_per_part and batch_size must be >= 1")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed` did.

    Attributes:
        out: the EMB folder.
        parts: part files, in order.
        rows: rows over all parts.
        computed_parts / kept_parts: parts written by this call / kept from an earlier run.
        skipped: samples (or steps) left out, by reason.
        dim: embedding length ``D``.
    """

    out: Path
    parts: list[Path]
    rows: int
    computed_parts: int
    kept_parts: int
    skipped: dict[str, int]
    dim: int


def part_path(out: Path, index: int) -> Path:
    return out / f"part-{index:06d}.parquet"


def embed_schema(dim: int, dtype: str) -> pa.Schema:
    """The part schema (without metadata) for ``dim`` values of ``dtype`` per row."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("key", pa.string()),
        ("tile_id", pa.string()),
        ("split", pa.string()),
        ("datetime", pa.timestamp("ms", tz="UTC")),
        ("time_step", pa.int32()),
        ("geometry", pa.binary()),
        ("bbox", pa.struct([(n, pa.float64()) for n in ("xmin", "ymin", "xmax", "ymax")])),
        ("embedding", pa.list_(value, dim)),
        ("model_sha256", pa.string()),
    ])


def _plan(data: Path, split: str) -> tuple[pa.Table, str]:
    """Manifest rows of the selected split(s), in manifest (= shard reading) order, and the
    manifest's sha256."""
    manifest = data / MANIFEST_NAME
    if not data.is_dir():
        raise EmbedError(f"{data}: no such dataset folder")
    try:
        table = read_manifest(data, columns=_MANIFEST_COLUMNS)
    except ManifestError as err:
        raise EmbedError(str(err)) from err
    if split != "all":
        import pyarrow.compute as pc

        splits = sorted(set(table.column("split").to_pylist()))
        table = table.filter(pc.equal(table.column("split"), split))
        if not table.num_rows:
            raise EmbedError(f"{manifest}: no samples in split {split!r} (splits: {', '.join(splits) or 'none'})")
    if not table.num_rows:
        raise EmbedError(f"{manifest}: no samples")
    return table, file_sha256(manifest)


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _part_meta(path: Path) -> dict[str, Any] | None:
    """The embed metadata of a finished part, or None if unreadable / not ours."""
    try:
        meta = pq.ParquetFile(path).schema_arrow.metadata or {}
        return json.loads(meta[PART_META_KEY])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None


def _check_folder(out: Path, fingerprint: str, settings: dict[str, Any]) -> None:
    """Refuse an EMB folder written with other settings (or that is not an embedding folder)."""
    meta_path = out / META_NAME
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise EmbedError(f"{meta_path}: not valid JSON ({err}); delete the folder or choose another --out") from err
        if old.get("fingerprint") != fingerprint:
            old_settings = old.get("settings", {})
            diff = sorted(k for k in set(settings) | set(old_settings) if settings.get(k) != old_settings.get(k))
            raise EmbedError(
                f"{meta_path}: {out} holds embeddings written with other settings (differing: {', '.join(diff)}; "
                f"model sha256 {str(old_settings.get('model_sha256'))[:12]}… there, "
                f"{settings['model_sha256'][:12]}… now); write them to a new --out folder, or delete this one")
    elif out.is_dir() and any(p.name != SUCCESS_NAME and not p.name.endswith(".tmp") for p in out.iterdir()):
        raise EmbedError(f"{out}: not empty and no {META_NAME} in it (not an `eoforge embed` folder); "
                         "choose a new --out folder")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _items(samples: Iterator[dict[str, Any]], plan: dict[str, int], spec: InputSpec, per_step: bool,
           skipped: dict[str, int], bar: Any) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """(model input, (plan row, time step)) for the samples of one part."""
    lacks = f"lacks {'/'.join(spec.modalities)}" + (" data" if "s1" in spec.modalities else "")
    for raw in samples:
        row = plan[raw["__key__"]]
        bar.update(1)
        try:
            # one step: only it is decoded; every step: the members the model reads, whole
            sample = decode_sample(raw, members=spec.members) if per_step else spec.decode(raw)
            first = spec.time_step(sample)  # the step eval reads; raises when the sample has no input
        except MissingInput:
            skipped[lacks] = skipped.get(lacks, 0) + 1
            continue
        if not per_step:
            yield spec.prepare(sample), (row, first)
            continue
        for t in range(len(sample[spec.modalities[0]])):
            try:
                image = spec.prepare(sample, t)
            except MissingInput:
                skipped["time step without S1 data"] = skipped.get("time step without S1 data", 0) + 1
                continue
            yield image, (row, t)


def _part_table(rows: pa.Table, payloads: list[tuple[int, int]], feats: torch.Tensor | None, dtype: str,
                model_sha: str, dim: int) -> pa.Table:
    idx = [r for r, _ in payloads]
    steps = [t for _, t in payloads]
    sub = rows.take(pa.array(idx, pa.int64())) if idx else rows.slice(0, 0)
    datetimes = sub.column("datetimes").to_pylist()
    np_dtype = np.float16 if dtype == "float16" else np.float32
    values = (feats.numpy().astype(np_dtype) if feats is not None else np.zeros((0, dim), np_dtype)).reshape(-1)
    schema = embed_schema(dim, dtype)
    return pa.table({
        "key": sub.column("key"),
        "tile_id": sub.column("tile_id"),
        "split": sub.column("split"),
        "datetime": pa.array([d[t] if d and t < len(d) else None for d, t in zip(datetimes, steps)],
                             pa.timestamp("ms", tz="UTC")),
        "time_step": pa.array(steps, pa.int32()),
        "geometry": sub.column("geometry"),
        "bbox": sub.column("bbox"),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values), dim),
        "model_sha256": pa.array([model_sha] * len(idx), pa.string()),
    }, schema=schema)


def embed(weights: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str],
          config: EmbedConfig | None = None) -> EmbedResult:
    """Write the embeddings of ``data``'s samples under ``weights`` to the folder ``out``.

    Args:
        weights: ``MODEL.safetensors`` (its ``.json`` beside it), from ``eoforge export``.
        data: dataset folder (shards + ``manifest.parquet``).
        out: the EMB folder (created; a rerun with the same settings resumes it).
        config: settings (default :class:`EmbedConfig`).

    Raises:
        EmbedError: no manifest / no samples in the split, no usable normalisation, an EMB
            folder written with other settings, or nothing embeddable.
        ModelFormatError: weights or their JSON missing or inconsistent (names the file).
    """
    from tqdm.auto import tqdm

    from eoforge import __version__

    config = config or EmbedConfig()
    data, out = Path(data), Path(out)
    table, manifest_sha = _plan(data, config.split)
    model, info = load_backbone(weights)
    try:
        spec = input_spec(info, data, config.normalization)
    except ValueError as err:
        raise EmbedError(f"{info.meta_path}: {err}") from err
    settings = {
        "model_sha256": info.weights_sha256, "manifest_sha256": manifest_sha, "split": config.split,
        "per_step": config.per_step, "dtype": config.dtype, "features": config.features,
        "normalization": config.normalization, "rows_per_part": config.rows_per_part,
        "inputs": spec.describe(),
    }
    fingerprint = _fingerprint(settings)
    _check_folder(out, fingerprint, settings)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob("*.tmp"):  # left by a killed run
        tmp.unlink()
    (out / SUCCESS_NAME).unlink(missing_ok=True)

    n = table.num_rows
    n_parts = (n + config.rows_per_part - 1) // config.rows_per_part
    keys = table.column("key").to_pylist()
    part_of = {k: i // config.rows_per_part for i, k in enumerate(keys)}
    if len(part_of) != n:
        raise EmbedError(f"{data / MANIFEST_NAME}: duplicate sample keys")
    kept = {i for i in range(n_parts) if (m := _part_meta(part_path(out, i))) is not None
            and m.get("fingerprint") == fingerprint and m.get("part") == i}
    todo = [i for i in range(n_parts) if i not in kept]
    time_step = "every step" if config.per_step else spec.describe()["time_step"]
    doc = {
        "format": EMBED_FORMAT, "complete": False, "fingerprint": fingerprint, "settings": settings,
        "time_step": time_step,
        "model": {"weights": str(info.weights), "weights_sha256": info.weights_sha256, "meta": str(info.meta_path),
                  "timm_model": info.timm_model, "method": info.method},
        "data": {"path": str(data), "manifest_sha256": manifest_sha, "samples": n},
        "parts": n_parts, "columns": embed_schema(1, config.dtype).names, "eoforge_version": __version__,
    }
    _write_json(out / META_NAME, doc)

    device = resolve_device(config.device)
    extractor = FeatureExtractor(model, config.features, device)
    todo_set = set(todo)
    need = {k for k, p in part_of.items() if p in todo_set}
    shards = list(dict.fromkeys(s for k, s in zip(keys, table.column("shard").to_pylist()) if k in need))
    plan = {k: i for i, k in enumerate(keys)}
    samples = wds.DataPipeline(  # only the shards of missing parts; other samples are not decoded
        wds.SimpleShardList([str(data / s) for s in shards]),
        wds.tarfile_to_samples(handler=wds.reraise_exception),
        wds.select(lambda raw: raw["__key__"] in need),
    ) if shards else iter(())
    expected = iter([k for k in keys if k in need])

    def checked(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in stream:
            want = next(expected, None)
            if sample["__key__"] != want:
                raise EmbedError(f"{data}: shards and manifest disagree: read {sample['__key__']!r}, "
                                 f"the manifest says {want!r} (run `eoforge shards verify {data}`)")
            yield sample

    dim = 0
    with tqdm(total=len(need), desc="embed", unit="sample", disable=not config.progress, dynamic_ncols=True) as bar:
        groups = itertools.groupby(checked(iter(samples)), key=lambda s: part_of[s["__key__"]])
        for index, group in groups:
            skipped: dict[str, int] = {}
            feats, payloads = extract_features({"m": extractor}, _items(group, plan, spec, config.per_step,
                                                                      skipped, bar), config.batch_size)
            pooled = feats["m"].get("pooled")
            dim = dim or (int(pooled.shape[1]) if pooled is not None else 0)
            if not dim:  # a part with no embeddable sample before any was seen: learn D once
                dim = _probe_dim(extractor, spec, data)
            part = _part_table(table, payloads, pooled, config.dtype, info.weights_sha256, dim)
            meta = {b"geo": json.dumps(geo_metadata(part)).encode(),
                    PART_META_KEY: json.dumps({"fingerprint": fingerprint, "part": index, "rows": part.num_rows,
                                               "skipped": skipped}).encode()}
            write_parquet_atomic(part.replace_schema_metadata(meta), part_path(out, index))
    missing = [i for i in todo if not part_path(out, i).is_file()]
    if missing:
        raise EmbedError(f"{data}: samples of part(s) {missing} were not found in their shards")

    rows, dims, skipped_all = 0, set(), {}
    for i in range(n_parts):
        pf = pq.ParquetFile(part_path(out, i))
        m = json.loads(pf.schema_arrow.metadata[PART_META_KEY])
        rows += m["rows"]
        dims.add(pf.schema_arrow.field("embedding").type.list_size)
        for reason, c in m["skipped"].items():
            skipped_all[reason] = skipped_all.get(reason, 0) + c
    if not rows:
        raise EmbedError(f"{data}: no sample could be embedded (skipped: {skipped_all})")
    dim = dims.pop()
    _write_json(out / META_NAME, {**doc, "complete": True, "rows": rows, "dim": dim, "skipped": skipped_all,
                                  "device": str(device)})
    (out / SUCCESS_NAME).write_text("")
    return EmbedResult(out, [part_path(out, i) for i in range(n_parts)], rows, len(todo), len(kept),
                       skipped_all, dim)


def _probe_dim(extractor: FeatureExtractor, spec: InputSpec, data: Path) -> int:
    """Embedding length from one forward pass of a zero input (for a part with no rows)."""
    size = spec.img_size or int(read_manifest(data, columns=["width"]).column("width")[0].as_py())
    x = torch.zeros(1, len(spec.bands), size, size)
    return int(extractor(x)["pooled"].shape[1])


