"""Frozen-backbone features: global vectors for kNN / linear probes, patch maps for segmentation.

Feature modes (``FEATURE_MODES``), for a timm ViT (``forward_features`` tokens, after the final
norm):

- ``"cls"``: the class token (ViTs without one: the mean of patch tokens);
- ``"mean"``: the mean of the patch tokens (prefix/register tokens excluded);
- ``"dinov2"``: DINOv2's linear-evaluation input: the class tokens of the last 4 blocks
  (each through the final norm) concatenated with the mean patch token of the last block,
  ``5 * D`` values (Oquab et al. 2023, ``create_linear_input(n_last_blocks=4, avgpool=True)``).

For CNNs (timm ResNet, ...), ``"cls"`` and ``"mean"`` are the global average pool of the last
feature map, ``"dinov2"`` concatenates the global average pools of the last 4 stages.
Patch features are the last block's patch tokens as a ``[D, h, w]`` map (ViT) or the last
feature map (CNN).

Backbones run in eval mode under ``torch.no_grad``; nothing is trained here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from eoforge.train.models import is_vit

FEATURE_MODES = ("cls", "mean", "dinov2")
N_LAST_BLOCKS = 4


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as torch reads them."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FeatureExtractor:
    """Global and patch features of a frozen timm backbone.

    Args:
        model: a timm backbone (``num_classes=0``); put in eval mode, gradients off.
        mode: one of :data:`FEATURE_MODES`.
        device: where the model runs.
    """

    def __init__(self, model: nn.Module, mode: str = "cls", device: str | torch.device = "cpu") -> None:
        if mode not in FEATURE_MODES:
            raise ValueError(f"unknown feature mode {mode!r} (known: {FEATURE_MODES})")
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.mode = mode
        self.device = torch.device(device)
        self.vit = is_vit(model)

    @torch.no_grad()
    def __call__(self, x: Tensor, pooled: bool = True, patches: bool = False) -> dict[str, Tensor]:
        """Features of a batch.

        Args:
            x: float32 ``[B, C, H, W]`` normalised inputs.
            pooled: return ``"pooled"``: float32 ``[B, D']`` (D' = D, or 5 D for ``"dinov2"`` ViTs).
            patches: return ``"patches"``: float32 ``[B, D, h, w]`` (h = H / patch for ViTs).
        """
        x = x.to(self.device, non_blocking=True)
        return self._vit(x, pooled, patches) if self.vit else self._cnn(x, pooled, patches)

    def _vit(self, x: Tensor, pooled: bool, patches: bool) -> dict[str, Tensor]:
        m = self.model
        prefix = int(m.num_prefix_tokens)
        out: dict[str, Tensor] = {}
        if self.mode == "dinov2" and pooled:
            n = min(N_LAST_BLOCKS, len(m.blocks))
            inter = m.forward_intermediates(x, indices=n, return_prefix_tokens=True, norm=True,
                                            intermediates_only=True, output_fmt="NLC")
            last_patch = inter[-1][0]
            has_cls = getattr(m, "cls_token", None) is not None
            cls = [p[:, 0] if has_cls else t.mean(1) for t, p in inter]
            out["pooled"] = torch.cat([*cls, last_patch.mean(1)], dim=1).float()
        else:
            tokens = m.forward_features(x)
            last_patch = tokens[:, prefix:]
            if pooled:
                has_cls = getattr(m, "cls_token", None) is not None
                out["pooled"] = (tokens[:, 0] if self.mode == "cls" and has_cls else last_patch.mean(1)).float()
        if patches:
            ph, pw = m.patch_embed.patch_size
            h, w = x.shape[-2] // ph, x.shape[-1] // pw
            b, n, d = last_patch.shape
            if n != h * w:
                raise ValueError(f"{n} patch tokens do not form a {h}x{w} grid")
            out["patches"] = last_patch.transpose(1, 2).reshape(b, d, h, w).float()
        return out

    def _cnn(self, x: Tensor, pooled: bool, patches: bool) -> dict[str, Tensor]:
        m = self.model
        out: dict[str, Tensor] = {}
        if self.mode == "dinov2" and pooled:
            maps = m.forward_intermediates(x, indices=N_LAST_BLOCKS, intermediates_only=True)
            out["pooled"] = torch.cat([f.mean(dim=(2, 3)) for f in maps], dim=1).float()
            last = maps[-1]
        else:
            last = m.forward_features(x)
            if pooled:
                out["pooled"] = last.mean(dim=(2, 3)).float()
        if patches:
            out["patches"] = last.float()
        return out


def _batches(items: Iterable[tuple[Tensor, Any]], batch_size: int) -> Iterator[tuple[Tensor, list[Any]]]:
    images: list[Tensor] = []
    payloads: list[Any] = []
    for image, payload in items:
        images.append(image)
        payloads.append(payload)
        if len(images) == batch_size:
            yield torch.stack(images), payloads
            images, payloads = [], []
    if images:
        yield torch.stack(images), payloads


def extract_features(
    extractors: dict[str, FeatureExtractor],
    items: Iterable[tuple[Tensor, Any]],
    batch_size: int = 64,
    pooled: bool = True,
    patches: bool = False,
) -> tuple[dict[str, dict[str, Tensor]], list[Any]]:
    """Run several backbones over one stream of images (each image read and prepared once).

    Args:
        extractors: name -> extractor (e.g. ``{"pretrained": ..., "random-init": ...}``).
        items: ``(image float32 [C, H, W], payload)`` pairs; payloads (labels, keys) are passed
            through in order.
        batch_size: images per forward pass.
        pooled, patches: which features to keep (see :meth:`FeatureExtractor.__call__`).

    Returns:
        ``({name: {"pooled": [N, D'], "patches": [N, D, h, w]}}, payloads)``, features on the CPU.
    """
    parts: dict[str, dict[str, list[Tensor]]] = {n: {} for n in extractors}
    payloads: list[Any] = []
    for batch, pay in _batches(items, batch_size):
        payloads.extend(pay)
        for name, ex in extractors.items():
            for kind, feats in ex(batch, pooled=pooled, patches=patches).items():
                parts[name].setdefault(kind, []).append(feats.cpu())
    return {n: {k: torch.cat(v) for k, v in p.items()} for n, p in parts.items()}, payloads


def feature_dims(parts: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, list[int]]]:
    """Shapes of the features (per extractor and kind) without the sample axis, for reports."""
    return {n: {k: list(v.shape[1:]) for k, v in p.items()} for n, p in parts.items()}
