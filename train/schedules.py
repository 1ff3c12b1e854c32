"""Per-step schedules (DINO style): linear warm-up, then a half cosine to a final value.

A schedule is a float64 NumPy array with one value per optimiser step, indexed by the
0-based step index; ``schedule[i]`` is the value used while taking step ``i``. The engine
builds the learning-rate, weight-decay and EMA-momentum schedules once from the step count
(an "epoch" here is a step count, so a warm-up of "20 epochs" is a number of steps).

Example (PerA's recipe over 1000 steps)::

    lr = cosine_schedule(1e-3, 1e-6, total_steps=1000, warmup_steps=100)        # 0 -> 1e-3 -> 1e-6
    wd = cosine_schedule(0.04, 0.2, total_steps=1000)                           # 0.04 -> 0.2
    momentum = cosine_schedule(0.992, 1.0, total_steps=1000)                    # EMA 0.992 -> 1
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``start_warmup_value`` to ``base_value``, then cosine to ``final_value``.

    Matches DINO's ``cosine_scheduler``: the warm-up covers steps ``0 .. warmup_steps - 1``
    (``np.linspace(start, base, warmup_steps)``, so its last step is exactly ``base_value``);
    the cosine part covers the remaining ``n = total_steps - warmup_steps`` steps with
    ``final + 0.5 (base - final) (1 + cos(pi * j / n))``, ``j = 0 .. n - 1`` (it starts at
    ``base_value`` and approaches ``final_value`` without reaching it on the last step).

    Args:
        base_value: peak value (after warm-up).
        final_value: value the cosine decays (or grows) towards.
        total_steps: number of optimiser steps; the array's length.
        warmup_steps: steps of linear warm-up, ``0 <= warmup_steps <= total_steps``.
        start_warmup_value: value of the first warm-up step.

    Returns:
        float64 array ``[total_steps]``.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    warmup = np.linspace(start_warmup_value, base_value, warmup_steps, dtype=np.float64)
    n = total_steps - warmup_steps
    j = np.arange(n, dtype=np.float64)
    cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(np.pi * j / max(n, 1)))
    return np.concatenate([warmup, cosine])


def warmup_constant_schedule(start_value: float, end_value: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear ramp from ``start_value`` to ``end_value`` over ``warmup_steps``, then constant.

    DINO's teacher-temperature schedule (e.g. 0.03 -> 0.05 over the first 30 "epochs").
    ``warmup_steps`` larger than ``total_steps`` is cut (the ramp is the same, just truncated).

    Returns:
        float64 array ``[total_steps]``.
    """
    if total_steps < 0 or warmup_steps < 0:
        raise ValueError(f"steps must be >= 0, got total_steps={total_steps}, warmup_steps={warmup_steps}")
    ramp = np.linspace(start_value, end_value, warmup_steps, dtype=np.float64)
    rest = np.full(max(total_steps - warmup_steps, 0), end_value, dtype=np.float64)
    return np.concatenate([ramp, rest])[:total_steps]
