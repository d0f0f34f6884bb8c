"""Distillation through attention: the objective, the frozen teacher, and the training step.

`DeiT.train_step` / `test_step` delegate to `DistillationStep`; the loss is
`DistillationLoss`; teachers are built and adapted in `teachers`.
"""

from deit_keras.distill.losses import DISTILLATION_TYPES, DistillationLoss
from deit_keras.distill.step import DistillationStep, average_heads
from deit_keras.distill.teachers import TeacherAdapter, build_small_cnn, build_teacher

__all__ = [
    "DISTILLATION_TYPES",
    "DistillationLoss",
    "DistillationStep",
    "TeacherAdapter",
    "average_heads",
    "build_small_cnn",
    "build_teacher",
]
