"""Label terms other than cross-entropy: DeiT III's binary cross-entropy.

DeiT III (Touvron et al. 2022) trains on the MixUp/CutMix targets with binary
cross-entropy (official `main.py --bce-loss`: `torch.nn.BCEWithLogitsLoss()`,
the mean over batch x classes). The official `engine.py` first binarizes the
mixed targets, `targets.gt(0.0)`: each class present in the mix is a positive
with target 1. timm's `BinaryCrossEntropy` writes that as `target_threshold`;
`target_threshold=None` keeps the soft targets instead. Label smoothing, when
wanted, is folded into the targets upstream (`AugmentConfig.smoothing`), as
timm's loss skips its own smoothing for dense targets.
"""

import keras
from keras import ops

from deit_keras.errors import UserInputError


@keras.saving.register_keras_serializable(package="deit_keras")
class BinaryCrossEntropy(keras.losses.Loss):
    """Sigmoid binary cross-entropy on logits and probability targets.

    Use as `DeiT.compile(loss=BinaryCrossEntropy())`, the label term of
    `DistillationLoss` (the official `base_criterion`).

    Args:
        target_threshold: float or None. Targets above it become 1, the
            others 0, before the loss (the official `--bce-loss` is 0.0: any
            class in the mix is a positive); None uses the targets as they
            are. Defaults to `0.0`.
        name: str. Defaults to `"binary_cross_entropy"`.
        **kwargs: passed to `keras.losses.Loss` (`reduction`, `dtype`).

    Returns (when called on `(y_true [B, C], logits [B, C])`): the mean over
    classes per example, reduced over the batch (by default the batch mean,
    so the whole is the mean over batch x classes as PyTorch's).
    """

    def __init__(self, target_threshold=0.0, name="binary_cross_entropy", **kwargs):
        if target_threshold is not None and not 0.0 <= target_threshold < 1.0:
            raise UserInputError(
                "target_threshold must be None or in [0, 1). "
                f"Received: target_threshold={target_threshold}"
            )
        super().__init__(name=name, **kwargs)
        self.target_threshold = None if target_threshold is None else float(target_threshold)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        targets = ops.cast(y_true, "float32")
        if self.target_threshold is not None:
            targets = ops.cast(ops.greater(targets, self.target_threshold), "float32")
        # max(x, 0) - x * t + log(1 + exp(-|x|)): stable for any logit.
        losses = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
        return ops.mean(losses, axis=-1)

    def get_config(self):
        return dict(super().get_config(), target_threshold=self.target_threshold)
