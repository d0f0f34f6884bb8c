"""PyTorch-exact bicubic resampling of position embeddings, in numpy and on the fly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.layers import TokensAndPositionEmbedding, resample_position_embeddings
from deit_keras.layers.embedding import _torch_bicubic_matrix, resize_bicubic, torch_bicubic_taps

# (in, out): up- and downsampling, one to many, many to one, odd ratios, same size.
SIZES = [(4, 6), (4, 3), (14, 24), (14, 9), (7, 3), (3, 13), (1, 5), (5, 1), (6, 6)]
GRIDS = [(6, 6), (2, 2), (3, 5), (5, 2)]
DYNAMIC = [tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)]


def dense_matrix(indices, weights, in_size):
    """The `[out, in]` matrix of `torch_bicubic_taps`: each row's 4 weights added at its indices."""
    indices, weights = keras.ops.convert_to_numpy(indices), keras.ops.convert_to_numpy(weights)
    matrix = np.zeros((len(indices), in_size))
    np.add.at(matrix, (np.arange(len(indices))[:, None].repeat(4, axis=1), indices), weights)
    return matrix


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_numpy_matrix_matches_torch_interpolate(in_size, out_size):
    torch = pytest.importorskip("torch")
    # Channel c holds the basis vector e_c along the height, so the output is the matrix's columns.
    basis = torch.eye(in_size, dtype=torch.float64).reshape(1, in_size, in_size, 1)
    columns = torch.nn.functional.interpolate(
        basis, size=(out_size, 1), mode="bicubic", align_corners=False
    )
    expected = columns[0, :, :, 0].numpy().T
    np.testing.assert_allclose(_torch_bicubic_matrix(in_size, out_size), expected, atol=1e-12)


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_taps_match_numpy_matrix(in_size, out_size):
    indices, weights = torch_bicubic_taps(in_size, out_size)
    assert tuple(indices.shape) == tuple(weights.shape) == (out_size, 4)
    expected = _torch_bicubic_matrix(in_size, out_size)
    np.testing.assert_allclose(dense_matrix(indices, weights, in_size), expected, atol=1e-6)


def test_taps_take_sizes_known_only_at_run_time():
    taps = tf.function(lambda size: torch_bicubic_taps(4, size), input_signature=DYNAMIC[:1])
    for out_size in (7, 3):
        indices, weights = taps(tf.constant(out_size))
        np.testing.assert_allclose(
            dense_matrix(indices, weights, 4), _torch_bicubic_matrix(4, out_size), atol=1e-6
        )
    assert taps.experimental_get_tracing_count() == 1


def test_same_size_resize_is_exact_even_when_the_size_is_dynamic():
    grid = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    resize = tf.function(lambda h, w: resize_bicubic(tf.constant(grid), (h, w)), DYNAMIC)
    np.testing.assert_array_equal(resize(tf.constant(4), tf.constant(5)), grid)


def tokens_layer(distilled=True):
    layer = TokensAndPositionEmbedding(16, 3, distilled=distilled)
    layer.build((None, 16, 3))
    return layer


@pytest.mark.parametrize("distilled", [True, False])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_position_embeddings_match_numpy_resampling(mode, distilled):
    layer = tokens_layer(distilled)

    def resample(height, width):
        return layer.position_embeddings((height, width))

    if mode != "eager":
        resample = tf.function(resample, input_signature=DYNAMIC, jit_compile=mode == "xla")
    pos = keras.ops.convert_to_numpy(layer.pos_embed)
    for grid in GRIDS:
        sizes = grid if mode == "eager" else [tf.constant(side) for side in grid]
        got = keras.ops.convert_to_numpy(resample(*sizes))
        expected = resample_position_embeddings(pos, grid, layer.num_prefix_tokens)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        np.testing.assert_array_equal(
            got[:, : layer.num_prefix_tokens], pos[:, : layer.num_prefix_tokens]
        )


def test_the_learned_grid_is_not_resampled():
    layer = tokens_layer()
    assert layer.grid_shape == (4, 4)
    assert layer.position_embeddings((4, 4)) is layer.pos_embed
    assert layer.position_embeddings() is layer.pos_embed
    tokens = np.random.default_rng(1).normal(size=(2, 16, 3)).astype("float32")
    np.testing.assert_array_equal(layer(tokens, grid=(4, 4)), layer(tokens))


def test_call_on_another_grid_adds_the_resampled_embeddings():
    layer = tokens_layer()
    tokens = np.zeros((2, 15, 3), "float32")
    out = keras.ops.convert_to_numpy(layer(tokens, grid=(3, 5)))
    expected = resample_position_embeddings(keras.ops.convert_to_numpy(layer.pos_embed), (3, 5), 2)
    assert out.shape == (2, 17, 3)
    np.testing.assert_allclose(out[:, 2:], np.repeat(expected[:, 2:], 2, axis=0), atol=1e-6)


def test_a_non_square_learned_grid_is_not_resampled():
    layer = TokensAndPositionEmbedding(6, 3)
    layer.build((None, 6, 3))
    assert layer.grid_shape is None
    with pytest.raises(ValueError, match="Received: num_patches=6, grid=\\(3, 3\\)"):
        layer.position_embeddings((3, 3))


def test_mixed_precision_resamples_in_float32():
    layer = TokensAndPositionEmbedding(16, 3, dtype="mixed_bfloat16")
    out = layer(keras.ops.zeros((1, 36, 3), "bfloat16"), grid=(6, 6))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = resample_position_embeddings(keras.ops.convert_to_numpy(layer.pos_embed), (6, 6), 1)
    # Only the final rounding to bfloat16 (2**-9 relative), not a bfloat16 resampling.
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    # Relative to the largest value: near-zero ones differ by more than 2**-8 of themselves
    # (-9.08e-8 against -8.99e-8 in one CI run of random weights).
    scale = float(np.abs(expected[:, 1:]).max())
    np.testing.assert_allclose(out[:, 1:], expected[:, 1:], rtol=2**-8, atol=2**-9 * scale)
