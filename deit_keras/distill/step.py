"""DeiT's training and evaluation step: the student learns from labels and a frozen teacher.

`DistillationStep` owns what one `compile()` configures: the objective
(`DistillationLoss`), the frozen teacher and the step's metric trackers.
`DeiT.train_step` / `test_step` delegate here, so the model itself carries no
training state until it is compiled. The teacher is held outside Keras'
layer tracking, so it is never trained, never saved inside the student's
`.keras` file and never counted in the student's weights. So are the
adapters of feature distillation (`distill.feature_loss`), trained here by
their own copy of the optimizer.
"""

from __future__ import annotations  # `tf.data.Dataset` annotations: TensorFlow loads on use

import keras
import numpy as np
from absl import logging
from keras import ops

from deit_keras.backend import tf
from deit_keras.distill.feature_loss import TEACHER_FEATURES, FeatureDistillation
from deit_keras.distill.losses import DistillationLoss
from deit_keras.errors import UserInputError


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


TEACHER_LOGITS = "teacher_logits"


def with_teacher_logits(
    dataset: tf.data.Dataset, teacher: keras.Model, features: FeatureDistillation | None = None
) -> tf.data.Dataset:
    """`(images, targets)` batches -> `(images, {"targets", "teacher_logits"})`.

    The frozen teacher then runs in the input pipeline (graph mode, prefetched:
    overlapped with the train step, and outside the step's XLA cluster, where a
    small CNN costs ~1.4x more on CPU); `DistillationStep` uses the logits it
    finds instead of calling the teacher. Same logits, same step. With
    `features` (feature distillation), its teacher gives the logits and, under
    "teacher_features", the matched maps, in the same one pass.
    """

    def add(images, targets):
        if features is None:
            logits = ops.cast(teacher(images, training=False), "float32")
            return images, {"targets": targets, TEACHER_LOGITS: logits}
        logits, maps = features.teacher_outputs(images)
        return images, {"targets": targets, TEACHER_LOGITS: logits, TEACHER_FEATURES: tuple(maps)}

    return dataset.map(add).prefetch(tf.data.AUTOTUNE)


def _clipped_over_replicas(optimizer, gradients):
    """With several replicas, the summed gradient clipped to `global_clipnorm`.

    Keras clips each replica's gradient before summing them (a norm up to R times
    the clip with R replicas); the official code (DDP, then `clip_grad_norm_`)
    clips the sum. So the sum is taken and clipped here, and each replica passes
    on 1/R of it: Keras' clip leaves it be, and its sum is the clipped total.
    """
    clip = getattr(getattr(optimizer, "inner_optimizer", optimizer), "global_clipnorm", None)
    context = tf.distribute.get_replica_context()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if not clip or context is None or replicas == 1:
        return gradients
    scale = ops.cast(optimizer.scale_loss(ops.ones((), "float32")), "float32")  # loss scaling
    present = [g for g in gradients if g is not None]  # Keras drops a None one, with a warning
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
    clipped, _ = tf.clip_by_global_norm([g / ops.cast(scale, g.dtype) for g in total], clip)
    parts = iter(g * ops.cast(scale / replicas, g.dtype) for g in clipped)
    return [None if g is None else next(parts) for g in gradients]


def _unpack(data, num_classes: int):
    """`(images, targets, teacher logits or None, teacher maps or None)` of a batch."""
    images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if labels is None:
        raise UserInputError(
            "DeiT trains and evaluates on labelled images: give (images, labels), as "
            "fit(x, y) or a dataset of (images, labels) batches. Received: images only"
        )
    if sample_weight is not None:  # a dataset of (x, y, weight)
        refuse_sample_weights({"sample_weight": sample_weight})
    if isinstance(labels, dict):  # the images stay `x`, so Keras can build the model from them
        maps = labels.get(TEACHER_FEATURES)
        return images, as_targets(labels["targets"], num_classes), labels[TEACHER_LOGITS], maps
    return images, as_targets(labels, num_classes), None, None


def as_targets(labels, num_classes: int):
    """`labels` as the step's targets: a row over the classes per image (one-hot, or soft
    after MixUp/CutMix and smoothing). Class indices, Keras' sparse form (`[B]`, or
    `[B, 1]` of a model of several classes), are one-hot encoded; indices outside
    `[0, num_classes)` give zero rows here (`TokenClassifier.fit` refuses them in arrays
    and `tf.data` datasets: `with_checked_class_indices`).
    """
    if not tf.is_tensor(labels):  # arrays and lists, e.g. given to train_on_batch
        labels = np.asarray(labels)
    rank = getattr(labels.shape, "rank", None) if tf.is_tensor(labels) else labels.ndim
    # Keras retraced for labels of another rank or width than before: `[None, None]` after
    # one-hot rows then `[B, 1]` indices of the same dtype (they were taken as rows).
    if rank is None or (rank == 2 and labels.shape[1] is None):
        targets = tf.cond(
            _are_indices(labels, num_classes),
            lambda: _one_hot(tf.reshape(labels, [-1]), num_classes),
            lambda: tf.cast(labels, "float32"),
        )
        return tf.ensure_shape(targets, [None, num_classes])
    if are_class_indices(tuple(labels.shape), num_classes):
        return _one_hot(tf.reshape(labels, [-1]), num_classes)
    if "int" in keras.backend.standardize_dtype(labels.dtype):
        return ops.cast(labels, "float32")
    return labels


# Begins the message of the assertion `with_checked_class_indices` adds to a dataset.
CLASS_INDICES_OUT_OF_RANGE = "Class indices must be whole numbers in [0, {num_classes})"


def with_checked_class_indices(dataset, num_classes: int):
    """`dataset` of `(images, class indices, ...)` batches with each batch's indices checked
    to be whole numbers in `[0, num_classes)`: the step's one-hot encoding makes others rows
    of zeros (a loss of 0, no error; 1-based labels are the usual cause). The check runs in
    tf.data, on the CPU, so it holds under XLA (where an `Assert` in the step is dropped);
    a bad batch raises `tf.errors.InvalidArgumentError` whose message holds
    `CLASS_INDICES_OUT_OF_RANGE`. The labels are the second element, or its "targets"
    (`with_teacher_logits`' form). Datasets of other labels (one-hot or soft rows, no
    labels, unknown rank) are returned as they are."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        return dataset
    label_spec = _targets(spec[1])
    if not isinstance(label_spec, tf.TensorSpec):
        return dataset
    shape, dtype = label_spec.shape, label_spec.dtype
    if shape.rank is None or not (dtype.is_integer or dtype.is_floating):
        return dataset
    if not are_class_indices(tuple(shape), num_classes):
        return dataset
    message = CLASS_INDICES_OUT_OF_RANGE.format(num_classes=num_classes)

    def check(images, labels, *rest):
        values = tf.cast(_targets(labels), tf.float64)
        whole = tf.logical_and(tf.equal(values, tf.round(values)), values >= 0)
        valid = tf.reduce_all(tf.logical_and(whole, values < num_classes))
        low, high = tf.reduce_min(values), tf.reduce_max(values)
        with tf.control_dependencies([tf.debugging.Assert(valid, [message, low, high])]):
            return (images, tf.nest.map_structure(tf.identity, labels), *rest)

    return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _targets(labels):
    """The class targets in a batch's labels: the labels, or `with_teacher_logits`' "targets"."""
    return labels.get("targets") if isinstance(labels, dict) else labels


def are_class_indices(shape: tuple, num_classes: int) -> bool:
    """Whether labels of `shape` are class indices (`[B]`, or `[B, 1]` of a model of
    several classes), not rows over the classes."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1 and num_classes > 1)


def _are_indices(labels, num_classes: int):
    """`are_class_indices` in the graph, for labels whose rank is known only there."""
    rank = tf.rank(labels)
    one_column = tf.logical_and(tf.equal(rank, 2), tf.equal(tf.shape(labels)[-1], 1))
    return tf.logical_or(tf.equal(rank, 1), tf.logical_and(one_column, num_classes > 1))


def _one_hot(indices, num_classes: int):
    return ops.one_hot(ops.cast(indices, "int32"), num_classes, dtype="float32")


def refuse_sample_weights(arguments: dict) -> None:
    """Raises `UserInputError` when a `fit` / `evaluate` call passes per-example weights."""
    given = [name for name in ("sample_weight", "class_weight") if arguments.get(name) is not None]
    if given:
        raise UserInputError(
            "DeiT's objective takes no sample_weight or class_weight: its terms are batch "
            "means, as official DeiT's. Balance the classes in the input instead (e.g. "
            f"tf.data's rejection_resample, or repeat the rare classes' files). Received: {given}"
        )


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
        features: `FeatureDistillation` or None. Adds its weighted feature
            loss to the objective (and a `feature_loss` metric); compiled
            with the model's optimizer by the model's `compile`.

    The model passed to the step methods must provide
    `call_heads(images, training, blocks=()) -> (cls_logits, dist_logits or
    None[, block maps])`, `optimizer`, `trainable_variables` and `losses`.
    """

    def __init__(
        self,
        loss: DistillationLoss,
        teacher: keras.Model | None = None,
        dist_head: bool = True,
        features: FeatureDistillation | None = None,
    ):
        if loss.needs_teacher and teacher is None:
            raise UserInputError(f"distillation={loss.distillation!r} needs a teacher model.")
        if features is not None and not loss.needs_teacher:
            raise UserInputError(
                "Feature distillation needs a teacher: use distillation 'soft' or 'hard'. "
                f"Received: distillation={loss.distillation!r}"
            )
        self.loss = loss
        self.dist_head = dist_head
        self.features = features
        self.teacher = teacher if loss.needs_teacher else None
        if self.teacher is not None:
            self.teacher.trainable = False
        self.feature_loss_tracker = keras.metrics.Mean(name="feature_loss")
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
        metrics = [self.loss_tracker, self.cls_loss_tracker]
        if self.has_distill_term:
            metrics.append(self.distill_loss_tracker)
        metrics += [self.top1, self.top5, self.cls_top1]
        if self.dist_head:
            metrics.append(self.dist_top1)
        if self.teacher is not None:
            metrics.append(self.teacher_agreement)
        if self.features is not None:
            metrics.append(self.feature_loss_tracker)
        return metrics

    @property
    def has_distill_term(self) -> bool:
        """Whether the loss has a second term: the teacher's, or (`none`) the dist head's
        own cross-entropy; a model without dist token trained on labels has neither."""
        return self.dist_head or self.loss.needs_teacher

    def teacher_logits(self, images):
        if self.teacher is None:
            return None
        return ops.cast(self.teacher(images, training=False), "float32")

    def compute_loss(
        self, model, images, labels, training=True, teacher_logits=None, teacher_maps=None
    ):
        """`(total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits, feature_loss)`.

        `teacher_logits` (and `teacher_maps`, with feature distillation):
        computed beforehand (`with_teacher_logits`); else the teacher is
        called here. `feature_loss` is None without feature distillation;
        like the Keras losses it is divided by the number of replicas.
        """
        if self.teacher is None:
            teacher_logits = None
        elif self.features is not None and (teacher_logits is None or teacher_maps is None):
            teacher_logits, teacher_maps = self.features.teacher_outputs(images)
        elif teacher_logits is None:
            teacher_logits = self.teacher_logits(images)
        feature_loss = None
        if self.features is None:
            cls_logits, dist_logits = model.call_heads(images, training=training)
        else:
            blocks = self.features.student_blocks
            cls_logits, dist_logits, maps = model.call_heads(images, training, blocks=blocks)
            feature_loss = self.features.loss(maps, list(teacher_maps)) / _replicas()
        total, cls_loss, dist_loss = self.loss(labels, cls_logits, dist_logits, teacher_logits)
        if feature_loss is not None:
            total = total + self.features.weight * feature_loss
        if model.losses:
            total = total + ops.sum(model.losses) / _replicas()
        return total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits, feature_loss

    def trainable_variables(self, model) -> list:
        """What a step trains: the model's variables, then the feature adapters'."""
        extra = [] if self.features is None else self.features.adapters.trainable_variables
        return list(model.trainable_variables) + list(extra)

    def update_metrics(
        self,
        labels,
        total,
        cls_loss,
        dist_loss,
        cls_logits,
        dist_logits,
        teacher_logits=None,
        feature_loss=None,
    ):
        batch = ops.shape(labels)[0]
        replicas = _replicas()  # losses are pre-divided by it; report the true value
        self.loss_tracker.update_state(total * replicas, sample_weight=batch)
        self.cls_loss_tracker.update_state(cls_loss * replicas, sample_weight=batch)
        if self.has_distill_term:
            self.distill_loss_tracker.update_state(dist_loss * replicas, sample_weight=batch)
        logits = average_heads(cls_logits, dist_logits)
        self.top1.update_state(labels, logits)
        self.top5.update_state(labels, logits)
        self.cls_top1.update_state(labels, cls_logits)
        if dist_logits is not None:
            self.dist_top1.update_state(labels, dist_logits)
        if feature_loss is not None:
            self.feature_loss_tracker.update_state(feature_loss * replicas, sample_weight=batch)
        if teacher_logits is not None:
            student = cls_logits if dist_logits is None else dist_logits
            agree = ops.argmax(student, axis=-1) == ops.argmax(teacher_logits, axis=-1)
            self.teacher_agreement.update_state(ops.cast(agree, "float32"))

    def logs(self) -> dict:
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, model, data) -> dict:
        """One optimizer step on `data = (images, targets, ...)`; returns the logs."""
        images, labels, teacher_logits, teacher_maps = _unpack(data, model.num_classes)
        with tf.GradientTape() as tape:
            outputs = self.compute_loss(model, images, labels, True, teacher_logits, teacher_maps)
            total = outputs[0]
            scaled = model.optimizer.scale_loss(total)
        variables = model.trainable_variables
        gradients = tape.gradient(scaled, self.trainable_variables(model))
        # The loss's scale, read before the model's step changes it (a LossScaleOptimizer
        # halves it on overflow, doubles it every `dynamic_growth_steps`).
        scale = model.optimizer.scale_loss(ops.ones((), "float32"))
        if variables:
            model_gradients = _clipped_over_replicas(model.optimizer, gradients[: len(variables)])
            model.optimizer.apply_gradients(zip(model_gradients, variables, strict=True))
        else:  # as Keras' own step: a frozen model evaluates its loss and metrics
            logging.warning("%s has no trainable weights: `fit` leaves it as it is.", model.name)
        if self.features is not None:
            self._apply_adapter_gradients(model, gradients, len(variables), scale)
        self.update_metrics(labels, *outputs)
        return dict(self.logs(), lr=model.optimizer.learning_rate)

    def _apply_adapter_gradients(self, model, gradients, split, scale):
        """The adapters' optimizer copies the model's without its loss scaling: their
        gradients are unscaled here, and skipped with the model's step when any overflowed."""
        optimizer = self.features.optimizer
        variables = self.features.adapters.trainable_variables
        adapter_gradients = [g / ops.cast(scale, g.dtype) for g in gradients[split:]]
        if not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer.apply_gradients(zip(adapter_gradients, variables, strict=True))
            return
        if not optimizer.built:  # its variables are made outside the branch
            optimizer.build(variables)
        finite = model.optimizer.check_finite(gradients)
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync == 1:
            ops.cond(finite, lambda: optimizer.apply(adapter_gradients, variables), lambda: None)
            return

        # Several replicas: the optimizer's update synchronises them (merge_call), which a
        # cond in a replica context cannot hold; and all skip together, as the model's
        # LossScaleOptimizer decides once for all (Keras' `_tf_apply` does the same).
        def in_cross_replica_context(distribution, overflowed_here, adapter_gradients):
            overflowed = distribution.reduce(  # replicas whose gradients overflowed
                tf.distribute.ReduceOp.SUM, overflowed_here, axis=None
            )

            def apply():
                distribution.extended.call_for_each_replica(
                    optimizer.apply, args=(adapter_gradients, variables)
                )

            ops.cond(overflowed == 0, apply, lambda: None)

        overflowed_here = 1 - tf.cast(finite, tf.int32)
        context.merge_call(in_cross_replica_context, args=(overflowed_here, adapter_gradients))

    def test_step(self, model, data) -> dict:
        images, labels, teacher_logits, teacher_maps = _unpack(data, model.num_classes)
        outputs = self.compute_loss(model, images, labels, False, teacher_logits, teacher_maps)
        self.update_metrics(labels, *outputs)
        return self.logs()
