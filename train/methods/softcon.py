"""SoftCon: multi-label soft contrastive learning with a masked trainable branch (Wang et al. 2024,
"Multi-Label Guided Soft Contrastive Learning for Efficient Earth Observation Pretraining",
arXiv 2405.20462), for timm ViTs and CNNs on 13-band S2 or 2-band S1.

The authors released weights, labels and a demo but not their pretraining code, so every choice
their abstract leaves open is a config value here (train/METHODS.md#softcon).

Idea: land-cover multi-labels give a soft target for how similar two scenes are, fixing the
"one positive only" problem of instance contrast; pretraining continues from a strong model with
a re-created input layer (``model.pretrained``, ``model.input_layer: reinit``); the trainable
branch is masked (Siamese masking) to save memory and time.

Per sample (:class:`SoftconViews`, in DataLoader workers): two views of one tile, from two time
steps drawn independently (``data.time_step: random_pair``; a tile with one step gives two views
of it; ``random``/``first``: both views of one step), each carrying the label vector of its own
step (per-step labels where the dataset has them, else the sample's; zeros = unlabelled; in the
class list ``data.label_taxonomy``, Dynamic World's 9 classes in the recipes). Each view:
RandomResizedCrop(``crop_px``, ``crop_scale``), flips, per-band brightness/contrast jitter (p 0.8),
band-mean grey (p 0.2), Gaussian blur (p 1.0 for view 1, 0.1 for view 2), and a random subset of
its patches kept for the trainable branch (``1 - mask_ratio``).

Per step (:meth:`Softcon.forward`):

- online branch: encoder on the MASKED views -> 3-layer projector (BatchNorm, last BN without
  affine) -> 2-layer predictor: ``q1``, ``q2``. ViTs really drop tokens ([CLS] + the kept
  patches enter the blocks, :mod:`eoforge.train.sparse_vit`); CNNs see the dropped
  ``mask_patch_px`` patches zeroed (their convolutions cannot skip pixels);
- EMA branch (no gradient): encoder + projector on the FULL views: ``k1``, ``k2``; its BatchNorm
  layers use batch statistics, as MoCo v3's momentum encoder, and it never drops paths;
- loss (:class:`~eoforge.train.losses.SoftContrastiveLoss`): hard InfoNCE (τ 0.2, keys gathered
  from every rank, × 2τ) + λ × soft term with targets ``cos(y_i, y'_j)``, symmetrised
  ``(q1, k2) + (q2, k1)``. ``soft_form: r2`` (soft-target InfoNCE) or ``r1`` (element-wise BCE);
  λ = 0 is the hard-only ablation; unlabelled views add the hard term only.

Features: a ViT's [CLS] token after the final norm; a CNN's global average pool. Downstream uses
the ONLINE encoder (:meth:`Softcon.export_backbone`). With ``model.pretrained`` the backbone
learns at ``backbone_lr_scale`` × the scheduled rate, its new input layer at 1×.

Batch layout (``B`` samples, ``C`` bands, ``P = crop_px``, ``L = (P / patch)²`` patches)::

    view1, view2   float32 [B, C, P, P]   normalised, augmented
    keep1, keep2   int64   [B, L_keep]    patches the trainable branch sees (row-major indices)
    labels1/2      float32 [B, K]         the views' label vectors (zeros: unlabelled)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eoforge.train.augment import (
    band_mean_grey, bernoulli, gaussian_blur, hflip, random_brightness_contrast, random_resized_crop_params,
    resized_crop, uniform, vflip,
)
from eoforge.train.heads import moco_mlp
from eoforge.train.losses import SoftContrastiveLoss
from eoforge.train.losses.soft_contrastive import SOFT_FORMS
from eoforge.train.methods.base import (
    EmaTeacherMethod, MethodOutput, check_probabilities, check_ranges, stack_image, weight_decay_groups,
)
from eoforge.train.models import ModelConfig, create_backbone, input_layer_name, is_vit
from eoforge.train.sparse_vit import check_sparse_vit, cls_of_kept_patches

#: loader time-step modes SoftCon can take two views from
TIME_STEPS = ("random_pair", "random", "first")


@dataclass(frozen=True)
class SoftconConfig:
    """SoftCon's own settings; values of train/METHODS.md#softcon, DEFAULT where the paper is silent.

    Attributes:
        crop_px: view edge in pixels (224).
        crop_scale: RandomResizedCrop area fractions (0.08, 1.0; MoCo v3, DEFAULT).
        crop_ratio: aspect-ratio range, width / height (3/4, 4/3).
        hflip_p, vflip_p: flip probabilities (0.5 each; DEFAULT vertical for overhead images).
        jitter_p: probability of per-band brightness/contrast jitter (0.8).
        brightness, contrast: jitter factor ranges ``1 ± value`` (0.4 each).
        grey_p: probability of band-mean grey (0.2).
        blur_p: blur probability of view 1 and view 2 ((1.0, 0.1), BYOL's asymmetry).
        blur_sigma_px: Gaussian sigma range in pixels (0.1, 2.0).
        blur_kernel_px: odd blur kernel size (23 at 224 px).
        mask_ratio: share of patches the trainable branch does NOT see (0.5, DEFAULT).
        mask_patch_px: CNNs: edge of the zeroed squares (32, ResNet's output stride); ViTs mask
            whole patch tokens of their own patch size.
        projector_layers, projector_hidden_dim, projector_dim: MoCo v3 projector (3, 4096, 256).
        predictor_layers, predictor_hidden_dim: MoCo v3 predictor (2, 4096).
        temperature: InfoNCE τ (0.2).
        soft_weight: λ of the soft term (1.0; 0 = hard-only ablation).
        soft_form: ``"r2"`` soft-target InfoNCE (default) or ``"r1"`` element-wise BCE.
        backbone_lr_scale: learning-rate multiplier of a PRETRAINED backbone (0.1; its re-created
            input layer and the heads learn at 1×); ignored without ``model.pretrained``.
    """

    crop_px: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    grey_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma_px: tuple[float, float] = (0.1, 2.0)
    blur_kernel_px: int = 23
    mask_ratio: float = 0.5
    mask_patch_px: int = 32
    projector_layers: int = 3
    projector_hidden_dim: int = 4096
    projector_dim: int = 256
    predictor_layers: int = 2
    predictor_hidden_dim: int = 4096
    temperature: float = 0.2
    soft_weight: float = 1.0
    soft_form: str = "r2"
    backbone_lr_scale: float = 0.1

    def __post_init__(self) -> None:
        check_ranges(self, "crop_scale", "crop_ratio", "blur_sigma_px", fractions=("crop_scale",))
        blur_p = tuple(float(p) for p in self.blur_p)  # YAML gives a list
        if len(blur_p) != 2:
            raise ValueError(f"method.blur_p needs one probability per view, got {blur_p}")
        object.__setattr__(self, "blur_p", blur_p)
        check_probabilities(self, "hflip_p", "vflip_p", "jitter_p", "grey_p", "blur_p")
        if self.blur_kernel_px < 1 or self.blur_kernel_px % 2 == 0:
            raise ValueError(f"method.blur_kernel_px must be odd and positive, got {self.blur_kernel_px}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"method.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.soft_form not in SOFT_FORMS:
            raise ValueError(f"method.soft_form must be one of {SOFT_FORMS}, got {self.soft_form!r}")
        if self.temperature <= 0 or self.soft_weight < 0 or self.backbone_lr_scale < 0:
            raise ValueError("method.temperature must be > 0, soft_weight and backbone_lr_scale >= 0")
        if min(self.projector_layers, self.predictor_layers) < 1:
            raise ValueError("method.projector_layers and predictor_layers must be >= 1")


def kept_patches(n_patches: int, mask_ratio: float) -> int:
    """Patches the trainable branch keeps: ``round((1 - mask_ratio) · n)``, at least one."""
    return max(1, int(round((1.0 - mask_ratio) * n_patches)))


# ---------------------------------------------------------------------------------------------
# views (DataLoader workers)

@dataclass(frozen=True)
class SoftconViews:
    """Picklable per-sample view maker: ``views(inputs, generator) -> dict`` (module docstring layout).

    Attributes:
        cfg: the method config.
        mask_patch_px: edge of a maskable patch (the ViT's patch size, or ``cfg.mask_patch_px``).
        in_chans: expected band count of the stacked image.
    """

    cfg: SoftconConfig
    mask_patch_px: int
    in_chans: int

    def view(self, image: Tensor, blur_p: float, generator: torch.Generator) -> Tensor:
        """One augmented view ``[C, P, P]`` of ``image`` ``[C, H, W]``."""
        cfg = self.cfg
        box = random_resized_crop_params(image.shape[-2], image.shape[-1], cfg.crop_scale, cfg.crop_ratio, generator)
        x = resized_crop(image, box, cfg.crop_px)
        if bernoulli(cfg.hflip_p, generator):
            x = hflip(x)
        if bernoulli(cfg.vflip_p, generator):
            x = vflip(x)
        if bernoulli(cfg.jitter_p, generator):
            x = random_brightness_contrast(x, cfg.brightness, cfg.contrast, generator)
        if bernoulli(cfg.grey_p, generator):
            x = band_mean_grey(x)
        if bernoulli(blur_p, generator):
            x = gaussian_blur(x, float(uniform(*cfg.blur_sigma_px, generator)), cfg.blur_kernel_px)
        return x.contiguous()

    def __call__(self, inputs: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        image = stack_image(inputs)
        key = inputs.get("__key__", "?")
        if image.shape[-3] != self.in_chans:
            raise ValueError(f"sample {key}: {image.shape[-3]} bands, the model takes {self.in_chans}")
        labels = torch.as_tensor(inputs["labels"], dtype=torch.float32)
        if image.ndim == 4:  # two time steps (random_pair): view i from step i, with that step's labels
            images, label_rows = (image[0], image[1]), (labels[0], labels[1])
        else:
            images, label_rows = (image, image), (labels, labels)
        n_patches = (self.cfg.crop_px // self.mask_patch_px) ** 2
        n_keep = kept_patches(n_patches, self.cfg.mask_ratio)
        out: dict[str, Tensor] = {}
        for i in (0, 1):
            out[f"view{i + 1}"] = self.view(images[i], self.cfg.blur_p[i], generator)
            out[f"keep{i + 1}"] = torch.randperm(n_patches, generator=generator)[:n_keep]
            out[f"labels{i + 1}"] = label_rows[i]
        return out


def zero_dropped_patches(images: Tensor, keep: Tensor, patch_px: int) -> Tensor:
    """``images`` ``[N, C, H, W]`` with every patch not in ``keep`` ``[N, K]`` set to 0 (CNN masking)."""
    n, _, h, w = images.shape
    gh, gw = h // patch_px, w // patch_px
    mask = torch.zeros(n, gh * gw, device=images.device, dtype=images.dtype)
    mask.scatter_(1, keep, 1.0)
    mask = mask.reshape(n, 1, gh, gw).repeat_interleave(patch_px, 2).repeat_interleave(patch_px, 3)
    return images * mask


# ---------------------------------------------------------------------------------------------
# the method

class Softcon(EmaTeacherMethod):
    """SoftCon (module docstring): masked online encoder + projector + predictor, EMA encoder + projector.

    Args:
        cfg: :class:`SoftconConfig`.
        model_cfg: the backbone (any timm ViT with a [CLS] token, or a CNN such as ``resnet50``).
        in_chans: input bands (13 S2, 2 S1).
        total_steps: optimiser steps of the run (unused: SoftCon has no step-dependent term).
        world_size: ranks (unused: the loss gathers keys itself).

    Submodules:
        student: ``ModuleDict(backbone, projector)``; ``predictor`` beside it.
        teacher: ``ModuleDict(backbone, projector)``, an EMA copy, no grad.
        loss: :class:`~eoforge.train.losses.SoftContrastiveLoss`.
    """

    name: ClassVar[str] = "softcon"
    config_class: ClassVar[type] = SoftconConfig

    def __init__(self, cfg: SoftconConfig, model_cfg: ModelConfig, in_chans: int, total_steps: int,
                 world_size: int = 1) -> None:
        super().__init__()
        self.cfg, self.model_cfg, self.in_chans = cfg, model_cfg, in_chans
        backbone = create_backbone(model_cfg, in_chans)
        self.vit = is_vit(backbone)
        self.patch_px = check_sparse_vit(backbone, model_cfg.name, "SoftCon") if self.vit else cfg.mask_patch_px
        if cfg.crop_px % self.patch_px:
            raise ValueError(f"method.crop_px={cfg.crop_px} is not a multiple of the "
                             f"{'patch size' if self.vit else 'mask_patch_px'} {self.patch_px}")
        dim = backbone.num_features
        projector = moco_mlp(cfg.projector_layers, dim, cfg.projector_hidden_dim, cfg.projector_dim)
        self.student = nn.ModuleDict({"backbone": backbone, "projector": projector})
        self.predictor = moco_mlp(cfg.predictor_layers, cfg.projector_dim, cfg.predictor_hidden_dim, cfg.projector_dim)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.loss = SoftContrastiveLoss(cfg.temperature, cfg.soft_weight, cfg.soft_form)
        self.train()

    # -------------------------------------------------------------------- protocol

    def make_views(self) -> SoftconViews:
        return SoftconViews(self.cfg, self.patch_px, self.in_chans)

    def check_data(self, data: Any) -> None:
        if data.time_step not in TIME_STEPS:
            raise ValueError(f"softcon takes two views of one time step or of two: data.time_step must be one of "
                             f"{TIME_STEPS} (random_pair: two seasons, the SSL4EO convention), got {data.time_step!r}")

    def train(self, mode: bool = True) -> Softcon:
        super().train(mode)
        # the EMA branch never drops paths, but its BatchNorm layers normalise with the batch's
        # statistics, as MoCo v3's momentum encoder (which runs in training mode)
        self.teacher.eval()
        for m in self.teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(mode)
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        backbone = self.student["backbone"]
        scale = self.cfg.backbone_lr_scale if self.model_cfg.pretrained else 1.0
        first = input_layer_name(backbone) + "."
        pretrained = [(n, p) for n, p in backbone.named_parameters() if not n.startswith(first)]
        new = [(n, p) for n, p in backbone.named_parameters() if n.startswith(first)]
        new += [(f"projector.{n}", p) for n, p in self.student["projector"].named_parameters()]
        new += [(f"predictor.{n}", p) for n, p in self.predictor.named_parameters()]
        return weight_decay_groups(pretrained, lr_scale=scale) + weight_decay_groups(new)

    def export_backbone(self, branch: str | None = None) -> nn.Module:
        return self.student["backbone"]

    # -------------------------------------------------------------------- forward

    def encode_masked(self, images: Tensor, keep: Tensor) -> Tensor:
        """Online backbone features ``[N, D]`` of ``images`` seeing only the patches ``keep``."""
        backbone = self.student["backbone"]
        if self.vit:
            return cls_of_kept_patches(backbone, images, keep, self.patch_px)
        return backbone(zero_dropped_patches(images, keep, self.patch_px))

    @torch.no_grad()
    def encode_full(self, images: Tensor) -> Tensor:
        """EMA backbone features ``[N, D]`` of the full ``images``."""
        return self.teacher["backbone"](images)  # timm's pooled pre-logits: ViT [CLS] after the norm, CNN avg pool

    def forward(self, batch: dict[str, Tensor], step: int) -> MethodOutput:  # type: ignore[override]
        views = (batch["view1"].float(), batch["view2"].float())
        keeps = (batch["keep1"], batch["keep2"])
        labels = (batch["labels1"], batch["labels2"])
        feats = [self.encode_masked(v, k) for v, k in zip(views, keeps)]
        queries = [self.predictor(self.student["projector"](f)) for f in feats]
        with torch.no_grad():
            keys = [self.teacher["projector"](self.encode_full(v)) for v in views]
        terms = self.loss(queries[0], queries[1], keys[0], keys[1], labels[0], labels[1])
        logs = {"hard": terms.hard, "soft": terms.soft, "labelled_share": terms.labelled}
        return MethodOutput(loss=terms.total, logs=logs, embeddings=feats[0].detach())


__all__ = ["Softcon", "SoftconConfig", "SoftconViews", "kept_patches", "zero_dropped_patches"]
