"""Training and evaluation steps of DeiT that query a frozen teacher."""


class DistillationTrainerMixin:
    """Placeholder until the distillation train_step lands."""
