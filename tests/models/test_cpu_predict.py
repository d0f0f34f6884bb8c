"""The CPU predict step: near-equal shards, and shards only for batches with the work for them."""

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.models import cpu_predict

DEIT_TI_FLOPS = 2.522007552e9  # DeiT-Ti⚗ at 224 px, TokenClassifier.flops_per_image


@pytest.mark.parametrize(
    "batch, shards, sizes",
    [(10, 4, [3, 3, 2, 2]), (8, 2, [4, 4]), (3, 4, [1, 1, 1, 0]), (0, 2, [0, 0])],
)
def test_shard_sizes_are_near_equal_and_add_up(batch, shards, sizes):
    assert cpu_predict.shard_sizes(tf.constant(batch), shards).numpy().tolist() == sizes


def test_sharded_forward_keeps_the_rows_in_order():
    images = tf.reshape(tf.range(7 * 2, dtype=tf.float32), (7, 2))
    forward = lambda x: (x * 2.0, tf.reduce_sum(x, axis=1))  # noqa: E731
    doubled, sums = cpu_predict.sharded_forward(forward, images, shards=4)
    np.testing.assert_array_equal(doubled, images * 2.0)
    np.testing.assert_array_equal(sums, tf.reduce_sum(images, axis=1))


def test_deit_tiny_splits_batch_8_in_two_and_batch_30_in_four():
    assert cpu_predict.smallest_batches(DEIT_TI_FLOPS) == [(4, 30), (2, 8)]
    # A model of over 75 GFLOP an image (DeiT-B at 384 px is ~55): never an empty shard.
    assert cpu_predict.smallest_batches(100e9) == [(4, 4), (2, 2)]
    assert [cpu_predict.shards_for(batch, 100e9) for batch in (1, 2, 3, 4)] == [1, 2, 2, 4]


@pytest.mark.parametrize("known_batch", [True, False])
@pytest.mark.parametrize(
    "batch, rows",
    [
        (1, [0]),
        (7, [0] * 7),
        (8, [4] * 8),
        (29, [15] * 15 + [14] * 14),
        (30, [8] * 16 + [7] * 14),
        (33, [9] * 9 + [8] * 24),
    ],
)
def test_cpu_predict_chooses_the_path_by_the_batch_work(batch, rows, known_batch):
    # Each path marks its rows: XLA with 0, a shard with its own size.
    def forward(part):
        return tf.fill([tf.shape(part)[0]], tf.cast(tf.shape(part)[0], tf.float32))

    def xla_forward(images):
        return tf.zeros([tf.shape(images)[0]])

    spec = tf.TensorSpec([batch if known_batch else None, 1], tf.float32)
    step = tf.function(
        lambda x: cpu_predict.cpu_predict(forward, xla_forward, x, DEIT_TI_FLOPS),
        input_signature=[spec],
    )
    assert step(tf.zeros([batch, 1])).numpy().tolist() == rows
