"""The token-wise layers written as TensorFlow's oneDNN graph rewrites fuse them (CPU graphs).

Keras' Dense on `[B, T, C]` tokens becomes reshape -> MatMul -> reshape ->
BiasAdd in a TensorFlow graph, and its exact GELU becomes `Erfc` arithmetic:
grappler's remapper fuses neither (it wants MatMul -> BiasAdd -> the `Erf`
form of GELU on one 2-D product), so every bias and every GELU was a pass of
its own over memory. In the fusable form the MLP and the attention's
projections run on `[B * T, C]` rows and the GELU is written
`x * ((erf(x / sqrt 2) + 1) * 0.5)`: the remapper turns each into one
`_FusedMatMul` (BiasAdd, and GeluExact in the MLP) and drops the per-layer
shape arithmetic. Same values up to float32 round-off (erf and erfc forms of
the same function; PyTorch and timm use the erf form).

Only graphs run op by op on TensorFlow's CPU kernels gain from it: the CPU
predict step's shards trace the model inside `fusable_form()`
(`models/cpu_predict.traced_once`), and Keras' own ONNX export
(`TokenClassifier.export`), for its `Erf`. Everything else (XLA, which
fuses by itself; `deit-export`, whose converters match the default form)
traces the default form.
"""

import contextlib
import contextvars

import keras
from keras import ops

_FUSABLE = contextvars.ContextVar("deit_keras_onednn_fusable_form", default=False)
SQRT_HALF = 0.7071067811865476


@contextlib.contextmanager
def fusable_form():
    """Layers called (traced) inside this block take the fusable form."""
    token = _FUSABLE.set(True)
    try:
        yield
    finally:
        _FUSABLE.reset(token)


def is_fusable() -> bool:
    return _FUSABLE.get()


def rows(x):
    """`[..., C]` as `[N, C]` rows."""
    return ops.reshape(x, (-1, x.shape[-1]))


def gelu_erf(x):
    """Exact GELU in the operand order of the remapper's MatMul + BiasAdd + GeluExact pattern."""
    return x * ((ops.erf(x * SQRT_HALF) + 1.0) * 0.5)


def mlp(fc1, fc2, x):
    """`fc2(gelu(fc1(x)))`: in the fusable form two 2-D fused products over `x`'s rows."""
    if not is_fusable():
        return fc2(keras.activations.gelu(fc1(x), approximate=False))
    return ops.reshape(fc2(gelu_erf(fc1(rows(x)))), ops.shape(x))


def token_dense(dense, x):
    """`dense(x)` on `[..., C]`; in the fusable form one 2-D product over the rows."""
    if not is_fusable():
        return dense(x)
    shape = ops.shape(x)
    leading = [shape[axis] for axis in range(len(x.shape) - 1)]
    return ops.reshape(dense(rows(x)), (*leading, dense.units))
