"""DeiT's training and evaluation step: the student learns from labels and a frozen teacher.

`DistillationStep` owns what one `compile()` configures: the objective
(`DistillationLoss`), the frozen teacher and the step's metric trackers.
`DeiT.train_step` / `test_step` delegate here, so the model itself carries no
training state until it is compiled. The teacher is held outside Keras'
layer tracking, so it is never trained, never saved inside the student's
`.keras` file and never counted in the student's weights.
"""

import keras
import tensorflow as tf
from keras import ops

from deit_keras.distill.losses import DistillationLoss
from deit_keras.errors import UserInputError


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


TEACHER_LOGITS = "teacher_logits"


def with_teacher_logits(dataset: tf.data.Dataset, teacher: keras.Model) -> tf.data.Dataset:
    """`(images, targets)` batches -> `(images, {"targets", "teacher_logits"})`.

    The frozen teacher then runs in the input pipeline (graph mode, prefetched:
    overlapped with the train step, and outside the step's XLA cluster, where a
    small CNN costs ~1.4x more on CPU); `DistillationStep` uses the logits it
    finds instead of calling the teacher. Same logits, same step.
    """

    def add(images, targets):
        logits = ops.cast(teacher(images, training=False), "float32")
        return images, {"targets": targets, TEACHER_LOGITS: logits}

    return dataset.map(add).prefetch(tf.data.AUTOTUNE)


def _unpack(data):
    """`(images, targets, teacher logits or None)` of a batch (see `with_teacher_logits`)."""
    images, labels = data[0], data[1]
    if isinstance(labels, dict):  # the images stay `x`, so Keras can build the model from them
        return images, labels["targets"], labels[TEACHER_LOGITS]
    return images, labels, None


def average_heads(cls_logits, dist_logits):
    """The inference output: the class head, or the mean of both heads."""
    return cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2


class DistillationStep:
    """One configured DeiT objective and the metrics its steps report.

    Args:
        loss: `DistillationLoss`. The objective (none / soft / hard).
        teacher: `keras.Model` or None. Maps the student's input batch to
            teacher logits; frozen here. Required unless the objective is
            "none", where it is ignored.
        dist_head: bool. Whether the model has a dist token and head (DeiT⚗).
            Without one, soft/hard distil through the class head (see
            `distill.losses`) and no `dist_top1` is reported. Defaults to True.

    The model passed to the step methods must provide
    `call_heads(images, training) -> (cls_logits, dist_logits or None)`,
    `optimizer`, `trainable_variables` and `losses`.
    """

    def __init__(
        self, loss: DistillationLoss, teacher: keras.Model | None = None, dist_head: bool = True
    ):
        if loss.needs_teacher and teacher is None:
            raise UserInputError(f"distillation={loss.distillation!r} needs a teacher model.")
        self.loss = loss
        self.dist_head = dist_head
        self.teacher = teacher if loss.needs_teacher else None
        if self.teacher is not None:
            self.teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        self.top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="top1")
        self.top5 = keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")
        self.cls_top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="cls_top1")
        self.dist_top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="dist_top1")
        # How often the distilling head's argmax is the teacher's (on the views both saw).
        self.teacher_agreement = keras.metrics.Mean(name="teacher_agreement")

    @property
    def metrics(self) -> list:
        metrics = [
            self.loss_tracker,
            self.cls_loss_tracker,
            self.distill_loss_tracker,
            self.top1,
            self.top5,
            self.cls_top1,
        ]
        if self.dist_head:
            metrics.append(self.dist_top1)
        if self.teacher is not None:
            metrics.append(self.teacher_agreement)
        return metrics

    def teacher_logits(self, images):
        if self.teacher is None:
            return None
        return ops.cast(self.teacher(images, training=False), "float32")

    def compute_loss(self, model, images, labels, training=True, teacher_logits=None):
        """`(total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits)` on one batch.

        `teacher_logits`: computed beforehand (`with_teacher_logits`); else the
        teacher is called here.
        """
        if self.teacher is None:
            teacher_logits = None
        elif teacher_logits is None:
            teacher_logits = self.teacher_logits(images)
        cls_logits, dist_logits = model.call_heads(images, training=training)
        total, cls_loss, dist_loss = self.loss(labels, cls_logits, dist_logits, teacher_logits)
        if model.losses:
            total = total + ops.sum(model.losses) / _replicas()
        return total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits

    def update_metrics(
        self, labels, total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits=None
    ):
        batch = ops.shape(labels)[0]
        replicas = _replicas()  # losses are pre-divided by it; report the true value
        self.loss_tracker.update_state(total * replicas, sample_weight=batch)
        self.cls_loss_tracker.update_state(cls_loss * replicas, sample_weight=batch)
        self.distill_loss_tracker.update_state(dist_loss * replicas, sample_weight=batch)
        logits = average_heads(cls_logits, dist_logits)
        self.top1.update_state(labels, logits)
        self.top5.update_state(labels, logits)
        self.cls_top1.update_state(labels, cls_logits)
        if dist_logits is not None:
            self.dist_top1.update_state(labels, dist_logits)
        if teacher_logits is not None:
            student = cls_logits if dist_logits is None else dist_logits
            agree = ops.argmax(student, axis=-1) == ops.argmax(teacher_logits, axis=-1)
            self.teacher_agreement.update_state(ops.cast(agree, "float32"))

    def logs(self) -> dict:
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, model, data) -> dict:
        """One optimizer step on `data = (images, targets, ...)`; returns the logs."""
        images, labels, teacher_logits = _unpack(data)
        with tf.GradientTape() as tape:
            outputs = self.compute_loss(model, images, labels, True, teacher_logits)
            total = outputs[0]
            scaled = model.optimizer.scale_loss(total)
        variables = model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.update_metrics(labels, *outputs)
        return dict(self.logs(), lr=model.optimizer.learning_rate)

    def test_step(self, model, data) -> dict:
        images, labels, teacher_logits = _unpack(data)
        outputs = self.compute_loss(model, images, labels, False, teacher_logits)
        self.update_metrics(labels, *outputs)
        return self.logs()
