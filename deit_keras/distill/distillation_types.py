"""The distillation types a run may choose (the official `--distillation-type`): their one home.

TensorFlow-free, so that the train command's `--distillation_type` flag and its check
come before TensorFlow loads; `deit_keras.distill.losses` computes each.
"""

DISTILLATION_TYPES = ("none", "soft", "hard")
