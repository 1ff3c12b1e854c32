"""Backbones: timm models by name with in_chans, local checkpoints, input-layer rules, pos-embed resampling."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from eoforge.train.models import (
    ModelConfig, adapt_input_layer, create_backbone, is_vit, load_local_checkpoint, read_state_dict,
)

PICO = "vit_pico_patch8"


def _save(model: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.parametrize("in_chans", [13, 2, 15])
def test_pico_vit_bands_and_dynamic_sizes(in_chans: int) -> None:
    model = create_backbone(ModelConfig(name=PICO, img_size_px=32), in_chans)
    assert is_vit(model)
    assert model.patch_embed.proj.weight.shape == (64, in_chans, 8, 8)
    assert model.pos_embed.shape == (1, 1 + 16, 64)
    # one model for global (32 px) and local (16 px) crops
    assert model(torch.rand(2, in_chans, 32, 32)).shape == (2, 64)
    assert model(torch.rand(2, in_chans, 16, 16)).shape == (2, 64)


def test_registered_pico_loads_by_name_with_no_missing_keys() -> None:
    model = create_backbone(ModelConfig(name=PICO, img_size_px=32, drop_path_rate=0.2), 13)
    plain = timm.create_model(PICO, in_chans=13, num_classes=0)
    result = plain.load_state_dict(model.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.rand(1, 13, 32, 32)
    model.eval()
    assert torch.allclose(plain(x), model(x))


def test_patch_size_override_and_builtin_names() -> None:
    vit = create_backbone(ModelConfig(name="vit_small_patch16_224", img_size_px=64, patch_size_px=8), 13)
    assert vit.patch_embed.proj.weight.shape == (384, 13, 8, 8)
    assert vit.pos_embed.shape == (1, 1 + 64, 384)
    assert vit.blocks[0].drop_path1.__class__.__name__ == "Identity"  # drop_path_rate 0 by default


def test_resnet_gets_in_chans_and_rejects_patch_size() -> None:
    cnn = create_backbone(ModelConfig(name="resnet18"), 2)
    assert not is_vit(cnn)
    assert cnn.conv1.weight.shape == (64, 2, 7, 7)
    assert cnn(torch.rand(1, 2, 64, 64)).shape == (1, 512)
    with pytest.raises(ValueError, match="ViTs only"):
        create_backbone(ModelConfig(name="resnet18", patch_size_px=8), 2)


def test_unknown_model_and_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown timm model"):
        create_backbone(ModelConfig(name="vit_nonexistent_patch3"), 13)
    with pytest.raises(ValueError, match="input_layer"):
        ModelConfig(input_layer="copy")


def test_reinit_keeps_everything_but_the_input_layer(tmp_path) -> None:
    torch.manual_seed(0)
    rgb = timm.create_model(PICO, in_chans=3, num_classes=10)  # with a classifier: it is dropped
    path = tmp_path / "rgb.safetensors"
    _save(rgb, path)
    torch.manual_seed(1)
    model = create_backbone(ModelConfig(name=PICO, img_size_px=32, pretrained=str(path), input_layer="reinit"), 13)
    torch.manual_seed(1)
    fresh = create_backbone(ModelConfig(name=PICO, img_size_px=32), 13)  # the same random init
    src = rgb.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("patch_embed.proj."):
            # SoftCon: the input layer is the model's own random init, weight and bias
            assert torch.equal(value, fresh.state_dict()[key]), key
        else:
            assert torch.equal(value, src[key]), key


def test_inflate_repeats_and_scales_rgb_kernel(tmp_path) -> None:
    rgb = timm.create_model(PICO, in_chans=3, num_classes=0)
    path = tmp_path / "rgb.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rgb.state_dict().items()}}, path)  # nested + DDP prefix
    model = create_backbone(ModelConfig(name=PICO, img_size_px=32, pretrained=str(path), input_layer="inflate"), 13)
    w3 = rgb.patch_embed.proj.weight.detach()
    w13 = model.patch_embed.proj.weight.detach()
    for c in range(13):  # channel c takes RGB channel c mod 3, scaled by 3/13
        assert torch.allclose(w13[:, c], w3[:, c % 3] * 3 / 13)
    assert torch.equal(model.patch_embed.proj.bias, rgb.patch_embed.proj.bias)
    assert torch.equal(model.blocks[2].mlp.fc1.weight, rgb.blocks[2].mlp.fc1.weight)


def test_same_band_count_loads_unchanged_under_both_rules(tmp_path) -> None:
    src = timm.create_model(PICO, in_chans=13, num_classes=0)
    path = tmp_path / "ms.safetensors"
    _save(src, path)
    for rule in ("reinit", "inflate"):
        model = create_backbone(ModelConfig(name=PICO, img_size_px=32, pretrained=str(path), input_layer=rule), 13)
        for key, value in src.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (rule, key)


def test_pos_embed_resampled_for_another_img_size(tmp_path) -> None:
    src = timm.create_model(PICO, in_chans=13, num_classes=0, img_size=32)  # 4x4 grid
    path = tmp_path / "ms32.safetensors"
    _save(src, path)
    model = create_backbone(ModelConfig(name=PICO, img_size_px=64, pretrained=str(path)), 13)  # 8x8 grid
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[8, 8], num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 65, 64)
    assert torch.allclose(model.pos_embed.detach(), expected, atol=1e-6)
    assert torch.equal(model.pos_embed[:, 0], src.pos_embed[:, 0])  # [CLS] position untouched


def test_cnn_input_layer_rules(tmp_path) -> None:
    rgb = timm.create_model("resnet10t", in_chans=3, num_classes=0)
    path = tmp_path / "r10.safetensors"
    _save(rgb, path)
    key = "conv1.0.weight"  # deep stem: timm's pretrained_cfg names the first conv
    inflated = create_backbone(ModelConfig(name="resnet10t", pretrained=str(path), input_layer="inflate"), 2)
    w = rgb.state_dict()[key]
    assert torch.allclose(inflated.state_dict()[key], w[:, :2] * 3 / 2)
    reinit = create_backbone(ModelConfig(name="resnet10t", pretrained=str(path), input_layer="reinit"), 2)
    assert reinit.state_dict()[key].shape == (24, 2, 3, 3)
    assert torch.equal(reinit.state_dict()["layer1.0.conv1.weight"], rgb.state_dict()["layer1.0.conv1.weight"])


def test_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_backbone(ModelConfig(name=PICO, pretrained=str(tmp_path / "none.safetensors")), 13)
    wide = timm.create_model("vit_tiny_patch16_224", in_chans=13, num_classes=0, img_size=32, patch_size=8)
    path = tmp_path / "wide.safetensors"
    _save(wide, path)
    model = timm.create_model(PICO, in_chans=13, num_classes=0)
    with pytest.raises(ValueError, match="another shape"):
        load_local_checkpoint(model, path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        read_state_dict(tmp_path / "junk.pth")


def test_adapt_input_layer_leaves_other_keys_alone() -> None:
    model = timm.create_model(PICO, in_chans=2, num_classes=0)
    state = timm.create_model(PICO, in_chans=3, num_classes=0).state_dict()
    out = adapt_input_layer(state, model, "inflate")
    assert out["patch_embed.proj.weight"].shape[1] == 2
    assert math.isclose(float(out["patch_embed.proj.weight"][0, 0, 0, 0]),
                        float(state["patch_embed.proj.weight"][0, 0, 0, 0]) * 3 / 2, rel_tol=1e-6)
    assert out["cls_token"] is state["cls_token"]
    assert state["patch_embed.proj.weight"].shape[1] == 3  # input not modified
