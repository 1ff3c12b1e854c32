"""Loss modules shared by the pretraining methods (one loss per file, each owning its buffers)."""

from eoforge.train.losses.cross_modal import CrossModalInfoNCE, nt_xent
from eoforge.train.losses.dino_cls import DINOClsLoss, teacher_temperature
from eoforge.train.losses.koleo import KoLeoLoss
from eoforge.train.losses.soft_contrastive import SoftContrastiveLoss, label_similarity

__all__ = ["CrossModalInfoNCE", "DINOClsLoss", "KoLeoLoss", "SoftContrastiveLoss", "label_similarity", "nt_xent",
           "teacher_temperature"]
