"""torch.distributed from the torchrun environment: init, rank, world size, reductions, cleanup.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker; :func:`init_distributed`
reads them and joins the process group with gloo on CPU or NCCL on GPU. Without those
variables (``python -m eoforge.cli pretrain ...`` run directly) it is a plain single-process
run and the helpers below degrade to no-ops, so the engine has one code path.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class DeviceUnavailableError(RuntimeError):
    """The device asked for does not exist on this machine (``--device cuda`` without a GPU)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes in the job.
        local_rank: rank on this node (selects the GPU).
        device: the device this rank trains on (``cpu`` or ``cuda:<local_rank>``).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` for a single process without a group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available) -> a device type.

    Raises:
        DeviceUnavailableError: ``"cuda"`` asked for on a machine without a GPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda asked for, but torch sees no CUDA GPU (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment, or run alone.

    Args:
        device: ``"cpu"`` (gloo), ``"cuda"`` (NCCL, one GPU per local rank) or ``"auto"``.
        timeout_s: collective timeout; a rank that waits longer raises instead of hanging.

    Returns:
        this process's :class:`DistInfo`.
    """
    kind = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if kind.type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = None
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(
                backend=backend, init_method="env://", rank=rank, world_size=world_size,
                timeout=_dt.timedelta(seconds=timeout_s), **kwargs,
            )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average a dict of floats over ranks (one collective for all of them).

    Every rank must call it with the same keys (sorted internally), at the same point.
    """
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (no-op alone)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, without gradient.

    For keys of a momentum (EMA) branch, which carry no gradient anyway (MoCo v3's
    ``concat_all_gather``). Every rank must pass the same shape. ``tensor`` itself alone.
    """
    if not is_initialized():
        return tensor
    return _gathered(tensor.detach())


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    """``dist.all_gather`` of ``tensor`` (same shape on every rank), concatenated in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum, over ranks, of the gradient of its slice.

    Rank ``r``'s loss depends on every rank's features; summing the slices' gradients over ranks
    (one all-reduce of the gathered gradient) gives each rank the full gradient of its own
    features, so that with DDP's gradient averaging the update equals that of the mean loss over
    the global batch (the SimCLR / CLIP "gather layer"; all-reduce works on gloo and NCCL alike).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = get_rank(), tensor.shape[0]
        return _gathered(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, differentiable (see :class:`_GatherWithGrad`).

    For contrastive losses whose both sides are trainable (CLIP-style cross-modal InfoNCE).
    ``tensor`` itself alone.
    """
    if not is_initialized():
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` alone."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself alone."""
    if not is_initialized():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_initialized():
        dist.destroy_process_group()
