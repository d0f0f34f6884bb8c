import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from deit_keras.layers import (
    MLP,
    DropPath,
    MultiHeadSelfAttention,
    PatchEmbedding,
    ReplicaDropout,
    TokensAndPositionEmbedding,
    TransformerBlock,
    resample_position_embeddings,
)
from deit_keras.testing import assert_layer_round_trip, random_images

TOKENS = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (PatchEmbedding(4, 8), random_images(size=16)),
        (TokensAndPositionEmbedding(5, 8, distilled=True), TOKENS),
        (TokensAndPositionEmbedding(5, 8, distilled=False), TOKENS),
        (MultiHeadSelfAttention(8, 2), TOKENS),
        (MLP(8, 32), TOKENS),
        (TransformerBlock(8, 2, mlp_ratio=2.0, drop_path_rate=0.1), TOKENS),
        (DropPath(0.3, seed=3), TOKENS),
        (ReplicaDropout(0.3, seed=3), TOKENS),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, keras.layers.Layer) else "",
)
def test_layer_round_trips_through_config(layer, inputs):
    assert_layer_round_trip(layer, inputs)


def test_patch_embedding_shape_and_bad_size():
    out = PatchEmbedding(4, 8)(random_images(size=16))
    assert tuple(out.shape) == (2, 16, 8)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        PatchEmbedding(4, 8)(random_images(size=18))


def test_tokens_prepend_cls_then_dist():
    layer = TokensAndPositionEmbedding(5, 8, distilled=True)
    out = keras.ops.convert_to_numpy(layer(np.zeros((2, 5, 8), "float32")))
    pos = keras.ops.convert_to_numpy(layer.pos_embed)[0]
    np.testing.assert_allclose(
        out[0, 0], keras.ops.convert_to_numpy(layer.cls_token)[0, 0] + pos[0]
    )
    np.testing.assert_allclose(
        out[1, 1], keras.ops.convert_to_numpy(layer.dist_token)[0, 0] + pos[1]
    )
    np.testing.assert_allclose(out[0, 2:], pos[2:])


def test_drop_path_is_identity_in_inference_and_drops_whole_samples_in_training():
    x = np.ones((2000, 3, 4), "float32")
    layer = DropPath(0.25, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = out.reshape(2000, -1)
    # each sample is either all zero or all 1/(1-rate)
    assert set(np.unique(per_sample.min(axis=1))) <= {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    dropped = np.mean(per_sample[:, 0] == 0)
    assert 0.21 < dropped < 0.29


def test_stochastic_depth_drops_both_residual_branches_of_a_block():
    """timm's Block: `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`.
    With every branch dropped a training call is the identity; with the MLP branch left
    out of stochastic depth it is not."""
    block = TransformerBlock(8, 2, mlp_ratio=2.0, drop_path_rate=0.5)
    block.drop_path.rate = 1.0 - 1e-7  # keeps a sample with probability 1e-7: drops all
    out = keras.ops.convert_to_numpy(block(TOKENS, training=True))
    np.testing.assert_array_equal(out, TOKENS)
    assert not np.allclose(keras.ops.convert_to_numpy(block(TOKENS, training=False)), TOKENS)


def test_replica_dropout_is_identity_in_inference_and_drops_elements_in_training():
    x = np.ones((200, 50), "float32")
    layer = ReplicaDropout(0.2, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.8)}
    assert 0.18 < np.mean(out == 0) < 0.22
    assert 0 < np.mean(out[:, 0] == 0) < 1  # elements, not whole samples


MASKS_ON_TWO_REPLICAS = textwrap.dedent("""
    import sys
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from deit_keras import layers
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = getattr(layers, sys.argv[1])(0.5, seed=0)
    step = tf.function(lambda: strategy.run(lambda: layer(tf.ones([64, 1]), training=True)))
    for _ in range(2):
        kept = [(mask.numpy()[:, 0] > 0).astype(int) for mask in
                strategy.experimental_local_results(step())]
        print("".join(map(str, kept[0])), "".join(map(str, kept[1])))
""")


@pytest.mark.parametrize("layer", ["DropPath", "ReplicaDropout"])
def test_masks_are_drawn_apart_on_each_replica(layer):
    """One mirrored seed generator: each replica dropped the same rows (official DeiT seeds
    each rank apart; `keras.layers.Dropout` still does)."""
    result = subprocess.run(
        [sys.executable, "-c", MASKS_ON_TWO_REPLICAS, layer],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [line.split() for line in result.stdout.splitlines()]
    assert len(steps) == 2 and steps[0] != steps[1], steps  # new draws each step
    for first, second in steps:
        assert first != second, (first, second)
        assert 16 < first.count("1") < 48 and 16 < second.count("1") < 48


def test_drop_path_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="Received: rate=-0.1"):
        ReplicaDropout(-0.1)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadSelfAttention(10, 3)


def test_attention_scores_are_row_stochastic():
    _, attention = MultiHeadSelfAttention(8, 2)(TOKENS, return_attention_scores=True)
    attention = keras.ops.convert_to_numpy(attention)
    assert attention.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)


def test_resample_identity_and_prefix_kept():
    pos = np.random.default_rng(0).normal(size=(1, 2 + 16, 3)).astype("float32")
    np.testing.assert_array_equal(resample_position_embeddings(pos, (4, 4), 2), pos)
    bigger = resample_position_embeddings(pos, (6, 6), 2)
    assert bigger.shape == (1, 2 + 36, 3)
    np.testing.assert_array_equal(bigger[:, :2], pos[:, :2])
    # One int is a square grid, as the annotation said (a TypeError before).
    np.testing.assert_array_equal(resample_position_embeddings(pos, 6, 2, old_grid=4), bigger)


def test_mlp_output_shape_is_its_output_width_not_its_inputs():
    """`compute_output_shape` returned the input's shape: a symbolic (None, 17, 48) for a
    real (..., 32) output."""
    mlp = MLP(32, 64)
    assert mlp.compute_output_shape((None, 17, 48)) == (None, 17, 32)
    symbolic = mlp(keras.Input((17, 48)))
    real = mlp(np.zeros((1, 17, 48), "float32"))
    assert tuple(symbolic.shape[1:]) == tuple(real.shape[1:]) == (17, 32)


def test_resample_matches_torch_bicubic():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1, 1 + 14 * 14, 5)).astype("float32")
    for new in [(24, 24), (9, 9), (14, 20)]:
        grid = torch.from_numpy(pos[:, 1:].reshape(1, 14, 14, 5)).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", align_corners=False)
        ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 5).numpy()
        ours = resample_position_embeddings(pos, new, 1)
        np.testing.assert_allclose(ours[:, 1:], ref, atol=1e-5)
