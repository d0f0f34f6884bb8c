"""The token-wise layers' fusable form: the same values, in the graph oneDNN's remapper fuses."""

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.layers import onednn_form
from deit_keras.layers.attention import MultiHeadSelfAttention
from deit_keras.layers.encoder import MLP, TransformerBlock
from deit_keras.models import cpu_predict

TOKENS = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)


def _layers():
    return [
        MLP(8, 32),
        MultiHeadSelfAttention(8, 2),
        TransformerBlock(8, 2),
        TransformerBlock(8, 2, talking_heads=True),
    ]


@pytest.mark.parametrize("layer", _layers(), ids=["mlp", "attention", "block", "talking_heads"])
def test_fusable_form_gives_the_default_forms_values(layer):
    default = np.asarray(layer(TOKENS))
    with onednn_form.fusable_form():
        fusable = np.asarray(layer(TOKENS))
    assert not onednn_form.is_fusable()  # the block restores the default
    np.testing.assert_allclose(fusable, default, rtol=1e-5, atol=1e-6)
    assert fusable.shape == TOKENS.shape


def test_gelu_erf_is_the_exact_gelu():
    x = np.linspace(-8.0, 8.0, 401, dtype=np.float32)
    exact = np.asarray(tf.nn.gelu(x, approximate=False))
    np.testing.assert_allclose(np.asarray(onednn_form.gelu_erf(x)), exact, atol=1e-6)


def _graph_ops(function, spec):
    return [op.type for op in function.get_concrete_function(spec).graph.get_operations()]


def _bias_adds_after_2d_matmuls(function, spec):
    graph = function.get_concrete_function(spec).graph
    return sum(
        op.type == "BiasAdd" and op.inputs[0].op.type == "MatMul" and op.inputs[0].shape.rank == 2
        for op in graph.get_operations()
    )


def test_traced_once_traces_the_fusable_form():
    """The shards' forward: each Dense MatMul -> BiasAdd, GELU as Erf (the remapper's patterns)."""
    mlp = MLP(8, 32)
    mlp(TOKENS)
    spec = tf.TensorSpec([None, 5, 8], tf.float32)
    default = tf.function(mlp, input_signature=[spec])
    fusable = cpu_predict.traced_once(mlp, spec)
    assert "Erfc" in _graph_ops(default, spec) and "Erf" not in _graph_ops(default, spec)
    assert "Erf" in _graph_ops(fusable, spec) and "Erfc" not in _graph_ops(fusable, spec)
    assert _bias_adds_after_2d_matmuls(default, spec) == 0
    assert _bias_adds_after_2d_matmuls(fusable, spec) == 2
    np.testing.assert_allclose(fusable(TOKENS), mlp(TOKENS), rtol=1e-5, atol=1e-6)
