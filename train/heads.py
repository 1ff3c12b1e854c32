"""Projection heads: the DINO head (MLP -> L2-norm -> weight-normed linear to K prototypes) and
MoCo v3's BatchNorm MLP (projectors and predictors of SoftCon and the dual encoder; without
BatchNorm, CMID's global projector).

As DINO / DINOv2 (``dinov2/layers/dino_head.py``): a 3-layer MLP ``D -> hidden -> hidden ->
bottleneck`` with GELU and no normalisation layers, an L2 normalisation of the bottleneck
feature, and a bias-free weight-normalised linear layer ``bottleneck -> out_dim`` whose row norms
``g`` start at 1 and are learned (DINOv2 fills ``weight_g`` with 1 and trains it). PerA uses one
such head on the CLS token (``out_dim`` = prototypes) and one of the same shape on mask tokens
(``out_dim`` = patch² × bands pixel values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """``y = x · (g ⊙ v / ‖v‖)ᵀ``: a bias-free linear layer with normalised rows (Salimans & Kingma).

    Equivalent to ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` with
    ``weight_g`` filled with 1, written out so the state dict and the EMA see two plain tensors.

    Args:
        learn_scale: ``g`` is a parameter (DINOv2); False freezes it at 1 (DINO v1's
            ``norm_last_layer``, CMID's local head): a buffer, so no optimiser or EMA moves it and
            the state dict keeps the same keys.

    Attributes:
        weight: direction ``v``, float32 ``[out_features, in_features]``.
        scale: row norms ``g``, float32 ``[out_features]`` (initialised to 1).
    """

    scale: Tensor

    def __init__(self, in_features: int, out_features: int, learn_scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if learn_scale:
            self.scale = nn.Parameter(torch.ones(out_features))
        else:
            self.register_buffer("scale", torch.ones(out_features))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        # (x · vᵀ) · (g / ‖v‖) equals x · (g v / ‖v‖)ᵀ but saves only [N, out] for backward,
        # not a normalised copy of the [out, in] weight (100 MB for 65536 x 384 prototypes)
        factor = self.scale / self.weight.norm(dim=1).clamp_min(1e-12)
        return F.linear(x, self.weight) * factor


class DINOHead(nn.Module):
    """MLP ``D -> hidden -> hidden -> bottleneck``, L2-norm, weight-normed linear to ``out_dim``.

    Args:
        in_dim: backbone feature width ``D``.
        out_dim: prototypes ``K`` (CLS head) or values per token (pixel head).
        hidden_dim: MLP width (paper 2048).
        bottleneck_dim: width before the L2 norm (paper 384).
        n_layers: MLP layers (paper 3).
        use_bn: BatchNorm after each hidden linear layer (DINO v1's option; CMID's local head on
            ResNets).
        norm_last_layer: freeze the prototypes' row norms at 1 (DINO v1's option; CMID).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 384,
                 n_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"DINOHead needs at least one MLP layer, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers += [nn.BatchNorm1d(b), nn.GELU()] if use_bn else [nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def project(self, x: Tensor) -> Tensor:
        """``[N, D]`` -> L2-normalised bottleneck features ``[N, bottleneck_dim]`` (KoLeo works on these)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        return F.normalize(x, dim=-1, p=2, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, D]`` -> ``[N, out_dim]`` (prototype logits / pixel values)."""
        return self.last_layer(self.project(x))


def moco_mlp(n_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True,
             batch_norm: bool = True) -> nn.Sequential:
    """MoCo v3's projector / predictor MLP (Chen et al. 2021, ``moco/builder.py`` ``_build_mlp``).

    ``n_layers`` bias-free linear layers ``in_dim -> hidden_dim -> ... -> out_dim``, each hidden
    one followed by BatchNorm + ReLU; the last by a BatchNorm without affine parameters when
    ``last_bn`` (SimCLR's design, MoCo v3's default). Input and output ``[N, D]``.

    ``batch_norm=False`` drops every BatchNorm (``last_bn`` is then ignored) and gives each linear
    layer a bias instead, which the BatchNorm shift made redundant: MoCo v2's projector, CMID's.
    """
    if n_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {n_layers}")
    layers: list[nn.Module] = []
    for i in range(n_layers):
        a = in_dim if i == 0 else hidden_dim
        b = out_dim if i == n_layers - 1 else hidden_dim
        layers.append(nn.Linear(a, b, bias=not batch_norm))
        if i < n_layers - 1:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
        elif last_bn and batch_norm:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)
