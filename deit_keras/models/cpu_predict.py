"""The predict step of the token classifiers on a CPU: XLA for small batches, shards for large.

On a CPU, TensorFlow runs one op at a time over its intra-op threads, and a
ViT's ops at batch 32 are too small to keep several cores busy (DeiT-Ti⚗ on
2 Intel Xeon vCPUs ran 1.5x its one-core speed). Split into shards, the same
forward pass gives TensorFlow's executor independent ops to run side by side
on its inter-op threads, and the matrix products run on TensorFlow's oneDNN
kernels. Small batches keep the whole pass in one XLA computation, which is
faster when there is nothing to run side by side. Measured on 2 Intel Xeon
vCPUs: `benchmarks/README.md` ("The CPU predict step"). `predict_on_batch` /
`predict` run through it (`TokenClassifier.predict_step`), `deit-evaluate`'s
heads through `shards_for` / `sharded_forward` (`inference/evaluate.py`).
"""

import contextlib
import contextvars
import math

import tensorflow as tf
from tensorflow.python.eager import record  # could_possibly_record: no public equivalent

from deit_keras.layers import onednn_form

# A batch is split when it holds enough work for each shard: 2 shards from 18
# GFLOP a batch, 4 from 75 (DeiT-Ti⚗ at 224 px, 2.52 GFLOP an image: batches of
# 8 and 30). Measured on 2 Intel Xeon vCPUs against one XLA pass: 2 shards won
# at batch 8 and 16, 4 shards at 32 and tied at 16; the digits student (11 MFLOP
# an image) lost in shards at batch 32 (benchmarks/README.md).
SHARDS_FROM_GFLOP = ((4, 75.0), (2, 18.0))


def smallest_batches(flops_per_image):
    """`[(shards, smallest batch split so)]`, most shards first; never an empty shard."""
    return [
        (shards, max(shards, math.ceil(gflop * 1e9 / flops_per_image)))
        for shards, gflop in SHARDS_FROM_GFLOP
    ]


def shards_for(batch_size, flops_per_image):
    """How many shards a batch is split into (1: not split).

    Args:
        batch_size: int. Images in the batch.
        flops_per_image: float. The forward pass's FLOPs per image.
    """
    for shards, smallest in smallest_batches(flops_per_image):
        if batch_size >= smallest:
            return shards
    return 1


def cpu_only():
    """Whether TensorFlow sees no GPU or TPU (the case this module is for)."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def shard_sizes(batch, shards):
    """Sizes of `shards` near-equal parts of `batch` (a scalar tensor), larger first."""
    base, extra = batch // shards, batch % shards
    return tf.stack([base + tf.cast(index < extra, batch.dtype) for index in range(shards)])


def traced_once(forward, spec):
    """`forward` as one `tf.function` of `spec`, called (not inlined) by each shard.

    The model is traced in `layers.onednn_form`'s fusable form: its Dense
    layers and GELUs become oneDNN fused products in this graph (DeiT-Ti⚗
    batch 32: 1.1-1.2x the default form, benchmarks/README).
    Every shard and shard count calls the one traced function, so the model
    is traced once, and the function is kept out of line, so graph
    optimisation sees one copy of the model rather than one per shard.
    DeiT-Ti⚗'s first `predict` (70 images, batch 32) took 21.8 s when each
    shard traced and inlined the model; the shards run as fast either way.

    Args:
        forward: callable `[B, ...] -> outputs`.
        spec: `tf.TensorSpec` of the images, batch dimension None.
    """

    def in_fusable_form(images):
        with onednn_form.fusable_form():
            return forward(images)

    return tf.function(
        in_fusable_form, input_signature=[spec], experimental_attributes={"_noinline": True}
    )


def images_spec(images):
    """`images`' `tf.TensorSpec` with any batch size."""
    return tf.TensorSpec([None, *images.shape[1:]], images.dtype)


class TracedForwards:
    """A model's forward pass traced for the CPU predict step, kept across the step's traces.

    Keras traces the predict step again for a new batch shape (a last,
    smaller batch); the forward functions, traced once per images spec, are
    reused rather than traced (and XLA-compiled) anew. A plain object, not a
    `tf.Module`, so a SavedModel of the model holding it does not save them.

    Args:
        forward: callable `[B, ...] -> outputs`, the model's inference call.
    """

    def __init__(self, forward):
        self._forward = forward
        self._functions = {}
        self._steps = {}

    def for_spec(self, spec):
        """`(traced_once forward, the same under XLA)` for images of `spec`."""
        if spec not in self._functions:
            xla = tf.function(self._forward, input_signature=[spec], jit_compile=True)
            self._functions[spec] = (traced_once(self._forward, spec), xla)
        return self._functions[spec]

    def eager_step(self, images, mode, flops_per_image):
        """What an eager inference call on `images` runs instead of the model's ops.

        Args:
            images: `[B, ...]` tensor.
            mode: "cpu_predict" (`cpu_predict` over the forward functions), "xla"
                (one XLA computation) or "graph" (one graph, no XLA): the model's
                predict step (`EAGER_MODES`).
            flops_per_image: float. The forward pass's FLOPs per image.
        """
        spec = images_spec(images)
        forward, xla_forward = self.for_spec(spec)
        if mode == "xla":
            return xla_forward
        if mode == "graph":
            return forward
        if spec not in self._steps:
            # As Keras' predict function: the first batch size traces only its own
            # path, a second one the step for any size (`cpu_predict`'s conds over
            # the already traced forward functions), so new sizes do not retrace.
            self._steps[spec] = tf.function(
                lambda batch: cpu_predict(forward, xla_forward, batch, flops_per_image),
                reduce_retracing=True,
            )
        return self._steps[spec]


EAGER_MODES = ("cpu_predict", "xla", "graph")
_OP_BY_OP = contextvars.ContextVar("deit_keras_op_by_op", default=False)


@contextlib.contextmanager
def op_by_op():
    """Eager calls inside this block run the model's ops (Keras' `stateless_call`, whose
    scoped variable values a compiled step would not see)."""
    token = _OP_BY_OP.set(True)
    try:
        yield
    finally:
        _OP_BY_OP.reset(token)


def runs_op_by_op(images):
    """Whether a model's inference call on `images` runs its own ops, not a compiled step.

    Anything but an eager call on float tensors does (tracing, symbolic calls,
    other dtypes, whose errors are the ops' own), and so do eager calls under
    `tf.config.run_functions_eagerly(True)`, under a gradient tape that is
    recording (`tape.gradient` needs the ops) or inside `op_by_op()`.
    """
    if not (tf.executing_eagerly() and isinstance(images, tf.Tensor)):
        return True
    if not images.dtype.is_floating:
        return True
    return tf.config.functions_run_eagerly() or record.could_possibly_record() or _OP_BY_OP.get()


def sharded_forward(forward, images, shards):
    """`forward(images)` computed as `shards` independent passes over parts of the batch.

    Args:
        forward: callable `[B, ...] -> [B, ...]` whose rows depend only on the
            same rows of its input (inference: no batch statistics).
        images: `[B, H, W, C]`.
        shards: int. Number of parts.

    Returns:
        The concatenated outputs, `forward(images)` up to float round-off.
    """
    parts = tf.split(images, shard_sizes(tf.shape(images)[0], shards), num=shards)
    return tf.nest.map_structure(
        lambda *outputs: tf.concat(outputs, axis=0), *[forward(part) for part in parts]
    )


def cpu_predict(forward, xla_forward, images, flops_per_image):
    """The CPU predict step: shards for batches with the work for them, else one XLA pass.

    Args:
        forward: callable. The model's inference call, run op by op; a
            `traced_once` function, or each shard traces the model again.
        xla_forward: callable. The same call compiled with XLA.
        images: `[B, H, W, C]`.
        flops_per_image: float. The forward pass's FLOPs per image.
    """
    if images.shape[0] is not None:  # a known batch traces only its own path
        shards = shards_for(images.shape[0], flops_per_image)
        return sharded_forward(forward, images, shards) if shards > 1 else xla_forward(images)
    batch = tf.shape(images)[0]
    result = lambda: xla_forward(images)  # noqa: E731
    for shards, smallest in reversed(smallest_batches(flops_per_image)):
        result = _cond_at_least(batch, smallest, shards, forward, images, result)
    return result()


def _cond_at_least(batch, smallest, shards, forward, images, otherwise):
    return lambda: tf.cond(
        batch >= smallest, lambda: sharded_forward(forward, images, shards), otherwise
    )
