"""A compiled inference function for a DeiT model.

`model(images)` runs eagerly, op by op; `predict_function(model)` traces the
forward pass once per input shape into a `tf.function` compiled by XLA
(`jit_compile=True`), which fuses the element-wise work (LayerNorm, GELU,
softmax, bias adds) between the matrix products. The numerics are those of
the eager call up to float32 round-off (see `tests/test_layers.py`).
"""

import tensorflow as tf


def predict_function(model, jit_compile=True):
    """`images -> logits` (the model's inference output), compiled.

    Args:
        model: a `DeiT` (or any Keras model called with `training=False`).
        jit_compile: bool. Compile with XLA. Defaults to True.

    Returns:
        A `tf.function`; each new input shape traces and compiles once.

    Example:
    >>> predict = predict_function(model)
    >>> logits = predict(images).numpy()
    """

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict
