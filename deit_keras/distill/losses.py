"""DeiT's training objective: classification plus distillation (dist token or class token).

As the official `losses.py` (DistillationLoss), with `alpha` and `tau` named
as its `distillation_alpha` / `distillation_tau`. `kd` below is the logits
the distillation term trains (the official `outputs_kd`): the dist head's
for a model with a dist token (DeiT⚗), the class head's for one without.
  * none: CE(cls_logits, y) for a model without dist token, as the official
    code. A distilled model (with dist token) trained with `none` differs
    from it: both heads train on y (the mean of the two CE terms), where the
    official code trains the class head only. The paper's no-distillation
    baseline is the model without dist token.
  * hard: (1 - alpha) * CE(cls_logits, y) + alpha * CE(kd, argmax(teacher)).
  * soft: (1 - alpha) * CE(cls_logits, y)
          + alpha * tau^2 * KL(softmax(teacher / tau) || softmax(kd / tau)),
    the KL summed over batch and classes and divided by batch x classes
    (the reference's `reduction='sum' / numel`, not batch-mean).
`y` holds probability targets (label smoothing and MixUp/CutMix folded in).

Distillation through the class token (a model without dist token): the
official `losses.py` raises ValueError there ("the model is expected to
return a Tuple[Tensor, Tensor]"), yet the paper's Table 3 has these rows
("usual distillation" and "hard distillation" of DeiT without dist token):
its equations (2) and (3), where the student's logits Z_s are the class
head's. So here `kd` is the class logits, the label and the teacher term
train the same head: hard is 0.5 * CE(cls, y) + 0.5 * CE(cls, argmax(teacher))
at alpha 0.5, the paper's equation (3).
"""

import keras
from keras import ops

from deit_keras.distill.distillation_types import DISTILLATION_TYPES
from deit_keras.errors import UserInputError


class DistillationLoss:
    """Computes `(total, cls_loss, distillation_loss)` for one batch.

    Args:
        distillation: str. One of "none", "soft", "hard".
        alpha: float in [0, 1]. Weight of the distillation term. Defaults to 0.5.
        tau: float > 0. Soft-distillation temperature. Defaults to 1.0.
        base_loss: `keras.losses.Loss` or None. The label term (the official
            `base_criterion`); it gets logits and probability targets.
            Defaults to `CategoricalCrossentropy(from_logits=True)`.

    The Keras loss objects here divide by the number of replicas under a
    `tf.distribute` strategy, so summed replica gradients are those of the
    global-batch mean.
    """

    def __init__(self, distillation="none", alpha=0.5, tau=1.0, base_loss=None):
        if distillation not in DISTILLATION_TYPES:
            raise UserInputError(
                f"distillation must be one of {DISTILLATION_TYPES}. "
                f"Received: distillation={distillation!r}"
            )
        if not 0.0 <= alpha <= 1.0 or tau <= 0:
            raise UserInputError(
                f"Need 0 <= alpha <= 1 and tau > 0. Received: alpha={alpha}, tau={tau}"
            )
        self.distillation = distillation
        self.alpha = alpha
        self.tau = tau
        self.cross_entropy = base_loss or keras.losses.CategoricalCrossentropy(from_logits=True)
        self.teacher_cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.soft_distillation = SoftDistillation(tau)

    @property
    def needs_teacher(self):
        return self.distillation != "none"

    def __call__(self, y, cls_logits, dist_logits=None, teacher_logits=None):
        """`(total, cls_loss, distillation term)`; `dist_logits` None: a model without
        dist token, which distils through `cls_logits` (see the module docstring)."""
        cls_loss = self.cross_entropy(y, cls_logits)
        if self.distillation == "none":
            if dist_logits is None:
                return cls_loss, cls_loss, ops.zeros_like(cls_loss)
            dist_loss = self.cross_entropy(y, dist_logits)
            return (cls_loss + dist_loss) / 2, cls_loss, dist_loss
        if teacher_logits is None:
            raise ValueError(f"distillation={self.distillation!r} needs teacher logits.")
        kd_logits = cls_logits if dist_logits is None else dist_logits
        teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        if self.distillation == "hard":
            dist_loss = self.teacher_cross_entropy(ops.argmax(teacher_logits, axis=-1), kd_logits)
        else:
            dist_loss = self.soft_distillation(teacher_logits, kd_logits)
        total = (1.0 - self.alpha) * cls_loss + self.alpha * dist_loss
        return total, cls_loss, dist_loss


@keras.saving.register_keras_serializable(package="deit_keras")
class SoftDistillation(keras.losses.Loss):
    """The official soft term, `F.kl_div(log_softmax(s / tau), log_softmax(t / tau),
    reduction="sum", log_target=True) * tau**2 / s.numel()`, in log space throughout.

    `y_true` is the teacher's logits, `y_pred` the student's. Per example: the KL
    summed over classes, divided by the class count (the mean over the batch then
    gives the reference's `/ numel`). A Keras `Loss`, so that under `tf.distribute`
    it is divided by the replicas as the other terms are. (Keras' `KLDivergence` on
    probabilities clips them to [1e-7, 1]: a class the student gives less than 1e-7
    then gets no gradient, however wrong that is.)

    Args:
        tau: float > 0. The temperature.
    """

    def __init__(self, tau=1.0, name="soft_distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.tau = tau

    def call(self, y_true, y_pred):
        student_log_probs = ops.log_softmax(ops.cast(y_pred, "float32") / self.tau, axis=-1)
        teacher_log_probs = ops.log_softmax(ops.cast(y_true, "float32") / self.tau, axis=-1)
        per_class = ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
        return ops.mean(per_class, axis=-1) * (self.tau**2)

    def get_config(self):
        return dict(super().get_config(), tau=self.tau)
