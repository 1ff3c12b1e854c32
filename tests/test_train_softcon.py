"""SoftCon: views, masked online branch, EMA branch, the hard + soft loss, continual pretraining.

Losses are checked on hand-made tensors (identity label similarity, numpy references, two gloo
ranks against one process); the masked branch by counting the tokens that enter the blocks; the
DINOv2-format checkpoint by comparing every tensor after loading.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import socket

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data._utils.collate import default_collate

from eoforge.train.data import DataConfig
from eoforge.train.losses import CrossModalInfoNCE, SoftContrastiveLoss, label_similarity
from eoforge.train.methods import Softcon, SoftconConfig, create_method
from eoforge.train.methods.softcon import SoftconViews, zero_dropped_patches
from eoforge.train.models import ModelConfig, read_state_dict

C = 13
TINY = {"crop_px": 32, "projector_hidden_dim": 64, "projector_dim": 32, "predictor_hidden_dim": 64,
        "blur_kernel_px": 5}
PICO = {"name": "vit_pico_patch8", "img_size_px": 32}


def tiny_method(seed: int = 0, model: dict | None = None, in_chans: int = C, **cfg) -> Softcon:
    torch.manual_seed(seed)
    return create_method("softcon", {**TINY, **cfg}, model or PICO, in_chans=in_chans, total_steps=100)


def tiny_batch(method: Softcon, n: int = 4, seed: int = 0, steps: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = method.make_views()
    items = []
    for i in range(n):
        labels = torch.zeros(steps, 9)
        labels[:, i % 9] = 1.0
        inputs = {"s2": torch.rand(steps, method.in_chans, 48, 48, generator=g), "labels": labels, "__key__": f"k{i}"}
        items.append(views(inputs, g))
    return default_collate(items)


# ----------------------------------------------------------------------------- the loss


def test_r2_soft_term_equals_the_hard_term_with_identity_label_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 16, generator=g) for _ in range(4))
    labels = torch.eye(6, 9)  # every sample its own class: s_ij = 1 if i == j else 0
    terms = SoftContrastiveLoss(temperature=0.2, soft_weight=1.0, soft_form="r2")(q1, q2, k1, k2, labels, labels)
    assert float(terms.soft) == pytest.approx(float(terms.hard), rel=1e-6)
    assert float(terms.total) == pytest.approx(2 * float(terms.hard), rel=1e-6)
    # the hard term itself, by hand: MoCo v3's CE(q k^T / tau, i) * 2 tau, summed over both directions
    def ce(q, k):
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
        return float(F.cross_entropy(logits, torch.arange(6))) * 0.4
    assert float(terms.hard) == pytest.approx(ce(q1, k2) + ce(q2, k1), rel=1e-6)


def test_r2_and_r1_by_hand_with_unlabelled_samples() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    y_q = torch.tensor([[1., 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])  # row 2 unlabelled
    y_k = torch.tensor([[1., 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0]])  # key 1 unlabelled
    logits = (F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2).numpy().astype(np.float64)
    a, b = y_q.numpy() / np.maximum(np.linalg.norm(y_q.numpy(), axis=1, keepdims=True), 1e-12), \
        y_k.numpy() / np.maximum(np.linalg.norm(y_k.numpy(), axis=1, keepdims=True), 1e-12)
    s = a @ b.T
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    rows = [i for i in range(4) if y_q[i].any() and s[i].sum() > 0]
    r2 = np.mean([-(s[i] / s[i].sum() * log_p[i]).sum() for i in rows]) * 0.4
    pairs = [(i, j) for i in range(4) for j in range(4) if y_q[i].any() and y_k[j].any()]
    sig = 1 / (1 + np.exp(-logits))
    r1 = np.mean([-(s[i, j] * np.log(sig[i, j]) + (1 - s[i, j]) * np.log(1 - sig[i, j])) for i, j in pairs])
    _, soft_r2 = SoftContrastiveLoss(0.2, 1.0, "r2").one_direction(q, k, y_q, y_k)
    _, soft_r1 = SoftContrastiveLoss(0.2, 1.0, "r1").one_direction(q, k, y_q, y_k)
    assert float(soft_r2) == pytest.approx(r2, rel=1e-5)
    assert float(soft_r1) == pytest.approx(r1, rel=1e-5)


def test_unlabelled_samples_train_with_the_hard_term_only_and_lambda_zero_is_hard_only() -> None:
    g = torch.Generator().manual_seed(2)
    q1, q2, k1, k2 = (torch.randn(5, 8, generator=g) for _ in range(4))
    none = torch.zeros(5, 9)
    terms = SoftContrastiveLoss(0.2, 1.0)(q1, q2, k1, k2, none, none)
    assert float(terms.soft) == 0.0 and float(terms.total) == pytest.approx(float(terms.hard))
    assert float(terms.labelled) == 0.0
    labels = torch.rand(5, 9).round()
    labels[0] = 1.0
    ablation = SoftContrastiveLoss(0.2, 0.0)(q1, q2, k1, k2, labels, labels)
    assert float(ablation.total) == pytest.approx(float(ablation.hard)) and float(ablation.soft) > 0
    assert float(SoftContrastiveLoss(0.2, 1.0)(q1, q2, k1, k2, labels, labels).total) > float(ablation.total)


def test_label_similarity_is_cosine_and_zero_for_unlabelled() -> None:
    y = torch.tensor([[1., 1, 0], [0, 0, 0]])
    s = label_similarity(y, torch.tensor([[1., 0, 0], [1, 1, 0]]))
    assert torch.allclose(s, torch.tensor([[1 / math.sqrt(2), 1.0], [0.0, 0.0]]), atol=1e-6)


def test_the_ema_branch_gets_no_gradient() -> None:
    method = tiny_method().train()
    method(tiny_batch(method), step=0).loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("teacher.") for n, _ in trainable)
    assert [n for n, p in trainable if p.grad is None] == []  # DDP: every student parameter, every step
    # the keys are detached inside the loss too: a key that requires grad gets none
    k = torch.randn(3, 8, requires_grad=True)
    hard, soft = SoftContrastiveLoss(0.2).one_direction(torch.randn(3, 8, requires_grad=True), k,
                                                        torch.ones(3, 2), torch.ones(3, 2))
    (hard + soft).backward()
    assert k.grad is None


def _gather_worker(rank: int, port: int, inputs: dict, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = {k: v.chunk(2)[rank].clone() for k, v in inputs.items()}
        out = {}
        for form in ("r2", "r1"):
            t = SoftContrastiveLoss(0.2, 1.0, form)(half["q1"], half["q2"], half["k1"], half["k2"],
                                                    half["y1"], half["y2"])
            values = torch.stack([t.total.detach(), t.hard, t.soft])
            dist.all_reduce(values)
            out[form] = (values / 2).tolist()  # what the engine logs: the mean over ranks
        a = half["q1"].clone().requires_grad_(True)
        b = half["k1"].clone().requires_grad_(True)
        crit = CrossModalInfoNCE(0.1, intra_weight=1.0)
        terms = crit(a, b, (a, half["q2"]), (b, half["k2"]))
        terms.total.backward()
        total = terms.total.detach().clone()
        dist.all_reduce(total)
        out["cross"] = float(total) / 2
        out["grad_a"], out["grad_b"] = a.grad.clone(), b.grad.clone()
        queue.put((rank, pickle.dumps(out)))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_with_batch_b_equal_one_process_with_batch_2b() -> None:
    """Keys (and their labels) are really gathered: the mean over 2 ranks of the per-rank loss
    equals the single-process loss of the whole batch; unlabelled rows are spread unevenly over
    the ranks, so the soft terms' global normalisation is exercised too. The dual encoder's
    loss gathers with gradient: each rank's feature gradient, averaged like DDP averages
    parameter gradients, is the single process's."""
    g = torch.Generator().manual_seed(3)
    n = 8
    inputs = {k: torch.randn(n, 16, generator=g) for k in ("q1", "q2", "k1", "k2")}
    y = (torch.rand(2, n, 9, generator=g) > 0.6).float()
    y[:, :3] = 0.0  # three unlabelled samples, all on rank 0
    inputs["y1"], inputs["y2"] = y[0], y[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a child forked from a process that has run backward() deadlocks in its own
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_gather_worker, args=(rank, port, inputs, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ranks = [pickle.loads(results[r]) for r in range(2)]
    single = {}
    for form in ("r2", "r1"):
        t = SoftContrastiveLoss(0.2, 1.0, form)(inputs["q1"], inputs["q2"], inputs["k1"], inputs["k2"],
                                                inputs["y1"], inputs["y2"])
        single[form] = [float(t.total), float(t.hard), float(t.soft)]
    a = inputs["q1"].clone().requires_grad_(True)
    b = inputs["k1"].clone().requires_grad_(True)
    terms = CrossModalInfoNCE(0.1, intra_weight=1.0)(a, b, (a, inputs["q2"]), (b, inputs["k2"]))
    terms.total.backward()
    for form in ("r2", "r1"):
        assert ranks[0][form] == pytest.approx(single[form], rel=1e-5)
    assert ranks[0]["cross"] == pytest.approx(float(terms.total.detach()), rel=1e-5)
    # each rank's gradient of its own rows / world size == the single process's gradient of those rows
    grad_a = torch.cat([r["grad_a"] for r in ranks]) / 2
    grad_b = torch.cat([r["grad_b"] for r in ranks]) / 2
    assert torch.allclose(grad_a, a.grad, atol=1e-6) and torch.allclose(grad_b, b.grad, atol=1e-6)


# ----------------------------------------------------------------------------- views


def test_views_come_from_their_own_time_step_with_its_labels() -> None:
    cfg = SoftconConfig(**{**TINY, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "jitter_p": 0.0,
                           "grey_p": 0.0, "blur_p": (0.0, 0.0)})
    views = SoftconViews(cfg, mask_patch_px=8, in_chans=C)
    image = torch.stack([torch.full((C, 48, 48), 1.0), torch.full((C, 48, 48), 2.0)])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = views({"s2": image, "labels": labels}, torch.Generator().manual_seed(0))
    assert out["view1"].shape == out["view2"].shape == (C, 32, 32)
    assert torch.allclose(out["view1"], torch.ones(1)) and torch.allclose(out["view2"], torch.full((1,), 2.0))
    assert torch.equal(out["labels1"], labels[0]) and torch.equal(out["labels2"], labels[1])
    # one time step (data.time_step: random): two views of it, one label vector for both
    one = views({"s2": image[1], "labels": labels[1]}, torch.Generator().manual_seed(0))
    assert torch.allclose(one["view1"], one["view2"]) and torch.equal(one["labels1"], one["labels2"])
    # half of the 16 patches kept, distinct, in range
    keep = out["keep1"]
    assert keep.shape == (8,) and len(set(keep.tolist())) == 8 and 0 <= int(keep.min()) and int(keep.max()) < 16


def test_views_are_reproducible_and_picklable() -> None:
    method = tiny_method()
    views = pickle.loads(pickle.dumps(method.make_views()))
    inputs = {"s2": torch.rand(2, C, 40, 40), "labels": torch.ones(2, 9)}
    a = views(inputs, torch.Generator().manual_seed(5))
    b = method.make_views()(inputs, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_settings_are_checked_before_training() -> None:
    method = tiny_method()
    method.check_data(DataConfig(time_step="random_pair"))
    with pytest.raises(ValueError, match="data.time_step"):
        method.check_data(DataConfig(time_step="all"))


# ----------------------------------------------------------------------------- masking


def test_masking_shrinks_what_the_trainable_branch_processes() -> None:
    method = tiny_method(mask_ratio=0.5)
    seen: dict[str, list[int]] = {"student": [], "teacher": []}
    hooks = [blk.register_forward_pre_hook(lambda mod, args, who=who: seen[who].append(args[0].shape[1]))
             for who in seen for blk in getattr(method, who)["backbone"].blocks]
    method(tiny_batch(method, n=2), step=0)
    for h in hooks:
        h.remove()
    # 4 blocks x 2 views; 32 px / 8 px patches = 16: the online branch [CLS] + 8 kept, the EMA branch all 16
    assert seen["student"] == [9] * 8
    assert seen["teacher"] == [17] * 8
    unmasked = tiny_method(mask_ratio=0.0)
    seen["student"].clear()
    hooks = [blk.register_forward_pre_hook(lambda mod, args: seen["student"].append(args[0].shape[1]))
             for blk in unmasked.student["backbone"].blocks]
    unmasked(tiny_batch(unmasked, n=2), step=0)
    assert seen["student"] == [17] * 8


def test_the_trainable_branch_never_sees_dropped_patches() -> None:
    method = tiny_method().eval()
    batch = tiny_batch(method, n=3)
    images, keep = batch["view1"].clone(), batch["keep1"]
    before = method.encode_masked(images, keep)
    kept = zero_dropped_patches(torch.ones_like(images), keep, 8).bool()
    scrambled = torch.where(kept, images, torch.rand_like(images) * 50)
    assert torch.allclose(method.encode_masked(scrambled, keep), before, atol=1e-5)


def test_cnn_masking_zeroes_the_dropped_squares_and_trains() -> None:
    images = torch.rand(2, 3, 64, 64) + 1
    keep = torch.tensor([[0, 3], [1, 2]])  # 2 x 2 grid of 32-px squares
    out = zero_dropped_patches(images, keep, 32)
    assert torch.equal(out[0, :, :32, :32], images[0, :, :32, :32]) and (out[0, :, :32, 32:] == 0).all()
    assert torch.equal(out[1, :, :32, 32:], images[1, :, :32, 32:]) and (out[1, :, 32:, 32:] == 0).all()
    method = tiny_method(model={"name": "resnet18"}, in_chans=2, crop_px=64, mask_patch_px=32)
    batch = tiny_batch(method, n=3)
    assert batch["keep1"].shape == (3, 2)
    method(batch, step=0).loss.backward()
    assert [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None] == []


def test_a_few_steps_lower_the_loss() -> None:
    method = tiny_method(seed=1).train()
    batch = tiny_batch(method, n=8, seed=1)
    opt = torch.optim.AdamW([p for g in method.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for step in range(15):
        out = method(batch, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.update_teacher(0.99)
        losses.append(float(out.loss.detach()))
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])


# ----------------------------------------------------------------------------- continual pretraining


def _dinov2_checkpoint(path, img_size: int = 28) -> dict[str, torch.Tensor]:
    """A tiny ViT in DINOv2's checkpoint format: timm key names, LayerScale ``ls1.gamma``, an RGB
    patch embedding, a ``mask_token`` (what ``dinov2_vits14_pretrain.pth`` holds, only smaller)."""
    torch.manual_seed(7)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=img_size,
                            embed_dim=32, depth=2, num_heads=2)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    for k in state:  # LayerScale and biases are not at their init values in a trained model
        if k.endswith("gamma") or k.endswith("bias"):
            state[k] = torch.randn_like(state[k])
    state["mask_token"] = torch.zeros(1, 32)
    torch.save(state, path)
    return state


def test_a_dinov2_format_checkpoint_loads_with_only_the_input_layer_reinitialised(tmp_path) -> None:
    ckpt = _dinov2_checkpoint(tmp_path / "dinov2_tiny.pth")
    model = {"name": "vit_small_patch14_dinov2", "img_size_px": 28, "pretrained": str(tmp_path / "dinov2_tiny.pth"),
             "timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}}
    method = tiny_method(model=model, crop_px=28)
    own = method.student["backbone"].state_dict()
    assert own.keys() == {k for k in ckpt if k != "mask_token"}
    differs = [k for k in own if own[k].shape != ckpt[k].shape or not torch.equal(own[k], ckpt[k])]
    assert sorted(differs) == ["patch_embed.proj.bias", "patch_embed.proj.weight"]
    assert own["patch_embed.proj.weight"].shape == (32, C, 14, 14)
    # the EMA branch starts as a copy of the loaded encoder
    assert all(torch.equal(v, method.teacher["backbone"].state_dict()[k]) for k, v in own.items())
    # another image size: the position embedding is resampled (timm's rule), the rest unchanged
    bigger = tiny_method(model={**model, "img_size_px": 56}, crop_px=56).student["backbone"].state_dict()
    assert bigger["pos_embed"].shape == (1, 1 + 16, 32)
    assert torch.equal(bigger["blocks.1.ls2.gamma"], ckpt["blocks.1.ls2.gamma"])
    # backbone lr x 0.1, its new input layer and the heads x 1
    scales = {id(p): g["lr_scale"] for g in method.param_groups() for p in g["params"]}
    backbone = method.student["backbone"]
    assert scales[id(backbone.blocks[0].attn.qkv.weight)] == 0.1 and scales[id(backbone.cls_token)] == 0.1
    assert scales[id(backbone.patch_embed.proj.weight)] == 1.0
    assert scales[id(method.predictor[0].weight)] == 1.0
    # from scratch, nothing is scaled
    assert {g["lr_scale"] for g in tiny_method().param_groups()} == {1.0}
    assert read_state_dict(tmp_path / "dinov2_tiny.pth").keys() == ckpt.keys()


def test_export_is_the_online_encoder(tmp_path) -> None:
    method = tiny_method()
    with torch.no_grad():
        method.teacher["backbone"].cls_token.add_(1.0)  # make the two branches differ
    assert method.export_backbone() is method.student["backbone"]
    net = timm.create_model("vit_pico_patch8", in_chans=C, num_classes=0, img_size=32)
    net.load_state_dict(method.export_backbone().state_dict())


def test_config_values_are_checked() -> None:
    with pytest.raises(ValueError, match="soft_form"):
        SoftconConfig(soft_form="r3")
    with pytest.raises(ValueError, match="mask_ratio"):
        SoftconConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple"):
        tiny_method(crop_px=36)
    assert SoftconConfig(crop_scale=[0.2, 1]).crop_scale == (0.2, 1.0)
    assert isinstance(ModelConfig(timm_kwargs={"depth": 2}).timm_kwargs, dict)
    with pytest.raises(ValueError, match="timm_kwargs"):
        ModelConfig(timm_kwargs={"in_chans": 3})
