"""``evaluate``: frozen-backbone probes of an exported model, always beside its random-init twin.

One pass over each split reads and prepares every sample once and runs both backbones on it
(the exported weights and the same architecture randomly initialised with ``seed``), so the
two rows of every probe see exactly the same inputs, labels and label-fraction draw::

    MODEL.safetensors ─▶ pretrained ─┐
                                     ├─▶ features (train, eval) ─▶ kNN / linear / segmentation
    same arch, seed   ─▶ random-init ┘                                 ─▶ results.json + results.md

Probes: ``"knn"`` and ``"linear"`` use image-level labels (``meta.labels.multi_hot``: the
land-cover labels of any ingested dataset, EuroSAT's class, BigEarthNet-19), ``"segmentation"``
uses the ``lc`` member (Sen1Floods11 water, or an ingested land-cover map). The training split
is reduced to ``label_fraction`` by a seeded draw (:func:`eoforge.eval.labels.label_fraction_subset`)
that all probes and both backbones share.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eoforge.eval.features import FEATURE_MODES, FeatureExtractor, extract_features, feature_dims, resolve_device
from eoforge.eval.inputs import InputSpec, MissingInput, input_spec
from eoforge.eval.knn import KNNConfig, knn_probe
from eoforge.eval.labels import (
    LABEL_MODES,
    LabelError,
    LabelSpace,
    image_target,
    label_fraction_subset,
    label_space,
    segmentation_target,
)
from eoforge.eval.linear import LinearConfig, linear_probe
from eoforge.eval.report import to_markdown, write_report
from eoforge.eval.segmentation import SegmentationConfig, segmentation_probe
from eoforge.shards.digest import file_sha256
from eoforge.shards.reader import decode_sample, iter_dataset, shard_urls
from eoforge.shards.schema import ALL_TAXONOMIES
from eoforge.train.model_format import ModelInfo, load_backbone, random_init_backbone

PROBES = ("knn", "linear", "segmentation")
BACKBONES = ("pretrained", "random-init")


class EvalError(ValueError):
    """The model and the dataset cannot be evaluated together; the message says why."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (all recorded in the report).

    Attributes:
        features: ``"cls"``, ``"mean"`` or ``"dinov2"`` (see :mod:`eoforge.eval.features`).
        label_fraction: share of the training split used as labelled data, (0, 1].
        seed: random-init backbone, label-fraction draw, probe initialisation and shuffling.
        train_split / eval_split: split names in the dataset.
        normalization: ``"model"`` (MODEL.json, falls back to the dataset) or ``"dataset"`` (stats.json).
        label_mode: ``"auto"`` (from the taxonomy), ``"single"`` or ``"multi"``.
        img_size: input size override in pixels (default: the model's).
        batch_size: images per backbone forward pass.
        device: ``"cpu"``, ``"cuda"`` (``cuda:N``) or ``"auto"`` (CUDA when available).
        knn / linear / segmentation: probe settings.
    """

    features: str = "cls"
    label_fraction: float = 1.0
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "val"
    normalization: str = "model"
    label_mode: str = "auto"
    img_size: int | None = None
    batch_size: int = 64
    device: str = "auto"
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self) -> None:
        if self.features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {self.features!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class EvalResult:
    """What :func:`evaluate` produced.

    Attributes:
        report: the results and settings (the content of ``results.json``).
        json_path / markdown_path: files written (None without ``out``).
    """

    report: dict[str, Any]
    json_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def markdown(self) -> str:
        return to_markdown(self.report)

    def metric(self, backbone: str, probe: str, name: str) -> float:
        """One number, e.g. ``result.metric("pretrained", "knn", "micro_ap")``."""
        for row in self.report["results"]:
            if row["backbone"] == backbone and row["probe"] == probe:
                return row["metrics"][name]
        raise KeyError(f"no result for {backbone} / {probe}")


@dataclass
class _Split:
    keys: list[str]
    targets: Any  # int64 [N] or float [N, C], or None
    seg: list[torch.Tensor] | None
    features: dict[str, dict[str, torch.Tensor]]
    samples: int


def evaluate(
    weights: str | os.PathLike[str],
    data: str | os.PathLike[str],
    probes: str | Sequence[str] = ("knn", "linear"),
    config: EvalConfig | None = None,
    out: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Probe an exported backbone and its random-init twin on a labelled dataset.

    Args:
        weights: ``MODEL.safetensors`` (its ``.json`` beside it).
        data: dataset folder (shards + manifest, labelled).
        probes: any of :data:`PROBES`.
        config: settings (default :class:`EvalConfig`).
        out: folder for ``results.json`` and ``results.md`` (nothing written when None).

    Raises:
        EvalError: missing splits, no labelled samples, or unknown probes.
    """
    config = config or EvalConfig()
    probes = (probes,) if isinstance(probes, str) else tuple(dict.fromkeys(probes))
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise EvalError(f"unknown probe(s) {unknown} (known: {PROBES})")
    data = Path(data)
    for split in (config.train_split, config.eval_split):
        if not shard_urls(data, split):
            raise EvalError(f"{data}: no shards in split {split!r}")

    pretrained, info = load_backbone(weights)
    random_init = random_init_backbone(info, seed=config.seed)
    try:
        spec = input_spec(info, data, config.normalization, config.img_size)
    except ValueError as err:
        raise EvalError(f"{info.meta_path}: {err}") from err
    device = resolve_device(config.device)
    extractors = {"pretrained": FeatureExtractor(pretrained, config.features, device),
                  "random-init": FeatureExtractor(random_init, config.features, device)}
    need_image = any(p in probes for p in ("knn", "linear"))
    need_seg = "segmentation" in probes
    skipped: Counter[str] = Counter()
    state: dict[str, LabelSpace | None] = {"space": None}

    def items(split: str, counter: Counter[str]) -> Iterator[tuple[torch.Tensor, tuple[str, Any, Any]]]:
        for raw in iter_dataset(data, split, decode=None):
            counter["samples"] += 1
            meta = decode_sample(raw, members=())["meta"]  # labels first: an unlabelled sample's pixels stay undecoded
            labels = meta.get("labels")
            if not labels:
                skipped[f"{split}: no labels"] += 1
                continue
            if state["space"] is None:
                state["space"] = label_space(labels, config.label_mode)
            target = image_target(meta, state["space"]) if need_image else None
            if need_image and target is None:
                skipped[f"{split}: not exactly one class (single-label)"] += 1
                continue
            try:
                sample = spec.decode(raw, extra=("lc",) if need_seg else ())
            except MissingInput:
                skipped[f"{split}: lacks {'/'.join(spec.modalities)}"] += 1
                continue
            seg = segmentation_target(sample, labels["taxonomy"]) if need_seg else None
            if need_seg and (seg is None or not (seg >= 0).any()):
                skipped[f"{split}: no labelled lc pixels"] += 1
                continue
            image = spec.prepare(sample)
            yield image, (sample["__key__"], target, seg)

    splits: dict[str, _Split] = {}
    for split in (config.train_split, config.eval_split):
        counter: Counter[str] = Counter()
        try:
            feats, payloads = extract_features(extractors, items(split, counter), config.batch_size,
                                               pooled=need_image, patches=need_seg)
        except LabelError as err:
            raise EvalError(f"{data}: {err}") from err
        if not payloads:
            raise EvalError(f"{data}: no usable labelled samples in split {split!r} (skipped: {dict(skipped)})")
        space = state["space"]
        assert space is not None
        targets = None
        if need_image:
            raw = [p[1] for p in payloads]
            targets = torch.tensor(raw, dtype=torch.int64) if space.single_label else \
                torch.from_numpy(np.stack(raw).astype(np.float32))
        seg = [torch.from_numpy(p[2]) for p in payloads] if need_seg else None
        splits[split] = _Split([p[0] for p in payloads], targets, seg, feats, counter["samples"])

    space = state["space"]
    assert space is not None
    train, test = splits[config.train_split], splits[config.eval_split]
    n_train = len(train.keys)
    if need_image:
        assert train.targets is not None
        subset = label_fraction_subset(train.targets.numpy(), config.label_fraction, config.seed, space.single_label)
    else:
        subset = label_fraction_subset(np.zeros((n_train, 1)), config.label_fraction, config.seed, False)
    idx = torch.from_numpy(subset)

    seg_names = ALL_TAXONOMIES[space.taxonomy].names if need_seg else ()
    rows: list[dict[str, Any]] = []
    for probe in probes:
        for name in BACKBONES:
            tr, te = train.features[name], test.features[name]
            if probe == "knn":
                m = knn_probe(tr["pooled"][idx], train.targets[idx], te["pooled"], test.targets,
                              space.single_label, space.num_classes, config.knn)
            elif probe == "linear":
                m = linear_probe(tr["pooled"][idx], train.targets[idx], te["pooled"], test.targets,
                                 space.single_label, space.num_classes, config.linear, config.seed)
            else:
                m = segmentation_probe(tr["patches"][idx], [train.seg[i] for i in subset], te["patches"],
                                       test.seg, seg_names, config.segmentation, config.seed)
            rows.append({"backbone": name, "probe": probe, "metrics": _named(m, space.names, seg_names)})

    report = {
        "settings": _settings(info, data, config, probes, spec, space, train, test, len(subset), device),
        "results": rows,
        "skipped": dict(skipped),
    }
    result = EvalResult(report)
    if out is not None:
        result.json_path, result.markdown_path = write_report(report, out)
    return result


def _named(m: dict[str, Any], names: Sequence[str], seg_names: Sequence[str]) -> dict[str, Any]:
    """Per-class lists -> {class name: value} for the JSON."""
    out = dict(m)
    if "per_class_ap" in out:
        out["per_class_ap"] = dict(zip(names, out["per_class_ap"]))
    if "per_class_iou" in out:
        out["per_class_iou"] = dict(zip(seg_names, out["per_class_iou"]))
    return out


def _settings(info: ModelInfo, data: Path, config: EvalConfig, probes: tuple[str, ...], spec: InputSpec,
              space: LabelSpace, train: _Split, test: _Split, n_labelled: int,
              device: torch.device) -> dict[str, Any]:
    import timm

    from eoforge import __version__

    probe_settings: dict[str, Any] = {}
    if "knn" in probes:
        probe_settings["knn"] = {"k": config.knn.k, "temperature": config.knn.temperature, "similarity": "cosine"}
    if "linear" in probes:
        probe_settings["linear"] = {**dataclasses.asdict(config.linear), "optimizer": "AdamW", "schedule": "cosine",
                                    "loss": "cross_entropy" if space.single_label else "multilabel_soft_margin"}
    if "segmentation" in probes:
        probe_settings["segmentation"] = {**dataclasses.asdict(config.segmentation), "optimizer": "AdamW",
                                          "head": "1x1 conv + bilinear upsampling", "ignore": "unlabelled pixels"}
    manifest = data / "manifest.parquet"
    return {
        "model": {"weights": str(info.weights), "weights_sha256": info.weights_sha256, "timm_model": info.timm_model,
                  "timm_kwargs": info.timm_kwargs, "method": info.method, "manifest_sha256": info.manifest_sha256},
        "data": {"path": str(data), "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
                 "train_split": config.train_split, "eval_split": config.eval_split,
                 "train_samples": len(train.keys), "train_labelled": n_labelled,
                 "eval_samples": len(test.keys), "label_fraction": config.label_fraction},
        "labels": {"taxonomy": space.taxonomy, "names": list(space.names), "single_label": space.single_label},
        "inputs": spec.describe(),
        "features": config.features,
        "feature_dims": feature_dims(train.features)["pretrained"],
        "probes": probe_settings,
        "seed": config.seed,
        "device": str(device),
        "eoforge_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
    }
