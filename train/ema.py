"""Exponential moving average of a student network into a teacher (momentum encoder).

``teacher = m * teacher + (1 - m) * student`` for every parameter, under ``torch.no_grad``,
after the optimiser step (BYOL / DINO / MoCo). ``m`` follows a cosine from ``m0`` to 1 over
training (:func:`eoforge.train.schedules.cosine_schedule`); ``m = 1`` leaves the teacher
unchanged. Buffers (BatchNorm running statistics) are copied from the student, as DINO and
MoCo v3 do, unless ``copy_buffers=False``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """Move ``teacher``'s parameters towards ``student``'s, in place.

    Parameters are matched by name, so the two modules must have the same structure (the
    teacher is usually a ``copy.deepcopy`` of the student). Students wrapped in
    ``DistributedDataParallel`` are unwrapped.

    Args:
        teacher: module updated in place; its parameters should not require grad.
        student: module read; any dtype/device matching the teacher's.
        momentum: weight of the old teacher value, ``0 <= momentum <= 1``.
        copy_buffers: copy the student's floating-point buffers into the teacher.

    Raises:
        ValueError: on a momentum outside [0, 1] or parameters that do not match.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    student = getattr(student, "module", student)
    s_params = dict(student.named_parameters())
    t_params = dict(teacher.named_parameters())
    if s_params.keys() != t_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"EMA: teacher and student parameters differ, e.g. {missing}")
    names = list(t_params)
    t_list = [t_params[n].data for n in names]
    s_list = [s_params[n].data.to(t_params[n].dtype) for n in names]
    if momentum < 1.0:
        # the DINO formula literally (m * t + (1 - m) * s) so hand-computed values match exactly
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    if copy_buffers:
        s_bufs = dict(student.named_buffers())
        for name, buf in teacher.named_buffers():
            if name in s_bufs and buf.dtype.is_floating_point:
                buf.copy_(s_bufs[name])
