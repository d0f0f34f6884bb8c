"""The shared base of the token classifiers (DeiT, CaiT): heads, training, export, config.

A subclass builds its layers in `__init__` (ending with `_make_heads()` and
`build`) and defines `_forward_features(images, ...) -> [B, T, D]` normalised
tokens whose first is the class token (then the distillation token when
`distilled`); everything else is here once.
"""

import contextlib
import inspect
import numbers
import re

import keras
import numpy as np
from absl import logging
from keras import ops

from deit_keras.backend import on_tensorflow
from deit_keras.data.preprocessing import Preprocessing
from deit_keras.distill.feature_loss import FeatureDistillation
from deit_keras.distill.losses import DistillationLoss
from deit_keras.distill.step import (
    CLASS_INDICES_OUT_OF_RANGE,
    DistillationStep,
    are_class_indices,
    average_heads,
    refuse_sample_weights,
    with_checked_class_indices,
)
from deit_keras.distill.teachers import (
    check_teacher_classes,
    check_teacher_input,
    check_teacher_outputs,
)
from deit_keras.errors import UserInputError
from deit_keras.layers import onednn_form
from deit_keras.layers.basic import dense
from deit_keras.layers.frozen import frozen_throughout
from deit_keras.models import precision, quantized
from deit_keras.models.compiled_inference import CompiledInference
from deit_keras.models.features import ForwardFeatures
from deit_keras.models.flops import vit_flops

_TRAINS_ON_TENSORFLOW = (
    "{name} trains on Keras' TensorFlow backend (KERAS_BACKEND=tensorflow); on {backend!r} it "
    "runs inference (predict, a call, stateless_call). See docs/backends.md."
)

_EXPORTS_ON_TENSORFLOW = (
    "{name} exports on Keras' TensorFlow backend (KERAS_BACKEND=tensorflow): save it as a "
    ".keras file, load it there and export it (deit-export). See docs/backends.md."
)


def _bound(method, model, args, kwargs) -> inspect.BoundArguments | None:
    """`method(model, *args, **kwargs)`'s bound arguments; None when they do not bind."""
    try:
        return inspect.signature(method).bind(model, *args, **kwargs)
    except TypeError:  # Keras will say what is wrong with the call
        return None


def _arguments(method, model, args, kwargs) -> dict:
    """`method(model, *args, **kwargs)`'s arguments by name (positional ones too)."""
    bound = _bound(method, model, args, kwargs)
    return kwargs if bound is None else bound.arguments


def _set_directions(callbacks, metric_names) -> None:
    """Gives Keras' callbacks that watch one of `metric_names` with `mode="auto"`
    (`EarlyStopping`, `ModelCheckpoint(save_best_only=True)`, `ReduceLROnPlateau`) its
    direction: losses down, the rest (top-k, agreement) up. Keras reads a direction only
    from metrics given to `compile(metrics=...)` and refused DeiT's own ones."""
    for callback in getattr(callbacks, "callbacks", callbacks) or ():
        if getattr(callback, "mode", None) != "auto" or not hasattr(callback, "monitor_op"):
            continue
        name = str(getattr(callback, "monitor", "")).removeprefix("val_")
        if name in metric_names and callback.monitor_op is None:
            callback.mode = "min" if name.endswith("loss") else "max"


def _with_checked_datasets(bound, num_classes, args, kwargs) -> tuple[tuple, dict]:
    """The call's arguments (`bound`, from `_bound`) with the `tf.data` datasets among `x`
    and `validation_data` checking their class indices (`with_checked_class_indices`)
    batch by batch."""
    if bound is None or not on_tensorflow():
        return args, kwargs
    from deit_keras.backend import tf

    for name in ("x", "validation_data"):
        value = bound.arguments.get(name)
        if isinstance(value, tf.data.Dataset):
            bound.arguments[name] = with_checked_class_indices(value, num_classes)
    return bound.args[1:], bound.kwargs


@contextlib.contextmanager
def _dataset_labels_refused(num_classes: int):
    """`with_checked_class_indices`' failed assertion (an InvalidArgumentError of some
    lines, from inside Keras' step) as one `UserInputError`."""
    try:
        yield
    except Exception as error:
        marker = CLASS_INDICES_OUT_OF_RANGE.format(num_classes=num_classes)
        found = re.search(re.escape(marker) + r"\]\s*\[([^\]]*)\]\s*\[([^\]]*)\]", str(error))
        if found is None:
            raise
        raise UserInputError(
            f"{marker} for a model of {num_classes} classes (1-based labels? subtract 1). "
            f"Received: labels from {found[1]} to {found[2]} in a batch of the dataset"
        ) from error


def _images_of(x):
    """The images in `x` (an array or tensor, a batch `(images, ...)`, or a `tf.data`
    dataset of either: its element spec); None for an empty batch."""
    x = getattr(x, "element_spec", x)
    if isinstance(x, (tuple, list)):
        return x[0] if x else None
    return x


def _images_shape(x):
    """The shape of the images in `x` (`_images_of`) as a tuple; None when unknown (a
    generator's, a Python list's, a dataset of unknown rank)."""
    shape = getattr(_images_of(x), "shape", None)
    if shape is None or getattr(shape, "rank", 0) is None:  # a TensorShape of unknown rank
        return None
    return tuple(None if side is None else int(side) for side in shape)


def _images_dtype(x):
    """The dtype of the images in `x` (`_images_of`); None when it cannot tell without
    drawing a batch."""
    return getattr(_images_of(x), "dtype", None)


def _check_class_indices(labels, num_classes: int) -> None:
    """Refuses class indices (`[B]` / `[B, 1]` labels given as an array or list) that are not
    whole numbers in `[0, num_classes)`: the step's one-hot encoding would make them rows
    of zeros (a loss of 0, no error; 1-based labels are the usual cause) or cut 2.5 to 2.
    Labels in a dataset are not drawn here."""
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if labels is None or isinstance(labels, dict) or not hasattr(labels, "shape"):
        return
    if not are_class_indices(tuple(labels.shape), num_classes):
        return
    indices = np.asarray(keras.ops.convert_to_numpy(labels))
    if not indices.size:
        return
    if indices.dtype.kind not in "biuf":
        raise UserInputError(
            f"Labels must be numbers: class indices or one-hot rows. Received: labels of "
            f"dtype {indices.dtype}, e.g. {indices.flat[0]!r}"
        )
    whole = np.all(np.isfinite(indices)) and np.all(indices == np.round(indices))
    if not whole or indices.min() < 0 or indices.max() >= num_classes:
        raise UserInputError(
            f"Class indices must be whole numbers in [0, {num_classes}) for a model of "
            f"{num_classes} classes (1-based labels? subtract 1). Received: labels from "
            f"{np.nanmin(indices)} to {np.nanmax(indices)}"
            + ("" if whole else ", not all whole numbers")
        )


def _refuse_ragged_or_sparse(data) -> None:
    """Refuses a batch whose images or labels are a `tf.RaggedTensor` / `tf.SparseTensor`
    (a dataset's `ragged_batch`, variable-length label lists): the step's one-hot
    encoding and losses take dense rows, and failed deep in a conversion."""
    parts = data if isinstance(data, (tuple, list)) else (data,)  # (images, labels[, weights])
    for name, part in zip(("images", "labels"), parts, strict=False):
        kind = type(part).__name__
        if kind in ("RaggedTensor", "SparseTensor"):
            raise UserInputError(
                f"The {name} of a batch must be a dense tensor: one image size, one class "
                f"index or one row over the classes per image (`.to_tensor()` a ragged one "
                f"whose rows are all of one length, `tf.sparse.to_dense` a sparse one). "
                f"Received: {name} as a tf.{kind}"
            )


def _label_loss(loss):
    """`loss` when it can be the objective's label term: a `keras.losses.Loss` on logits
    reducing to the batch mean (a name such as "categorical_crossentropy" is Keras'
    unreduced function on probabilities: a wrong objective, `[B]` wide)."""
    if loss is None:
        return None
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        raise UserInputError(
            "loss takes a row over the classes per image: the step one-hot encodes integer "
            "labels itself (MixUp/CutMix and smoothing make soft ones), so use "
            "keras.losses.CategoricalCrossentropy(from_logits=True) with integer labels too. "
            f"Received: loss={loss!r}"
        )
    config = loss.get_config() if isinstance(loss, keras.losses.Loss) else {}
    if (
        not isinstance(loss, keras.losses.Loss)
        or config.get("from_logits", True) is False
        or getattr(loss, "reduction", None) in (None, "none", "sum")
    ):
        raise UserInputError(
            "loss must be a keras.losses.Loss on logits reducing to the batch mean, e.g. "
            "keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), or "
            "deit_keras.distill.BinaryCrossEntropy(); None: cross-entropy from logits. "
            f"Received: loss={loss!r}"
        )
    return loss


def _one_class_problem(loss, distillation) -> str | None:
    """Why a model of one class would learn nothing with `loss` and `distillation`, or
    None: a softmax over one class is 1, a teacher's argmax over one class is 0."""
    if distillation != "none":
        return f"the {distillation} distillation term over one class is always 0"
    if loss is None or "categorical" in type(loss).__name__.lower():
        return "a softmax over one class is always 1, so the cross-entropy is 0"
    return None


def _float32(outputs):
    return None if outputs is None else ops.cast(outputs, "float32")


def call_block(block, attentions, *inputs, training=None, scores=False):
    """`block(*inputs)`; with `scores`, its attention is appended to `attentions`."""
    if not scores:
        return block(*inputs, training=training)
    out, attention = block(*inputs, training=training, return_attention_scores=True)
    attentions.append(attention)
    return out


class TokenClassifier(CompiledInference, keras.Model):
    """A patch-token image classifier with a class-token head (and a distillation head).

    Args:
        image_size: int. Side of the square input image.
        patch_size: int. Side of a square patch.
        embed_dim: int. Token size.
        depth: int. Number of transformer blocks.
        num_heads: int. Attention heads.
        mlp_ratio: float. MLP hidden size over `embed_dim`.
        num_classes: int. Classes of the heads; 0 returns the pooled
            features instead of logits.
        distilled: bool. Whether the model has the distillation token and head.
        drop_path_rate: float. Stochastic depth rate.
        in_channels: int. Image channels.
        preprocessing: `deit_keras.data.Preprocessing` or its config dict.
    """

    def __init__(
        self,
        image_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        num_classes,
        distilled,
        drop_path_rate,
        in_channels,
        preprocessing,
        **kwargs,
    ):
        if image_size <= 0 or image_size % patch_size:
            raise UserInputError(
                "image_size must be a positive multiple of patch_size. "
                f"Received: image_size={image_size}, patch_size={patch_size}"
            )
        if depth <= 0 or num_classes < 0:
            raise UserInputError(
                "depth must be positive and num_classes non-negative. "
                f"Received: depth={depth}, num_classes={num_classes}"
            )
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.distilled = distilled
        self.drop_path_rate = drop_path_rate
        self.in_channels = in_channels
        self.preprocessing = Preprocessing.from_config(preprocessing)
        self.grid_size = image_size // patch_size
        self.num_prefix_tokens = 2 if distilled else 1
        self.distillation_step = None  # set by compile()
        self._init_compiled_inference()

    def _make_heads(self):
        self.head = self.head_dist = None
        if self.num_classes:
            self.head = dense(self.num_classes, "head", self.dtype_policy)
            if self.distilled:
                self.head_dist = dense(self.num_classes, "head_dist", self.dtype_policy)

    def _build_heads(self, batch):
        for head in (self.head, self.head_dist):
            if head is not None:
                head.build((batch, self.embed_dim))

    def run_blocks(self, x, grid, prefix, training, return_attention_scores, blocks=()):
        """`self.blocks` over tokens `x`: `(x, attentions, maps)`.

        `attentions` holds each block's attention when `return_attention_scores`;
        `maps` the patch maps (`patch_map`, after `prefix` tokens) of the blocks
        whose indices are in `blocks`.
        """
        wanted = self.features_request(return_attention_scores, blocks)["blocks"]
        attentions, maps = [], {}
        for index, block in enumerate(self.blocks):
            x = call_block(block, attentions, x, training=training, scores=return_attention_scores)
            if index in wanted:
                maps[index] = self.patch_map(x, grid, prefix)
        return x, attentions, [maps[index] for index in wanted]

    def features_request(self, return_attention_scores, blocks) -> dict:
        """`forward_features`' options, checked:
        `{"return_attention_scores": bool, "blocks": block_indices(blocks)}`."""
        wanted = self.block_indices(blocks)
        if wanted and return_attention_scores:
            raise UserInputError(
                "forward_features returns the blocks' maps or the attention scores: ask for "
                f"one at a time. Received: blocks={blocks!r}, return_attention_scores=True"
            )
        return {"return_attention_scores": bool(return_attention_scores), "blocks": wanted}

    def block_indices(self, blocks) -> list[int]:
        """`blocks` as indices in `[0, depth)`, in the order given; negative ones count from
        the last block (timm's `indices`)."""
        depth = len(self.blocks)
        if isinstance(blocks, int) or not all(isinstance(i, numbers.Integral) for i in blocks):
            raise UserInputError(f"blocks must be a list of block indices. Received: {blocks!r}")
        outside = [index for index in blocks if not -depth <= index < depth]
        if outside:
            raise UserInputError(
                f"{self.name} has {depth} blocks: indices in [{-depth}, {depth}). "
                f"Received: blocks={list(blocks)}"
            )
        return [int(index) % depth for index in blocks]

    @staticmethod
    def features_output(x, attentions, maps, return_attention_scores, blocks):
        """What `forward_features` returns: `x`, `(x, attentions)` or `(x, maps)`."""
        if return_attention_scores:
            return x, attentions
        if blocks:
            return x, maps
        return x

    def forward_features(self, images, training=None, return_attention_scores=False, blocks=()):
        """Normalised tokens `[B, T, D]`, the class token first (and attention when asked).

        With `blocks` (indices of self-attention blocks, negative ones from
        the last), also the list of those blocks' output patch tokens as maps
        `[B, gh, gw, D]` (`patch_map`), in the order asked: `(tokens, maps)`.
        On a symbolic `keras.Input` (any image size it leaves open), the output
        of a `ForwardFeatures` layer holding this model: a functional model of
        it saves and loads with this one model inside, however often it is called.
        """
        if not isinstance(images, keras.KerasTensor):
            return self._forward_features(images, training, return_attention_scores, blocks)
        self.check_float_images(images.dtype)
        self.check_images_shape(tuple(images.shape))
        request = self.features_request(return_attention_scores, blocks)  # before Keras' trace
        return ForwardFeatures(self, **request)(images, training=training)

    def _forward_features(self, images, training, return_attention_scores, blocks):
        """`forward_features` on tensors: the subclass's forward pass."""
        raise NotImplementedError

    def patch_map(self, tokens, grid, prefix_tokens):
        """`[B, prefix + gh * gw, D]` tokens -> the patch tokens as a map `[B, gh, gw, D]`."""
        batch = ops.shape(tokens)[0]
        return ops.reshape(tokens[:, prefix_tokens:], (batch, grid[0], grid[1], self.embed_dim))

    def patch_grid(self, images):
        """`(gh, gw)` patch grid of `images`: ints, or scalar tensors for run-time sizes."""
        shape = ops.shape(images)
        return shape[1] // self.patch_size, shape[2] // self.patch_size

    def forward_heads(self, features):
        """`(cls_logits, dist_logits)` in float32; `dist_logits` is None if not distilled.

        Headless (`num_classes=0`): the two tokens' features, in float32 too.
        """
        if isinstance(features, keras.KerasTensor):
            # The heads are this model's layers: as nodes of their own, a saved functional
            # model stored their weights once, inside this model, and loaded them nowhere.
            raise UserInputError(
                f"forward_heads takes tensors, not a keras.Input's features: call {self.name} "
                "on the input for the heads' mean (`model(inputs)`), or put a head of your own "
                "on `forward_features`' tokens."
            )
        cls_out = features[:, 0]
        dist_out = features[:, 1] if self.distilled else None
        if self.head is None:
            return _float32(cls_out), _float32(dist_out)
        dist_logits = None if dist_out is None else _float32(self.head_dist(dist_out))
        return _float32(self.head(cls_out)), dist_logits

    def call_heads(self, images, training=None, blocks=()):
        """Both heads' logits whatever `training` is (used by train/eval steps).

        With `blocks`, also the list of those blocks' patch-token maps
        (feature distillation): `(cls_logits, dist_logits, maps)`.
        """
        if not blocks:
            return self.forward_heads(self.forward_features(images, training=training))
        features, maps = self.forward_features(images, training=training, blocks=blocks)
        return (*self.forward_heads(features), maps)

    def __call__(self, images, *args, **kwargs):
        # Here, not in `call`: Keras (and the compiled inference step) would wrap the
        # error in lines about the call.
        self.check_float_images(getattr(images, "dtype", None))
        self.check_images_shape(_images_shape(images))
        return super().__call__(images, *args, **kwargs)

    def check_float_images(self, dtype):
        """Refuses images of an integer `dtype` (pixels, not normalised): a ValueError
        saying how to normalise them. `dtype` None (not known yet) passes."""
        if dtype is not None and not keras.backend.is_float_dtype(dtype):
            raise ValueError(
                f"{self.name} takes float images, normalised as `model.preprocessing` says: "
                "`deit_keras.data.normalize(pixels, model.preprocessing)` for training data "
                "(`deit_keras.data.preprocess(images, model.image_size, model.preprocessing)` "
                "is the evaluation transform: resize, centre crop, normalise). Received: "
                f"dtype={keras.backend.standardize_dtype(dtype)}"
            )

    def predict_on_batch(self, x):
        # The traced predict step takes any size once it has seen several; under XLA a
        # bad one fails deep in a reshape. The dtype here too: JAX's data adapter makes
        # uint8 pixels float before `__call__` sees them.
        self.check_float_images(_images_dtype(x))
        self.check_images_shape(_images_shape(x))
        return super().predict_on_batch(x)

    def predict(self, x, *args, **kwargs):
        self.check_float_images(_images_dtype(x))
        self.check_images_shape(_images_shape(x))
        return super().predict(x, *args, **kwargs)

    def check_images_shape(self, shape):
        """Refuses a `shape` that is not a batch of channels-last images of the model's
        channels: a ValueError saying what was given (single images: add a batch axis)."""
        if shape is None:
            return
        if len(shape) == 3 and shape[-1] in (None, self.in_channels):
            raise ValueError(
                f"{self.name} takes batches of channels-last images [batch, height, width, "
                f"{self.in_channels}]; these are single images (add a batch axis, `images[None]`, "
                f"or batch a dataset, `dataset.batch(32)`). Received: images shape={shape}"
            )
        if len(shape) != 4 or shape[-1] not in (None, self.in_channels):
            raise ValueError(
                f"{self.name} takes a batch of channels-last images [batch, height, width, "
                f"{self.in_channels}]. Received: images shape={shape}"
            )
        self.patch_embed.check_image_shape(shape)

    def call(self, images, training=None):
        step = None if training else self._eager_inference_step(images)
        if step is not None:
            return step(images)
        cls_logits, dist_logits = self.call_heads(images, training=training)
        if training and dist_logits is not None and self.num_classes and self._called_directly():
            return cls_logits, dist_logits
        return average_heads(cls_logits, dist_logits)

    def _called_directly(self) -> bool:
        """False inside another model (`Sequential`, functional), built for one output: there
        a training call gives the heads' mean, as timm's default (the tuple's first element
        alone went on, so the distillation head never trained)."""
        # Keras' call context is read, never made: `Layer._get_call_context` would create
        # one that outlives a `stateless_call` (which skips `__call__`, its only remover).
        try:
            from keras.src.backend.common import global_state
        except ImportError:  # a Keras without it: every call counts as direct
            return True
        context = global_state.get_global_attribute("current_call_ctx")
        return getattr(context, "entry_layer", None) in (None, self)

    # === Training (the step lives in `deit_keras.distill`) ===
    def compile(
        self,
        optimizer="adamw",
        teacher=None,
        distillation="none",
        alpha=0.5,
        tau=1.0,
        loss=None,
        metrics=None,
        feature_weight=0.0,
        feature_blocks=None,
        feature_layers=None,
        **kwargs,
    ):
        """Configures training: the optimizer and DeiT's distillation objective.

        Args:
            optimizer: a Keras optimizer (see `deit_keras.training.optim`).
            teacher: a `keras.Model` mapping this model's input batch to
                teacher logits (wrap keras.applications models with
                `deit_keras.distill.TeacherAdapter`). Frozen here. Soft
                distillation refuses one that ends in a softmax (keras.applications'
                default top) unless adapted with `outputs="probabilities"` (seen in
                functional and Sequential teachers; a subclassed one is not inspected).
            distillation: "none", "soft" or "hard".
            alpha: weight of the distillation loss. Defaults to 0.5.
            tau: soft-distillation temperature. Defaults to 1.0.
            loss: a `keras.losses.Loss` or None: the label term (the official
                `base_criterion`, on logits and probability targets; integer
                labels are one-hot encoded first, so not a sparse loss).
                Defaults to categorical cross-entropy from logits.
            metrics: not supported: the step reports loss, cls/distill
                loss, top-1/top-5 and per-head top-1 itself.
            feature_weight: float. > 0 adds feature distillation
                (`distill.feature_loss`, "locality guidance") with this
                weight: chosen blocks' patch-token maps, through trainable
                1x1 adapters held outside this model, matched to the
                teacher's stage maps by MSE; needs soft/hard distillation and
                a functional CNN teacher. Defaults to 0 (off).
            feature_blocks: list of int or None. The matched blocks; None:
                first, middle and last.
            feature_layers: list of str or None. The matched teacher layers;
                None: found (the output layer of each spatial stage).
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`),
                except `predict_jit_compile`: None (the default: as
                `jit_compile`), "auto", True or False, how inference
                (`predict`, `predict_on_batch`, an eager call) compiles on a
                CPU apart from training's `jit_compile`
                (`models.compiled_inference`; "auto": the CPU predict step).
        """
        self._check_trains_here()
        if not self.num_classes:
            raise UserInputError(
                f"{self.name} has no heads (num_classes=0: it returns features, not class "
                "logits): create it with num_classes=N to train it, or train a keras.Model "
                "of your own with a head on its features. Received: num_classes=0"
            )
        one_class = self.num_classes == 1 and _one_class_problem(loss, distillation)
        if one_class:
            raise UserInputError(
                f"{self.name} has one class: {one_class}, so it learns nothing (and top-1 is "
                "always 1). For a yes/no task create it with num_classes=2, or train on "
                "labels alone with a sigmoid loss such as deit_keras.distill.BinaryCrossEntropy(). "
                f"Received: num_classes=1, loss={loss!r}, distillation={distillation!r}"
            )
        if metrics:
            raise UserInputError(
                "DeiT reports its own metrics (loss, cls_loss, top1, top5, cls_top1; "
                "distill_loss with a teacher or a dist token, dist_top1 with a dist token, "
                "teacher_agreement with a teacher). "
                f"Received: metrics={metrics!r}"
            )
        self._choose_jit_compile(kwargs)  # first: it checks predict_jit_compile
        base_loss = _label_loss(loss)
        self._base_loss = base_loss
        objective = DistillationLoss(distillation, alpha, tau, base_loss=base_loss)
        if teacher is not None and distillation != "none":
            check_teacher_classes(teacher, self.num_classes)
            check_teacher_outputs(teacher, distillation)
            check_teacher_input(teacher, self.preprocessing)
        features = None
        if feature_weight:
            if teacher is None:
                raise UserInputError("Feature distillation needs a teacher model.")
            features = FeatureDistillation(
                teacher, self.embed_dim, self.depth, feature_weight, feature_blocks, feature_layers
            )
        self.distillation_step = DistillationStep(
            objective, teacher, dist_head=self.distilled, features=features
        )
        super().compile(optimizer=optimizer, **kwargs)
        if features is not None:
            features.compile(self.optimizer)

    def get_compile_config(self):
        config = self._keep_jit_compile_choice(super().get_compile_config())
        if config is not None and self.distillation_step is not None:
            objective = self.distillation_step.loss
            config.update(
                distillation=objective.distillation, alpha=objective.alpha, tau=objective.tau
            )
            if self._base_loss is not None:  # e.g. DeiT III's binary cross-entropy
                config["loss"] = keras.saving.serialize_keras_object(self._base_loss)
        return config

    def compile_from_config(self, config):
        """Restores the optimizer (with its state) of a saved model.

        The teacher is not part of the student's file, so a loaded model is
        compiled without distillation; `compile` again with `teacher=` and
        `optimizer=model.optimizer` to keep distilling with the same state.
        """
        if not on_tensorflow():  # loaded for inference; Keras marks it compiled all the same
            logging.warning(
                _TRAINS_ON_TENSORFLOW.format(name=self.name, backend=keras.backend.backend())
            )
            self.optimizer = None  # so that evaluate() reaches test_step, which says so
            return
        if not self.num_classes:  # saved compiled by a version that let a headless model be
            logging.warning(
                "%s has no heads (num_classes=0), so it is loaded uncompiled: it returns "
                "features, and trains inside a keras.Model with a head of your own.",
                self.name,
            )
            self.optimizer = None
            return
        config = keras.saving.deserialize_keras_object(config)
        try:
            _label_loss(config.get("loss"))
        except UserInputError:  # saved by a version that took any loss
            logging.warning(
                "%s was saved with loss=%r, which is not a label loss on logits; it is compiled "
                "with the default (cross-entropy from logits) instead.",
                self.name,
                config.pop("loss"),
            )
        if self.num_classes == 1 and _one_class_problem(config.get("loss"), "none"):
            logging.warning(  # `compile` refuses it now; saved by a version that took it
                "%s has one class and was saved compiled with a softmax loss, which learns "
                "nothing with one class: it is loaded uncompiled (it predicts).",
                self.name,
            )
            self.optimizer = None
            return
        saved = config.pop("distillation", "none")
        if saved != "none":
            logging.warning(
                "%s was trained with %s distillation; its teacher is not saved with it, so it is "
                "compiled without one. Call compile(optimizer=model.optimizer, teacher=..., "
                "distillation=%r) to continue distilling.",
                self.name,
                saved,
                saved,
            )
        self.compile(distillation="none", **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def teacher(self):
        """The frozen teacher of the last `compile`, or None."""
        return None if self.distillation_step is None else self.distillation_step.teacher

    def __dir__(self):
        # Keras' saving walks `dir(model)` and saves every Keras object an attribute gives:
        # through this property the teacher (and its optimizer) went into every `.keras`
        # file, checkpoint and backup of the student, and came back into a later teacher.
        return [name for name in super().__dir__() if name != "teacher"]

    @property
    def metrics(self):
        return [] if self.distillation_step is None else self.distillation_step.metrics

    # Before Keras traces a step: an error inside the first trace leaves the next call
    # "creating variables on a non-first call" to the same tf.function.
    def fit(self, *args, **kwargs):
        bound = _bound(keras.Model.fit, self, args, kwargs)
        self._check_inputs(kwargs if bound is None else bound.arguments)
        callbacks = (kwargs if bound is None else bound.arguments).get("callbacks")
        _set_directions(callbacks, [metric.name for metric in self.metrics])
        args, kwargs = _with_checked_datasets(bound, self.num_classes, args, kwargs)
        with self._steps_retraced_after_an_error(), _dataset_labels_refused(self.num_classes):
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        bound = _bound(keras.Model.evaluate, self, args, kwargs)
        self._check_inputs(kwargs if bound is None else bound.arguments)
        args, kwargs = _with_checked_datasets(bound, self.num_classes, args, kwargs)
        with self._steps_retraced_after_an_error(), _dataset_labels_refused(self.num_classes):
            return super().evaluate(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._check_inputs(_arguments(keras.Model.train_on_batch, self, args, kwargs))
        with self._steps_retraced_after_an_error():
            return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self._check_inputs(_arguments(keras.Model.test_on_batch, self, args, kwargs))
        with self._steps_retraced_after_an_error():
            return super().test_on_batch(*args, **kwargs)

    def _check_inputs(self, arguments):
        refuse_sample_weights(arguments)
        self.check_images_shape(_images_shape(arguments.get("x")))
        self.check_float_images(_images_dtype(arguments.get("x")))
        _check_class_indices(arguments.get("y"), self.num_classes)

    @contextlib.contextmanager
    def _steps_retraced_after_an_error(self):
        # A check failing inside Keras' first trace of a step (a generator's batch is seen
        # only there) leaves that tf.function unable to create the optimizer's variables
        # on its next call; the next call builds the step functions anew.
        try:
            yield
        except Exception:
            self.train_function = self.test_function = None
            raise

    def _assert_compile_called(self, method_name=None):
        # Keras' fit / evaluate / train_on_batch / test_on_batch start here, on every
        # backend; a file compiled on TensorFlow loads "compiled" on the others.
        self._check_trains_here()
        super()._assert_compile_called(method_name)

    def _check_trains_here(self):
        if not on_tensorflow():
            raise NotImplementedError(
                _TRAINS_ON_TENSORFLOW.format(name=self.name, backend=keras.backend.backend())
            )

    def train_step(self, *args):  # (data) on TensorFlow and PyTorch; (state, data) on JAX
        self._check_trains_here()
        (data,) = args
        if self.distillation_step is None:
            raise ValueError(f"{self.name} must be compiled before it is trained.")
        self.check_float_images(_images_dtype(data))  # a generator's, known only here
        _refuse_ragged_or_sparse(data)
        return self.distillation_step.train_step(self, data)

    def test_step(self, *args):
        self._check_trains_here()
        (data,) = args
        if self.distillation_step is None:
            raise ValueError(f"{self.name} must be compiled before it is evaluated.")
        self.check_float_images(_images_dtype(data))
        _refuse_ragged_or_sparse(data)
        return self.distillation_step.test_step(self, data)

    @property
    def architecture(self) -> dict:
        """The sizes that make this model what it is, whatever its (preset's) name says:
        `image_size`, `patch_size`, `embed_dim`, `depth`, `num_heads`, `mlp_ratio`,
        `num_classes` and `distilled` (what results.json and deit-benchmark record)."""
        names = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
        sizes = {name: getattr(self, name) for name in names}
        return dict(sizes, num_classes=self.num_classes, distilled=bool(self.distilled))

    # === Inference (compiled on a CPU: `CompiledInference`) ===
    def flops_per_image(self, image_size=None):
        """Forward FLOPs per image of the matrix products (`vit_flops`).

        Args:
            image_size: int or `(height, width)`; None: the model's `image_size`.

        An estimate for CaiT (its class-attention blocks are left out).
        """
        return vit_flops(
            image_size=self.image_size if image_size is None else image_size,
            patch_size=self.patch_size,
            in_channels=self.in_channels,
            embed_dim=self.embed_dim,
            depth=self.depth,
            mlp_ratio=self.mlp_ratio,
            prefix_tokens=self.num_prefix_tokens,
            num_classes=self.num_classes,
        )

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs
    ):
        """`keras.Model.export` with the model's own input signature as default.

        A subclassed model built in `__init__` has no recorded call shapes, so
        the signature `[None, image_size, image_size, in_channels]` float32
        is supplied here. Pass `input_signature=[keras.InputSpec(shape=(None,
        None, None, in_channels), dtype="float32")]` for an endpoint taking
        any image size. `format="onnx"` traces the layers' fusable form
        (`layers.onednn_form`): its GELU is written with `Erf`, which ONNX
        has, where TensorFlow's exact GELU is `Erfc`, which tf2onnx does not
        convert (onnxruntime then refuses the file). `deit-export
        --format=onnx` (`deploy.onnx_export`) writes the graph ONNX Runtime's
        transformer optimizer fuses. A model computing in mixed precision is
        converted (every format but the SavedModel) from its float32 copy, as
        `deploy.export_model` does: ONNX Runtime refused tf2onnx's bfloat16 casts.
        """
        if not on_tensorflow():  # jax2tf failed deep in a reshape of the symbolic batch
            raise NotImplementedError(_EXPORTS_ON_TENSORFLOW.format(name=self.name))
        if format != "tf_saved_model" and not precision.computes_in_float32(self):
            copy = precision.with_dtype_policy(self, "float32")
            return copy.export(filepath, format, verbose, input_signature, **kwargs)
        if format == "onnx":
            with onednn_form.fusable_form():
                return self._export(filepath, format, verbose, input_signature, **kwargs)
        return self._export(filepath, format, verbose, input_signature, **kwargs)

    def _export(self, filepath, format, verbose, input_signature, **kwargs):
        if input_signature is None:
            input_signature = [
                keras.InputSpec(
                    shape=(None, self.image_size, self.image_size, self.in_channels),
                    dtype="float32",
                )
            ]
        return super().export(
            filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
        )

    def compute_output_shape(self, input_shape):
        width = self.num_classes or self.embed_dim
        return (input_shape[0], width)

    def compute_output_spec(self, images, training=None):
        # float32 logits (or headless features) whatever the dtype policy, as `call`'s.
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    # === Config ===
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            num_classes=self.num_classes,
            drop_path_rate=self.drop_path_rate,
            in_channels=self.in_channels,
            preprocessing=self.preprocessing.get_config(),
            dtype=keras.saving.serialize_keras_object(self.dtype_policy),
        )
        layers = quantized.quantized_layers(self)
        if layers:
            config["quantized_layers"] = layers
        # The layers are built in `__init__` from this config, so a frozen one (e.g.
        # `--freeze=backbone`) would come back trainable, and its saved optimizer state
        # (the heads' only) would not fit: the frozen layers are named here.
        frozen = [
            quantized.relative_path(self, layer)
            for layer in self._flatten_layers(include_self=False)
            if not layer.trainable
        ]
        if frozen and self.trainable:
            config["frozen_layers"] = frozen
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = config.pop("quantized_layers", None)
        frozen = set(config.pop("frozen_layers", ()))
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        model = frozen_throughout(cls(**config))  # a frozen backbone (`trainable=False`)
        if layers:
            quantized.requantize(model, layers)
        for layer in model._flatten_layers(include_self=False):
            if quantized.relative_path(model, layer) in frozen:
                layer.trainable = False
        return model
