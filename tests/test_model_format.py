"""The exported-backbone files have one writer and one reader (``eoforge.train.model_format``),
and reading needs no eoforge model code: the demo's ViT-pico comes back from plain timm names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import timm
import torch

import eoforge.train.models  # noqa: F401 - registers vit_pico_patch8 for the writing side
from eoforge.train.model_format import load_backbone, random_init_backbone, write_backbone

READER = r"""
import sys, torch
from eoforge.train.model_format import load_backbone
net, info = load_backbone(sys.argv[1])
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(net(x), sys.argv[3])
print("eoforge.train.models" in sys.modules, type(net).__name__)
"""


def test_a_pico_export_loads_without_eoforge_model_code(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = timm.create_model("vit_pico_patch8", in_chans=13, num_classes=0, img_size=32).eval()
    meta = {"timm_model": "vit_pico_patch8", "timm_kwargs": {"in_chans": 13, "num_classes": 0, "img_size": 32},
            "in_chans": 13, "img_size": 32, "bands": [f"B{i}" for i in range(13)], "method": "test"}
    weights, meta_path = write_backbone(net, tmp_path / "model.safetensors", meta, metadata={"method": "test"})
    assert json.loads(meta_path.read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]  # no .tmp left
    x = torch.randn(2, 13, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run([sys.executable, "-c", READER, str(weights), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, timeout=300, check=True)
    assert run.stdout.split() == ["False", "VisionTransformer"]
    with torch.no_grad():
        # same weights; the two processes may use other thread counts, so float rounding may differ
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), net(x), rtol=0, atol=1e-5)
    # in this process (name registered) the same file gives the same module, and the random-init
    # twin is the same architecture, seeded
    loaded, info = load_backbone(weights)
    twin = random_init_backbone(info, seed=0)
    assert loaded.state_dict().keys() == twin.state_dict().keys()
    assert not torch.equal(loaded.pos_embed, twin.pos_embed)
