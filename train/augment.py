"""Multispectral augmentation primitives on float tensors, randomness from an explicit generator.

Images are float32 ``[C, H, W]`` (or batched ``[..., C, H, W]`` where stated) of normalised
reflectance / backscatter, any band count (13 S2, 2 S1, 15 both). Random draws take a
:class:`torch.Generator` so that a DataLoader worker's stream - and hence a resumed run - is
reproducible; nothing here touches the global RNG.

Colour operations replace RGB colour jitter for multispectral and SAR data (train/METHODS.md#shared-pieces):
per-band brightness/contrast jitter instead of brightness/contrast/saturation/hue, and
band-mean replication instead of greyscale. Values are not clamped: z-scored inputs are not
bounded to [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Box = tuple[int, int, int, int]  # top, left, height, width in pixels


def uniform(low: float, high: float, generator: torch.Generator, size: tuple[int, ...] = ()) -> Tensor:
    """``U[low, high)`` float32 draws of shape ``size`` (a 0-d tensor by default)."""
    return torch.rand(size, generator=generator) * (high - low) + low


def bernoulli(p: float, generator: torch.Generator) -> bool:
    """One coin flip that is True with probability ``p``."""
    return bool(torch.rand((), generator=generator) < p)


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` with an explicit generator.

    Draws a box covering ``scale`` of the image area (fractions) with aspect ratio ``ratio``
    (width / height, sampled log-uniformly); after 10 failed tries, a centre crop with the ratio
    clamped to ``ratio``.

    Returns:
        ``(top, left, h, w)`` in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(uniform(scale[0], scale[1], generator))
        aspect = math.exp(float(uniform(log_ratio[0], log_ratio[1], generator)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(x: Tensor, box: Box, size_px: int) -> Tensor:
    """Cut ``box`` out of ``x`` ``[C, H, W]`` and resize it to ``[C, size_px, size_px]``.

    Bilinear, anti-aliased when shrinking (as torchvision's tensor path).
    """
    top, left, h, w = box
    patch = x[..., top : top + h, left : left + w]
    if (h, w) == (size_px, size_px):
        return patch.clone()
    return F.interpolate(patch[None], size=(size_px, size_px), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def hflip(x: Tensor) -> Tensor:
    """Mirror ``[..., H, W]`` left-right."""
    return x.flip(-1)


def vflip(x: Tensor) -> Tensor:
    """Mirror ``[..., H, W]`` top-bottom."""
    return x.flip(-2)


def rot90(x: Tensor, k: int) -> Tensor:
    """Rotate ``[..., H, W]`` by ``k`` quarter turns counter-clockwise."""
    return torch.rot90(x, k, dims=(-2, -1))


def sample_brightness_contrast(
    n_bands: int, brightness: float, contrast: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per-band factors ``b ~ U[1 - brightness, 1 + brightness]``, ``c ~ U[1 - contrast, 1 + contrast]``.

    Returns:
        ``(b, c)``, float32 ``[n_bands]`` each.
    """
    b = uniform(max(0.0, 1.0 - brightness), 1.0 + brightness, generator, (n_bands,))
    c = uniform(max(0.0, 1.0 - contrast), 1.0 + contrast, generator, (n_bands,))
    return b, c


def brightness_contrast(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """Per-band brightness then contrast: ``y = (b·x − mean(b·x)) · c + mean(b·x)``.

    The mean is per band over the image (torchvision blends with the image mean; here each band
    with its own). Works batched.

    Args:
        x: ``[..., C, H, W]``.
        brightness: multiplicative factors ``[..., C]`` (1 = unchanged).
        contrast: contrast factors ``[..., C]`` (1 = unchanged).
    """
    y = x * brightness[..., None, None]
    mean = y.mean(dim=(-2, -1), keepdim=True)
    return (y - mean) * contrast[..., None, None] + mean


def band_mean_grey(x: Tensor) -> Tensor:
    """Greyscale for any band count: every band replaced by the mean over bands, ``[..., C, H, W]``."""
    return x.mean(dim=-3, keepdim=True).expand_as(x).clone()


def random_brightness_contrast(x: Tensor, brightness: float, contrast: float, generator: torch.Generator) -> Tensor:
    """:func:`brightness_contrast` with factors drawn by :func:`sample_brightness_contrast`; ``x`` ``[C, H, W]``."""
    b, c = sample_brightness_contrast(x.shape[-3], brightness, contrast, generator)
    return brightness_contrast(x, b.to(x.device), c.to(x.device))


def gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    """Normalised 1-D Gaussian weights ``[2 * radius + 1]`` (float32)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(x: Tensor, sigma: float, kernel_px: int) -> Tensor:
    """Separable Gaussian blur of every band of ``x`` ``[C, H, W]`` (reflect padding, as torchvision).

    Args:
        sigma: standard deviation in pixels (> 0).
        kernel_px: odd kernel size; torchvision's MoCo / BYOL recipes use 23 px at 224 px.
    """
    if kernel_px % 2 != 1 or sigma <= 0:
        raise ValueError(f"gaussian_blur needs an odd kernel and sigma > 0, got {kernel_px}, {sigma}")
    radius = kernel_px // 2
    c = x.shape[-3]
    w = gaussian_kernel1d(sigma, radius).to(x.dtype)
    y = F.pad(x[None], (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, w.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, w.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """``x + N(0, std²)``, independent per band and pixel; ``std`` in the units of ``x`` (normalised)."""
    return x + torch.randn(x.shape, generator=generator).to(x) * std


def solarize(x: Tensor, threshold: float) -> Tensor:
    """Values at or above ``threshold`` reflected about it: ``x ≥ t -> 2t − x``.

    The float form of torchvision's ``solarize`` (``bound − x`` above the threshold, bound 1 and
    threshold 0.5 for [0, 1] images) in normalised units: ``minmax2sigma`` data take t = 0.5
    (the band mean), z-scored data t = 0.
    """
    return torch.where(x >= threshold, 2.0 * threshold - x, x)
