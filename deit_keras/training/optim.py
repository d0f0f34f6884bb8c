"""The DeiT optimiser: AdamW, linearly scaled LR, warmup then cosine decay."""

import math

import keras
from keras import ops

# Parameters the reference excludes from weight decay: every 1-D tensor
# (biases, LayerNorm scales and offsets) and the tokens / position embeddings.
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "cls_token", "dist_token", "pos_embed")


def scaled_learning_rate(base_lr: float, global_batch_size: int) -> float:
    """The paper's linear scaling rule: lr = base_lr x global_batch / 512."""
    return base_lr * global_batch_size / 512.0


@keras.saving.register_keras_serializable(package="deit_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from `warmup_lr`, then cosine decay to `min_lr` (timm's CosineLRScheduler).

    As timm (no warmup prefix), the cosine is of the absolute step:
    `min_lr + (peak_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2`
    for `step >= warmup_steps`, and `warmup_lr + (peak_lr - warmup_lr) *
    step / warmup_steps` before. The reference steps its schedule once per
    epoch; this is the same curve evaluated every step.

    Args:
        peak_lr: float. LR after warmup (already batch-scaled).
        total_steps: int. Steps of the whole run.
        warmup_steps: int. Linear warmup steps.
        warmup_lr: float. LR at step 0. Defaults to 1e-6.
        min_lr: float. LR at the last step. Defaults to 1e-5.
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, warmup_lr=1e-6, min_lr=1e-5):
        if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                "Need total_steps > 0 and 0 <= warmup_steps <= total_steps. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        progress = ops.minimum(step / self.total_steps, 1.0)
        cosine = self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return dict(
            peak_lr=self.peak_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
        )


def create_optimizer(
    base_lr=5e-4,
    global_batch_size=512,
    steps_per_epoch=1,
    epochs=300,
    warmup_epochs=5,
    warmup_lr=1e-6,
    min_lr=1e-5,
    weight_decay=0.05,
    model_ema=False,
    model_ema_decay=0.99996,
    clip_grad=None,
):
    """AdamW with the DeiT recipe (paper defaults).

    With `model_ema`, Keras keeps an exponential moving average of the
    weights and writes it into the model at the end of `fit`, so the final
    evaluation and the saved model use the averaged weights.
    """
    schedule = WarmupCosine(
        scaled_learning_rate(base_lr, global_batch_size),
        total_steps=max(epochs * steps_per_epoch, 1),
        warmup_steps=min(warmup_epochs * steps_per_epoch, max(epochs * steps_per_epoch, 1)),
        warmup_lr=warmup_lr,
        min_lr=min_lr,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clip_grad,
        use_ema=model_ema,
        ema_momentum=model_ema_decay,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer
