"""Backbones: timm models by name, with ``in_chans`` for 13-band S2 / 2-band S1, and local checkpoints.

Every backbone comes from :func:`timm.create_model` with ``num_classes=0`` (features only) and
``pretrained=False``: nothing is ever fetched from a hub. Continual pretraining loads a LOCAL
checkpoint (safetensors, or a torch ``.pth``/``.pt`` holding a state dict) and adapts its input
layer to the new band count with one of two rules:

- ``"reinit"`` (SoftCon, Wang et al. 2024): the patch embedding (ViT) / first convolution
  (ResNet) is re-created with random initialisation for the new ``in_chans``; every other
  weight is loaded.
- ``"inflate"`` (timm's rule, :func:`timm.models.adapt_input_conv`): the RGB kernel is repeated
  over the new channels and scaled by ``3 / in_chans``.

When the checkpoint already has ``in_chans`` input channels both rules load it unchanged.
Position embeddings of ViTs are resampled to the model's grid (``img_size_px / patch``) with
:func:`timm.layers.resample_abs_pos_embed` (via timm's own ``checkpoint_filter_fn``, which also
converts DINOv2-format checkpoints and resamples a patch kernel of another size).

ViTs are created with ``dynamic_img_size=True`` so that 224-px global and 96-px local crops run
through one model (the position embedding is resampled on the fly); the flag changes no weight,
so exported state dicts load into a plain ``timm.create_model(name, in_chans=..., num_classes=0)``.

Swin Transformers (CMID) are created for ``img_size_px`` (their attention windows and masks are
built for one input size); CNNs take any size and ignore it.

Tiny ViT for tests and the demo: importing this module registers ``vit_pico_patch8`` with timm
(embed 64, depth 4, 2 heads, patch 8, default image 32 px). It is created by name like any timm
model, but only after ``import eoforge.train.models`` (the export JSON names it; users of such a
checkpoint import this module first)::

    import timm, eoforge.train.models  # noqa: F401  (registers vit_pico_patch8)
    model = timm.create_model("vit_pico_patch8", in_chans=13, num_classes=0)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, build_model_with_cfg, is_model_in_modules, register_model
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

INPUT_LAYER_RULES = ("reinit", "inflate")

# Keys of nested training checkpoints that hold the model's state dict (first found wins) and
# prefixes that wrap it (DDP's ``module.``, DINO's ``backbone.``).
_NESTED_KEYS = ("state_dict", "model", "teacher", "target_encoder")
_PREFIXES = ("module.", "backbone.", "encoder.")


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone to build.

    Attributes:
        name: timm model name (``vit_small_patch16_224``, ``vit_base_patch16_224``,
            ``vit_small_patch14_dinov2``, ``resnet50``, ``vit_pico_patch8``, ...).
        img_size_px: ViT input size in pixels (sets the position-embedding grid; other sizes
            still run thanks to ``dynamic_img_size``); a Swin Transformer's only input size.
            CNNs run at any size (evaluation resizes tiles to it).
        patch_size_px: ViT patch size override (``None``: the model's own).
        drop_path_rate: stochastic depth rate of the student (PerA paper: 0.3).
        pretrained: path of a LOCAL checkpoint to start from, or ``None`` for random init.
        input_layer: how a checkpoint's input layer meets a new band count: ``"reinit"``
            (SoftCon) or ``"inflate"`` (timm's repeat-and-scale).
        timm_kwargs: further keyword arguments of ``timm.create_model`` (``embed_dim``,
            ``depth``, ``init_values``, ...): a variant of a registered architecture. Export
            records them, so plain timm rebuilds the model.
    """

    name: str = "vit_small_patch16_224"
    img_size_px: int = 224
    patch_size_px: int | None = None
    drop_path_rate: float = 0.0
    pretrained: str | None = None
    input_layer: str = "reinit"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reserved = sorted(set(self.timm_kwargs) & {"in_chans", "num_classes", "pretrained", "img_size", "patch_size",
                                                  "drop_path_rate"})
        if reserved:
            raise ValueError(f"model.timm_kwargs: {reserved} are set by other model keys or the data")
        if self.input_layer not in INPUT_LAYER_RULES:
            raise ValueError(f"model.input_layer must be one of {INPUT_LAYER_RULES}, got {self.input_layer!r}")
        if self.img_size_px < 1 or (self.patch_size_px is not None and self.patch_size_px < 1):
            raise ValueError("model.img_size_px and model.patch_size_px must be positive")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


# ---------------------------------------------------------------------------------------------
# the tiny ViT (tests, demo)

# read by timm's register_model: the pretrained cfg of the registered name (no weights anywhere)
default_cfgs: dict[str, dict[str, Any]] = {
    "vit_pico_patch8": {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 32, 32),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": True,
    }
}

PICO_ARGS: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}


@register_model
def vit_pico_patch8(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-pico/8: embed 64, depth 4, 2 heads, 32-px default input (~0.2 M parameters).

    For tests and the demo only; keyword arguments override the defaults like any timm ViT.
    """
    if pretrained:
        raise ValueError("vit_pico_patch8 has no published weights; load a local checkpoint instead")
    return build_model_with_cfg(VisionTransformer, "vit_pico_patch8", False,
                                pretrained_filter_fn=checkpoint_filter_fn, **{**PICO_ARGS, **kwargs})


# ---------------------------------------------------------------------------------------------
# creation

def is_vit(model: nn.Module) -> bool:
    """True for timm ViT-like backbones: patch embedding, blocks and prefix tokens (``VisionTransformer``
    and its relatives such as ``Eva``). Code that re-implements ``VisionTransformer`` itself (the
    sparse token path, timm's checkpoint conversion) checks for that class."""
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens"))


def _is_vit_name(name: str) -> bool:
    arch = name.split(".")[0]
    return is_model_in_modules(arch, ["vision_transformer"]) or arch in default_cfgs


def is_swin(model: nn.Module) -> bool:
    """True for timm ``SwinTransformer`` backbones (CMID's transformer)."""
    return isinstance(model, SwinTransformer)


def _is_swin_name(name: str) -> bool:
    return is_model_in_modules(name.split(".")[0], ["swin_transformer"])


def create_backbone(cfg: ModelConfig, in_chans: int) -> nn.Module:
    """Build ``cfg.name`` with ``in_chans`` input bands and no classifier; load ``cfg.pretrained``.

    Args:
        cfg: the model section of the config.
        in_chans: input bands (13 for S2, 2 for S1, 15 for S1+S2).

    Returns:
        A timm model whose ``forward_features`` takes float32 ``[B, in_chans, H, W]`` and whose
        ``forward`` returns ``[B, num_features]`` pooled features.

    Raises:
        ValueError: on an unknown model name, or a checkpoint that does not fit the model.
        FileNotFoundError: when ``cfg.pretrained`` does not exist.
    """
    if not timm.is_model(cfg.name.split(".")[0]):
        raise ValueError(f"unknown timm model {cfg.name!r} (tiny test ViT: 'vit_pico_patch8')")
    kwargs: dict[str, Any] = {**cfg.timm_kwargs, "in_chans": in_chans, "num_classes": 0,
                              "drop_path_rate": cfg.drop_path_rate}
    if _is_vit_name(cfg.name):
        kwargs.update(img_size=cfg.img_size_px, dynamic_img_size=True)
        if cfg.patch_size_px is not None:
            kwargs["patch_size"] = cfg.patch_size_px
    elif cfg.patch_size_px is not None:
        raise ValueError(f"model.patch_size_px applies to ViTs only, not {cfg.name!r}")
    elif _is_swin_name(cfg.name):
        kwargs["img_size"] = cfg.img_size_px
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    if cfg.pretrained:
        load_local_checkpoint(model, cfg.pretrained, input_layer=cfg.input_layer)
    return model


# ---------------------------------------------------------------------------------------------
# checkpoints

def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a torch file (``weights_only``: nothing is unpickled).

    Nested training checkpoints (``{"state_dict": ...}``, ``{"model": ...}``, DINO's
    ``{"teacher": ...}``) are unwrapped and ``module.`` / ``backbone.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (checkpoints are never downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise ValueError(f"{path}: not a readable torch state dict ({exc})") from exc
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def input_layer_name(model: nn.Module) -> str:
    """The module that takes the bands (timm's ``first_conv``): ``"patch_embed.proj"``, ``"conv1"``, ..."""
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv") or "patch_embed.proj"
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    return str(first_conv)



def adapt_input_layer(state: dict[str, Tensor], model: nn.Module, rule: str) -> dict[str, Tensor]:
    """Fit the checkpoint's input layer (``patch_embed.proj`` / ``conv1``) to ``model``'s band count.

    Args:
        state: checkpoint state dict (not modified).
        model: the freshly created target model (its own random input layer is used by ``"reinit"``).
        rule: ``"reinit"`` or ``"inflate"`` (see the module docstring).

    Returns:
        A new state dict whose input-layer weight has the model's input channels.
    """
    if rule not in INPUT_LAYER_RULES:
        raise ValueError(f"input_layer rule must be one of {INPUT_LAYER_RULES}, got {rule!r}")
    key = f"{input_layer_name(model)}.weight"
    own = model.state_dict()
    if key not in state or key not in own or state[key].shape[1] == own[key].shape[1]:
        return dict(state)
    out = dict(state)
    if rule == "reinit":
        # SoftCon: a new input layer with the model's own random init (weight and bias); the
        # kernel size is the model's, so no patch resampling applies to it afterwards
        out[key] = own[key].clone()
        bias_key = key[: -len("weight")] + "bias"
        if bias_key in own:
            out[bias_key] = own[bias_key].clone()
    else:
        out[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=state[key].shape[1])
    return out


def load_local_checkpoint(model: nn.Module, path: str | Path, input_layer: str = "reinit") -> None:
    """Load a local checkpoint into ``model`` in place (input layer adapted, pos-embed resampled).

    Classifier weights of the checkpoint are dropped (backbones have ``num_classes=0``).

    Raises:
        ValueError: when a model weight is missing from the checkpoint or has another shape.
    """
    state = read_state_dict(path)
    state = adapt_input_layer(state, model, input_layer)
    if isinstance(model, VisionTransformer):
        # timm's own conversion: DINOv2 format, pos-embed grid and patch-kernel resampling
        state = checkpoint_filter_fn(state, model)
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{c}.") for c in classifiers)}
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: weights of another shape than {type(model).__name__}'s: {wrong[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} weights of the model, e.g. {missing[:5]}")
    if unexpected:
        warnings.warn(f"{path}: ignored {len(unexpected)} checkpoint entries not in the model, e.g. {unexpected[:5]}",
                      stacklevel=2)
