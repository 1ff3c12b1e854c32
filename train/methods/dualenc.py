"""S1/S2 dual encoder: Sentinel-1 and Sentinel-2 of one place as each other's positives (Jain et
al. 2022, "Self-supervised Learning for Invariant Representations from Multi-spectral and SAR
Images", arXiv 2209.02329).

No public code exists, so everything the abstract does not fix is a config value
(train/METHODS.md#dual-encoder). Idea: S1 and S2 of the same tile at nearby dates are natural strong
augmentations of one scene; a dual encoder trained contrastively across the two sensors learns
features that beat hand-made augmentations (flood segmentation with the S1 encoder, land cover
with the S2 encoder).

Data: only time steps that carry both sensors (``data.modality: s1s2``, ``data.paired_only:
true``; |Δt| as the dataset's manifest records it, tightened with ``data.max_dt_days``); S1 in dB
clipped to VV [-25, 0], VH [-32.5, 0] (``data.s1_clip_db``) then mean ± 2σ -> [0, 1]
(``data.normalization: minmax2sigma``).

Per sample (:class:`DualencViews`): one RandomResizedCrop box and one pair of flips shared by the
S2 and the S1 image, so the pair stays aligned on the ground; optional per-band brightness/contrast
jitter per sensor. With the intra-modal term on, a second, independent view of each sensor.

Per step (:meth:`Dualenc.forward`): S2 encoder (13 bands) and S1 encoder (2 bands), separate
weights, any timm backbones (``model.name`` for S2, ``method.s1_model`` for S1; a ViT's [CLS]
token or a CNN's global pool) -> MLP projector each (Linear, BatchNorm, ReLU, Linear) -> L2 norm;
loss :class:`~eoforge.train.losses.CrossModalInfoNCE`: symmetric cross-modal InfoNCE over the
batch gathered from every rank, τ fixed (0.1) or learnable, plus ``intra_weight`` × SimCLR
NT-Xent within each sensor (the paper's baseline; off by default).

Export: either encoder, ``eoforge export RUN --branch s2`` (default) or ``--branch s1``, each with
its own bands and normalisation in MODEL.json.

Batch layout (``B`` samples, ``P = crop_px``)::

    s2_a   float32 [B, 13, P, P]   S2 view (normalised)
    s1_a   float32 [B, 2, P, P]    S1 view of the same ground (normalised, invalid pixels 0)
    s2_b, s1_b                     second views, only with the intra-modal term
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eoforge.shards.schema import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.train.augment import (
    bernoulli, hflip, random_brightness_contrast, random_resized_crop_params, resized_crop, vflip,
)
from eoforge.train.heads import moco_mlp
from eoforge.train.losses import CrossModalInfoNCE
from eoforge.train.methods.base import Method, MethodOutput, check_probabilities, check_ranges, weight_decay_groups
from eoforge.train.models import ModelConfig, create_backbone

SENSORS = ("s2", "s1")
IN_CHANS = {"s2": len(S2_BAND_NAMES), "s1": len(S1_BAND_NAMES)}


@dataclass(frozen=True)
class DualencConfig:
    """The dual encoder's own settings (all DEFAULT but τ and the projector width, train/METHODS.md#dual-encoder).

    Attributes:
        crop_px: view edge in pixels (224).
        crop_scale: RandomResizedCrop area fractions, one box for both sensors ((0.2, 1.0)).
        crop_ratio: aspect-ratio range, width / height (3/4, 4/3).
        hflip_p, vflip_p: flip probabilities, shared by the pair (0.5 each).
        jitter_p: probability of per-band brightness/contrast jitter, drawn per sensor (0: the
            other sensor is the augmentation).
        brightness, contrast: jitter factor ranges ``1 ± value`` (0.4).
        s1_model: timm name of the S1 encoder (None: ``model.name``).
        s1_pretrained: local checkpoint of the S1 encoder (None: ``model.pretrained``); its input
            layer is re-created for 2 bands like the S2 encoder's for 13.
        projector_hidden_dim, projector_dim: MLP projector (2048, 128).
        temperature: τ of the cross-modal InfoNCE (0.1); the starting value when learnable.
        learn_temperature: learn τ as CLIP's logit scale (``log(1/τ)``, 1/τ at most 100).
        intra_weight: weight of the intra-modal SimCLR term (0: off).
        intra_jitter_p: jitter probability of the intra-modal views (0.8, SimCLR).
    """

    crop_px: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    jitter_p: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    s1_model: str | None = None
    s1_pretrained: str | None = None
    projector_hidden_dim: int = 2048
    projector_dim: int = 128
    temperature: float = 0.1
    learn_temperature: bool = False
    intra_weight: float = 0.0
    intra_jitter_p: float = 0.8

    def __post_init__(self) -> None:
        check_ranges(self, "crop_scale", "crop_ratio", fractions=("crop_scale",))
        check_probabilities(self, "hflip_p", "vflip_p", "jitter_p", "intra_jitter_p")
        if self.temperature <= 0 or self.intra_weight < 0:
            raise ValueError("method.temperature must be > 0 and intra_weight >= 0")


# ---------------------------------------------------------------------------------------------
# views (DataLoader workers)

@dataclass(frozen=True)
class DualencViews:
    """Picklable per-sample view maker: ``views(inputs, generator) -> dict`` (module docstring layout)."""

    cfg: DualencConfig

    def _jitter(self, x: Tensor, p: float, generator: torch.Generator) -> Tensor:
        if bernoulli(p, generator):
            return random_brightness_contrast(x, self.cfg.brightness, self.cfg.contrast, generator)
        return x

    def pair(self, images: tuple[Tensor, ...], jitter_p: float, generator: torch.Generator) -> list[Tensor]:
        """The same crop box and flips applied to every image of ``images`` (``[C_i, H, W]``), then jitter each."""
        cfg = self.cfg
        h, w = images[0].shape[-2:]
        box = random_resized_crop_params(h, w, cfg.crop_scale, cfg.crop_ratio, generator)
        flip_h, flip_v = bernoulli(cfg.hflip_p, generator), bernoulli(cfg.vflip_p, generator)
        out = []
        for image in images:
            x = resized_crop(image, box, cfg.crop_px)
            x = hflip(x) if flip_h else x
            x = vflip(x) if flip_v else x
            out.append(self._jitter(x, jitter_p, generator).contiguous())
        return out

    def __call__(self, inputs: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        key = inputs.get("__key__", "?")
        missing = [s for s in SENSORS if s not in inputs]
        if missing:
            raise KeyError(f"sample {key}: no {', '.join(missing)} input (the dual encoder reads data.modality s1s2)")
        s2 = torch.as_tensor(inputs["s2"], dtype=torch.float32)
        s1 = torch.as_tensor(inputs["s1"], dtype=torch.float32)
        if s2.ndim != 3 or s1.ndim != 3:
            raise ValueError(f"sample {key}: the dual encoder takes one time step per sample, got {tuple(s2.shape)}")
        out = dict(zip(("s2_a", "s1_a"), self.pair((s2, s1), self.cfg.jitter_p, generator)))
        if self.cfg.intra_weight > 0:  # a second, independent view of each sensor (SimCLR)
            out["s2_b"] = self.pair((s2,), self.cfg.intra_jitter_p, generator)[0]
            out["s1_b"] = self.pair((s1,), self.cfg.intra_jitter_p, generator)[0]
        return out


# ---------------------------------------------------------------------------------------------
# the method

class Dualenc(Method):
    """Dual encoder (module docstring): one encoder + projector per sensor, cross-modal InfoNCE.

    Args:
        cfg: :class:`DualencConfig`.
        model_cfg: the S2 encoder (the S1 encoder: the same with ``cfg.s1_model`` / ``cfg.s1_pretrained``).
        in_chans: input bands of the data: 15 (13 S2 + 2 S1, ``data.modality: s1s2``).
        total_steps, world_size: unused (the loss gathers across ranks itself).

    Submodules:
        encoders: ``ModuleDict(s2=..., s1=...)`` timm backbones.
        projectors: ``ModuleDict(s2=..., s1=...)``.
        loss: :class:`~eoforge.train.losses.CrossModalInfoNCE` (holds the learnable temperature).
    """

    name: ClassVar[str] = "dualenc"
    config_class: ClassVar[type] = DualencConfig
    branches: ClassVar[dict[str, tuple[str, ...] | None]] = {"s2": ("s2",), "s1": ("s1",)}

    def __init__(self, cfg: DualencConfig, model_cfg: ModelConfig, in_chans: int, total_steps: int,
                 world_size: int = 1) -> None:
        super().__init__()
        if in_chans != sum(IN_CHANS.values()):
            raise ValueError(f"the dual encoder reads S2 and S1 ({sum(IN_CHANS.values())} bands: data.modality "
                             f"s1s2), the data gives {in_chans}")
        self.cfg, self.model_cfg = cfg, model_cfg
        self.models = {
            "s2": model_cfg,
            "s1": dataclasses.replace(model_cfg, name=cfg.s1_model or model_cfg.name,
                                      pretrained=cfg.s1_pretrained or model_cfg.pretrained),
        }
        self.encoders = nn.ModuleDict({s: create_backbone(self.models[s], IN_CHANS[s]) for s in SENSORS})
        self.projectors = nn.ModuleDict({
            s: moco_mlp(2, self.encoders[s].num_features, cfg.projector_hidden_dim, cfg.projector_dim, last_bn=False)
            for s in SENSORS
        })
        self.loss = CrossModalInfoNCE(cfg.temperature, cfg.learn_temperature, cfg.intra_weight)

    # -------------------------------------------------------------------- protocol

    def make_views(self) -> DualencViews:
        return DualencViews(self.cfg)

    def check_data(self, data: Any) -> None:
        if data.modality != "s1s2" or not data.paired_only:
            raise ValueError("the dual encoder trains on time steps that carry both sensors: set data.modality: s1s2 "
                             f"and data.paired_only: true (got modality {data.modality!r}, "
                             f"paired_only {data.paired_only})")
        if data.time_step not in ("random", "first"):
            raise ValueError(f"the dual encoder takes one time step per sample: data.time_step random or first, "
                             f"got {data.time_step!r}")

    def param_groups(self) -> list[dict[str, Any]]:
        return weight_decay_groups(self.named_parameters())

    def export_backbone(self, branch: str | None = None) -> nn.Module:
        return self.encoders[self._branch(branch)]

    def branch_model(self, branch: str | None = None) -> ModelConfig:
        return self.models[self._branch(branch)]

    def _branch(self, branch: str | None) -> str:
        branch = branch or next(iter(self.branches))
        if branch not in self.branches:
            raise ValueError(f"dualenc has branches {list(self.branches)}, not {branch!r}")
        return branch

    # -------------------------------------------------------------------- forward

    def embed(self, sensor: str, images: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features ``[N, D]``, projected embedding) of one sensor's ``images``.

        The features are timm's pooled pre-logits (``num_classes=0``): a ViT's [CLS] token after
        the final norm, a CNN's global average pool.
        """
        f = self.encoders[sensor](images.float())
        return f, self.projectors[sensor](f)

    def forward(self, batch: dict[str, Tensor], step: int) -> MethodOutput:  # type: ignore[override]
        f2, z2 = self.embed("s2", batch["s2_a"])
        _, z1 = self.embed("s1", batch["s1_a"])
        views = {}
        if self.cfg.intra_weight > 0:
            views = {"a_views": (z2, self.embed("s2", batch["s2_b"])[1]),
                     "b_views": (z1, self.embed("s1", batch["s1_b"])[1])}
        terms = self.loss(z2, z1, **views)
        logs = {"cross": terms.cross, "temperature": terms.temperature}
        if self.cfg.intra_weight > 0:
            logs["intra"] = terms.intra
        return MethodOutput(loss=terms.total, logs=logs, embeddings=f2.detach())


__all__ = ["Dualenc", "DualencConfig", "DualencViews", "SENSORS"]
