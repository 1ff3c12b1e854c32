"""PerA: perfectly aligned pairs (Shen et al. 2025, "Perfectly Aligned Sample Pairs for Remote
Sensing Self-Supervised Learning", arXiv 2505.19447), for multispectral / SAR ViTs.

A positive pair is ONE geometric crop seen twice, differing only in colour, and split by
spatially disjoint patch masks: teacher and student see different patches of the same ground,
so the pair is semantically aligned but shares no pixels. The student's input is sparse (20 % of
the patches), which is where the memory and time saving comes from: the patches it does not see
are never embedded, never enter a block (tokens are gathered, not zeroed).

Per sample (``PeraViews``, in DataLoader workers):

- ``n_global_crops`` global crops (paper 448 px, scale 0.4-1.0) and ``n_local_crops`` local crops
  (96 px, scale 0.05-0.4), aspect 3/4-4/3, h-flip and v-flip shared by both members of a pair;
- colour per member, drawn here and applied on the device in :meth:`PerA.forward`: the student
  member gets, with p = 0.8, band-mean grey (p = 0.1) or else per-band brightness/contrast jitter
  (b 0.4, c 0.4); the teacher member gets the jitter with p = 0.1 (multispectral replacement of
  RGB colour jitter / greyscale, train/METHODS.md DEFAULT). No blur, no solarisation;
- one random permutation of the crop's ``L`` patches: student ``S`` = the first 20 %, mask
  tokens ``M`` = the next 20 % (global crops only), teacher ``T`` = the last 60 %.

Per step (:meth:`PerA.forward`):

- student, global crops: [CLS] + S through blocks ``0 .. depth/2 - 1``; then M mask tokens (one
  learned token + the position embedding of each masked patch) join, and blocks
  ``depth/2 .. depth - 1`` run on [CLS] + S + M; final norm. Local crops: [CLS] + S through
  all blocks;
- teacher (EMA of student backbone + CLS head, no grad): [CLS] + T through all blocks, for
  global and local crops;
- loss = DINO cross-entropy between student and teacher CLS prototype distributions of the SAME
  crop (2 + 8 pairs, averaged; student temperature 0.1, teacher 0.03 -> 0.05 linear warm-up,
  centre momentum 0.9) + 0.1 x KoLeo on the student's normalised global bottleneck features (per
  global crop over the batch, summed over crops as DINOv2) + 0.01 x pixel MSE of the pixel head
  on the M tokens against the student view's pixels (sum over the patch's ``patch² × C``
  values, mean over tokens).

Downstream uses the TEACHER backbone (:meth:`PerA.export_backbone`). Optimiser values of the
paper (AdamW eps 2e-5, lr 0 -> 1e-3 over 10 % of training then cosine to 1e-6, wd 0.04 -> 0.2,
clip 3.0, EMA 0.992 -> 1, student drop-path 0.3) live in the engine's recipe, not here.

Batch layout (after collation; ``B`` samples, ``G``/``N`` global/local crops, ``C`` bands)::

    global_crops       float32 [B, G, C, Pg, Pg]   the crop (before colour), normalised values
    global_brightness  float32 [B, G, 2, C]        per-band factors, member 0 student, 1 teacher
    global_contrast    float32 [B, G, 2, C]
    global_grey        bool    [B, G, 2]           band-mean grey for that member
    global_perm        int64   [B, G, Lg]          patch permutation (row-major patch index)
    local_*            the same for the N local crops (Pl px, Ll patches)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from eoforge.train.augment import (
    band_mean_grey, bernoulli, brightness_contrast, hflip, random_resized_crop_params, resized_crop,
    sample_brightness_contrast, vflip,
)
from eoforge.train.heads import DINOHead
from eoforge.train.losses import DINOClsLoss, KoLeoLoss, teacher_temperature
from eoforge.train.methods.base import (
    EmaTeacherMethod, MethodOutput, check_probabilities, check_ranges, stack_image,
)
from eoforge.train.models import ModelConfig, create_backbone
from eoforge.train.sparse_vit import check_sparse_vit, embed_kept_patches, gather_patches, pos_embed_for_grid



@dataclass(frozen=True)
class PeraConfig:
    """PerA's own settings (views, masks, heads, loss); paper values unless marked DEFAULT.

    Attributes:
        global_crop_px: global crop edge in pixels (paper 448; recipes 224).
        local_crop_px: local crop edge in pixels (96).
        n_global_crops: global crops per sample (2).
        n_local_crops: local crops per sample (8).
        global_crop_scale: area fraction range of global crops (0.4, 1.0).
        local_crop_scale: area fraction range of local crops (0.05, 0.4).
        crop_ratio: aspect-ratio range, width / height (3/4, 4/3).
        hflip_p: probability of a horizontal flip, shared by the pair (0.5, DEFAULT).
        vflip_p: probability of a vertical flip, shared by the pair (0.5, DEFAULT).
        student_colour_p: probability that the student member gets grey-or-jitter (0.8).
        student_grey_p: given that, probability of band-mean grey instead of jitter (0.1).
        teacher_colour_p: probability that the teacher member gets jitter (0.1).
        brightness: per-band brightness factor range ``1 ± brightness`` (0.4; DEFAULT for MS/SAR).
        contrast: per-band contrast factor range ``1 ± contrast`` (0.4; DEFAULT for MS/SAR).
        student_ratio: fraction of a crop's patches the student sees, ``S`` (0.2).
        mask_ratio: fraction that become mask tokens, ``M``, global crops only (0.2).
        teacher_ratio: fraction the teacher sees, ``T`` (0.6).
        mask_insert_depth: blocks run before mask tokens join (``None``: depth // 2).
        head_hidden_dim: head MLP width (2048).
        head_bottleneck_dim: head bottleneck before the L2 norm (384).
        head_prototypes: CLS-head prototypes ``K`` (paper 131072; DEFAULT smaller for small models).
        head_layers: head MLP layers (3).
        student_temp: student softmax temperature (0.1).
        teacher_temp_start: teacher temperature at step 0 (0.03).
        teacher_temp_end: teacher temperature after the warm-up (0.05).
        teacher_temp_warmup_steps: linear warm-up length in optimiser steps (``None``: 15 % of
            the run, the paper's 30 of 200 epochs).
        center_momentum: DINO centre EMA momentum (0.9).
        koleo_weight: weight of the KoLeo term (0.1).
        pixel_weight: weight of the pixel-head MSE (0.01).
    """

    global_crop_px: int = 448
    local_crop_px: int = 96
    n_global_crops: int = 2
    n_local_crops: int = 8
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    student_colour_p: float = 0.8
    student_grey_p: float = 0.1
    teacher_colour_p: float = 0.1
    brightness: float = 0.4
    contrast: float = 0.4
    student_ratio: float = 0.2
    mask_ratio: float = 0.2
    teacher_ratio: float = 0.6
    mask_insert_depth: int | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 384
    head_prototypes: int = 131072
    head_layers: int = 3
    student_temp: float = 0.1
    teacher_temp_start: float = 0.03
    teacher_temp_end: float = 0.05
    teacher_temp_warmup_steps: int | None = None
    center_momentum: float = 0.9
    koleo_weight: float = 0.1
    pixel_weight: float = 0.01

    def __post_init__(self) -> None:
        check_ranges(self, "global_crop_scale", "local_crop_scale", "crop_ratio",
                     fractions=("global_crop_scale", "local_crop_scale"))
        if self.n_global_crops < 1 or self.n_local_crops < 0:
            raise ValueError("method.n_global_crops must be >= 1 and n_local_crops >= 0")
        check_probabilities(self, "hflip_p", "vflip_p", "student_colour_p", "student_grey_p", "teacher_colour_p")
        ratios = (self.student_ratio, self.mask_ratio, self.teacher_ratio)
        if min(ratios) <= 0 or sum(ratios) > 1 + 1e-9:
            raise ValueError(f"method student/mask/teacher ratios must be > 0 and sum to <= 1, got {ratios}")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp_end) <= 0:
            raise ValueError("method temperatures must be > 0")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def mask_counts(n_patches: int, student_ratio: float, mask_ratio: float, teacher_ratio: float,
                mask_tokens: bool) -> tuple[int, int, int]:
    """Token counts ``(S, M, T)`` of a crop with ``n_patches`` patches.

    Each is the fraction of ``n_patches`` rounded half up; at least one student and one teacher
    patch; ``M = 0`` without mask tokens (local crops); ``T`` shrinks if rounding overshoots.
    Student = ``perm[:S]``, mask tokens = ``perm[S:S+M]``, teacher = ``perm[L-T:]``.
    """
    n_s = max(1, _round_half_up(n_patches * student_ratio))
    n_m = _round_half_up(n_patches * mask_ratio) if mask_tokens else 0
    n_t = min(max(1, _round_half_up(n_patches * teacher_ratio)), n_patches - n_s - n_m)
    if n_t < 1:
        raise ValueError(f"a crop of {n_patches} patches is too small for student/mask/teacher masks")
    return n_s, n_m, n_t


# ---------------------------------------------------------------------------------------------
# views (DataLoader workers)

@dataclass(frozen=True)
class PeraViews:
    """Picklable per-sample view maker: ``views(inputs, generator) -> dict`` (module docstring layout).

    Attributes:
        cfg: the method config (crop sizes, probabilities, jitter strengths).
        patch_px: ViT patch size in pixels (crop sizes are multiples of it).
        in_chans: expected band count of the stacked image.
    """

    cfg: PeraConfig
    patch_px: int
    in_chans: int

    def _colour(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Factors for the student (row 0) and teacher (row 1) member: ``[2, C]``, ``[2, C]``, ``[2]``."""
        cfg, c = self.cfg, self.in_chans
        bright, contr, grey = torch.ones(2, c), torch.ones(2, c), torch.zeros(2, dtype=torch.bool)
        if bernoulli(cfg.student_colour_p, generator):
            if bernoulli(cfg.student_grey_p, generator):
                grey[0] = True
            else:
                bright[0], contr[0] = sample_brightness_contrast(c, cfg.brightness, cfg.contrast, generator)
        if bernoulli(cfg.teacher_colour_p, generator):
            bright[1], contr[1] = sample_brightness_contrast(c, cfg.brightness, cfg.contrast, generator)
        return bright, contr, grey

    def __call__(self, inputs: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        image = stack_image(inputs)
        if image.shape[0] != self.in_chans:
            raise ValueError(f"sample {inputs.get('__key__', '?')}: {image.shape[0]} bands, the model takes {self.in_chans}")
        cfg = self.cfg
        _, height, width = image.shape
        out: dict[str, Tensor] = {}
        for kind, n, size, scale in (("global", cfg.n_global_crops, cfg.global_crop_px, cfg.global_crop_scale),
                                     ("local", cfg.n_local_crops, cfg.local_crop_px, cfg.local_crop_scale)):
            n_patches = (size // self.patch_px) ** 2
            crops = torch.empty(n, self.in_chans, size, size)
            bright, contr = torch.ones(n, 2, self.in_chans), torch.ones(n, 2, self.in_chans)
            grey = torch.zeros(n, 2, dtype=torch.bool)
            perm = torch.empty(n, n_patches, dtype=torch.int64)
            for i in range(n):
                crop = resized_crop(image, random_resized_crop_params(height, width, scale, cfg.crop_ratio, generator), size)
                if bernoulli(cfg.hflip_p, generator):
                    crop = hflip(crop)
                if bernoulli(cfg.vflip_p, generator):
                    crop = vflip(crop)
                crops[i] = crop
                bright[i], contr[i], grey[i] = self._colour(generator)
                perm[i] = torch.randperm(n_patches, generator=generator)
            out.update({f"{kind}_crops": crops, f"{kind}_brightness": bright, f"{kind}_contrast": contr,
                        f"{kind}_grey": grey, f"{kind}_perm": perm})
        return out


def apply_colour(crops: Tensor, brightness: Tensor, contrast: Tensor, grey: Tensor) -> Tensor:
    """One member's colour transform, batched: jitter, then band-mean grey where flagged.

    Args:
        crops: float ``[..., C, H, W]``.
        brightness, contrast: ``[..., C]`` factors (1 = unchanged; grey members carry 1s).
        grey: bool ``[...]``.
    """
    out = brightness_contrast(crops, brightness.to(crops.dtype), contrast.to(crops.dtype))
    return torch.where(grey[..., None, None, None], band_mean_grey(out), out)


# ---------------------------------------------------------------------------------------------
# the method

@dataclass
class PeraBatch:
    """A batch on the device with colour applied and masks split (crops flattened to ``B*G`` / ``B*N``)."""

    batch_size: int
    global_student: Tensor   # [B*G, C, Pg, Pg]
    global_teacher: Tensor
    local_student: Tensor    # [B*N, C, Pl, Pl]
    local_teacher: Tensor
    global_s: Tensor         # int64 [B*G, S_g]
    global_m: Tensor         # int64 [B*G, M_g]
    global_t: Tensor         # int64 [B*G, T_g]
    local_s: Tensor          # int64 [B*N, S_l]
    local_t: Tensor          # int64 [B*N, T_l]


class PerA(EmaTeacherMethod):
    """PerA (module docstring): sparse student with mask tokens, EMA teacher on disjoint patches.

    Args:
        cfg: :class:`PeraConfig`.
        model_cfg: backbone (a timm ViT).
        in_chans: input bands.
        total_steps: optimiser steps of the run (teacher-temperature warm-up default).
        world_size: ranks (unused: the DINO centre all-reduces itself).

    Submodules:
        student: ``ModuleDict(backbone, cls_head)``; ``pixel_head``, ``mask_token`` beside it.
        teacher: ``ModuleDict(backbone, cls_head)``, an EMA copy, no grad, always in eval mode.
    """

    name: ClassVar[str] = "pera"
    config_class: ClassVar[type] = PeraConfig

    def __init__(self, cfg: PeraConfig, model_cfg: ModelConfig, in_chans: int, total_steps: int,
                 world_size: int = 1) -> None:
        super().__init__()
        self.cfg, self.model_cfg, self.in_chans = cfg, model_cfg, in_chans
        self.total_steps, self.world_size = total_steps, world_size
        backbone = create_backbone(model_cfg, in_chans)
        self.patch_px = check_sparse_vit(backbone, model_cfg.name, "PerA")
        for kind, size in (("global", cfg.global_crop_px), ("local", cfg.local_crop_px)):
            if size % self.patch_px:
                raise ValueError(f"method.{kind}_crop_px={size} is not a multiple of the patch size {self.patch_px}")
        depth = len(backbone.blocks)
        self.insert_depth = depth // 2 if cfg.mask_insert_depth is None else cfg.mask_insert_depth
        if not 0 <= self.insert_depth <= depth:
            raise ValueError(f"method.mask_insert_depth must be in [0, {depth}], got {cfg.mask_insert_depth}")
        self.global_patches = (cfg.global_crop_px // self.patch_px) ** 2
        self.local_patches = (cfg.local_crop_px // self.patch_px) ** 2
        self.global_counts = mask_counts(self.global_patches, cfg.student_ratio, cfg.mask_ratio, cfg.teacher_ratio, True)
        self.local_counts = mask_counts(self.local_patches, cfg.student_ratio, cfg.mask_ratio, cfg.teacher_ratio, False)
        self.teacher_temp_warmup_steps = (cfg.teacher_temp_warmup_steps if cfg.teacher_temp_warmup_steps is not None
                                          else _round_half_up(0.15 * total_steps))

        dim = backbone.embed_dim
        head_args = {"hidden_dim": cfg.head_hidden_dim, "bottleneck_dim": cfg.head_bottleneck_dim,
                     "n_layers": cfg.head_layers}
        self.student = nn.ModuleDict({"backbone": backbone, "cls_head": DINOHead(dim, cfg.head_prototypes, **head_args)})
        self.pixel_head = DINOHead(dim, in_chans * self.patch_px**2, **head_args)
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim))
        trunc_normal_(self.mask_token, std=0.02)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOClsLoss(cfg.head_prototypes, cfg.student_temp, cfg.center_momentum)
        self.koleo_loss = KoLeoLoss()

    # -------------------------------------------------------------------- protocol

    def make_views(self) -> PeraViews:
        return PeraViews(self.cfg, self.patch_px, self.in_chans)

    def train(self, mode: bool = True) -> PerA:
        super().train(mode)
        self.teacher.eval()  # the EMA teacher never drops paths
        return self

    def export_backbone(self, branch: str | None = None) -> nn.Module:
        return self.teacher["backbone"]

    def teacher_temp(self, step: int) -> float:
        """Teacher temperature at 0-based step ``step``."""
        return teacher_temperature(step, self.teacher_temp_warmup_steps, self.cfg.teacher_temp_start,
                                   self.cfg.teacher_temp_end)

    # -------------------------------------------------------------------- forward

    @torch.no_grad()
    def prepare(self, batch: dict[str, Tensor]) -> PeraBatch:
        """Colour the two members of each pair and split the permutations into S / M / T indices."""
        device = self.mask_token.device
        g = {k: batch[f"global_{k}"].to(device, non_blocking=True)
             for k in ("crops", "brightness", "contrast", "grey", "perm")}
        loc = {k: batch[f"local_{k}"].to(device, non_blocking=True)
               for k in ("crops", "brightness", "contrast", "grey", "perm")}
        b = g["crops"].shape[0]
        for kind, d, n_patches in (("global", g, self.global_patches), ("local", loc, self.local_patches)):
            if d["perm"].shape[-1] != n_patches:
                raise ValueError(f"{kind} crops carry {d['perm'].shape[-1]} patches, the method expects "
                                 f"{n_patches}: views and method configs differ")

        def member(d: dict[str, Tensor], i: int) -> Tensor:
            return apply_colour(d["crops"].float(), d["brightness"][:, :, i], d["contrast"][:, :, i],
                                d["grey"][:, :, i]).flatten(0, 1)

        (gs, gm, gt), (ls, _, lt) = self.global_counts, self.local_counts
        gp, lp = g["perm"].flatten(0, 1), loc["perm"].flatten(0, 1)
        return PeraBatch(
            batch_size=b, global_student=member(g, 0), global_teacher=member(g, 1),
            local_student=member(loc, 0), local_teacher=member(loc, 1),
            global_s=gp[:, :gs], global_m=gp[:, gs:gs + gm], global_t=gp[:, gp.shape[1] - gt:],
            local_s=lp[:, :ls], local_t=lp[:, lp.shape[1] - lt:],
        )

    def _grid(self, crops: Tensor) -> tuple[int, int]:
        return crops.shape[-2] // self.patch_px, crops.shape[-1] // self.patch_px

    def student_forward(self, v: PeraBatch) -> tuple[Tensor, Tensor, Tensor]:
        """The sparse student backbone.

        Returns:
            ``global_cls`` ``[B*G, D]``, ``mask_out`` ``[B*G, M, D]`` (final-norm outputs of the
            mask tokens), ``local_cls`` ``[B*N, D]``.
        """
        vit = self.student["backbone"]
        blocks = list(vit.blocks)
        pos = pos_embed_for_grid(vit, self._grid(v.global_student))
        x = embed_kept_patches(vit, v.global_student, v.global_s, pos, self.patch_px)
        for blk in blocks[: self.insert_depth]:
            x = blk(x)
        masked = self.mask_token + pos[1][0][v.global_m]  # learned token + the masked patch's position
        x = torch.cat([x, masked.to(x.dtype)], dim=1)
        for blk in blocks[self.insert_depth:]:
            x = blk(x)
        x = vit.norm(x)
        global_cls, mask_out = x[:, 0], x[:, x.shape[1] - v.global_m.shape[1]:]
        local_cls = x.new_zeros(0, x.shape[-1])
        if v.local_student.shape[0]:
            pos = pos_embed_for_grid(vit, self._grid(v.local_student))
            y = embed_kept_patches(vit, v.local_student, v.local_s, pos, self.patch_px)
            local_cls = vit.norm(vit.blocks(y))[:, 0]
        return global_cls, mask_out, local_cls

    @torch.no_grad()
    def teacher_forward(self, v: PeraBatch) -> Tensor:
        """Teacher CLS features of the T patches, globals then locals: ``[B*G + B*N, D]``."""
        vit = self.teacher["backbone"]
        out = []
        for crops, index in ((v.global_teacher, v.global_t), (v.local_teacher, v.local_t)):
            if crops.shape[0]:
                x = embed_kept_patches(vit, crops, index, pos_embed_for_grid(vit, self._grid(crops)), self.patch_px)
                out.append(vit.norm(vit.blocks(x))[:, 0])
        return torch.cat(out)

    def forward(self, batch: dict[str, Tensor], step: int) -> MethodOutput:  # type: ignore[override]
        v = self.prepare(batch)
        b, n_global = v.batch_size, v.global_student.shape[0] // v.batch_size
        global_cls, mask_out, local_cls = self.student_forward(v)
        head = self.student["cls_head"]
        z = head.project(torch.cat([global_cls, local_cls]))
        student_logits = head.last_layer(z)
        with torch.no_grad():
            teacher_logits = self.teacher["cls_head"](self.teacher_forward(v))
            temp = self.teacher_temp(step)
            targets = self.dino_loss.teacher_probs(teacher_logits, temp)
            self.dino_loss.update_center(teacher_logits)
        # rows are aligned crop by crop (globals b-major, then locals): the SAME crop only
        dino = self.dino_loss(student_logits, targets)
        z_global = z[: b * n_global].reshape(b, n_global, -1)
        koleo = sum(self.koleo_loss(z_global[:, i]) for i in range(n_global))
        pred = self.pixel_head(mask_out).float()
        target = gather_patches(v.global_student, v.global_m, self.patch_px)
        pixel = (pred - target).square().sum(dim=-1).mean()
        loss = dino + self.cfg.koleo_weight * koleo + self.cfg.pixel_weight * pixel
        # 0-d tensors: the engine reads them at log steps only (no host sync per step)
        logs = {"dino": dino.detach(), "koleo": koleo.detach(), "pixel": pixel.detach(), "teacher_temp": temp}
        embeddings = global_cls.detach().reshape(b, n_global, -1)[:, 0]
        return MethodOutput(loss=loss, logs=logs, embeddings=embeddings)


def pera_config_fields() -> dict[str, Any]:
    """``{field: default}`` of :class:`PeraConfig` (for documentation and recipes)."""
    return {f.name: f.default for f in fields(PeraConfig)}
