"""Distillation through attention: the objective, the frozen teacher, and the training step.

`DeiT.train_step` / `test_step` delegate to `DistillationStep`; the loss is
`DistillationLoss` (its label term cross-entropy, or DeiT III's
`BinaryCrossEntropy`); teachers are built and adapted in `teachers`.
"""

from deit_keras.distill.base_losses import BinaryCrossEntropy
from deit_keras.distill.losses import DISTILLATION_TYPES, DistillationLoss
from deit_keras.distill.step import DistillationStep, average_heads
from deit_keras.distill.teachers import TeacherAdapter, build_small_cnn, build_teacher

__all__ = [
    "BinaryCrossEntropy",
    "DISTILLATION_TYPES",
    "DistillationLoss",
    "DistillationStep",
    "TeacherAdapter",
    "average_heads",
    "build_small_cnn",
    "build_teacher",
]
