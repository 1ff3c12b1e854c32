"""CMID: views and block masks, the mask token, cells matched on the ground, the key queue (one
process and two gloo ranks), the reconstruction losses, gradients per branch, the EMA teacher, a
short run through the real engine on generated shards, and two torchrun ranks (Swin).

Geometry is checked on hand-made crop boxes whose matches are known (offsets in whole cells); the
losses on hand-made tensors against NumPy references; the queue by the exact keys each row holds.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import pickle
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data._utils.collate import default_collate

from eoforge.train.config import PretrainConfig
from eoforge.train.data import DataConfig
from eoforge.train.losses import FocalFrequencyLoss, MaskedFocalL1Loss, QueueInfoNCE
from eoforge.train.methods import Cmid, CmidConfig, create_method
from eoforge.train.methods.cmid import (
    CmidViews, cell_centres, dense_features, expand_blocks, fill_masked, masked_blocks, match_cells,
)

C = 13
#: heads small enough for a CPU test; a 64-px view: 2 x 2 cells, 4 mask blocks of which 3 masked
TINY = {"crop_px": 64, "projector_hidden_dim": 32, "projector_dim": 16, "queue_size": 64, "num_matches": 2,
        "local_hidden_dim": 32, "local_bottleneck_dim": 16, "local_prototypes": 32}
RESNET = {"name": "resnet18", "timm_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}}
SWIN = {"name": "swin_tiny_patch4_window7_224", "img_size_px": 64,
        "timm_kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}}


def tiny_method(model: dict | None = None, seed: int = 0, **cfg) -> Cmid:
    torch.manual_seed(seed)
    return create_method("cmid", {**TINY, **cfg}, model or RESNET, in_chans=C, total_steps=100)


def tiny_batch(method: Cmid, n: int = 4, seed: int = 0, tile_px: int = 48) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = method.make_views()
    return default_collate([views({"s2": torch.rand(method.in_chans, tile_px, tile_px, generator=g)}, g)
                            for _ in range(n)])


# ----------------------------------------------------------------------------- views and masks


def test_block_geometry_30_of_49_and_the_stride_4_mask() -> None:
    assert masked_blocks(49, 0.6) == 30 and masked_blocks(16, 0.5) == 8 and masked_blocks(9, 0.6) == 6
    views = CmidViews(CmidConfig(), in_chans=2)
    out = views({"s1": torch.rand(2, 264, 264)}, torch.Generator().manual_seed(0))
    for i in (1, 2):
        mask = out[f"mask{i}"]
        assert out[f"view{i}"].shape == (2, 224, 224) and mask.shape == (7, 7) and mask.dtype == torch.bool
        assert int(mask.sum()) == 30
        top, left, h, w = out[f"box{i}"].tolist()  # inside the 264-px tile, 30-100 % of its area
        assert top >= 0 and left >= 0 and top + h <= 264 and left + w <= 264
        assert 0.3 * 264**2 * 0.99 <= h * w <= 264**2
    assert not torch.equal(out["mask1"], out["mask2"])  # each view its own mask
    # the stride-4 copy (56 x 56) keeps whole 8 x 8 blocks, and the ratio
    s4 = expand_blocks(out["mask1"][None], 56)
    assert s4.shape == (1, 1, 56, 56) and float(s4.mean()) == pytest.approx(30 / 49)
    assert torch.equal(s4[0, 0, ::8, ::8].bool(), out["mask1"])
    assert torch.equal(s4[0, 0].reshape(7, 8, 7, 8).amax(dim=(1, 3)), s4[0, 0].reshape(7, 8, 7, 8).amin(dim=(1, 3)))
    # the method derives the block grid from its crop size: 96 px -> 3 x 3 blocks, 6 masked
    method = tiny_method(crop_px=96)
    assert method.mask_grid == 3 and method.grid == 3
    assert [int(m.sum()) for m in tiny_batch(method, n=3)["mask1"]] == [6, 6, 6]


def test_masked_pixels_are_filled_with_the_image_band_mean() -> None:
    images = torch.rand(2, 3, 64, 64)
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])
    out = fill_masked(images, expand_blocks(mask, 64))
    mean = images.mean(dim=(-2, -1))
    assert torch.allclose(out[0, :, :32, :32], mean[0, :, None, None].expand(3, 32, 32))
    assert torch.equal(out[0, :, :32, 32:], images[0, :, :32, 32:])
    assert torch.allclose(out[1, :, 32:, :32], mean[1, :, None, None].expand(3, 32, 32))
    assert torch.equal(out[1, :, :32], images[1, :, :32])


def test_views_are_independent_crops_weak_then_strong_and_reproducible() -> None:
    cfg = CmidConfig(**{**TINY, "hflip_p": 0.0})
    views = pickle.loads(pickle.dumps(CmidViews(cfg, in_chans=C)))  # DataLoader workers may spawn
    image = torch.rand(C, 48, 48)
    a = views({"s2": image}, torch.Generator().manual_seed(3))
    b = CmidViews(cfg, in_chans=C)({"s2": image}, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["box1"], a["box2"])  # two independent crops
    # view 1 is the crop alone: re-cut it from the image with its recorded box
    from eoforge.train.augment import resized_crop

    box = tuple(int(v) for v in a["box1"].tolist())
    assert torch.allclose(a["view1"], resized_crop(image, box, 64))
    # view 2 with every photometric augmentation switched off is its crop too
    plain = CmidConfig(**{**TINY, "hflip_p": 0.0, "jitter_p": 0.0, "blur_p": 0.0, "noise_p": 0.0,
                          "solarize_p": 0.0, "grey_p": 0.0})
    c = CmidViews(plain, in_chans=C)({"s2": image}, torch.Generator().manual_seed(3))
    assert torch.allclose(c["view2"], resized_crop(image, tuple(int(v) for v in c["box2"].tolist()), 64))
    # a flipped view records its flip and is the mirrored crop
    always_flip = CmidViews(CmidConfig(**{**TINY, "hflip_p": 1.0}), in_chans=C)
    flipped = always_flip({"s2": image}, torch.Generator().manual_seed(3))
    assert bool(flipped["flip1"]) and torch.allclose(flipped["view1"], a["view1"].flip(-1))


def test_data_settings_are_checked_before_training() -> None:
    method = tiny_method()
    method.check_data(DataConfig(time_step="random", batch_size=8))
    with pytest.raises(ValueError, match="data.time_step"):
        method.check_data(DataConfig(time_step="random_pair"))
    with pytest.raises(ValueError, match="queue_size"):
        method.check_data(DataConfig(time_step="random", batch_size=64))  # 128 keys a step, queue 64
    with pytest.raises(ValueError, match="time_step"):
        method.make_views()({"s2": torch.rand(2, C, 48, 48)}, torch.Generator())  # a time axis
    with pytest.raises(ValueError, match="bands"):
        method.make_views()({"s2": torch.rand(4, 48, 48)}, torch.Generator())


def test_backbones_and_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="ResNets and Swin"):
        tiny_method(model={"name": "vit_pico_patch8", "img_size_px": 32})
    with pytest.raises(ValueError, match="img_size_px"):
        tiny_method(model={**SWIN, "img_size_px": 96})
    with pytest.raises(ValueError, match="num_matches"):
        tiny_method(num_matches=5)  # 2 x 2 cells
    with pytest.raises(ValueError, match="multiple"):
        tiny_method(crop_px=80)
    with pytest.raises(ValueError, match="blur_kernel_px"):
        CmidConfig(blur_kernel_px=(3, 6))
    assert CmidConfig(crop_scale=[0.3, 1]).crop_scale == (0.3, 1.0)


# ----------------------------------------------------------------------------- mask token


@pytest.mark.parametrize("model", [RESNET, SWIN], ids=["resnet", "swin"])
def test_the_mask_token_is_added_at_stride_4_only_where_masked(model: dict) -> None:
    method = tiny_method(model=model).eval()
    backbone = method.student["backbone"]
    with torch.no_grad():
        method.mask_token.copy_(torch.arange(1, method.mask_token.numel() + 1, dtype=torch.float32))
    seen: list[torch.Tensor] = []
    first_stage = backbone.layers if method.swin else backbone.layer1  # where stride-4 features go in
    hook = first_stage.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    images = torch.rand(2, C, 64, 64)
    mask = torch.tensor([[[True, False], [False, False]], [[False, True], [True, True]]])
    token_mask = expand_blocks(mask, 64 // method.token_stride)
    assert token_mask.shape == (2, 1, 16, 16)  # 64 px at stride 4
    with torch.no_grad():
        dense_features(backbone, images)
        dense_features(backbone, images, method.mask_token, token_mask)
    hook.remove()
    plain, tokened = seen
    if method.swin:  # NHWC after the patch embedding
        plain, tokened = plain.permute(0, 3, 1, 2), tokened.permute(0, 3, 1, 2)
    added = tokened - plain
    assert torch.allclose(added, method.mask_token[None, :, None, None] * token_mask, atol=1e-5)
    assert (added[token_mask.expand_as(added) == 0] == 0).all()


def test_the_student_sees_filled_masked_views_and_the_teacher_full_views() -> None:
    method = tiny_method()
    batch = tiny_batch(method, n=2)
    inputs: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    hooks = [getattr(method, who)["backbone"].conv1.register_forward_pre_hook(
        lambda mod, args, who=who: inputs[who].append(args[0].detach().clone())) for who in inputs]
    method(batch, step=0)
    for h in hooks:
        h.remove()
    for i, key in enumerate(("view1", "view2")):
        assert torch.equal(inputs["teacher"][i], batch[key])
        expected = fill_masked(batch[key], expand_blocks(batch[f"mask{i + 1}"], 64))
        assert torch.equal(inputs["student"][i], expected) and not torch.equal(expected, batch[key])


# ----------------------------------------------------------------------------- cells on the ground


def test_cell_centres_by_hand() -> None:
    boxes = torch.tensor([[10.0, 20.0, 70.0, 140.0]] * 2)
    centres = cell_centres(boxes, torch.tensor([False, True]), grid=7)  # cells of 10 x 20 tile px
    assert centres.shape == (2, 49, 2)
    assert centres[0, 0].tolist() == [15.0, 30.0] and centres[0, 8].tolist() == [25.0, 50.0]
    assert centres[0, 48].tolist() == [75.0, 150.0]
    # flipped: the view's first column shows the crop's last
    assert centres[1, 0].tolist() == [15.0, 150.0] and centres[1, 6].tolist() == [15.0, 30.0]


def test_matched_cells_cover_the_same_ground_and_follow_the_offset() -> None:
    """Two 112-px crops of a tile, 7 x 7 cells of 16 px: view 2 starts 2 cells down and 3 right, so
    student cell (r, c) of view 1 lies exactly on teacher cell (r - 2, c - 3) of view 2 for r >= 2,
    c >= 3: 5 x 4 = 20 pairs at distance 0, the 20 kept."""
    view1 = torch.tensor([[0.0, 0.0, 112.0, 112.0]])
    no_flip = torch.tensor([False])

    def matches(box2: list[float], same_ground: bool = True) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        c1 = cell_centres(view1, no_flip, 7)
        c2 = cell_centres(torch.tensor([box2]), no_flip, 7)
        s, t = match_cells(c1, c2, 20)
        assert torch.allclose(c1[0, s[0]], c2[0, t[0]]) == same_ground  # every kept pair on the same ground
        return [divmod(int(i), 7) for i in s[0]], [divmod(int(i), 7) for i in t[0]]

    student, teacher = matches([32.0, 48.0, 112.0, 112.0])
    assert student == [(r, c) for r in range(2, 7) for c in range(3, 7)]
    assert teacher == [(r - 2, c - 3) for r, c in student]
    # only the offset changes (1 cell down, 2 left of view 1): other cells, other partners
    student_b, teacher_b = matches([16.0, -32.0, 112.0, 112.0])
    assert student_b == [(r, c) for r in range(1, 7) for c in range(0, 5)][:20]
    assert teacher_b == [(r - 1, c + 2) for r, c in student_b]
    assert (student_b, teacher_b) != (student, teacher)
    # the official code keeps the offset as a fraction of the free margin (< 1 px here), which
    # matches every cell with itself whatever the offset: what the true offsets fix
    student_c, teacher_c = matches([32.0 / (224 - 112), 48.0 / (224 - 112), 112.0, 112.0], same_ground=False)
    assert teacher_c == student_c
    # a mirrored view 2 of the same crop: column c of view 1 is column 6 - c of view 2
    c1, c2 = cell_centres(view1, no_flip, 7), cell_centres(view1, torch.tensor([True]), 7)
    s, t = match_cells(c1, c2, 49)
    assert [divmod(int(i), 7) for i in t[0]] == [(r, 6 - c) for r, c in (divmod(int(i), 7) for i in s[0])]


# ----------------------------------------------------------------------------- the key queue


def test_queue_infonce_by_hand_and_enqueue_dequeue_across_steps() -> None:
    loss = QueueInfoNCE(dim=4, size=10, temperature=0.2)
    assert torch.allclose(loss.queue.norm(dim=1), torch.ones(10))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(3, 4, generator=g)
    value = loss(q, k)
    qn, kn, queue = F.normalize(q.detach(), dim=1), F.normalize(k, dim=1), loss.queue.clone()
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ queue.T], dim=1).numpy().astype(np.float64) / 0.2
    by_hand = np.mean([np.log(np.exp(row).sum()) - row[0] for row in logits])
    assert float(value.detach()) == pytest.approx(by_hand, rel=1e-5)
    # enqueue before backward (as the method does): the loss kept its own copy of the queue
    steps = [F.normalize(torch.randn(4, 4, generator=g), dim=1) for _ in range(3)]
    loss.enqueue(steps[0])
    value.backward()
    assert q.grad is not None and k.grad is None
    assert int(loss.ptr) == 4 and torch.allclose(loss.queue[:4], steps[0])
    assert torch.equal(loss.queue[4:], queue[4:])  # the rest still the initial keys
    loss.enqueue(steps[1])
    loss.enqueue(steps[2])  # rows 8, 9 then 0, 1: the oldest keys go first
    assert int(loss.ptr) == 2
    expected = torch.cat([steps[2][2:], steps[0][2:], steps[1], steps[2][:2]])
    assert torch.allclose(loss.queue, expected)
    assert len({tuple(np.round(r, 5)) for r in loss.queue.tolist()}) == 10  # no key twice
    with pytest.raises(ValueError, match="queue_size"):
        loss.enqueue(torch.randn(11, 4))


def _queue_worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loss = QueueInfoNCE(dim=24, size=12, temperature=0.2)
        start = loss.queue.clone()
        for step in range(3):  # key (step, rank, i) is the unit vector e_{8 step + 4 rank + i}
            loss.enqueue(torch.eye(24)[8 * step + 4 * rank: 8 * step + 4 * rank + 4])
        queue.put((rank, pickle.dumps({"start": start, "queue": loss.queue.clone(), "ptr": int(loss.ptr)})))
    finally:
        dist.destroy_process_group()


def test_the_queue_across_two_gloo_ranks_holds_every_key_once() -> None:
    """Each of 2 ranks enqueues 4 keys a step for 3 steps: 8 keys a step gathered ONCE, rank-major;
    both ranks end with the same 12 newest keys, each exactly once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_queue_worker, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    out = dict(results.get() for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ranks = [pickle.loads(out[r]) for r in range(2)]
    assert torch.equal(ranks[0]["start"], ranks[1]["start"])  # the same initial queue without a broadcast
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"]) and ranks[0]["ptr"] == ranks[1]["ptr"] == 0
    # ring of 12: step 0 -> rows 0-7, step 1 -> rows 8-11 then 0-3, step 2 -> rows 4-11
    held = ranks[0]["queue"].argmax(dim=1).tolist()
    assert held == [12, 13, 14, 15] + list(range(16, 24))
    assert torch.equal(ranks[0]["queue"], torch.eye(24)[held])


def test_one_step_enqueues_both_views_teacher_keys_once() -> None:
    method = tiny_method()
    batch = tiny_batch(method, n=4)
    method(batch, step=0)
    assert int(method.queue_loss.ptr) == 8  # 2 views x 4 samples
    teacher = method.teacher
    with torch.no_grad():
        pooled = [dense_features(teacher["backbone"], batch[v]).mean(dim=(-2, -1)) for v in ("view1", "view2")]
        keys = [F.normalize(teacher["projector"](f), dim=-1) for f in pooled]
    assert torch.allclose(method.queue_loss.queue[:8], torch.cat(keys), atol=1e-5)


# ----------------------------------------------------------------------------- reconstruction losses


def test_focal_l1_by_hand_on_masked_pixels_only() -> None:
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 5.0], [0.0, 100.0]], [[-2.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # column 0 masked
    d = np.abs(target.numpy())
    focal = d * (2 / (1 + np.exp(-0.2 * d)) - 1)
    expected = focal[0, :, :, 0].sum() / (2 * 2)  # 2 masked pixels x 2 bands; the 100 is not masked
    assert float(MaskedFocalL1Loss()(pred, target, mask)) == pytest.approx(expected, rel=1e-6)
    # small errors are damped, large ones count like L1
    one = torch.ones(1, 1, 1, 1)
    assert float(MaskedFocalL1Loss()(0 * one, 0.1 * one, one)) < 0.001
    assert float(MaskedFocalL1Loss()(0 * one, 50.0 * one, one)) == pytest.approx(50.0, rel=1e-3)


def test_focal_frequency_loss_is_zero_for_identical_images_and_grows_with_spectral_error() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 2, 16, 16, generator=g)
    loss = FocalFrequencyLoss()
    assert float(loss(target.clone(), target)) == 0.0
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1.0  # the highest frequency
    values = [float(loss(target + eps * checker, target)) for eps in (0.01, 0.1, 0.5, 1.0)]
    assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:]))
    noise = torch.randn(3, 2, 16, 16, generator=g)
    values = [float(loss(target + eps * noise, target)) for eps in (0.01, 0.1, 0.5)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # NumPy reference: batch-averaged orthonormal spectra, log weights normalised by their maximum
    pred = target + 0.3 * noise
    fp = np.fft.fft2(pred.numpy().astype(np.float64), norm="ortho").mean(axis=0)
    ft = np.fft.fft2(target.numpy().astype(np.float64), norm="ortho").mean(axis=0)
    dist2 = np.abs(fp - ft) ** 2
    w = np.log1p(np.sqrt(dist2))
    assert float(loss(pred, target)) == pytest.approx(float((w / w.max() * dist2).mean()), rel=1e-4)


# ----------------------------------------------------------------------------- gradients and the teacher


@pytest.mark.parametrize("branch, head", [("rec", "rec_head"), ("global", "student.projector"),
                                          ("local", "student.local_head")])
def test_each_branch_gets_gradient(branch: str, head: str) -> None:
    """With only ``branch`` weighted, its own head, the backbone and the mask token get gradient;
    the other heads get zeros (still a gradient, as DDP needs every step)."""
    weights = {f"{b}_weight": float(b == branch) for b in ("rec", "global", "local")}
    method = tiny_method(**weights)
    out = method(tiny_batch(method), step=0)
    out.loss.backward()
    assert float(out.logs[branch]) > 0 and float(out.loss.detach()) == pytest.approx(float(out.logs[branch]), rel=1e-6)
    grads = {n: p.grad for n, p in method.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())  # every student parameter, every step
    norm = {prefix: sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(prefix))
            for prefix in ("rec_head", "student.projector", "student.local_head", "student.backbone", "mask_token")}
    assert norm[head] > 0 and norm["student.backbone"] > 0 and norm["mask_token"] > 0
    assert all(v == 0 for k, v in norm.items() if k not in (head, "student.backbone", "mask_token"))


def test_the_ema_teacher_gets_no_gradient_and_follows_the_student() -> None:
    method = tiny_method()
    out = method(tiny_batch(method), step=0)
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    optimised = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not any(id(p) in optimised for p in method.teacher.parameters())
    assert all(id(p) in optimised for p in method.parameters() if p.requires_grad)
    # the prototypes' row norms are frozen at 1: a buffer, in neither the optimiser nor the gradient
    scale = method.student["local_head"].last_layer.scale
    assert not isinstance(scale, torch.nn.Parameter) and torch.equal(scale, torch.ones_like(scale))
    # the EMA covers backbone, projector and local head; the mask token and the pixel head are student-only
    assert set(dict(method.teacher.named_parameters())) == set(dict(method.student.named_parameters()))
    student = {n: p.detach().clone() for n, p in method.student.named_parameters()}
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in method.teacher.named_parameters()}
    method.update_teacher(0.75)
    for n, p in method.teacher.named_parameters():
        assert torch.allclose(p, 0.75 * before[n] + 0.25 * (student[n] + 1.0), atol=1e-6), n
    assert method.export_backbone() is method.student["backbone"]


def test_swin_trains_and_exports_as_a_plain_timm_model() -> None:
    from eoforge.train.export import timm_kwargs

    method = tiny_method(model=SWIN)
    assert method.swin and method.token_stride == 4 and method.out_stride == 32 and method.grid == 2
    assert method.student["local_head"].mlp[1].__class__ is torch.nn.GELU  # no BatchNorm on Swin
    out = method(tiny_batch(method, n=3), step=0)
    out.loss.backward()
    assert [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None] == []
    backbone = method.export_backbone()
    net = timm.create_model(SWIN["name"], **timm_kwargs(method.model_cfg, C, backbone)).eval()
    net.load_state_dict(backbone.state_dict())
    backbone.eval()
    with torch.no_grad():
        assert torch.allclose(net(torch.ones(1, C, 64, 64)), backbone(torch.ones(1, C, 64, 64)), atol=1e-5)


# ----------------------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def cmid_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 generated 32-px training tiles (12 shards) with stats.json: enough distinct tiles that
    the queue of the previous step's keys holds other tiles, as it does on real data."""
    from conftest import build_dataset
    from eoforge.shards.stats import compute_stats

    root = build_dataset(tmp_path_factory.mktemp("cmid") / "ds", n_train=96, n_val=2, max_samples=8)
    compute_stats(root, workers=1)
    return root


#: the demo recipe, shortened for a 32-px test set. The generated tiles differ mainly in their
#: band levels, which per-band jitter, band-mean grey and solarisation scramble; they are off here,
#: so 80 steps are enough for the contrastive branch to learn something.
SHORT_RUN = {
    "engine.steps": 80, "engine.checkpoint_every": 80, "engine.log_every": 10, "engine.progress": False,
    "engine.device": "cpu", "engine.torch_threads": 1, "engine.deterministic": True, "data.workers": 0,
    "data.batch_size": 8, "data.shuffle_buffer": 32, "data.shuffle_initial": 16, "optim.warmup_steps": 8,
    "optim.lr": 5e-3, "model.name": RESNET["name"], "model.timm_kwargs": RESNET["timm_kwargs"],
    "model.img_size_px": 64, **{f"method.{k}": v for k, v in TINY.items()}, "method.queue_size": 16,
    "method.jitter_p": 0.0, "method.grey_p": 0.0, "method.solarize_p": 0.0,
}


@pytest.mark.slow
def test_a_short_engine_run_lowers_every_branch_without_collapse(cmid_dataset: Path, tmp_path: Path) -> None:
    from eoforge.train.engine import read_metrics, train
    from eoforge.train.export import export_run
    from eoforge.train.model_format import load_backbone
    from eoforge.train.monitor import CollapseWarning

    recipe = Path(__file__).resolve().parents[1] / "train" / "recipes" / "cmid-tiny-demo.yaml"
    cfg = PretrainConfig.load(recipe).override(SHORT_RUN)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)  # a collapse warning fails the test
        train(cfg, cmid_dataset, run)
    lines = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in lines] == list(range(10, 81, 10)) and not any(m["collapsed"] for m in lines)
    for branch in ("rec", "global", "local"):
        # from the second line (steps 11-20) on: the first averages the LR warm-up (8 steps) and
        # the steps while the MoCo queue of 16 fills (2), when InfoNCE has fewer negatives
        first, last = lines[1][branch], np.mean([m[branch] for m in lines[-2:]])
        assert last < first, (branch, [m[branch] for m in lines])
    # the lr rule as applied: 5e-3 x sqrt(8 / 256), recorded in the run and its metrics
    facts = json.loads((run / "optim.json").read_text())
    assert facts["lr_scaling"] == "sqrt" and facts["global_batch"] == 8 and facts["base_lr"] == 5e-3
    assert facts["peak_lr"] == pytest.approx(5e-3 * math.sqrt(8 / 256))
    assert max(m["lr"] for m in lines) <= facts["peak_lr"] + 1e-12
    # the export is the student backbone, a plain timm ResNet
    result = export_run(run, tmp_path / "model.safetensors")
    net, info = load_backbone(result.weights)
    meta = info.meta
    ckpt = torch.load(result.checkpoint, weights_only=True)["model"]
    assert meta["method"] == "cmid" and meta["img_size"] == 64
    assert all(torch.equal(v, ckpt[f"student.backbone.{k}"]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_two_torchrun_swin_ranks_keep_one_queue_and_scale_the_lr_by_the_global_batch(cmid_dataset: Path,
                                                                              tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2`` (gloo, CPU) with the tiny Swin: DDP with every student
    parameter used, the queue fed once per step from both ranks (16 keys a step, the queue's size),
    and every rank's full state (student, teacher, queue, local centre) identical at the end. (A
    Swin has no BatchNorm: a ResNet's running statistics stay per rank on CPU, where SyncBatchNorm
    is not available, so its state hashes would differ by design.)"""
    from eoforge.train.checkpoint import latest_checkpoint, load_checkpoint
    from eoforge.train.engine import read_metrics

    recipe = Path(__file__).resolve().parents[1] / "train" / "recipes" / "cmid-tiny-demo.yaml"
    run = tmp_path / "run"
    sets = {**{k: v for k, v in SHORT_RUN.items() if not k.startswith("engine.")},
            "data.batch_size": 4, "engine.log_every": 1, "engine.checkpoint_every": 3,
            "model.name": SWIN["name"], "model.timm_kwargs": SWIN["timm_kwargs"], "model.img_size_px": 64}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "eoforge.train.cli", "pretrain", "--data", str(cmid_dataset), "--method", "cmid", "--out", str(run),
           "--config", str(recipe), "--steps", "3", "--device", "cpu", "--quiet",
           *[arg for k, v in sets.items() for arg in ("--set", f"{k}={json.dumps(v)}")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=recipe.parents[2], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank-*.json"))]
    assert [r["steps"] for r in ranks] == [3, 3] and ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    # 3 steps x 16 keys through a queue of 16: the last step's keys, each once
    model = load_checkpoint(latest_checkpoint(run / "checkpoints"))["model"]
    queue = model["queue_loss.queue"]
    assert int(model["queue_loss.ptr"]) == 0 and torch.allclose(queue.norm(dim=1), torch.ones(16))
    assert float((queue @ queue.T - torch.eye(16)).max()) < 1 - 1e-4  # no two rows equal
    facts = json.loads((run / "optim.json").read_text())
    assert facts["world_size"] == 2 and facts["global_batch"] == 8
    assert facts["peak_lr"] == pytest.approx(5e-3 * math.sqrt(8 / 256))
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
