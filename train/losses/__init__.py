"""Loss modules shared by the pretraining methods (one loss per file, each owning its buffers)."""

from eoforge.train.losses.dino_cls import DINOClsLoss, teacher_temperature
from eoforge.train.losses.koleo import KoLeoLoss

__all__ = ["DINOClsLoss", "KoLeoLoss", "teacher_temperature"]
