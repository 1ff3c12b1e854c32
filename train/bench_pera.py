"""Benchmark: PerA's sparse student against full-view DINO on the same ViT, crops and heads.

Full-view DINO is the baseline PerA's memory claim is made against (train/METHODS.md#pera): the student
sees every token of the 2 global and N local crops, the teacher the global crops. Both students
here share the backbone architecture, band count, crop sizes and CLS-head shape; PerA's student
also runs its pixel head on the mask tokens. Measured side by side in one process:

1. **Activation memory** of one student forward: the bytes of the unique tensor storages that
   autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``), parameters
   excluded (linear layers hand their weights to the hook too; they are recognised by the data
   pointer of the model's parameter storages). Target PerA ÷ DINO <= 0.4.
2. **Student step time**: forward + backward of the student on the same batch, median of
   ``repeats`` interleaved runs after one warm-up. Target <= 0.6.
3. The analytic count of student tokens × layers (train/METHODS.md#pera: ≈ 29 % for ViT-B at 448/96).

With CUDA (:func:`bench_pera_gpu`): full training steps (student forward + backward, teacher,
AdamW, EMA) in bf16 autocast, images/s, peak memory, FLOPs per step and MFU
(:mod:`eoforge.train.bench_measure`) at the largest batch that fits (or a given one), PerA
(ViT-B/16 by default) against full-view DINO.

``python -m eoforge.train.bench_pera --out build/bench`` writes the ``train_pera`` section of
``results.json`` / ``results.md`` (``make bench`` runs it; ``--small`` for a quick check).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor, nn

from eoforge.train.bench_measure import (
    compare_side_by_side, datasheet_tflops, measured_matmul_tflops, mfu, step_flops,
)
from eoforge.train.losses import DINOClsLoss
from eoforge.train.methods.pera import PerA, PeraBatch, PeraConfig
from eoforge.train.models import ModelConfig

SECTION = "train_pera"
TARGET_ACTIVATION_RATIO = 0.4
TARGET_STEP_TIME_RATIO = 0.6


# ---------------------------------------------------------------------------------------------
# the two students

class FullViewDINO(nn.Module):
    """Full-view DINO (Caron et al. 2021) with PerA's backbone and CLS head: the baseline.

    Student: every token of every crop (timm ``forward_features``, ``dynamic_img_size`` for the
    local crops). Teacher (EMA copy, no grad): the global crops. Loss: cross-entropy of each
    teacher global crop against every student crop but that same one.
    """

    def __init__(self, pera: PerA) -> None:
        super().__init__()
        # same architecture and initialisation as the PerA student it is compared with
        self.student = copy.deepcopy(pera.student)
        self.teacher = copy.deepcopy(pera.teacher)
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOClsLoss(pera.cfg.head_prototypes, pera.cfg.student_temp, pera.cfg.center_momentum)
        self.teacher_temp = pera.cfg.teacher_temp_end

    def train(self, mode: bool = True) -> FullViewDINO:
        super().train(mode)
        self.teacher.eval()
        return self

    def student_logits(self, global_crops: Tensor, local_crops: Tensor) -> Tensor:
        """``[B*G + B*N, K]`` prototype logits of all crops (``[B*G, C, Pg, Pg]``, ``[B*N, C, Pl, Pl]``)."""
        vit = self.student["backbone"]
        cls = [vit.forward_features(global_crops)[:, 0]]
        if local_crops.shape[0]:
            cls.append(vit.forward_features(local_crops)[:, 0])
        return self.student["cls_head"](torch.cat(cls))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        gc = batch["global_crops"]
        b, g = gc.shape[:2]
        student = self.student_logits(gc.flatten(0, 1), batch["local_crops"].flatten(0, 1)).float()
        with torch.no_grad():
            t_logits = self.teacher["cls_head"](self.teacher["backbone"].forward_features(gc.flatten(0, 1))[:, 0])
            targets = self.dino_loss.teacher_probs(t_logits, self.teacher_temp).reshape(b, g, -1)
            self.dino_loss.update_center(t_logits)
        n_crops = student.shape[0] // b
        # rows: globals b-major [B*G], then locals [B*N]; regroup per crop index
        s_global = student[: b * g].reshape(b, g, -1)
        s_local = student[b * g:].reshape(b, n_crops - g, -1)
        s_all = torch.cat([s_global, s_local], dim=1)
        terms = [self.dino_loss(s_all[:, v], targets[:, q]) for q in range(g) for v in range(n_crops) if v != q]
        return torch.stack(terms).mean()


def pera_student_loss(method: PerA, v: PeraBatch) -> Tensor:
    """PerA's student forward (sparse backbone + CLS head + pixel head) reduced to a scalar for backward."""
    global_cls, mask_out, local_cls = method.student_forward(v)
    logits = method.student["cls_head"](torch.cat([global_cls, local_cls]))
    pixels = method.pixel_head(mask_out)
    return logits.float().logsumexp(dim=-1).mean() + pixels.float().square().mean()


def dino_student_loss(dino: FullViewDINO, batch: dict[str, Tensor]) -> Tensor:
    """Full-view DINO's student forward (all tokens + CLS head) reduced to a scalar for backward."""
    logits = dino.student_logits(batch["global_crops"].flatten(0, 1), batch["local_crops"].flatten(0, 1))
    return logits.float().logsumexp(dim=-1).mean()


# ---------------------------------------------------------------------------------------------
# measurement helpers

def random_batch(method: PerA, batch_size: int, device: torch.device | str, seed: int = 0) -> dict[str, Tensor]:
    """A collated PerA batch of uniform noise crops, identity colour, random permutations (on ``device``)."""
    cfg, c = method.cfg, method.in_chans
    g = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, Tensor] = {}
    for kind, n, px, n_patches in (("global", cfg.n_global_crops, cfg.global_crop_px, method.global_patches),
                                   ("local", cfg.n_local_crops, cfg.local_crop_px, method.local_patches)):
        out[f"{kind}_crops"] = torch.rand(batch_size, n, c, px, px, generator=g)
        out[f"{kind}_brightness"] = torch.ones(batch_size, n, 2, c)
        out[f"{kind}_contrast"] = torch.ones(batch_size, n, 2, c)
        out[f"{kind}_grey"] = torch.zeros(batch_size, n, 2, dtype=torch.bool)
        out[f"{kind}_perm"] = torch.rand(batch_size, n, n_patches, generator=g).argsort(dim=-1)
    return {k: v.to(device) for k, v in out.items()}


def student_token_layers(method: PerA) -> dict[str, int]:
    """Tokens × blocks processed by the student per sample: PerA's sparse count and full-view DINO's."""
    cfg, depth, d = method.cfg, len(method.student["backbone"].blocks), method.insert_depth
    (gs, gm, _), (ls, _, _) = method.global_counts, method.local_counts
    pera = cfg.n_global_crops * (d * (1 + gs) + (depth - d) * (1 + gs + gm)) + cfg.n_local_crops * depth * (1 + ls)
    dino = depth * (cfg.n_global_crops * (1 + method.global_patches) + cfg.n_local_crops * (1 + method.local_patches))
    return {"pera": pera, "dino": dino}


def _build(model: str, in_chans: int, global_crop_px: int, local_crop_px: int, n_global_crops: int,
           n_local_crops: int, head_hidden_dim: int, head_bottleneck_dim: int, head_prototypes: int,
           device: torch.device, seed: int) -> tuple[PerA, FullViewDINO]:
    torch.manual_seed(seed)
    cfg = PeraConfig(global_crop_px=global_crop_px, local_crop_px=local_crop_px, n_global_crops=n_global_crops,
                     n_local_crops=n_local_crops, head_hidden_dim=head_hidden_dim,
                     head_bottleneck_dim=head_bottleneck_dim, head_prototypes=head_prototypes)
    pera = PerA(cfg, ModelConfig(name=model, img_size_px=global_crop_px), in_chans=in_chans, total_steps=1000).to(device)
    dino = FullViewDINO(pera).to(device)
    return pera.train(), dino.train()


# ---------------------------------------------------------------------------------------------
# (c) CPU / any device: student memory and step time

def bench_pera_vs_dino(
    model: str = "vit_small_patch16_224",
    in_chans: int = 13,
    batch_size: int = 8,
    global_crop_px: int = 224,
    local_crop_px: int = 96,
    n_global_crops: int = 2,
    n_local_crops: int = 8,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 384,
    head_prototypes: int = 65536,
    repeats: int = 3,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """PerA vs full-view DINO student: activation bytes saved for backward and forward+backward time.

    Args:
        model: timm ViT name (``vit_small_patch16_224``; ``vit_pico_patch8`` for a smoke test).
        in_chans: bands.
        batch_size: samples per step.
        global_crop_px, local_crop_px: crop edges in pixels.
        n_global_crops, n_local_crops: crops per sample.
        head_hidden_dim, head_bottleneck_dim, head_prototypes: CLS (and pixel) head shape.
        repeats: timed forward+backward runs per method (after one warm-up each), interleaved.
        device: ``"cpu"`` or ``"cuda"``; fp32 throughout.
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is).
        seed: weights and data.

    Returns:
        A JSON-able dict: setup, per-method ``activation_bytes`` and ``step_s`` (median) with all
        ``step_s_runs``, the ratios PerA ÷ DINO, token × layer counts, targets and pass flags.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    pera, dino = _build(model, in_chans, global_crop_px, local_crop_px, n_global_crops, n_local_crops,
                        head_hidden_dim, head_bottleneck_dim, head_prototypes, dev, seed)
    batch = random_batch(pera, batch_size, dev, seed)
    views = pera.prepare(batch)
    full = {"global_crops": views.global_student.unflatten(0, (batch_size, n_global_crops)),
            "local_crops": views.local_student.unflatten(0, (batch_size, n_local_crops))}
    runs: dict[str, Callable[[], Tensor]] = {
        "pera": lambda: pera_student_loss(pera, views),
        "dino": lambda: dino_student_loss(dino, full),
    }
    modules = {"pera": pera, "dino": dino}
    activation, times = compare_side_by_side(runs, modules, repeats, dev)
    step_s = {k: statistics.median(v) for k, v in times.items()}
    tokens = student_token_layers(pera)
    (gs, gm, gt), (ls, _, lt) = pera.global_counts, pera.local_counts
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": str(dev), "threads": torch.get_num_threads(), "dtype": "float32",
        "model": model, "in_chans": in_chans, "batch_size": batch_size,
        "crops": {"global": [n_global_crops, global_crop_px], "local": [n_local_crops, local_crop_px]},
        "patches": {"global": {"all": pera.global_patches, "student": gs, "mask": gm, "teacher": gt},
                    "local": {"all": pera.local_patches, "student": ls, "teacher": lt}},
        "heads": {"hidden": head_hidden_dim, "bottleneck": head_bottleneck_dim, "prototypes": head_prototypes},
        "pera": {"activation_bytes": activation["pera"], "step_s": step_s["pera"], "step_s_runs": times["pera"],
                 "student_token_layers": tokens["pera"]},
        "dino": {"activation_bytes": activation["dino"], "step_s": step_s["dino"], "step_s_runs": times["dino"],
                 "student_token_layers": tokens["dino"]},
        "activation_ratio": activation["pera"] / activation["dino"],
        "step_time_ratio": step_s["pera"] / step_s["dino"],
        "token_layer_ratio": tokens["pera"] / tokens["dino"],
        "targets": {"activation_ratio": TARGET_ACTIVATION_RATIO, "step_time_ratio": TARGET_STEP_TIME_RATIO},
    }
    result["met"] = {"activation_ratio": result["activation_ratio"] <= TARGET_ACTIVATION_RATIO,
                     "step_time_ratio": result["step_time_ratio"] <= TARGET_STEP_TIME_RATIO}
    return result


# ---------------------------------------------------------------------------------------------
# GPU: images/s and peak memory at the largest batch that fits

def _forward_fn(name: str, pera: PerA, dino: FullViewDINO) -> Callable[[dict[str, Tensor], int], Tensor]:
    """The loss of ``name`` ("pera" / "dino") on a batch, in bf16 autocast on CUDA."""
    device_type = pera.mask_token.device.type

    def forward(batch: dict[str, Tensor], i: int) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            return pera(batch, i).loss if name == "pera" else dino(batch)

    return forward


def _train_step_fn(name: str, pera: PerA, dino: FullViewDINO) -> Callable[[dict[str, Tensor], int], None]:
    """One full training step of ``name`` ("pera" / "dino"): bf16 autocast on CUDA, AdamW, EMA."""
    module: nn.Module = pera if name == "pera" else dino
    forward = _forward_fn(name, pera, dino)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, eps=2e-5)
    teacher, student = module.teacher, module.student

    def step(batch: dict[str, Tensor], i: int) -> None:
        loss = forward(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.lerp_(s, 0.004)

    return step


def _fits(step: Callable[[dict[str, Tensor], int], None], pera: PerA, batch_size: int, dev: torch.device) -> bool:
    """Whether two training steps at ``batch_size`` run without a CUDA out-of-memory error."""
    try:
        batch = random_batch(pera, batch_size, dev)
        for i in range(2):
            step(batch, i)
        torch.cuda.synchronize(dev)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        batch = None  # noqa: F841  (free before the next probe)
        torch.cuda.empty_cache()


def largest_batch(fits: Callable[[int], bool], max_batch: int, granularity: int = 8) -> int:
    """The largest multiple of ``granularity`` up to ``max_batch`` for which ``fits`` holds (0 if none).

    Doubles from ``granularity`` until a miss, then bisects between the last fit and the miss
    (assumes fitting is monotone in the batch size).
    """
    lo, b = 0, granularity
    while b <= max_batch and fits(b):
        lo, b = b, b * 2
    hi = min(b, max_batch + granularity)
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        if mid <= lo:
            break
        if mid <= max_batch and fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def bench_pera_gpu(
    model: str = "vit_base_patch16_224",
    in_chans: int = 13,
    global_crop_px: int = 224,
    local_crop_px: int = 96,
    n_global_crops: int = 2,
    n_local_crops: int = 8,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 384,
    head_prototypes: int = 65536,
    max_batch: int = 1024,
    steps: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict[str, Any] | None:
    """Full training steps (bf16 autocast) of PerA and full-view DINO on one CUDA device.

    For each method: the largest batch (multiple of 8, up to ``max_batch``) whose two training
    steps fit, or ``batch_size`` when given (then both run at it, a batch one of them cannot fit
    being reported as such), then ``steps`` timed steps at that batch: images/s (samples, each
    with all its crops), peak allocated memory, FLOPs per step and MFU. Returns ``None`` without CUDA.
    """
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    pera, dino = _build(model, in_chans, global_crop_px, local_crop_px, n_global_crops, n_local_crops,
                        head_hidden_dim, head_bottleneck_dim, head_prototypes, dev, seed)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(dev), "model": model, "in_chans": in_chans,
                              "crops": {"global": [n_global_crops, global_crop_px],
                                        "local": [n_local_crops, local_crop_px]},
                              "heads": {"hidden": head_hidden_dim, "bottleneck": head_bottleneck_dim,
                                        "prototypes": head_prototypes}, "amp": "bf16"}
    sheet, measured = datasheet_tflops(result["device"]), measured_matmul_tflops(dev)
    result.update(datasheet_tflops=sheet, measured_matmul_tflops=measured)
    fixed = batch_size
    for name in ("pera", "dino"):
        step = _train_step_fn(name, pera, dino)
        if fixed is None:
            batch_size = largest_batch(lambda b, step=step: _fits(step, pera, b, dev), max_batch)
        else:
            batch_size = fixed if _fits(step, pera, fixed, dev) else 0
        if batch_size == 0:
            result[name] = {"max_batch": 0}
            continue
        batch = random_batch(pera, batch_size, dev, seed)
        forward = _forward_fn(name, pera, dino)
        flops = step_flops(lambda forward=forward, batch=batch: forward(batch, 0))
        step(batch, 0)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for i in range(steps):
            step(batch, i + 1)
        torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0
        result[name] = {"max_batch": batch_size, "batch_searched": fixed is None,
                        "images_per_s": batch_size * steps / elapsed,
                        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30, "flops_per_step": flops,
                        "mfu_datasheet": mfu(flops, steps / elapsed, sheet),
                        "mfu_measured": mfu(flops, steps / elapsed, measured)}
        batch = step = None  # type: ignore[assignment]  (free this method's memory before the next)
        torch.cuda.empty_cache()
    if result["pera"].get("images_per_s") and result["dino"].get("images_per_s"):
        result["images_per_s_ratio"] = result["pera"]["images_per_s"] / result["dino"]["images_per_s"]
        result["max_batch_ratio"] = result["pera"]["max_batch"] / result["dino"]["max_batch"]
    return result


# ---------------------------------------------------------------------------------------------
# report

def markdown(result: dict[str, Any], gpu: dict[str, Any] | None = None) -> str:
    """The ``results.md`` section for :func:`bench_pera_vs_dino` (and :func:`bench_pera_gpu`) results."""
    r = result
    (ng, pg), (nl, pl) = r["crops"]["global"], r["crops"]["local"]
    h = r["heads"]
    mb = 1e6
    lines = [
        "## PerA vs full-view DINO (`train/bench_pera.py`)", "",
        f"`{r['model']}`, {r['in_chans']} bands, batch {r['batch_size']}, {ng}×{pg} px + {nl}×{pl} px crops, "
        f"heads {h['hidden']}/{h['bottleneck']}/{h['prototypes']}, {r['device']} ({r['threads']} threads), fp32. "
        f"Student patches per global crop {r['patches']['global']['student']} + "
        f"{r['patches']['global']['mask']} mask tokens of {r['patches']['global']['all']}, per local crop "
        f"{r['patches']['local']['student']} of {r['patches']['local']['all']}.", "",
        "| student | full-view DINO | PerA | PerA ÷ DINO | target |",
        "|---|---:|---:|---:|---:|",
        f"| tokens × blocks per sample | {r['dino']['student_token_layers']} | {r['pera']['student_token_layers']} "
        f"| {r['token_layer_ratio']:.2f} | |",
        f"| activations saved for backward | {r['dino']['activation_bytes'] / mb:.0f} MB "
        f"| {r['pera']['activation_bytes'] / mb:.0f} MB | {r['activation_ratio']:.2f} "
        f"| ≤ {r['targets']['activation_ratio']} {'✓' if r['met']['activation_ratio'] else '✗'} |",
        f"| forward + backward (median of {len(r['pera']['step_s_runs'])}) | {r['dino']['step_s']:.3f} s "
        f"| {r['pera']['step_s']:.3f} s | {r['step_time_ratio']:.2f} "
        f"| ≤ {r['targets']['step_time_ratio']} {'✓' if r['met']['step_time_ratio'] else '✗'} |",
        "",
    ]
    return "\n".join(lines) + "\n" + gpu_markdown(gpu, title=False)


def gpu_markdown(gpu: dict[str, Any] | None, title: bool = True) -> str:
    """The GPU part of the section (:func:`bench_pera_gpu`), with the section title when alone."""
    lines = ["## PerA vs full-view DINO (`train/bench_pera.py`)", ""] if title else []
    if gpu:
        how = "at the largest batch that fits" if gpu.get("pera", {}).get("batch_searched", True) else "at a fixed batch"
        lines += [f"GPU ({gpu['device']}), `{gpu['model']}`, full training steps in bf16 {how}; MFU = counted "
                  "matmul/conv/attention FLOPs of forward + backward × steps/s ÷ peak (datasheet "
                  f"{gpu.get('datasheet_tflops')} TFLOP/s; measured bf16 matmul "
                  f"{gpu.get('measured_matmul_tflops', float('nan')):.0f} TFLOP/s):", "",
                  "| method | batch | images/s | peak memory | TFLOP per step | MFU (datasheet) | MFU (measured peak) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, label in (("dino", "full-view DINO"), ("pera", "PerA")):
            g = gpu[name]
            if g.get("max_batch"):
                md = f"{100 * g['mfu_datasheet']:.1f} %" if g.get("mfu_datasheet") is not None else "n/a"
                lines.append(f"| {label} | {g['max_batch']} | {g['images_per_s']:.1f} | {g['peak_memory_gib']:.1f} GiB "
                             f"| {g['flops_per_step'] / 1e12:.2f} | {md} | {100 * g['mfu_measured']:.1f} % |")
            else:
                lines.append(f"| {label} | does not fit | | | | | |")
        lines.append("")
    else:
        lines += ["GPU figures: not measured (no CUDA device in this run).", ""]
    return "\n".join(lines)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--model", default="vit_small_patch16_224", show_default=True, help="timm ViT for the CPU comparison.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--global-crop-px", type=int, default=224, show_default=True)
@click.option("--local-crop-px", type=int, default=96, show_default=True)
@click.option("--local-crops", "n_local_crops", type=int, default=8, show_default=True)
@click.option("--prototypes", "head_prototypes", type=int, default=65536, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads [torch's default].")
@click.option("--gpu-model", default="vit_base_patch16_224", show_default=True, help="ViT for the CUDA comparison.")
@click.option("--gpu-batch", type=int, default=None, help="Fixed batch of the CUDA comparison [the largest that fits].")
@click.option("--gpu-only", is_flag=True, help="Only the CUDA comparison (on a device machine).")
@click.option("--small", is_flag=True, help="Tiny ViT and crops: a seconds-long smoke run.")
def main(out: Path, model: str, batch_size: int, global_crop_px: int, local_crop_px: int, n_local_crops: int,
         head_prototypes: int, repeats: int, threads: int | None, gpu_model: str, gpu_batch: int | None,
         gpu_only: bool, small: bool) -> None:
    """Measure PerA vs full-view DINO and write the 'train_pera' benchmark section."""
    from eoforge.shards.bench import write_results

    if small:
        model, global_crop_px, local_crop_px, batch_size, head_prototypes = "vit_pico_patch8", 32, 16, 4, 256
    kwargs = dict(model=model, batch_size=batch_size, global_crop_px=global_crop_px, local_crop_px=local_crop_px,
                  n_local_crops=n_local_crops, head_prototypes=head_prototypes, repeats=repeats, threads=threads)
    if small:
        kwargs.update(head_hidden_dim=128, head_bottleneck_dim=64)
    result: dict[str, Any] = {} if gpu_only else bench_pera_vs_dino(**kwargs)
    gpu = None if small else bench_pera_gpu(model=gpu_model, global_crop_px=global_crop_px,
                                            local_crop_px=local_crop_px, n_local_crops=n_local_crops,
                                            head_prototypes=head_prototypes, batch_size=gpu_batch)
    if gpu is not None:
        result["gpu"] = gpu
    md = markdown(result, gpu) if not gpu_only else gpu_markdown(gpu)
    click.echo(md)
    write_results(out, SECTION, result, md)
    click.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()
