"""Benchmark: SoftCon's masked trainable branch against the same branch on full views.

SoftCon drops half of the patch tokens of the views its online (trainable) branch sees
(train/METHODS.md#softcon, "Siamese masking"); the EMA branch sees full views without gradient. Measured side
by side in one process, on the same ViT, weights, views and heads (``mask_ratio`` 0.5 vs 0):

1. **Activation memory** of the online branch's forward (encoder + projector + predictor on both
   views): the bytes of the unique tensor storages autograd saves for backward, parameters
   excluded (:func:`eoforge.train.bench_measure.saved_activation_bytes`). Target masked ÷ full
   <= 0.6.
2. **Trainable-branch step time**: forward + backward of that branch, median of ``repeats``
   interleaved runs after one warm-up each. Target <= 0.7.
3. The tokens entering the blocks per view ([CLS] + kept patches).

With CUDA (:func:`bench_softcon_gpu`): full training steps (both branches, loss, AdamW, EMA) in
bf16 autocast at a fixed batch: images/s, peak memory, FLOPs per step and MFU
(:mod:`eoforge.train.bench_measure`).

``python -m eoforge.train.bench_softcon --out build/bench`` writes the ``train_softcon`` section
of ``results.json`` / ``results.md`` (``make bench`` runs it; ``--small`` for a quick check,
``--gpu-only`` for the device benchmarks alone).
"""

from __future__ import annotations

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
from torch import Tensor

from eoforge.train.bench_measure import (
    compare_side_by_side, datasheet_tflops, measured_matmul_tflops, mfu, step_flops,
)
from eoforge.train.methods.softcon import Softcon, SoftconConfig, kept_patches
from eoforge.train.models import ModelConfig

SECTION = "train_softcon"
TARGET_ACTIVATION_RATIO = 0.6
TARGET_STEP_TIME_RATIO = 0.7


def build(model: str, in_chans: int, crop_px: int, mask_ratio: float, seed: int = 0, **heads: int) -> Softcon:
    """A SoftCon method with the given backbone and mask ratio (weights drawn from ``seed``)."""
    torch.manual_seed(seed)
    cfg = SoftconConfig(crop_px=crop_px, mask_ratio=mask_ratio, **heads)
    return Softcon(cfg, ModelConfig(name=model, img_size_px=crop_px), in_chans=in_chans, total_steps=1000).train()


def random_batch(method: Softcon, batch_size: int, device: torch.device | str, seed: int = 0) -> dict[str, Tensor]:
    """A collated SoftCon batch: noise views, random kept patches, random 9-class labels (on ``device``)."""
    g = torch.Generator().manual_seed(seed)
    px, c = method.cfg.crop_px, method.in_chans
    n_patches = (px // method.patch_px) ** 2
    n_keep = kept_patches(n_patches, method.cfg.mask_ratio)
    out: dict[str, Tensor] = {}
    for i in (1, 2):
        out[f"view{i}"] = torch.rand(batch_size, c, px, px, generator=g)
        out[f"keep{i}"] = torch.rand(batch_size, n_patches, generator=g).argsort(dim=1)[:, :n_keep]
        out[f"labels{i}"] = (torch.rand(batch_size, 9, generator=g) > 0.7).float()
    return {k: v.to(device) for k, v in out.items()}


def trainable_branch(method: Softcon, batch: dict[str, Tensor]) -> Tensor:
    """The online branch on both views (encoder on the kept patches, projector, predictor) as a scalar."""
    total = 0.0
    for i in (1, 2):
        f = method.encode_masked(batch[f"view{i}"], batch[f"keep{i}"])
        total = total + method.predictor(method.student["projector"](f)).float().square().mean()
    return total  # type: ignore[return-value]


def bench_softcon_masking(model: str = "vit_small_patch14_dinov2", in_chans: int = 13, crop_px: int = 224,
                          batch_size: int = 8, mask_ratio: float = 0.5, repeats: int = 3, device: str = "cpu",
                          threads: int | None = None, seed: int = 0, **heads: int) -> dict[str, Any]:
    """Masked vs full-view trainable branch: activation bytes saved for backward and forward+backward time.

    Returns:
        A JSON-able dict: setup, per variant ``activation_bytes``, ``step_s`` (median) with all runs and
        ``tokens_per_view``, the ratios masked ÷ full, targets and pass flags.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    methods = {"masked": build(model, in_chans, crop_px, mask_ratio, seed, **heads).to(dev),
               "full": build(model, in_chans, crop_px, 0.0, seed, **heads).to(dev)}
    batches = {name: random_batch(m, batch_size, dev, seed) for name, m in methods.items()}
    runs: dict[str, Callable[[], Tensor]] = {n: (lambda n=n: trainable_branch(methods[n], batches[n])) for n in methods}
    activation, times = compare_side_by_side(runs, methods, repeats, dev)
    step_s = {k: statistics.median(v) for k, v in times.items()}
    tokens = {n: 1 + int(batches[n]["keep1"].shape[1]) for n in methods}
    result: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": str(dev), "threads": torch.get_num_threads(), "dtype": "float32",
        "model": model, "in_chans": in_chans, "crop_px": crop_px, "batch_size": batch_size,
        "mask_ratio": mask_ratio, "heads": {k: getattr(methods["full"].cfg, k) for k in
                                            ("projector_hidden_dim", "projector_dim", "predictor_hidden_dim")},
        **{n: {"activation_bytes": activation[n], "step_s": step_s[n], "step_s_runs": times[n],
               "tokens_per_view": tokens[n]} for n in methods},
        "activation_ratio": activation["masked"] / activation["full"],
        "step_time_ratio": step_s["masked"] / step_s["full"],
        "targets": {"activation_ratio": TARGET_ACTIVATION_RATIO, "step_time_ratio": TARGET_STEP_TIME_RATIO},
    }
    result["met"] = {"activation_ratio": result["activation_ratio"] <= TARGET_ACTIVATION_RATIO,
                     "step_time_ratio": result["step_time_ratio"] <= TARGET_STEP_TIME_RATIO}
    return result


def bench_softcon_gpu(model: str = "vit_small_patch14_dinov2", in_chans: int = 13, crop_px: int = 224,
                      batch_size: int = 256, mask_ratio: float = 0.5, steps: int = 20, seed: int = 0) -> dict[str, Any] | None:
    """Full SoftCon training steps in bf16 on one CUDA device: images/s, peak memory, FLOPs, MFU.

    A step is what the engine runs: both branches, the loss, backward, AdamW and the EMA update,
    on a fixed batch already on the device (the loader is measured apart). None without CUDA.
    """
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    method = build(model, in_chans, crop_px, mask_ratio, seed).to(dev)
    batch = random_batch(method, batch_size, dev, seed)
    opt = torch.optim.AdamW([p for g in method.param_groups() for p in g["params"]], lr=1e-4)

    def forward() -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return method(batch, 0).loss

    def step() -> None:
        loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.update_teacher(0.996)

    flops = step_flops(forward)
    opt.zero_grad(set_to_none=True)
    for _ in range(3):
        step()
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    name = torch.cuda.get_device_name(dev)
    sheet, measured = datasheet_tflops(name), measured_matmul_tflops(dev)
    return {"device": name, "model": model, "in_chans": in_chans, "crop_px": crop_px, "mask_ratio": mask_ratio,
            "batch_size": batch_size, "amp": "bf16", "steps": steps,
            "images_per_s": batch_size * steps / elapsed, "step_s": elapsed / steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
            "flops_per_step": flops, "datasheet_tflops": sheet, "measured_matmul_tflops": measured,
            "mfu_datasheet": mfu(flops, steps / elapsed, sheet), "mfu_measured": mfu(flops, steps / elapsed, measured)}


def markdown(result: dict[str, Any] | None, gpu: list[dict[str, Any]] | None = None) -> str:
    """The ``results.md`` section."""
    lines = ["## SoftCon: masked vs full trainable branch (`train/bench_softcon.py`)", ""]
    if result:
        r, mb = result, 1e6
        lines += [
            f"`{r['model']}`, {r['in_chans']} bands, {r['crop_px']} px views, batch {r['batch_size']}, "
            f"mask ratio {r['mask_ratio']}, {r['device']} ({r['threads']} threads), fp32; online branch "
            "(encoder + projector + predictor) on both views, forward + backward.", "",
            "| trainable branch | full views | masked | masked ÷ full | target |", "|---|---:|---:|---:|---:|",
            f"| tokens per view entering the blocks | {r['full']['tokens_per_view']} | {r['masked']['tokens_per_view']} "
            f"| {r['masked']['tokens_per_view'] / r['full']['tokens_per_view']:.2f} | |",
            f"| activations saved for backward | {r['full']['activation_bytes'] / mb:.0f} MB "
            f"| {r['masked']['activation_bytes'] / mb:.0f} MB | {r['activation_ratio']:.2f} "
            f"| ≤ {r['targets']['activation_ratio']} {'✓' if r['met']['activation_ratio'] else '✗'} |",
            f"| forward + backward (median of {len(r['masked']['step_s_runs'])}) | {r['full']['step_s']:.3f} s "
            f"| {r['masked']['step_s']:.3f} s | {r['step_time_ratio']:.2f} "
            f"| ≤ {r['targets']['step_time_ratio']} {'✓' if r['met']['step_time_ratio'] else '✗'} |", ""]
    if gpu:
        g0 = gpu[0]
        lines += [f"GPU ({g0['device']}), full training steps (both branches, loss, AdamW, EMA) in bf16, "
                  f"{g0['crop_px']} px, {g0['in_chans']} bands; MFU = counted matmul/conv/attention FLOPs of "
                  f"forward + backward × steps/s ÷ peak (datasheet {g0['datasheet_tflops']} TFLOP/s; measured "
                  f"bf16 matmul {g0['measured_matmul_tflops']:.0f} TFLOP/s):", "",
                  "| model | mask ratio | batch | images/s | peak memory | TFLOP per step | MFU (datasheet) | MFU (measured peak) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for g in gpu:
            md = f"{100 * g['mfu_datasheet']:.1f} %" if g["mfu_datasheet"] is not None else "n/a"
            lines.append(f"| `{g['model']}` | {g['mask_ratio']} | {g['batch_size']} | {g['images_per_s']:.0f} | "
                         f"{g['peak_memory_gib']:.1f} GiB | {g['flops_per_step'] / 1e12:.2f} | {md} | "
                         f"{100 * g['mfu_measured']:.1f} % |")
        lines.append("")
    elif result:
        lines += ["GPU figures: not measured in this run (no CUDA device).", ""]
    return "\n".join(lines)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--model", default="vit_small_patch14_dinov2", show_default=True, help="timm ViT for the CPU comparison.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--crop-px", type=int, default=224, show_default=True)
@click.option("--mask-ratio", type=float, default=0.5, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads [torch's default].")
@click.option("--gpu-models", default="vit_small_patch14_dinov2,vit_base_patch14_dinov2,resnet50", show_default=True,
              help="Backbones of the CUDA measurement, comma-separated.")
@click.option("--gpu-batch", type=int, default=256, show_default=True, help="Batch of the CUDA measurement.")
@click.option("--gpu-only", is_flag=True, help="Only the CUDA measurement (on a device machine).")
@click.option("--small", is_flag=True, help="Tiny ViT and views: a seconds-long smoke run.")
def main(out: Path, model: str, batch_size: int, crop_px: int, mask_ratio: float, repeats: int, threads: int | None,
         gpu_models: str, gpu_batch: int, gpu_only: bool, small: bool) -> None:
    """Measure SoftCon's masked trainable branch against full views and write the 'train_softcon' section."""
    from eoforge.shards.bench import write_results

    result: dict[str, Any] = {}
    if not gpu_only:
        kwargs: dict[str, Any] = dict(model=model, batch_size=batch_size, crop_px=crop_px, mask_ratio=mask_ratio,
                                      repeats=repeats, threads=threads)
        if small:
            kwargs.update(model="vit_pico_patch8", crop_px=32, batch_size=4, projector_hidden_dim=64,
                          predictor_hidden_dim=64, projector_dim=32)
        result = bench_softcon_masking(**kwargs)
    gpu = None
    if not small and torch.cuda.is_available():
        gpu = []
        for name in gpu_models.split(","):
            for ratio in (mask_ratio, 0.0):
                g = bench_softcon_gpu(model=name, batch_size=gpu_batch, mask_ratio=ratio)
                if g is not None:
                    gpu.append(g)
                    click.echo(f"{name} mask {ratio}: {g['images_per_s']:.0f} images/s, MFU {g['mfu_measured']:.3f}",
                               err=True)
                torch.cuda.empty_cache()
        result["gpu"] = gpu
    md = markdown(result if not gpu_only else None, gpu)
    click.echo(md)
    write_results(out, SECTION, result, md)
    click.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()
