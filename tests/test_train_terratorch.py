"""Exported backbones load in TerraTorch from MODEL.terratorch.yaml alone, with eoforge's features.

The block is written by every ``export_run``; these tests build the backbone from it the
way TerraTorch does (its backbone registry, then a whole EncoderDecoderFactory model) in a
fresh interpreter that never imports eoforge, and compare the features with
``load_backbone``'s on the same batch. They run where the ``interop`` extra
(``pip install -e '.[interop]'``: terratorch) is installed and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from eoforge.train.config import PretrainConfig
from eoforge.train.engine import train
from eoforge.train.export import export_run
from eoforge.train.model_format import load_backbone, portable_timm_model
from eoforge.train.terratorch_block import terratorch_block, terratorch_block_path

# Found, not imported: importing terratorch sets torch's float32 matmul precision to "medium"
# (its Clay v1.5 backbone module does, at import), which on a CPU with AMX or AVX512-BF16 makes
# oneDNN run every later fp32 matmul of the test session in bf16 (other tests then differ by
# ~1e-2). TerraTorch only ever runs in the fresh interpreters below.
if importlib.util.find_spec("terratorch") is None:
    pytest.skip("the interop extra (terratorch) is not installed", allow_module_level=True)

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"
SHORT = {"engine.steps": 2, "engine.checkpoint_every": 2, "engine.log_every": 1, "engine.progress": False,
         "engine.device": "cpu", "data.workers": 0, "data.batch_size": 4, "data.shuffle_buffer": 8,
         "data.shuffle_initial": 4}

#: Runs in a fresh interpreter: TerraTorch + timm only (eoforge is never imported; the check below
#: proves it), features of a fixed batch from the registry build and from a full factory model.
TERRATORCH_SIDE = r"""
import json, sys
import torch, yaml
from terratorch.registry import BACKBONE_REGISTRY
from terratorch.models import EncoderDecoderFactory

# importing terratorch set "medium" (see the skip above): bf16 matmuls on a CPU with AMX; compare in fp32
torch.set_float32_matmul_precision("highest")
block = yaml.safe_load(open(sys.argv[1]))
args = block["model_args"]
x = torch.load(sys.argv[2])
kwargs = {k.removeprefix("backbone_"): v for k, v in args.items() if k != "backbone"}
backbone = BACKBONE_REGISTRY.build(args["backbone"], **kwargs).eval()
model = EncoderDecoderFactory().build_model("classification", **args, decoder="IdentityDecoder", num_classes=4,
                                            **({"necks": [{"name": "ReshapeTokensToImage"}]} if "vit" in args["backbone"] else {}))
model.eval()
with torch.no_grad():
    registry = backbone(x)
    factory = model.encoder(x)
torch.save({"registry": registry, "factory": factory, "channels": backbone.out_channels,
            "eoforge_imported": any(m.startswith("eoforge") for m in sys.modules)}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def exports(demo_ingest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-step runs on the demo shards: PerA's ViT-pico (an eoforge-registered timm name) and
    CMID's quarter-width ResNet-18 (a timm name with shape arguments), exported."""
    root = tmp_path_factory.mktemp("terratorch")
    out = {}
    for name, recipe in (("vit", "pera-tiny-demo.yaml"), ("resnet", "cmid-tiny-demo.yaml")):
        cfg = PretrainConfig.load(RECIPES / recipe).override(SHORT)
        train(cfg, demo_ingest.out, root / f"run-{name}")
        out[name] = export_run(root / f"run-{name}", root / f"{name}.safetensors").weights
    return out


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_terratorch_builds_the_backbone_with_eoforges_features(exports: dict[str, Path], kind: str,
                                                               tmp_path: Path) -> None:
    weights = exports[kind]
    block_path = terratorch_block_path(weights)
    block = yaml.safe_load(block_path.read_text())
    net, info = load_backbone(weights)
    meta = info.meta
    assert block == json.loads(json.dumps(terratorch_block(meta, weights)))  # what the export wrote
    assert block["data"]["bands"] == meta["bands"] and len(block["data"]["means"]) == meta["in_chans"]

    size = meta["img_size"]
    x = torch.randn(2, meta["in_chans"], size, size, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "terratorch_side.py"
    script.write_text(TERRATORCH_SIDE)
    run = subprocess.run([sys.executable, str(script), str(block_path), str(tmp_path / "x.pt"), str(tmp_path / "f.pt")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(tmp_path / "f.pt", weights_only=False)
    assert theirs["eoforge_imported"] is False

    net.eval()
    n = len(theirs["registry"])
    with torch.no_grad():
        ours = net.forward_intermediates(x, indices=n, intermediates_only=True)
    assert [t.shape for t in theirs["registry"]] == [t.shape for t in ours]
    for a, b in zip(theirs["registry"], ours):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert theirs["channels"] == [t.shape[1] for t in ours]
    for a, b in zip(theirs["factory"], ours):  # the factory's encoder is the same backbone
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # TerraTorch loaded the exported weights: the same architecture at random init differs
    name, kwargs = portable_timm_model(meta["timm_model"], meta["timm_kwargs"])
    fresh = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.forward_intermediates(x, indices=n, intermediates_only=True)[-1],
                                  theirs["registry"][-1], atol=1e-3)
