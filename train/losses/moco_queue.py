"""InfoNCE against a queue of past keys (MoCo), with the queue it owns: CMID's global branch.

He et al. 2020 (MoCo) and Chen et al. 2020 (MoCo v2, ``moco/builder.py``), as CMID's official
code uses them (``mocov2plus_loss_func`` and ``_dequeue_and_enqueue``). For L2-normalised queries
``q`` ``[N, D]``, their positive keys ``k`` ``[N, D]`` (row by row) and the queue ``Q`` ``[K, D]``::

    logits_i = [q_i · k_i, q_i · Q_1, ..., q_i · Q_K] / τ
    L = mean_i CE(logits_i, 0)

Each rank scores its own rows against its own positives and the (shared) queue; DDP averages the
ranks' gradients, which is the gradient of the mean over the global batch.

The queue is a ring buffer of the last ``K`` keys, identical on every rank: :meth:`QueueInfoNCE.enqueue`
gathers the step's keys from every rank ONCE (rank-major) and writes them at the pointer, wrapping
around, so each key is held exactly once. CMID's official multi-GPU model gathers the keys with
its ``GatherLayer`` and then again inside ``_dequeue_and_enqueue``, so every key sits in its queue
world-size times; that is the bug train/METHODS.md#cmid fixes ("OURS").

The queue starts as ``K`` random unit vectors (MoCo), drawn from a fixed seed so every rank starts
with the same queue without a broadcast and without touching the global random stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.train import distributed as D
from eoforge.train.losses.info_nce import info_nce

#: seed of the initial random queue (the same on every rank)
QUEUE_SEED = 0


class QueueInfoNCE(nn.Module):
    """MoCo InfoNCE with a queue of negatives (module docstring).

    Args:
        dim: key width ``D``.
        size: queue length ``K`` (CMID 65,536).
        temperature: τ (CMID 0.2).

    Buffers:
        queue: float32 ``[K, D]`` unit keys, oldest overwritten first.
        ptr: int64 ``[]`` the row the next key is written to.
    """

    queue: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int, temperature: float = 0.2) -> None:
        super().__init__()
        if dim < 1 or size < 1 or temperature <= 0:
            raise ValueError(f"QueueInfoNCE needs dim >= 1, size >= 1 and temperature > 0, "
                             f"got {dim}, {size}, {temperature}")
        self.temperature = temperature
        generator = torch.Generator().manual_seed(QUEUE_SEED)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """Mean over rows of the InfoNCE of ``query`` ``[N, D]`` against its ``key`` ``[N, D]`` (no
        gradient) and the queue; float32 scalar. Inputs need not be normalised."""
        with torch.autocast(device_type=query.device.type, enabled=False):
            q = F.normalize(query.float(), dim=-1)
            k = F.normalize(key.detach().float(), dim=-1)
            positive = (q * k).sum(dim=-1, keepdim=True)
            # a copy: autograd keeps the negatives' operand for backward, and enqueue() overwrites
            # the queue in place before the engine calls backward()
            negatives = q @ self.queue.clone().t()
            logits = torch.cat([positive, negatives], dim=1) / self.temperature
            return info_nce(logits, torch.zeros(q.shape[0], dtype=torch.int64, device=q.device))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write this step's ``keys`` ``[N, D]`` of every rank (gathered once, rank-major) into the
        queue at the pointer, oldest first out; every rank must call it with the same ``N``.

        Raises:
            ValueError: when one step brings more keys than the queue holds.
        """
        keys = F.normalize(D.all_gather(keys.detach().float()), dim=-1)
        n, size = keys.shape[0], self.queue.shape[0]
        if n > size:
            raise ValueError(f"a step enqueues {n} keys (all ranks) but the queue holds {size}: "
                             f"raise method.queue_size")
        rows = (self.ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[rows] = keys.to(self.queue.device)
        self.ptr.copy_((self.ptr + n) % size)


__all__ = ["QUEUE_SEED", "QueueInfoNCE"]
