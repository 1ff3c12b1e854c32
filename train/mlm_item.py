"""The STAC item of an exported backbone, in the Machine Learning Model extension (MLM v1.5.2).

``eoforge export`` writes ``MODEL.stac.json`` beside ``MODEL.safetensors`` and ``MODEL.json``,
so STAC catalogs, model registries and tools that read MLM (stac-model, QGIS plugins, TerraTorch
pipelines that consume MLM) find the model with its inputs and normalisation and no eoforge code:

- ``mlm:input``: one input, the bands in channel order (also listed as STAC 1.1 ``bands`` with
  their centre wavelength and native GSD), shape ``[-1, in_chans, img, img]`` (batch, bands,
  height, width) float32, ``resize_type: interpolation-linear`` (tiles of another size are
  resized bilinearly, as ``eoforge eval`` does), and ``value_scaling`` per band: the
  normalisation of MODEL.json, ``(x - offset) * scale``, as a ``z-score`` with ``mean = offset``
  and ``stddev = 1 / scale``; a band with ``scale`` 0 (L2A's zero B10) as ``scale`` 0; a band
  clipped first (S1 dB, ``value_min``/``value_max``) as a ``processing`` expression. No-data
  pixels (S2 DN 0, S1 NaN) are 0 after normalisation, which MLM cannot say per value: the
  input's description says it.
- ``mlm:output``: the pooled embedding ``[-1, num_features]`` (``similarity-search``: a backbone
  for probes, retrieval and fine-tuning heads).
- assets: ``weights`` (the safetensors file; roles ``mlm:model``, ``mlm:weights``; artifact type
  ``safetensors.torch.save_file``; load with ``timm.create_model(**MODEL.json)``) and ``metadata``
  (MODEL.json, the authoritative record), ``terratorch`` (MODEL.terratorch.yaml, the backbone
  block of a TerraTorch config, :mod:`eoforge.train.terratorch_block`); hrefs relative to the item.

Geometry and bbox: the training dataset's extent from its manifest's GeoParquet metadata when
the manifest is readable at export time, else null (no geometry). ``datetime``: the export time.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eoforge.shards.schema import S1_BANDS, S2_BANDS

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
STAC_VERSION = "1.1.0"
BAND_FACTS = {b.name: b for b in (*S2_BANDS, *S1_BANDS)}


def value_scaling(normalization: dict[str, Any]) -> list[dict[str, Any]]:
    """One MLM value-scaling object per band from MODEL.json's ``normalization``
    (``x_norm = (clip(x, value_min, value_max) - offset) * scale``)."""
    offsets, scales = normalization["offset"], normalization["scale"]
    lows = normalization.get("value_min") or [None] * len(offsets)
    highs = normalization.get("value_max") or [None] * len(offsets)
    out: list[dict[str, Any]] = []
    for offset, scale, low, high in zip(offsets, scales, lows, highs):
        offset, scale = float(offset or 0.0), float(scale or 0.0)
        if low is not None or high is not None:
            low_s = "-inf" if low is None else repr(float(low))
            high_s = "inf" if high is None else repr(float(high))
            out.append({"type": "processing", "format": "python",
                        "expression": f"(numpy.clip(x, {low_s}, {high_s}) - {offset!r}) * {scale!r}",
                        "description": "clipped to the value range first, then scaled"})
        elif scale == 0.0 or not math.isfinite(scale):
            out.append({"type": "scale", "value": 0.0})  # a band without statistics: always 0
        else:
            out.append({"type": "z-score", "mean": offset, "stddev": 1.0 / scale})
    return out


def _bands(names: list[str]) -> list[dict[str, Any]]:
    bands = []
    for name in names:
        band: dict[str, Any] = {"name": name}
        facts = BAND_FACTS.get(name)
        if facts is not None:
            band["gsd"] = facts.gsd_m
            band["description"] = (f"Sentinel-2 {name}, {facts.wavelength_nm} nm, DN (reflectance x 10000)"
                                   if facts.wavelength_nm else f"Sentinel-1 {name} backscatter, dB")
        bands.append(band)
    return bands


def _extent(manifest: Path | None) -> tuple[dict[str, Any] | None, list[float] | None]:
    """(GeoJSON polygon, bbox) of a dataset from its manifest's GeoParquet ``geo`` metadata."""
    if manifest is None or not manifest.is_file():
        return None, None
    try:
        import pyarrow.parquet as pq

        geo = json.loads(pq.read_schema(manifest).metadata[b"geo"])
        bbox = [float(v) for v in geo["columns"][geo["primary_column"]]["bbox"]]
    except (OSError, KeyError, TypeError, ValueError):
        return None, None
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}, bbox


def mlm_item(meta: dict[str, Any], weights: Path, meta_path: Path, num_features: int, num_params: int,
             manifest: Path | None = None, created: datetime | None = None) -> dict[str, Any]:
    """The STAC MLM item (a dict) of an exported backbone: ``meta`` is MODEL.json's content,
    ``weights`` / ``meta_path`` the files it describes (hrefs relative to the item, which sits
    beside them), ``num_features`` the embedding size, ``manifest`` the training dataset's."""
    import torch

    created = created or datetime.now(timezone.utc)
    geometry, bbox = _extent(manifest)
    bands = list(meta["bands"])
    size = int(meta["img_size"] or 224)
    norm = meta["normalization"]
    from eoforge.shards.digest import file_sha256

    # unique per weights file: a catalog holds many exports of one method and architecture
    model_id = f"eoforge-{meta['method']}-{meta['timm_model']}-{meta['branch']}-{file_sha256(weights)[:12]}"
    properties: dict[str, Any] = {
        "datetime": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": (f"{meta['method']} backbone ({meta['timm_model']}, branch {meta['branch']}) pretrained "
                        f"with eoforge for {meta['step']} steps; MODEL.json holds the full record"),
        "bands": _bands(bands),
        "mlm:name": model_id,
        "mlm:architecture": meta["timm_model"],
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": torch.__version__.split("+")[0],
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "runs on CPU; CUDA when available",
        "mlm:total_parameters": int(num_params),
        "mlm:pretrained": True,
        "mlm:pretrained_source": f"eoforge {meta['method']} on {meta.get('data') or 'an eoforge dataset'} "
                                 f"(manifest sha256 {meta.get('manifest_sha256')})",
        "mlm:input": [{
            "name": f"{'+'.join(dict.fromkeys(norm.get('modality') or ['image']))} bands",
            "description": (f"{len(bands)} bands in this order, each normalised as value_scaling says "
                            f"({norm.get('mode')}); no-data pixels (S2 DN 0, S1 NaN or invalid) are 0 after "
                            "normalisation"),
            "bands": bands,
            "input": {"shape": [-1, len(bands), size, size], "dim_order": ["batch", "bands", "height", "width"],
                      "data_type": "float32"},
            "value_scaling": value_scaling(norm),
            "resize_type": "interpolation-linear",
        }],
        "mlm:output": [{
            "name": "embedding",
            "description": "the backbone's pooled features (timm num_classes=0): class token or global average",
            "tasks": ["similarity-search"],
            "result": {"shape": [-1, int(num_features)], "dim_order": ["batch", "embedding"], "data_type": "float32"},
        }],
    }
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA],
        "id": model_id,
        "geometry": geometry,
        **({"bbox": bbox} if bbox else {}),
        "properties": properties,
        "links": [],
        "assets": {
            "weights": {
                "href": f"./{weights.name}",
                "title": f"{meta['timm_model']} weights (timm state dict)",
                "type": "application/octet-stream; application=safetensors",
                "roles": ["mlm:model", "mlm:weights"],
                "mlm:artifact_type": "safetensors.torch.save_file",
            },
            "metadata": {
                "href": f"./{meta_path.name}",
                "title": "eoforge MODEL.json: timm name and arguments, bands, normalisation, run",
                "type": "application/json",
                "roles": ["metadata"],
            },
            "terratorch": {
                "href": f"./{weights.stem}.terratorch.yaml",
                "title": "TerraTorch backbone block: timm name and arguments, weights file, bands, means and stds",
                "type": "application/yaml",
                "roles": ["metadata", "mlm:training-runtime"],
            },
        },
    }
    return item


def stac_item_path(weights: str | Path) -> Path:
    """``MODEL.stac.json`` beside ``MODEL.safetensors``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".stac.json")
