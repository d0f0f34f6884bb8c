"""Distillation through attention: the objective, the frozen teacher, and the training step.

`DeiT.train_step` / `test_step` delegate to `DistillationStep`; the loss is
`DistillationLoss` (its label term cross-entropy, or DeiT III's
`BinaryCrossEntropy`); teachers are built and adapted in `teachers`.

The names below load on first use (PEP 562), so that `distillation_types` and
`regnet`'s names (the train command's flags) import without Keras.
"""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "BinaryCrossEntropy": "deit_keras.distill.base_losses",
    "DISTILLATION_TYPES": "deit_keras.distill.distillation_types",
    "DistillationLoss": "deit_keras.distill.losses",
    "DistillationStep": "deit_keras.distill.step",
    "TeacherAdapter": "deit_keras.distill.teachers",
    "average_heads": "deit_keras.distill.step",
    "build_small_cnn": "deit_keras.distill.teachers",
    "build_teacher": "deit_keras.distill.teachers",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
