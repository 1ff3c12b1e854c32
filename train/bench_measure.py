"""How the training benchmarks measure a step: two variants side by side, and MFU on a GPU.

:func:`compare_side_by_side` runs two (or more) forward passes of the same shape of work —
PerA's sparse student against full-view DINO, SoftCon's masked branch against full views — and
reports, for each, the bytes of activations autograd saves for backward
(:func:`saved_activation_bytes`) and the forward + backward time, median of interleaved runs
(a shared machine drifts alike for both).

Model FLOPs utilisation (MFU) of a training step, for the GPU benchmarks:

MFU = (floating-point operations one training step needs) × (steps per second) ÷ (the chip's
peak rate). The operations are counted, not estimated: :class:`torch.utils.flop_counter.FlopCounterMode`
records every matrix multiply, convolution and attention kernel of one forward + backward
(2 FLOPs per multiply-add, as PaLM's MFU). Element-wise work, the optimiser and the EMA update
are not counted, so MFU says how busy the matrix units are with the model's own arithmetic.

Two peaks are reported: the datasheet's dense bf16 rate (``DATASHEET_BF16_TFLOPS``, by device
name) and a measured one (:func:`measured_matmul_tflops`, a large bf16 matrix product on the
same card), the more honest ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

#: dense (no sparsity) bf16 tensor-core rate by datasheet, TFLOP/s, matched on the device name
DATASHEET_BF16_TFLOPS: dict[str, float] = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def saved_activation_bytes(fn: Callable[[], Any], params: Iterable[Tensor]) -> tuple[int, Any]:
    """Run ``fn()`` and sum the bytes of the unique storages autograd saved for backward.

    Storages of ``params`` (and views of them, e.g. a transposed weight) are not counted.

    Returns:
        ``(bytes, fn's result)``; keep the result alive until done with the graph.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_side_by_side(runs: dict[str, Callable[[], Tensor]], modules: dict[str, nn.Module], repeats: int,
                         device: torch.device) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Activation bytes and forward + backward times of each ``runs[name]()`` (a scalar to backpropagate).

    Returns:
        ``(bytes saved for backward per name, forward + backward seconds per name)``: one warm-up
        run each, then ``repeats`` runs interleaved name by name. ``modules[name]`` holds the
        parameters of ``runs[name]`` (excluded from the bytes, gradients cleared before each run).
    """
    activation = {}
    for name, fn in runs.items():
        nbytes, loss = saved_activation_bytes(fn, modules[name].parameters())
        activation[name] = nbytes
        del loss

    def step(name: str) -> float:
        modules[name].zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        runs[name]().backward()
        sync(device)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in runs}
    for name in times:
        step(name)  # warm-up (allocator, kernels)
    for _ in range(repeats):
        for name in times:
            times[name].append(step(name))
    return activation, times


def datasheet_tflops(device_name: str) -> float | None:
    """The datasheet bf16 peak of a CUDA device, None when unknown."""
    for key, value in DATASHEET_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``step()`` (a forward that returns the loss) plus its backward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return int(counter.get_total_flops())


def measured_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """bf16 TFLOP/s of an ``n x n x n`` matrix product on ``device`` (median of ``repeats`` after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


def mfu(flops_per_step: int, steps_per_s: float, peak_tflops: float | None) -> float | None:
    """Achieved ÷ peak (0..1), None without a peak."""
    if not peak_tflops:
        return None
    return flops_per_step * steps_per_s / (peak_tflops * 1e12)


__all__ = ["DATASHEET_BF16_TFLOPS", "compare_side_by_side", "datasheet_tflops", "measured_matmul_tflops", "mfu",
           "saved_activation_bytes", "step_flops", "sync"]
