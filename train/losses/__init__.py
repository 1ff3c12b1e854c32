"""Loss modules shared by the pretraining methods (one loss per file, each owning its buffers)."""

from eoforge.train.losses.cross_modal import CrossModalInfoNCE, nt_xent
from eoforge.train.losses.dino_cls import DINOClsLoss, teacher_temperature
from eoforge.train.losses.focal_frequency import FocalFrequencyLoss
from eoforge.train.losses.focal_l1 import MaskedFocalL1Loss, focal_l1
from eoforge.train.losses.koleo import KoLeoLoss
from eoforge.train.losses.moco_queue import QueueInfoNCE
from eoforge.train.losses.soft_contrastive import SoftContrastiveLoss, label_similarity

__all__ = ["CrossModalInfoNCE", "DINOClsLoss", "FocalFrequencyLoss", "KoLeoLoss", "MaskedFocalL1Loss", "QueueInfoNCE",
           "SoftContrastiveLoss", "focal_l1", "label_similarity", "nt_xent", "teacher_temperature"]
