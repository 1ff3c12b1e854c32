"""CMID: contrastive mask image distillation (Muhtar et al. 2023, "CMID: A Unified Self-Supervised
Learning Framework for Remote Sensing Image Understanding", arXiv 2304.09670), for timm ResNets and
Swin Transformers on any band count.

Follows the official code (NJU-LHRS/official-CMID, ``Pretrain/``), as train/METHODS.md#cmid does,
with its two fixes marked OURS below. Idea: one teacher-student framework that learns global
semantics (contrast against a queue), local detail (masked image modelling) and local semantics
(distillation between cells that cover the same ground), for CNNs and transformers alike.

Per sample (:class:`CmidViews`, in DataLoader workers): two INDEPENDENT RandomResizedCrops
(``crop_px``, area 0.3-1.0 of the tile) and independent horizontal flips of ONE image. View 1 is
weak (crop + flip only); view 2 is strong: per-band brightness/contrast jitter (p 0.8; the RGB
colour jitter's multispectral stand-in), Gaussian blur (kernel 3-7 px, σ 0.1-2, p 1.0), Gaussian
noise (p 0.6), solarisation in normalised units (p 0.2) and band-mean grey (p 0.2). Each view keeps
its crop box in pixels of the source tile and its flip, and draws its own student mask: ``ceil(0.6 ·
n)`` of the ``n`` blocks of ``mask_block_px`` (224 px, 32-px blocks: 30 of 49).

Per step (:meth:`Cmid.forward`):

- student (both views, masked): masked pixels are filled with the view's per-band mean; the mask
  is also applied at stride 4, where a learned mask token is ADDED (``x + token · mask``): after a
  ResNet's stem (before ``layer1``), after a Swin's patch embedding. Final map ``[B, D, P/32, P/32]``.
- teacher (EMA of the student's backbone, projector and local head; no gradient): both views
  UNMASKED. Its BatchNorm layers normalise with the batch's statistics (the official model runs
  its momentum branch in training mode); it never drops paths.
- reconstruction (``rec``): 1×1 conv + PixelShuffle(32) of the student's final map back to the
  view's pixels; target = the same view unmasked (view 2 keeps its augmentations). Focal L1 over
  masked pixels and bands (:class:`~eoforge.train.losses.MaskedFocalL1Loss`) + focal frequency
  loss (:class:`~eoforge.train.losses.FocalFrequencyLoss`) of the prediction whose unmasked pixels
  are replaced by ``0.5 · pred.detach() + 0.5 · target`` (A2MIM's "mixed" replacement, kept at weight
  ``fft_unmasked_weight`` = 0.001 as the official recipe). Mean over the two views.
- global (``global``): query = student's MASKED view pooled -> MLP (no BatchNorm) -> L2 norm; key =
  teacher's UNMASKED OTHER view through the EMA projector; InfoNCE (τ 0.2) against a queue of
  teacher keys (:class:`~eoforge.train.losses.QueueInfoNCE`), averaged over the two directions;
  both views' keys are enqueued each step, gathered from all ranks ONCE (OURS: the official
  multi-GPU path gathers twice and holds each key world-size times).
- local (``local``): every cell of the student's final map (``grid × grid``, 7 × 7 at 224 px) finds
  the teacher cell of the OTHER view whose centre is nearest on the ground, centres computed from
  the crop boxes and flips in source-tile pixels (:func:`cell_centres`, :func:`match_cells`; OURS:
  the official code stores the crop offset as a fraction of the free margin next to sizes in
  pixels, so translation is all but ignored); the ``num_matches`` closest pairs (20 of 49) are
  kept. Head: per-cell MLP D -> 2048 -> 2048 -> 256 (BatchNorm on ResNets, GELU), L2 norm, weight-normed
  prototypes (2048) with the row norms frozen at 1; DINO cross-entropy
  (:class:`~eoforge.train.losses.DINOClsLoss`: student τ 0.1, teacher τ 0.04 -> 0.07 over the
  first quarter of training, centre momentum 0.9, all-reduced), averaged over the two directions.
- total = ``rec_weight · rec + global_weight · global + local_weight · local`` (all 1).

Downstream uses the STUDENT backbone (:meth:`Cmid.export_backbone`), a plain timm model.

Smaller differences from the official code, none of which changes what is learned: the queue
starts as random UNIT keys (MoCo; the official normalises its random queue along the wrong axis);
the local head's linear layers start from DINO's truncated normal (the official Conv1d layers keep
PyTorch's default); RGB colour jitter and greyscale become per-band jitter and band-mean grey, and
noise and solarisation work in normalised units (train/METHODS.md DEFAULT for 13/2-band data).

Backbones (timm, ``num_classes=0``), and which module gives which feature:

- ResNets (``resnet50`` in the paper; ``resnet18`` or narrower variants through
  ``model.timm_kwargs`` on a CPU): ``conv1``/``bn1``/``act1``/``maxpool`` = the stem, stride 4,
  64 channels (2 × ``stem_width`` with a deep stem): the mask token is added here;
  ``layer1``-``layer4`` = strides 4, 8, 16, 32; ``layer4`` (2048 channels on ResNet-50, 512 on
  ResNet-18) is the final map.
- Swin Transformers (``swin_base_patch4_window7_224`` = the paper's Swin-B: embed 128, depths
  2/2/18/2, window 7): ``patch_embed`` (4 × 4 patches + LayerNorm) = stride 4, ``embed_dim``
  channels, NHWC: the mask token is added here (timm's Swin has no absolute position embedding);
  ``layers.0``-``layers.3`` = strides 4, 8, 16, 32; ``norm`` after ``layers.3`` (1024 channels on
  Swin-B) is the final map. A Swin is built for one input size: ``model.img_size_px`` must equal
  ``method.crop_px``.

The official code has no ViT path, and neither has this one.

Batch layout (``B`` samples, ``C`` bands, ``P = crop_px``, ``M = P / mask_block_px``)::

    view1, view2    float32 [B, C, P, P]   normalised; view 1 weak, view 2 strong (both unmasked)
    box1, box2      float32 [B, 4]         crop box in source-tile pixels: top, left, height, width
    flip1, flip2    bool    [B]            horizontal flip applied after the crop
    mask1, mask2    bool    [B, M, M]      the student's mask blocks (True = masked)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import Tensor, nn

from eoforge.train.augment import (
    Box, band_mean_grey, bernoulli, gaussian_blur, gaussian_noise, hflip, random_brightness_contrast,
    random_resized_crop_params, resized_crop, solarize, uniform,
)
from eoforge.train.heads import DINOHead, moco_mlp
from eoforge.train.losses import (
    DINOClsLoss, FocalFrequencyLoss, MaskedFocalL1Loss, QueueInfoNCE, teacher_temperature,
)
from eoforge.train.methods.base import (
    EmaTeacherMethod, MethodOutput, check_probabilities, check_ranges, stack_image,
)
from eoforge.train.models import ModelConfig, create_backbone, is_swin

#: loader time-step modes that give CMID one image per sample (two crops of it are the views)
TIME_STEPS = ("random", "first")


@dataclass(frozen=True)
class CmidConfig:
    """CMID's own settings; the official code's values (train/METHODS.md#cmid), DEFAULT where it has none.

    Attributes:
        crop_px: view edge in pixels (224); a multiple of ``mask_block_px`` and of the backbone's
            output stride (32).
        crop_scale: RandomResizedCrop area fractions of each view (0.3, 1.0).
        crop_ratio: aspect-ratio range, width / height (3/4, 4/3).
        hflip_p: horizontal-flip probability of each view, drawn independently (0.5).
        jitter_p: view 2's per-band brightness/contrast jitter probability (0.8).
        brightness, contrast: jitter factor ranges ``1 ± value`` (0.4 each).
        blur_p: view 2's Gaussian-blur probability (1.0).
        blur_kernel_px: range of the odd blur kernel size (3, 7).
        blur_sigma_px: blur σ range in pixels (0.1, 2.0).
        noise_p: view 2's Gaussian-noise probability (0.6).
        noise_std: noise σ range in normalised units (0.012, 0.028): albumentations' GaussNoise
            default (variance 10-50 on a 0-255 image) as a share of the value range, which
            ``minmax2sigma`` maps to [0, 1] (DEFAULT).
        solarize_p: view 2's solarisation probability (0.2).
        solarize_threshold: values at or above it are reflected about it, in normalised units
            (0.5, the middle of the ``minmax2sigma`` range; 0 for ``zscore`` data).
        grey_p: view 2's band-mean grey probability (0.2).
        mask_block_px: edge of a mask block in pixels (32).
        mask_ratio: share of the blocks masked, rounded up (0.6: 30 of 49).
        rec_weight, global_weight, local_weight: branch weights (1 each).
        focal_alpha, focal_gamma: focal L1's α and γ (0.2, 1.0).
        fft_weight: weight of the focal frequency loss inside the reconstruction branch (1.0).
        fft_alpha: its spectral-weight exponent (1.0).
        fft_unmasked_weight: weight of the prediction on UNMASKED pixels in the frequency loss's
            input; the rest is ``0.5 · pred.detach() + 0.5 · target`` (0.001, the official recipe's
            ``fft_unmask_weight``; 0 = the plain replacement, train/METHODS.md#cmid).
        projector_hidden_dim, projector_dim: global projector MLP (2048, 256).
        temperature: InfoNCE τ (0.2).
        queue_size: teacher keys in the queue (65,536, DEFAULT); at least 2 × the global batch.
        num_matches: matched cell pairs kept per view and sample (20 of 49).
        local_hidden_dim, local_bottleneck_dim, local_layers: local head MLP (2048, 256, 3).
        local_prototypes: local head prototypes (2048).
        local_bn: BatchNorm in the local head's MLP (None: on for ResNets, off for Swin).
        student_temp: local student temperature (0.1).
        teacher_temp_start, teacher_temp_end: local teacher temperature warm-up (0.04 -> 0.07).
        teacher_temp_warmup_steps: its length in steps (None: a quarter of the run, the
            paper's 50 of 200 epochs).
        center_momentum: local centre EMA momentum (0.9).
    """

    crop_px: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 1.0
    blur_kernel_px: tuple[int, int] = (3, 7)
    blur_sigma_px: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.6
    noise_std: tuple[float, float] = (0.012, 0.028)
    solarize_p: float = 0.2
    solarize_threshold: float = 0.5
    grey_p: float = 0.2
    mask_block_px: int = 32
    mask_ratio: float = 0.6
    rec_weight: float = 1.0
    global_weight: float = 1.0
    local_weight: float = 1.0
    focal_alpha: float = 0.2
    focal_gamma: float = 1.0
    fft_weight: float = 1.0
    fft_alpha: float = 1.0
    fft_unmasked_weight: float = 0.001
    projector_hidden_dim: int = 2048
    projector_dim: int = 256
    temperature: float = 0.2
    queue_size: int = 65536
    num_matches: int = 20
    local_hidden_dim: int = 2048
    local_bottleneck_dim: int = 256
    local_layers: int = 3
    local_prototypes: int = 2048
    local_bn: bool | None = None
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_steps: int | None = None
    center_momentum: float = 0.9

    def __post_init__(self) -> None:
        check_ranges(self, "crop_scale", "crop_ratio", "blur_sigma_px", "noise_std", fractions=("crop_scale",))
        kernel = tuple(int(k) for k in self.blur_kernel_px)  # YAML gives a list
        if len(kernel) != 2 or kernel[0] < 1 or kernel[0] % 2 == 0 or kernel[1] % 2 == 0 or kernel[0] > kernel[1]:
            raise ValueError(f"method.blur_kernel_px must be two increasing odd sizes, got {self.blur_kernel_px}")
        object.__setattr__(self, "blur_kernel_px", kernel)
        check_probabilities(self, "hflip_p", "jitter_p", "blur_p", "noise_p", "solarize_p", "grey_p")
        if not 0.0 <= self.fft_unmasked_weight <= 1.0:
            raise ValueError(f"method.fft_unmasked_weight must be in [0, 1], got {self.fft_unmasked_weight}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"method.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if min(self.rec_weight, self.global_weight, self.local_weight, self.fft_weight) < 0:
            raise ValueError("method branch weights (rec, global, local, fft) must be >= 0")
        if min(self.temperature, self.student_temp, self.teacher_temp_start, self.teacher_temp_end) <= 0:
            raise ValueError("method temperatures must be > 0")
        if self.crop_px < 1 or self.mask_block_px < 1 or self.num_matches < 1 or self.local_layers < 1:
            raise ValueError("method.crop_px, mask_block_px, num_matches and local_layers must be >= 1")


def masked_blocks(n_blocks: int, mask_ratio: float) -> int:
    """Blocks the student does not see: ``ceil(mask_ratio · n_blocks)`` (0.6 of 49 -> 30).

    The product is rounded to 9 decimals first, so a ratio that is exact in decimal (0.5 of 16)
    is not pushed up by a float error.
    """
    return min(n_blocks, math.ceil(round(mask_ratio * n_blocks, 9)))


# ---------------------------------------------------------------------------------------------
# views (DataLoader workers)

@dataclass(frozen=True)
class CmidViews:
    """Picklable per-sample view maker: ``views(inputs, generator) -> dict`` (module docstring layout).

    Attributes:
        cfg: the method config.
        in_chans: expected band count of the stacked image.
    """

    cfg: CmidConfig
    in_chans: int

    def crop(self, image: Tensor, generator: torch.Generator) -> tuple[Tensor, Box, bool]:
        """A random resized crop of ``image`` ``[C, H, W]`` -> (``[C, P, P]``, its box in tile pixels, flipped)."""
        cfg = self.cfg
        box = random_resized_crop_params(image.shape[-2], image.shape[-1], cfg.crop_scale, cfg.crop_ratio, generator)
        x = resized_crop(image, box, cfg.crop_px)
        flip = bernoulli(cfg.hflip_p, generator)
        return (hflip(x) if flip else x), box, flip

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """View 2's photometric augmentations of ``x`` ``[C, P, P]``, in the official order."""
        cfg = self.cfg
        if bernoulli(cfg.jitter_p, generator):
            x = random_brightness_contrast(x, cfg.brightness, cfg.contrast, generator)
        if bernoulli(cfg.blur_p, generator):
            low, high = cfg.blur_kernel_px
            kernel = low + 2 * int(torch.randint(0, (high - low) // 2 + 1, (), generator=generator))
            x = gaussian_blur(x, float(uniform(*cfg.blur_sigma_px, generator)), kernel)
        if bernoulli(cfg.noise_p, generator):
            x = gaussian_noise(x, float(uniform(*cfg.noise_std, generator)), generator)
        if bernoulli(cfg.solarize_p, generator):
            x = solarize(x, cfg.solarize_threshold)
        if bernoulli(cfg.grey_p, generator):
            x = band_mean_grey(x)
        return x

    def mask(self, generator: torch.Generator) -> Tensor:
        """A random student mask: bool ``[M, M]`` with ``masked_blocks`` True entries."""
        side = self.cfg.crop_px // self.cfg.mask_block_px
        n = side * side
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[: masked_blocks(n, self.cfg.mask_ratio)]] = True
        return mask.reshape(side, side)

    def __call__(self, inputs: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        image = stack_image(inputs)
        key = inputs.get("__key__", "?")
        if image.ndim != 3:
            raise ValueError(f"sample {key}: CMID takes one image per sample ([C, H, W]), got {tuple(image.shape)}; "
                             f"set data.time_step to one of {TIME_STEPS}")
        if image.shape[0] != self.in_chans:
            raise ValueError(f"sample {key}: {image.shape[0]} bands, the model takes {self.in_chans}")
        out: dict[str, Tensor] = {}
        for i in (1, 2):
            x, box, flip = self.crop(image, generator)
            if i == 2:
                x = self.strong(x, generator)
            out[f"view{i}"] = x.contiguous()
            out[f"box{i}"] = torch.tensor(box, dtype=torch.float32)
            out[f"flip{i}"] = torch.tensor(flip)
            out[f"mask{i}"] = self.mask(generator)
        return out


# ---------------------------------------------------------------------------------------------
# geometry: masks at any stride, cells on the ground

def expand_blocks(mask: Tensor, size_px: int) -> Tensor:
    """Block mask bool ``[B, M, M]`` -> float32 ``[B, 1, S, S]`` at ``S = size_px`` (nearest; ``S`` a
    multiple of ``M``)."""
    scale = size_px // mask.shape[-1]
    if scale * mask.shape[-1] != size_px:
        raise ValueError(f"a {mask.shape[-1]}-block mask does not tile {size_px} px")
    return mask[:, None].float().repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def fill_masked(images: Tensor, mask_px: Tensor) -> Tensor:
    """``images`` ``[B, C, H, W]`` with the pixels where ``mask_px`` ``[B, 1, H, W]`` is 1 set to the
    image's own per-band mean over ALL its pixels (the official ``mask_color: mean``)."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return torch.where(mask_px.bool(), mean, images)


def cell_centres(boxes: Tensor, flips: Tensor, grid: int) -> Tensor:
    """Ground position of every cell of a view's ``grid × grid`` feature map, in source-tile pixels.

    A view is the crop ``box`` resized to ``P × P`` (then mirrored when ``flip``), so cell
    ``(r, c)`` of its feature map covers crop rows ``[r, r + 1) · h / grid`` and crop columns
    ``[c, c + 1) · w / grid``, or ``[grid − 1 − c, grid − c) · w / grid`` after a flip.

    Args:
        boxes: float ``[B, 4]`` crop boxes ``(top, left, height, width)`` in tile pixels.
        flips: bool ``[B]`` horizontal flip after the crop.
        grid: cells per side (``crop_px / output stride``).

    Returns:
        float32 ``[B, grid², 2]``: ``(row, col)`` of each cell centre in tile pixels, cells in the
        row-major order of the feature map.
    """
    b = boxes.shape[0]
    top, left, height, width = boxes.float().unbind(-1)
    frac = (torch.arange(grid, dtype=torch.float32, device=boxes.device) + 0.5) / grid  # [g] share of the crop
    col_frac = torch.where(flips.bool()[:, None], frac.flip(0)[None], frac[None])       # [B, g]
    rows = top[:, None] + frac[None] * height[:, None]                                  # [B, g]
    cols = left[:, None] + col_frac * width[:, None]                                    # [B, g]
    centres = torch.stack([rows[:, :, None].expand(b, grid, grid), cols[:, None, :].expand(b, grid, grid)], dim=-1)
    return centres.reshape(b, grid * grid, 2)


def match_cells(student: Tensor, teacher: Tensor, n_matches: int) -> tuple[Tensor, Tensor]:
    """Pair each student cell with the nearest teacher cell on the ground; keep the closest pairs.

    As the official ``position_match``: every student cell takes the teacher cell whose centre is
    nearest (Euclidean, tile pixels); the ``n_matches`` student cells with the smallest such
    distances are kept (ties to the lower cell index), in cell order.

    Args:
        student: ``[B, L, 2]`` student cell centres (:func:`cell_centres`).
        teacher: ``[B, L', 2]`` teacher cell centres of the other view.
        n_matches: pairs kept per sample (``<= L``).

    Returns:
        ``(student_index, teacher_index)``, int64 ``[B, n_matches]`` each: row-major cell indices.
    """
    # exact distances (no matmul shortcut), so equal ground positions compare equal
    distance = torch.cdist(student.float(), teacher.float(), compute_mode="donot_use_mm_for_euclid_dist")
    nearest, teacher_index = distance.min(dim=-1)                                       # [B, L]
    closest = torch.sort(nearest, dim=1, stable=True).indices[:, :n_matches]
    student_index = closest.sort(dim=1).values
    return student_index, teacher_index.gather(1, student_index)


def take_cells(feature_map: Tensor, index: Tensor) -> Tensor:
    """Cells ``index`` ``[B, K]`` (row-major) of ``feature_map`` ``[B, D, h, w]`` -> ``[B, K, D]``."""
    cells = feature_map.flatten(2).transpose(1, 2)                                      # [B, h·w, D]
    return cells.gather(1, index[..., None].expand(-1, -1, cells.shape[-1]))


# ---------------------------------------------------------------------------------------------
# backbones: the stride-4 site of the mask token and the final stride-32 map

def mask_token_site(backbone: nn.Module) -> tuple[int, int]:
    """``(channels, stride)`` of the features the mask token is added to: a ResNet's stem output
    (before ``layer1``), a Swin's patch embedding."""
    info = {f["module"]: f for f in backbone.feature_info}
    if is_swin(backbone):
        return int(info["layers.0"]["num_chs"]), int(info["layers.0"]["reduction"])
    return int(info["act1"]["num_chs"]), int(info["layer1"]["reduction"])


def dense_features(backbone: nn.Module, images: Tensor, mask_token: Tensor | None = None,
                   token_mask: Tensor | None = None) -> Tensor:
    """The final feature map ``[B, D, P/32, P/32]`` of a timm ResNet or Swin on ``images`` ``[B, C, P, P]``.

    With ``mask_token`` ``[C_4]`` and ``token_mask`` ``[B, 1, P/4, P/4]`` (1 = masked), the token is
    ADDED to the stride-4 features where the mask is 1 (the official ``replace=False``; a replaced
    feature would lose what the mean-filled pixels still say about the band means).
    """
    if is_swin(backbone):
        x = backbone.patch_embed(images)                                  # NHWC [B, P/4, P/4, C_4]
        if mask_token is not None and token_mask is not None:
            x = x + mask_token * token_mask[:, 0, :, :, None].to(x.dtype)
        return backbone.norm(backbone.layers(x)).permute(0, 3, 1, 2)
    x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(images))))  # [B, C_4, P/4, P/4]
    if mask_token is not None and token_mask is not None:
        x = x + mask_token[None, :, None, None] * token_mask.to(x.dtype)
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        x = layer(x)
    return x


# ---------------------------------------------------------------------------------------------
# the method

class Cmid(EmaTeacherMethod):
    """CMID (module docstring): masked student with reconstruction, global and local branches; EMA teacher.

    Args:
        cfg: :class:`CmidConfig`.
        model_cfg: the backbone (a timm ResNet or Swin Transformer).
        in_chans: input bands (13 S2, 2 S1, 15 both).
        total_steps: optimiser steps of the run (the teacher-temperature warm-up).
        world_size: ranks (the queue must hold two views' keys of the global batch).

    Submodules:
        student: ``ModuleDict(backbone, projector, local_head)``; ``mask_token`` ``[C_4]`` and
            ``rec_head`` (1×1 conv + PixelShuffle) beside it, not averaged into the teacher.
        teacher: ``ModuleDict(backbone, projector, local_head)``, an EMA copy, no grad.
        queue_loss: :class:`~eoforge.train.losses.QueueInfoNCE` (owns the key queue).
        local_loss: :class:`~eoforge.train.losses.DINOClsLoss` on matched cells (owns the centre).
    """

    name: ClassVar[str] = "cmid"
    config_class: ClassVar[type] = CmidConfig

    def __init__(self, cfg: CmidConfig, model_cfg: ModelConfig, in_chans: int, total_steps: int,
                 world_size: int = 1) -> None:
        super().__init__()
        self.cfg, self.model_cfg, self.in_chans, self.world_size = cfg, model_cfg, in_chans, world_size
        backbone = create_backbone(model_cfg, in_chans)
        if not (isinstance(backbone, ResNet) or is_swin(backbone)):
            raise ValueError(f"CMID trains timm ResNets and Swin Transformers (the official code has no ViT path), "
                             f"not {model_cfg.name!r}")
        self.swin = is_swin(backbone)
        self.out_stride = int(backbone.feature_info[-1]["reduction"])
        token_dim, self.token_stride = mask_token_site(backbone)
        for size, name in ((cfg.mask_block_px, "mask_block_px"), (self.out_stride, "the output stride")):
            if cfg.crop_px % size:
                raise ValueError(f"method.crop_px={cfg.crop_px} is not a multiple of {name} ({size})")
        if cfg.mask_block_px % self.token_stride:
            raise ValueError(f"method.mask_block_px={cfg.mask_block_px} is not a multiple of the mask token's "
                             f"stride ({self.token_stride})")
        if self.swin and tuple(backbone.patch_embed.img_size) != (cfg.crop_px, cfg.crop_px):
            raise ValueError(f"a Swin is built for one input size: set model.img_size_px to method.crop_px "
                             f"({cfg.crop_px}), got {model_cfg.img_size_px}")
        self.grid = cfg.crop_px // self.out_stride
        if cfg.num_matches > self.grid**2:
            raise ValueError(f"method.num_matches={cfg.num_matches} exceeds the {self.grid}x{self.grid} cells of a "
                             f"{cfg.crop_px}-px view")
        self.mask_grid = cfg.crop_px // cfg.mask_block_px
        self.teacher_temp_warmup_steps = (cfg.teacher_temp_warmup_steps if cfg.teacher_temp_warmup_steps is not None
                                          else int(round(0.25 * total_steps)))

        dim = backbone.num_features
        local_bn = (not self.swin) if cfg.local_bn is None else cfg.local_bn
        self.student = nn.ModuleDict({
            "backbone": backbone,
            "projector": moco_mlp(2, dim, cfg.projector_hidden_dim, cfg.projector_dim, batch_norm=False),
            "local_head": DINOHead(dim, cfg.local_prototypes, hidden_dim=cfg.local_hidden_dim,
                                   bottleneck_dim=cfg.local_bottleneck_dim, n_layers=cfg.local_layers,
                                   use_bn=local_bn, norm_last_layer=True),
        })
        self.mask_token = nn.Parameter(torch.zeros(token_dim))  # zeros, as the official code
        self.rec_head = nn.Sequential(nn.Conv2d(dim, self.out_stride**2 * in_chans, kernel_size=1),
                                      nn.PixelShuffle(self.out_stride))
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.focal_l1 = MaskedFocalL1Loss(cfg.focal_alpha, cfg.focal_gamma)
        self.focal_frequency = FocalFrequencyLoss(cfg.fft_alpha)
        self.queue_loss = QueueInfoNCE(cfg.projector_dim, cfg.queue_size, cfg.temperature)
        self.local_loss = DINOClsLoss(cfg.local_prototypes, cfg.student_temp, cfg.center_momentum)
        self.train()

    # -------------------------------------------------------------------- protocol

    def make_views(self) -> CmidViews:
        return CmidViews(self.cfg, self.in_chans)

    def check_data(self, data: Any) -> None:
        if data.time_step not in TIME_STEPS:
            raise ValueError(f"cmid takes two crops of ONE image per sample: data.time_step must be one of "
                             f"{TIME_STEPS}, got {data.time_step!r}")
        keys = 2 * data.batch_size * self.world_size
        if keys > self.cfg.queue_size:
            raise ValueError(f"cmid enqueues 2 x data.batch_size x ranks = {keys} keys a step, more than "
                             f"method.queue_size={self.cfg.queue_size}")

    def train(self, mode: bool = True) -> Cmid:
        super().train(mode)
        # the teacher never drops paths, but its BatchNorm layers normalise with the batch's
        # statistics, as the official momentum branch (which runs in training mode)
        self.teacher.eval()
        for m in self.teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(mode)
        return self

    def export_backbone(self, branch: str | None = None) -> nn.Module:
        return self.student["backbone"]

    def teacher_temp(self, step: int) -> float:
        """Local teacher temperature at 0-based step ``step``."""
        return teacher_temperature(step, self.teacher_temp_warmup_steps, self.cfg.teacher_temp_start,
                                   self.cfg.teacher_temp_end)

    # -------------------------------------------------------------------- forward

    def student_features(self, images: Tensor, mask: Tensor) -> Tensor:
        """Student final map ``[B, D, g, g]`` of ``images`` ``[B, C, P, P]`` under the block ``mask`` ``[B, M, M]``."""
        size = images.shape[-1]
        masked = fill_masked(images, expand_blocks(mask, size))
        token_mask = expand_blocks(mask, size // self.token_stride)
        return dense_features(self.student["backbone"], masked, self.mask_token, token_mask)

    def reconstruction(self, features: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(focal L1, focal frequency) of the pixels predicted from the student's ``features`` against
        ``target`` ``[B, C, P, P]`` (the view unmasked), ``mask`` the view's blocks."""
        pred = self.rec_head(features).float()
        mask_px = expand_blocks(mask, target.shape[-1])
        l1 = self.focal_l1(pred, target, mask_px)
        # unmasked pixels enter the spectrum as a detached mix of prediction and target (A2MIM's
        # "mixed" replacement), with a small share of the live prediction (fft_unmasked_weight)
        keep = mask_px + (1.0 - mask_px) * self.cfg.fft_unmasked_weight
        mixed = 0.5 * pred.detach() + 0.5 * target
        return l1, self.focal_frequency(pred * keep + mixed * (1.0 - keep), target)

    def forward(self, batch: dict[str, Tensor], step: int) -> MethodOutput:  # type: ignore[override]
        cfg = self.cfg
        views = (batch["view1"].float(), batch["view2"].float())
        masks = (batch["mask1"].bool(), batch["mask2"].bool())
        if tuple(views[0].shape[-2:]) != (cfg.crop_px, cfg.crop_px) or masks[0].shape[-1] != self.mask_grid:
            raise ValueError(f"views of {tuple(views[0].shape[-2:])} px with {masks[0].shape[-1]}-block masks, the "
                             f"method expects {cfg.crop_px} px and {self.mask_grid}: views and method configs differ")
        students = [self.student_features(v, m) for v, m in zip(views, masks)]
        with torch.no_grad():
            teachers = [dense_features(self.teacher["backbone"], v) for v in views]

        # reconstruction: each view from its own masked features
        rec_terms = [self.reconstruction(f, v, m) for f, v, m in zip(students, views, masks)]
        rec_l1 = 0.5 * (rec_terms[0][0] + rec_terms[1][0])
        rec_fft = 0.5 * (rec_terms[0][1] + rec_terms[1][1])
        rec = rec_l1 + cfg.fft_weight * rec_fft

        # global: masked student query against the unmasked teacher key of the OTHER view
        queries = [self.student["projector"](f.mean(dim=(-2, -1))) for f in students]
        with torch.no_grad():
            keys = [F.normalize(self.teacher["projector"](t.mean(dim=(-2, -1))).float(), dim=-1) for t in teachers]
        global_ = 0.5 * (self.queue_loss(queries[0], keys[1]) + self.queue_loss(queries[1], keys[0]))
        self.queue_loss.enqueue(torch.cat(keys))

        # local: student cells against the teacher cells of the other view covering the same ground
        centres = [cell_centres(batch[f"box{i}"], batch[f"flip{i}"], self.grid) for i in (1, 2)]
        temp = self.teacher_temp(step)
        local_terms = []
        for s, t in ((0, 1), (1, 0)):
            student_index, teacher_index = match_cells(centres[s], centres[t], cfg.num_matches)
            # cells as rows [B·K, D]: the head's BatchNorm then normalises over samples and cells,
            # as the official Conv1d head over [B, D, K]
            logits = self.student["local_head"](take_cells(students[s], student_index).flatten(0, 1))
            with torch.no_grad():
                teacher_logits = self.teacher["local_head"](take_cells(teachers[t], teacher_index).flatten(0, 1))
                # as the official loss: direction 2's targets see the centre direction 1 updated
                targets = self.local_loss.teacher_probs(teacher_logits, temp)
                self.local_loss.update_center(teacher_logits)
            local_terms.append(self.local_loss(logits, targets))
        local = 0.5 * (local_terms[0] + local_terms[1])

        loss = cfg.rec_weight * rec + cfg.global_weight * global_ + cfg.local_weight * local
        logs = {"rec": rec.detach(), "rec_l1": rec_l1.detach(), "rec_fft": rec_fft.detach(),
                "global": global_.detach(), "local": local.detach(), "teacher_temp": temp}
        return MethodOutput(loss=loss, logs=logs, embeddings=students[0].mean(dim=(-2, -1)).detach())


__all__ = ["Cmid", "CmidConfig", "CmidViews", "cell_centres", "dense_features", "expand_blocks", "fill_masked",
           "mask_token_site", "masked_blocks", "match_cells", "take_cells"]
