"""PerA pinned down on small cases: views, masks, the sparse student, loss terms, schedules, EMA, export."""

from __future__ import annotations

import math
import os
import pickle
import socket

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import default_collate

from eoforge.train.augment import (
    band_mean_grey, brightness_contrast, random_resized_crop_params, resized_crop, rot90,
)
from eoforge.train.bench_measure import saved_activation_bytes
from eoforge.train.bench_pera import bench_pera_vs_dino, largest_batch, markdown
from eoforge.train.heads import DINOHead
from eoforge.train.losses import DINOClsLoss, KoLeoLoss, teacher_temperature
from eoforge.train.methods import METHODS, PerA, PeraConfig, create_method
from eoforge.train.methods.pera import PeraViews, apply_colour, mask_counts
from eoforge.train.models import ModelConfig
from eoforge.train.sparse_vit import embed_kept_patches, gather_patches, pos_embed_for_grid

C = 13
TINY_HEADS = {"head_hidden_dim": 64, "head_bottleneck_dim": 32, "head_prototypes": 128}


def tiny_cfg(**kw) -> PeraConfig:
    return PeraConfig(**{"global_crop_px": 32, "local_crop_px": 16, "n_local_crops": 3, **TINY_HEADS, **kw})


def tiny_method(cfg: PeraConfig | None = None, total_steps: int = 100, drop_path: float = 0.0, seed: int = 0) -> PerA:
    torch.manual_seed(seed)
    return create_method("pera", cfg or tiny_cfg(), ModelConfig(name="vit_pico_patch8", img_size_px=32,
                                                                 drop_path_rate=drop_path),
                         in_chans=C, total_steps=total_steps)


def tiny_batch(method: PerA, n: int = 4, seed: int = 0) -> dict:
    views = method.make_views()
    g = torch.Generator().manual_seed(seed)
    return default_collate([views({"s2": torch.rand(C, 40, 40, generator=g), "__key__": f"k{i}"}, g) for i in range(n)])


# ----------------------------------------------------------------------------- masks and views

@pytest.mark.parametrize("n_patches, mask_tokens, expected", [
    (196, True, (39, 39, 118)),   # 224 px / 16
    (784, True, (157, 157, 470)),  # 448 px / 16 (paper)
    (36, False, (7, 0, 22)),      # 96 px / 16 local: middle 20 % dropped
    (16, True, (3, 3, 10)),
    (4, False, (1, 0, 2)),
])
def test_mask_counts(n_patches: int, mask_tokens: bool, expected: tuple[int, int, int]) -> None:
    assert mask_counts(n_patches, 0.2, 0.2, 0.6, mask_tokens) == expected


def test_views_layout_and_disjoint_masks() -> None:
    method = tiny_method()
    batch = tiny_batch(method, n=3)
    assert batch["global_crops"].shape == (3, 2, C, 32, 32) and batch["global_crops"].dtype == torch.float32
    assert batch["local_crops"].shape == (3, 3, C, 16, 16)
    assert batch["global_brightness"].shape == (3, 2, 2, C) and batch["global_grey"].dtype == torch.bool
    assert batch["global_perm"].shape == (3, 2, 16) and batch["local_perm"].shape == (3, 3, 4)
    for kind, n_patches in (("global", 16), ("local", 4)):
        perms = batch[f"{kind}_perm"].reshape(-1, n_patches)
        assert torch.equal(perms.sort(dim=1).values, torch.arange(n_patches).expand_as(perms))
    v = method.prepare(batch)
    assert v.global_s.shape == (6, 3) and v.global_m.shape == (6, 3) and v.global_t.shape == (6, 10)
    assert v.local_s.shape == (9, 1) and v.local_t.shape == (9, 2)
    for s, m, t in zip(v.global_s.tolist(), v.global_m.tolist(), v.global_t.tolist()):
        assert not set(s) & set(t) and not set(m) & set(t) and not set(s) & set(m)
        assert len(set(s) | set(m) | set(t)) == 16
    for s, t in zip(v.local_s.tolist(), v.local_t.tolist()):
        assert not set(s) & set(t) and len(set(s) | set(t)) == 3  # one local patch is seen by no one


def test_views_are_reproducible_and_picklable() -> None:
    views = tiny_method().make_views()
    views2 = pickle.loads(pickle.dumps(views))
    image = {"s2": torch.rand(C, 40, 40)}
    a = views(image, torch.Generator().manual_seed(7))
    b = views2(image, torch.Generator().manual_seed(7))
    c = views(image, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["global_perm"], c["global_perm"])


def test_views_stack_s2_then_s1_and_check_bands() -> None:
    cfg = tiny_cfg(global_crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, vflip_p=0.0)
    views = PeraViews(cfg, patch_px=8, in_chans=15)
    s2, s1 = torch.rand(13, 32, 32), torch.rand(2, 32, 32)
    out = views({"s2": s2, "s1": s1}, torch.Generator().manual_seed(0))
    assert torch.equal(out["global_crops"][0], torch.cat([s2, s1]))  # full-area crop at the same size
    with pytest.raises(ValueError, match="15"):
        views({"s2": s2}, torch.Generator())


def test_pair_members_share_the_geometric_crop() -> None:
    # the teacher member is the same crop with (rarely) jitter: with teacher p=0 they are identical
    method = tiny_method(tiny_cfg(teacher_colour_p=0.0, student_colour_p=1.0, student_grey_p=1.0))
    v = method.prepare(tiny_batch(method, n=2))
    assert torch.allclose(v.global_teacher, tiny_batch(method, n=2)["global_crops"].flatten(0, 1), atol=1e-6)
    assert torch.allclose(v.global_student, band_mean_grey(v.global_teacher))


def test_colour_probabilities() -> None:
    views = PeraViews(PeraConfig(), patch_px=16, in_chans=4)
    g = torch.Generator().manual_seed(0)
    n = 4000
    student_grey = student_jitter = teacher_jitter = 0
    for _ in range(n):
        b, c, grey = views._colour(g)
        student_grey += int(grey[0])
        student_jitter += int(not torch.equal(b[0], torch.ones(4)))
        teacher_jitter += int(not torch.equal(b[1], torch.ones(4)))
        assert not grey[1]
        assert not (grey[0] and not torch.equal(c[0], torch.ones(4)))  # grey and jitter exclusive
    # student: p=0.8 of (p=0.1 grey else jitter) -> 0.08 grey, 0.72 jitter; teacher jitter 0.1
    assert abs(student_grey / n - 0.08) < 0.015
    assert abs(student_jitter / n - 0.72) < 0.025
    assert abs(teacher_jitter / n - 0.10) < 0.015


def test_augment_primitives_by_value() -> None:
    x = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [2.0, 2.0]]])  # [2, 2, 2], band means 4, 1
    y = brightness_contrast(x, torch.tensor([2.0, 1.0]), torch.tensor([0.5, 0.0]))
    # band 0: 2x -> [2, 6, 10, 14], mean 8, contrast 0.5 -> 8 + (v - 8)/2; band 1: flat at its mean 1
    assert torch.allclose(y[0], torch.tensor([[5.0, 7.0], [9.0, 11.0]]))
    assert torch.allclose(y[1], torch.ones(2, 2))
    assert torch.allclose(band_mean_grey(x), torch.stack([(x[0] + x[1]) / 2] * 2))
    assert torch.equal(rot90(x, 1)[0], torch.tensor([[3.0, 7.0], [1.0, 5.0]]))
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = random_resized_crop_params(40, 30, (0.05, 0.4), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert 0.04 * 1200 <= h * w <= 0.42 * 1200
    assert resized_crop(torch.rand(3, 40, 30), (1, 2, 20, 10), 16).shape == (3, 16, 16)
    grey = torch.tensor([[True], [False]])
    out = apply_colour(x.expand(2, 1, 2, 2, 2), torch.ones(2, 1, 2), torch.ones(2, 1, 2), grey)
    assert torch.allclose(out[0, 0], band_mean_grey(x)) and torch.equal(out[1, 0], x)


# ----------------------------------------------------------------------------- the sparse forward

def test_sparse_embedding_with_all_patches_equals_timm() -> None:
    vit = tiny_method().student["backbone"].eval()
    for px in (32, 16):
        crops = torch.rand(3, C, px, px)
        n = (px // 8) ** 2
        x = embed_kept_patches(vit, crops, torch.arange(n).expand(3, n), pos_embed_for_grid(vit, (px // 8,) * 2), 8)
        ours = vit.norm(vit.blocks(x))
        assert torch.allclose(ours, vit.forward_features(crops), atol=1e-5)


def test_gather_patches_matches_conv_patch_order() -> None:
    crops = torch.rand(2, 3, 16, 24)
    index = torch.tensor([[0, 5], [4, 3]])  # 2 x 3 grid of 8-px patches, row-major
    out = gather_patches(crops, index, 8)
    assert out.shape == (2, 2, 3 * 64)
    assert torch.equal(out[0, 1], crops[0, :, 8:16, 16:24].reshape(-1))  # patch 5 = row 1, col 2
    assert torch.equal(out[1, 0], crops[1, :, 8:16, 8:16].reshape(-1))   # patch 4 = row 1, col 1


def test_student_and_teacher_token_counts_per_block() -> None:
    method = tiny_method()
    depth = len(method.student["backbone"].blocks)
    assert depth == 4 and method.insert_depth == 2
    seen: dict[str, list[tuple[int, int]]] = {"student": [], "teacher": []}
    hooks = []
    for who in seen:
        for i, blk in enumerate(getattr(method, who)["backbone"].blocks):
            hooks.append(blk.register_forward_hook(
                lambda mod, inp, out, who=who, i=i: seen[who].append((i, inp[0].shape[1]))))
    method(tiny_batch(method, n=2), step=0)
    for h in hooks:
        h.remove()
    # global pass: [CLS] + 3 student tokens, then + 3 mask tokens from block 2; local: [CLS] + 1
    assert seen["student"] == [(0, 4), (1, 4), (2, 7), (3, 7), (0, 2), (1, 2), (2, 2), (3, 2)]
    # teacher: [CLS] + its 10 (global) / 2 (local) patches through all blocks
    assert seen["teacher"] == [(0, 11), (1, 11), (2, 11), (3, 11), (0, 3), (1, 3), (2, 3), (3, 3)]


def test_student_never_sees_the_teachers_patches() -> None:
    method = tiny_method().eval()
    batch = tiny_batch(method, n=2)
    v = method.prepare(batch)
    g_cls, mask_out, l_cls = method.student_forward(v)
    t_cls = method.teacher_forward(v)
    # scramble every pixel outside the student's patches (mask and teacher patches): the student
    # output cannot change; the teacher's must
    pairs = ((v.global_student, v.global_teacher, v.global_s), (v.local_student, v.local_teacher, v.local_s))
    for student, teacher, s_idx in pairs:
        n, grid = student.shape[0], student.shape[-1] // 8
        keep = torch.zeros(n, grid * grid, dtype=torch.bool)
        keep[torch.arange(n)[:, None], s_idx] = True
        keep = keep.reshape(n, 1, grid, 1, grid, 1).expand(n, 1, grid, 8, grid, 8).reshape(n, 1, grid * 8, grid * 8)
        for crops in (student, teacher):
            crops.copy_(torch.where(keep, crops, torch.rand_like(crops) * 100))
    g2, m2, l2 = method.student_forward(v)
    assert torch.allclose(g2, g_cls, atol=1e-5) and torch.allclose(m2, mask_out, atol=1e-5)
    assert torch.allclose(l2, l_cls, atol=1e-5)
    assert not torch.allclose(method.teacher_forward(v), t_cls)


# ----------------------------------------------------------------------------- loss terms

def test_dino_ce_with_centring_and_temperatures_by_hand() -> None:
    loss = DINOClsLoss(out_dim=3, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.tensor([[0.1, -0.2, 0.0]]))
    s = torch.tensor([[0.2, 0.1, -0.1], [0.0, 0.3, 0.1]])
    t = torch.tensor([[0.05, 0.01, 0.0], [0.02, 0.0, 0.03]])
    probs = loss.teacher_probs(t, 0.04)
    c = np.array([0.1, -0.2, 0.0])

    def softmax(a):
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p_t = softmax((t.numpy().astype(np.float64) - c) / 0.04)
    log_p_s = np.log(softmax(s.numpy().astype(np.float64) / 0.1))
    expected = float(np.mean(-(p_t * log_p_s).sum(-1)))
    assert np.allclose(probs.numpy(), p_t, atol=1e-6)
    assert math.isclose(float(loss(s, probs)), expected, rel_tol=1e-5)
    loss.update_center(t)
    assert np.allclose(loss.center.numpy()[0], 0.9 * c + 0.1 * t.numpy().mean(0), atol=1e-7)


def test_koleo_against_numpy() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    xn = x.numpy().astype(np.float64)
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    dist_ = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(dist_, np.inf)
    expected = -np.mean(np.log(dist_.min(axis=1) + 1e-8))
    assert math.isclose(float(KoLeoLoss()(x)), expected, rel_tol=1e-4)
    assert float(KoLeoLoss()(x[:1])) == 0.0


def test_pixel_term_sums_patch_values_and_averages_tokens() -> None:
    method = tiny_method(tiny_cfg(koleo_weight=0.0))
    batch = tiny_batch(method, n=2)
    out = method(batch, step=0)
    v = method.prepare(batch)
    _, mask_out, _ = method.student_forward(v)
    pred = method.pixel_head(mask_out)                       # [4, 3, 13*8*8]
    target = gather_patches(v.global_student, v.global_m, 8)  # the student view's pixels
    per_token = [float(((pred[i, j] - target[i, j]) ** 2).sum().detach()) for i in range(4) for j in range(3)]
    assert pred.shape == (4, 3, C * 64)
    assert math.isclose(out.logs["pixel"], sum(per_token) / len(per_token), rel_tol=1e-4)
    assert math.isclose(float(out.loss.detach()), out.logs["dino"] + 0.01 * out.logs["pixel"], rel_tol=1e-5)


def test_total_loss_weights_and_logs() -> None:
    method = tiny_method()
    out = method(tiny_batch(method), step=3)
    assert set(out.logs) == {"dino", "koleo", "pixel", "teacher_temp"}
    expected = out.logs["dino"] + 0.1 * out.logs["koleo"] + 0.01 * out.logs["pixel"]
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-5)
    assert out.embeddings.shape == (4, 64) and not out.embeddings.requires_grad


def test_teacher_temperature_schedule() -> None:
    assert [teacher_temperature(s, 10, 0.03, 0.05) for s in (0, 5, 10, 11, 1000)] == pytest.approx(
        [0.03, 0.04, 0.05, 0.05, 0.05])
    method = tiny_method(total_steps=200)  # default warm-up: 15 % of the run (30 of 200 epochs)
    assert method.teacher_temp_warmup_steps == 30
    assert method.teacher_temp(15) == pytest.approx(0.04)
    assert tiny_method(tiny_cfg(teacher_temp_warmup_steps=4)).teacher_temp(1) == pytest.approx(0.035)


def test_centre_is_all_reduced_across_ranks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # children inherit the imports: no re-import of torch
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_centre_worker, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # rank 0 holds rows of 1, rank 1 rows of 3 (2 rows each): global mean 2 -> centre 0.1 * 2
    for centre in results:
        assert np.allclose(centre, 0.2)


def _centre_worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loss = DINOClsLoss(out_dim=4)
        loss.update_center(torch.full((2, 4), 1.0 + 2 * rank))
        queue.put(loss.center.numpy().copy())
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- training plumbing

def test_every_student_parameter_gets_a_gradient() -> None:
    method = tiny_method(drop_path=0.3).train()
    assert not method.teacher.training and method.student.training
    method(tiny_batch(method), step=0).loss.backward()
    student = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert student and not any(n.startswith("teacher.") for n, _ in student)
    assert [n for n, p in student if p.grad is None] == []
    assert all(p.grad is None for p in method.teacher.parameters())


def test_param_groups_weight_decay_split() -> None:
    method = tiny_method()
    decay, no_decay = method.param_groups()
    assert decay["apply_weight_decay"] and not no_decay["apply_weight_decay"]
    names = {id(p): n for n, p in method.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    free = {names[id(p)] for p in no_decay["params"]}
    for n in ("student.backbone.pos_embed", "student.backbone.cls_token", "mask_token",
              "student.backbone.blocks.0.attn.qkv.bias", "student.backbone.blocks.0.norm1.weight",
              "student.backbone.norm.weight", "student.cls_head.last_layer.scale"):
        assert n in free, n
    for n in ("student.backbone.blocks.0.attn.qkv.weight", "student.backbone.patch_embed.proj.weight",
              "student.cls_head.mlp.0.weight", "pixel_head.last_layer.weight"):
        assert n in decayed, n
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert decayed | free == trainable and not decayed & free


def test_ema_update_of_the_teacher() -> None:
    method = tiny_method()
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in method.teacher.named_parameters()}
    method.update_teacher(0.9)
    for n, p in method.teacher.named_parameters():
        s = dict(method.student.named_parameters())[n]
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * s, atol=1e-6), n
    method.update_teacher(1.0)
    assert torch.allclose(dict(method.teacher.named_parameters())["backbone.pos_embed"],
                          0.9 * before["backbone.pos_embed"] + 0.1 * method.student["backbone"].pos_embed)


def test_export_is_the_teacher_and_loads_into_timm(tmp_path) -> None:
    method = tiny_method()
    with torch.no_grad():
        for p in method.student.parameters():
            p.mul_(0.5)
    method.update_teacher(0.5)
    backbone = method.export_backbone()
    assert backbone is method.teacher["backbone"]
    path = tmp_path / "pera.safetensors"
    save_file({k: v.contiguous().clone() for k, v in backbone.state_dict().items()}, str(path))
    plain = timm.create_model("vit_pico_patch8", in_chans=C, num_classes=0)
    result = plain.load_state_dict(load_file(str(path)))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(plain.pos_embed, method.teacher["backbone"].pos_embed)


def test_resnet_and_bad_crop_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="PerA needs a timm VisionTransformer"):
        create_method("pera", tiny_cfg(), ModelConfig(name="resnet18"), in_chans=C, total_steps=10)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_method("pera", tiny_cfg(local_crop_px=12), ModelConfig(name="vit_pico_patch8", img_size_px=32),
                      in_chans=C, total_steps=10)
    with pytest.raises(ValueError, match="unknown key method.mask_raito"):
        create_method("pera", {"student_ratio": 0.2, "mask_raito": 0.2}, None, in_chans=C, total_steps=10)
    with pytest.raises(ValueError, match="ratios"):
        PeraConfig(student_ratio=0.5, mask_ratio=0.3, teacher_ratio=0.6)
    assert METHODS["pera"].config_class is PeraConfig


def test_config_from_mapping_accepts_yaml_lists() -> None:
    method = create_method("pera", {"name": "pera", "global_crop_px": 32, "local_crop_px": 16,
                                    "local_crop_scale": [0.1, 0.3], **TINY_HEADS},
                           {"name": "vit_pico_patch8", "img_size_px": 32}, in_chans=2, total_steps=10)
    assert method.cfg.local_crop_scale == (0.1, 0.3)
    assert method.student["backbone"].patch_embed.proj.weight.shape[1] == 2


def test_a_few_steps_lower_the_loss() -> None:
    method = tiny_method(seed=1).train()
    batch = tiny_batch(method, n=6, seed=1)
    groups = method.param_groups()
    opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": 0.04 if g["apply_weight_decay"] else 0.0}
                             for g in groups], lr=1e-3)
    losses = []
    for step in range(10):
        out = method(batch, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.update_teacher(0.99)
        losses.append(float(out.loss.detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_heads_shape_and_normalised_bottleneck() -> None:
    head = DINOHead(64, 100, hidden_dim=32, bottleneck_dim=16)
    x = torch.randn(5, 64)
    z = head.project(x)
    assert torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    # weight-normed prototypes with unit row norms: |logit| <= 1
    assert head(x).shape == (5, 100) and float(head(x).abs().max().detach()) <= 1 + 1e-5


# ----------------------------------------------------------------------------- benchmark smoke

def test_saved_activation_bytes_excludes_parameters() -> None:
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100, requires_grad=True)
    nbytes, out = saved_activation_bytes(lambda: lin(x), lin.parameters())
    assert nbytes == 10 * 100 * 4  # the input only: the weight (and its transposed view) is a parameter
    nbytes, out = saved_activation_bytes(lambda: torch.relu(lin(x)).sum(), lin.parameters())
    assert nbytes == 2 * 10 * 100 * 4  # + relu's output


def test_bench_smoke() -> None:
    r = bench_pera_vs_dino(model="vit_pico_patch8", batch_size=2, global_crop_px=32, local_crop_px=16,
                           n_local_crops=2, head_hidden_dim=32, head_bottleneck_dim=16, head_prototypes=64, repeats=1)
    assert 0 < r["activation_ratio"] < 1 and r["step_time_ratio"] > 0
    assert r["pera"]["student_token_layers"] == 2 * (2 * 4 + 2 * 7) + 2 * 4 * 2
    assert r["dino"]["student_token_layers"] == 4 * (2 * 17 + 2 * 5)
    assert "PerA vs full-view DINO" in markdown(r)


def test_largest_batch_search() -> None:
    assert largest_batch(lambda b: b <= 100, 1024) == 96
    assert largest_batch(lambda b: b <= 5000, 1024) == 1024
    assert largest_batch(lambda b: b <= 7, 1024) == 0
    assert largest_batch(lambda b: b <= 300, 200) == 200


def test_the_dino_branch_alone_learns() -> None:
    """Without the pixel and KoLeo terms (weights 0) the DINO self-distillation loss itself falls
    (the "loss falls" test above could pass on the pixel term alone): with the teacher and its
    centre held still (momentum 1) and the same masks every step, the targets are fixed and the
    student must move towards them.
    The pixel head then gets no gradient at all."""
    method = tiny_method(tiny_cfg(pixel_weight=0.0, koleo_weight=0.0, teacher_temp_start=0.04, teacher_temp_end=0.04,
                                  center_momentum=1.0), seed=1).train()
    batch = tiny_batch(method, n=6, seed=1)
    opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": 0.0} for g in method.param_groups()], lr=1e-3)
    dino = []
    for step in range(12):
        torch.manual_seed(0)  # the same masks and drop-outs every step
        out = method(batch, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.update_teacher(1.0)  # momentum 1: the teacher stays where it is
        assert torch.equal(out.loss.detach(), out.logs["dino"])  # the loss is the DINO term only
        dino.append(float(out.logs["dino"]))
    assert np.isfinite(dino).all()
    assert np.mean(dino[-3:]) < 0.8 * np.mean(dino[:3]), dino
    pixel_grads = [p.grad for n, p in method.named_parameters() if "pixel" in n and p.requires_grad]
    assert pixel_grads and all(g is None or not g.any() for g in pixel_grads)
