"""The fast-path image ops give the values of the plain TensorFlow ops they replace."""

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.data import image_ops

RNG = np.random.default_rng(0)


def images(*shape):
    return tf.constant(RNG.uniform(-3, 260, shape).astype(np.float32))


@pytest.mark.parametrize("condition_shape", [(), (7, 9, 3), (7, 9, 1), (1, 9, 3), (9, 1)], ids=str)
def test_select_equals_where(condition_shape):
    x, y = images(7, 9, 3), images(7, 9, 3)
    condition = tf.constant(RNG.uniform(size=condition_shape) < 0.5)
    expected = tf.where(condition, x, y)
    out = image_ops.select(condition, x, y)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert out.shape == expected.shape


def test_select_keeps_a_static_shape_in_a_graph():
    @tf.function(input_signature=[tf.TensorSpec([None, 5, 3], tf.float32)])
    def solarize(x):
        out = image_ops.select(x >= 128.0, 255.0 - x, x)
        assert out.shape.as_list() == [None, 5, 3]
        return out

    x = images(4, 5, 3)
    np.testing.assert_array_equal(solarize(x).numpy(), tf.where(x >= 128.0, 255.0 - x, x).numpy())


@pytest.mark.parametrize("shape", [(6, 5, 3), (2, 6, 5, 3), (2, 2, 4, 3, 3)], ids=str)
def test_per_channel_equals_broadcasting_a_channel_vector(shape):
    pixels = images(*shape)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def fn(x, m, s):
        return (x / 255.0 - m) / s

    expected = fn(pixels, tf.constant(mean), tf.constant(std))
    out = image_ops.per_channel(fn, pixels, mean, std)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert out.shape == pixels.shape


def test_per_channel_takes_one_vector_per_image():
    pixels = images(4, 6, 5, 3)
    low = tf.constant(RNG.uniform(0, 9, (4, 3)).astype(np.float32))
    out = image_ops.per_channel(lambda rows, v: rows - v, pixels, low)
    np.testing.assert_array_equal(out.numpy(), (pixels - low[:, None, None, :]).numpy())


def test_per_channel_takes_tensors_and_unknown_shapes():
    low = tf.constant([1.0, 2.0, 3.0])

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def shift(x):
        return image_ops.per_channel(lambda rows, v: rows - v, x, low)

    pixels = images(4, 6, 3)
    np.testing.assert_array_equal(shift(pixels).numpy(), (pixels - low).numpy())


def box_mask_where(images_, patch_full, top, left, height, width):
    rows = tf.range(tf.shape(images_)[-3])[:, None]
    cols = tf.range(tf.shape(images_)[-2])[None, :]
    box = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return tf.where(box[..., None], patch_full, images_)


@pytest.mark.parametrize(
    "box", [(0, 0, 8, 10), (2, 3, 4, 5), (5, 7, 3, 3), (3, 4, 0, 0), (0, 9, 8, 1)], ids=str
)
@pytest.mark.parametrize("batched", [False, True])
def test_paste_box_equals_a_masked_where(box, batched):
    top, left, height, width = box
    shape = (2, 8, 10, 3) if batched else (8, 10, 3)
    base, other = images(*shape), images(*shape)
    patch = other[..., top : top + height, left : left + width, :]
    out = image_ops.paste_box(base, patch, tf.constant(top), tf.constant(left))
    expected = box_mask_where(base, other, top, left, height, width)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert out.shape == base.shape


def test_case_runs_the_chosen_branch_in_a_graph_and_eagerly():
    branches = [lambda: tf.constant(10.0), lambda: tf.constant(20.0), lambda: tf.constant(30.0)]
    for index in range(3):
        assert float(image_ops.case(tf.constant(index), branches)) == 10.0 * (index + 1)

    @tf.function
    def per_element(indices):
        return tf.map_fn(
            lambda i: image_ops.case(i, branches), indices, fn_output_signature=tf.float32
        )

    indices = tf.constant([2, 0, 1, 1])
    np.testing.assert_array_equal(per_element(indices).numpy(), [30.0, 10.0, 20.0, 20.0])
    graph = per_element.get_concrete_function(indices).graph.as_graph_def()
    cases = [
        node
        for function in graph.library.function
        for node in function.node_def
        if node.op in ("Case", "StatelessCase")
    ]
    assert len(cases) == 1
    # tf.switch_case marks its op for lowering to Switch/Merge; `case` does not.
    lowering = cases[0].attr.get("_lower_using_switch_merge")
    assert lowering is None or not lowering.b
