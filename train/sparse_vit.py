"""Run a timm ViT on a subset of its patch tokens: the dropped patches are never embedded and
never enter a block (tokens are gathered, not zeroed).

Masked-input methods share this: PerA's student and teacher see disjoint patch subsets, SoftCon's
trainable branch drops half of them (MAE-style token dropping, He et al. 2022). The pieces work
on timm's own modules (``patch_embed.proj``, ``pos_embed``, ``cls_token``/``reg_token``,
``blocks``, ``norm``), so any timm ``VisionTransformer`` with a plain stride-p patch embedding and
absolute position embeddings runs sparse without a copy of its code::

    patch_px = check_sparse_vit(vit, "vit_small_patch16_224", method="softcon")
    pos = pos_embed_for_grid(vit, (h // patch_px, w // patch_px))
    x = embed_kept_patches(vit, images, keep, pos, patch_px)   # [N, 1 + K, D]
    x = vit.norm(vit.blocks(x))                                # [CLS] at x[:, 0]

Patch indices are row-major over the crop's patch grid (``row * (W / p) + col``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


def gather_patches(crops: Tensor, index: Tensor, patch_px: int) -> Tensor:
    """The pixels of the patches ``index`` of each crop, flattened like a Conv2d kernel.

    Args:
        crops: float ``[N, C, H, W]``, ``H`` and ``W`` multiples of ``patch_px``.
        index: int64 ``[N, K]`` row-major patch indices (``row * (W / patch) + col``).
        patch_px: patch edge ``p``.

    Returns:
        ``[N, K, C * p * p]`` in ``(C, py, px)`` order (matches ``proj.weight.flatten(1)``). Only
        the kept patches are copied.
    """
    n, c, h, w = crops.shape
    gh, gw = h // patch_px, w // patch_px
    grid = crops.reshape(n, c, gh, patch_px, gw, patch_px).permute(0, 2, 4, 1, 3, 5)  # a view
    rows = torch.arange(n, device=crops.device)[:, None]
    return grid[rows, index // gw, index % gw].reshape(n, index.shape[1], c * patch_px * patch_px)


def pos_embed_for_grid(vit: nn.Module, grid: tuple[int, int]) -> tuple[Tensor | None, Tensor]:
    """A timm ViT's position embedding for a ``grid`` of patches: ``(prefix [1, P, D] | None, patches [1, L, D])``.

    Resampled (bicubic, as timm's ``dynamic_img_size`` path) when the grid is not the model's.
    """
    n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = vit.pos_embed
    if tuple(grid) != tuple(vit.patch_embed.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(vit.patch_embed.grid_size),
                                     num_prefix_tokens=n_prefix)
    return (pos[:, :n_prefix] if n_prefix else None), pos[:, n_prefix:]


def embed_kept_patches(vit: nn.Module, crops: Tensor, index: Tensor, pos: tuple[Tensor | None, Tensor],
                       patch_px: int) -> Tensor:
    """Prefix tokens + the kept patches only, embedded: ``[N, P + K, D]``.

    The patch embedding (a stride-p Conv2d) is applied as the equivalent linear map to the
    gathered patches, so dropped patches cost nothing; then each token gets its own position
    embedding, the prefix ([CLS], registers) is prepended, and timm's ``pos_drop`` / ``norm_pre``
    run as in ``VisionTransformer.forward_features``.

    Args:
        vit: a timm ``VisionTransformer``.
        crops: float ``[N, C, H, W]``.
        index: int64 ``[N, K]`` kept patch indices.
        pos: :func:`pos_embed_for_grid` of the crops' grid.
    """
    proj = vit.patch_embed.proj
    tokens = F.linear(gather_patches(crops, index, patch_px), proj.weight.flatten(1), proj.bias)
    tokens = vit.patch_embed.norm(tokens)
    prefix_pos, patch_pos = pos
    tokens = tokens + patch_pos[0][index]
    n = crops.shape[0]
    prefix = [vit.cls_token.expand(n, -1, -1)]
    if vit.reg_token is not None:
        prefix.append(vit.reg_token.expand(n, -1, -1))
    prefix_tokens = torch.cat(prefix, dim=1)
    if prefix_pos is not None:
        prefix_tokens = prefix_tokens + prefix_pos
    return vit.norm_pre(vit.pos_drop(torch.cat([prefix_tokens, tokens], dim=1)))


def cls_of_kept_patches(vit: nn.Module, images: Tensor, index: Tensor, patch_px: int) -> Tensor:
    """The [CLS] token after the final norm when only the patches ``index`` are seen: ``[N, D]``."""
    grid = (images.shape[-2] // patch_px, images.shape[-1] // patch_px)
    x = embed_kept_patches(vit, images, index, pos_embed_for_grid(vit, grid), patch_px)
    return vit.norm(vit.blocks(x))[:, 0]


def check_sparse_vit(vit: nn.Module, name: str, method: str) -> int:
    """Check that ``vit`` supports the sparse path; return its (square) patch size in pixels.

    Args:
        vit: the backbone.
        name: its timm name (for messages).
        method: the method asking (for messages).
    """
    if not isinstance(vit, VisionTransformer):  # its forward is re-implemented below
        raise ValueError(f"{method} needs a timm VisionTransformer here (patch tokens to drop); {name!r} is a "
                         f"{type(vit).__name__}. Use e.g. vit_small_patch16_224 / vit_base_patch16_224.")
    proj = vit.patch_embed.proj
    p = tuple(vit.patch_embed.patch_size)
    if (not isinstance(proj, nn.Conv2d) or p[0] != p[1] or tuple(proj.kernel_size) != p
            or tuple(proj.stride) != p or tuple(proj.padding) != (0, 0)):
        raise ValueError(f"{name!r}: {method} needs a plain square stride-p patch embedding")
    if vit.cls_token is None or vit.pos_embed is None:
        raise ValueError(f"{name!r}: {method} needs a [CLS] token and absolute position embeddings")
    if vit.attn_pool is not None or any(True for _ in vit.fc_norm.parameters()):
        raise ValueError(f"{name!r}: {method} reads the [CLS] token; models with fc_norm / attention pooling "
                         "would leave parameters without gradients")
    return p[0]


__all__ = ["check_sparse_vit", "cls_of_kept_patches", "embed_kept_patches", "gather_patches", "pos_embed_for_grid"]
