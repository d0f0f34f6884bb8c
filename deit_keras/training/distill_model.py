"""DeiT's `train_step` / `test_step`: the student learns from labels and a frozen teacher.

The teacher is held outside Keras' layer tracking (`_FrozenTeacher`) so that
it is never trained, never saved inside the student's `.keras` file and
never counted in the student's weights.
"""

import keras
from keras import ops

from deit_keras.losses import DistillationLoss


class _FrozenTeacher:
    """Holds the teacher out of the student's tracked state."""

    def __init__(self, teacher):
        self.teacher = teacher

    def __call__(self, images):
        return ops.cast(self.teacher(images, training=False), "float32")


def _replicas():
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


class DistillationTrainerMixin:
    """Adds DeiT's distillation objective to a `keras.Model` with `call_heads`.

    Use through `compile(..., teacher=, distillation=, alpha=, tau=)`; the
    steps are used by `fit`/`evaluate` and by custom `tf.distribute` loops.
    """

    def _create_trackers(self):
        """Metric trackers; called by the model's `__init__` before it is built."""
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        self.top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="top1")
        self.top5 = keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")
        self.cls_top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="cls_top1")
        self.dist_top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="dist_top1")
        self.distillation_loss = DistillationLoss("none")
        self._teacher = None

    def compile(self, optimizer="adamw", teacher=None, distillation="none", alpha=0.5, tau=1.0, **kwargs):
        """Configures training.

        Args:
            optimizer: a Keras optimizer (see `deit_keras.training.optim`).
            teacher: a `keras.Model` mapping this model's input batch to
                teacher logits (wrap keras.applications models with
                `deit_keras.teachers.TeacherAdapter`). Frozen here.
            distillation: "none", "soft" or "hard".
            alpha: weight of the distillation loss. Defaults to 0.5.
            tau: soft-distillation temperature. Defaults to 1.0.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`).
        """
        self.distillation_loss = DistillationLoss(distillation, alpha, tau)
        if self.distillation_loss.needs_teacher and teacher is None:
            raise ValueError(f"distillation={distillation!r} needs a teacher model.")
        self._teacher = None
        if teacher is not None and self.distillation_loss.needs_teacher:
            teacher.trainable = False
            self._teacher = _FrozenTeacher(teacher)
        kwargs.pop("loss", None)
        kwargs.pop("metrics", None)
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            loss = self.distillation_loss
            config.update(distillation=loss.distillation, alpha=loss.alpha, tau=loss.tau)
        return config

    def compile_from_config(self, config):
        """Restores the optimizer (with its state) of a saved model.

        The teacher is not part of the student's file, so a loaded model is
        compiled without distillation; `compile` again with `teacher=` and
        `optimizer=model.optimizer` to keep distilling with the same state.
        """
        config = keras.saving.deserialize_keras_object(config)
        config["distillation"] = "none"
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def teacher(self):
        return None if getattr(self, "_teacher", None) is None else self._teacher.teacher

    @property
    def metrics(self):
        return [
            self.loss_tracker, self.cls_loss_tracker, self.distill_loss_tracker,
            self.top1, self.top5, self.cls_top1, self.dist_top1,
        ]

    def _average(self, cls_logits, dist_logits):
        return cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2

    def compute_distillation_loss(self, images, labels, training=True):
        """`(total, cls_loss, dist_loss, cls_logits, dist_logits)` on one batch."""
        teacher_logits = self._teacher(images) if self._teacher is not None else None
        cls_logits, dist_logits = self.call_heads(images, training=training)
        total, cls_loss, dist_loss = self.distillation_loss(
            labels, cls_logits, dist_logits, teacher_logits
        )
        if self.losses:
            total = total + ops.sum(self.losses) / _replicas()
        return total, cls_loss, dist_loss, cls_logits, dist_logits

    def _update_trackers(self, labels, total, cls_loss, dist_loss, cls_logits, dist_logits):
        batch = ops.shape(labels)[0]
        replicas = _replicas()  # losses are pre-divided by it; report the true value
        self.loss_tracker.update_state(total * replicas, sample_weight=batch)
        self.cls_loss_tracker.update_state(cls_loss * replicas, sample_weight=batch)
        self.distill_loss_tracker.update_state(dist_loss * replicas, sample_weight=batch)
        logits = self._average(cls_logits, dist_logits)
        self.top1.update_state(labels, logits)
        self.top5.update_state(labels, logits)
        self.cls_top1.update_state(labels, cls_logits)
        self.dist_top1.update_state(labels, cls_logits if dist_logits is None else dist_logits)

    def train_step(self, data):
        images, labels = data[0], data[1]
        import tensorflow as tf

        with tf.GradientTape() as tape:
            total, cls_loss, dist_loss, cls_logits, dist_logits = self.compute_distillation_loss(
                images, labels, training=True
            )
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_trackers(labels, total, cls_loss, dist_loss, cls_logits, dist_logits)
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs["lr"] = self.optimizer.learning_rate
        return logs

    def test_step(self, data):
        images, labels = data[0], data[1]
        total, cls_loss, dist_loss, cls_logits, dist_logits = self.compute_distillation_loss(
            images, labels, training=False
        )
        self._update_trackers(labels, total, cls_loss, dist_loss, cls_logits, dist_logits)
        return {metric.name: metric.result() for metric in self.metrics}
