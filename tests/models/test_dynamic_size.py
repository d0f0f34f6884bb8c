"""Any image size at run time (timm's `dynamic_img_size`): eager, tf.function and XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deit_keras.distill.step import average_heads
from deit_keras.layers import resample_position_embeddings
from deit_keras.testing import op_by_op, random_images, tiny_model

# (height, width) off the 32x32 (4x4 patch grid) the tiny model is built at.
SIZES = [(48, 48), (16, 16), (24, 40)]
ANY_SIZE = [tf.TensorSpec([None, None, None, 3], tf.float32)]


def images_of(height, width, seed=0):
    return np.random.default_rng(seed).normal(size=(2, height, width, 3)).astype("float32")


def forward_with_pos_embed(model, images, pos_embed):
    """The model's inference logits with `pos_embed` added as it is (nothing resampled)."""
    tokens = model.tokens
    patches = model.patch_embed(images)
    prefix = [tokens.cls_token] + ([tokens.dist_token] if model.distilled else [])
    prefix = [ops.broadcast_to(token, (len(images), 1, model.embed_dim)) for token in prefix]
    x = ops.concatenate(prefix + [patches], axis=1) + pos_embed
    for block in model.blocks:
        x = block(x, training=False)
    return average_heads(*model.forward_heads(model.norm(x)))


def numpy_pos_embed(model, height, width):
    grid = (height // model.patch_size, width // model.patch_size)
    pos = ops.convert_to_numpy(model.tokens.pos_embed)
    return resample_position_embeddings(pos, grid, model.num_prefix_tokens)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def calls(model):
    """The model run op by op, called as a user does (the compiled CPU predict step), in a
    graph with run-time sizes, and compiled by XLA."""
    return {
        "eager": lambda x: op_by_op(model, x),
        "call": model,
        "graph": tf.function(lambda x: model(x, training=False), input_signature=ANY_SIZE),
        "xla": tf.function(
            lambda x: model(x, training=False), input_signature=ANY_SIZE, jit_compile=True
        ),
    }


@pytest.mark.parametrize("mode", ["eager", "call", "graph", "xla"])
@pytest.mark.parametrize("size", SIZES, ids=lambda size: "x".join(map(str, size)))
def test_other_sizes_equal_numpy_resampled_position_embeddings(model, calls, mode, size):
    images = images_of(*size)
    expected = forward_with_pos_embed(model, images, numpy_pos_embed(model, *size))
    got = calls[mode](images)
    assert tuple(got.shape) == (2, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_the_graph_is_traced_once_for_all_sizes(calls):
    for size in SIZES + [(32, 32)]:
        calls["graph"](images_of(*size))
    assert calls["graph"].experimental_get_tracing_count() == 1


@pytest.mark.parametrize("side", [48, 16])
def test_equals_a_model_built_at_that_size_with_resampled_weights(model, side):
    built = tiny_model(image_size=side)
    for source, target in zip(model.weights, built.weights, strict=True):
        if "pos_embed" in source.path:
            target.assign(numpy_pos_embed(model, side, side))
        else:
            target.assign(source)
    images = images_of(side, side)
    np.testing.assert_allclose(model(images), built(images), atol=1e-5, rtol=0)


def test_the_built_size_is_unchanged(model, calls):
    images = random_images()
    expected = forward_with_pos_embed(model, images, model.tokens.pos_embed)
    np.testing.assert_array_equal(op_by_op(model, images), expected)
    np.testing.assert_allclose(model(images), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(calls["graph"](images), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(calls["xla"](images), expected, atol=1e-6, rtol=0)


def test_a_size_that_is_not_a_multiple_of_the_patch_is_rejected(model, calls):
    images = images_of(36, 32)
    with pytest.raises(ValueError, match=r"Received: image shape=\(36, 32, 3\), patch_size=8"):
        model(images)
    static = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([2, 36, 32, 3])])
    with pytest.raises(ValueError, match="Received: image shape"):
        static(images)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of patch_size=8"):
        calls["graph"](images)
    # XLA drops the assert; the images' reshape to whole patches fails its compile instead
    # of the strided conv dropping the remainder.
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input to reshape"):
        calls["xla"](images)


def test_predict_rejects_a_size_that_is_not_a_multiple_after_sizes_relax():
    model = tiny_model()  # its own: Keras relaxes the predict function's image sizes
    model.predict_on_batch(images_of(32, 32))
    model.predict_on_batch(images_of(40, 40))  # a retrace for any size
    # One line before the step runs (was XLA's reshape error from inside it).
    with pytest.raises(ValueError, match=r"Received: image shape=\(36, 36, 3\), patch_size=8"):
        model.predict_on_batch(images_of(36, 36))
    np.testing.assert_allclose(
        model.predict_on_batch(images_of(48, 48)),
        op_by_op(model, images_of(48, 48)),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("mode", ["eager", "call", "graph", "xla"])
def test_a_batch_of_no_images_gives_no_logits(calls, mode):
    assert tuple(calls[mode](np.zeros((0, 32, 32, 3), "float32")).shape) == (0, 10)


def test_keras_round_trip_keeps_other_sizes(model, tmp_path):
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for size in SIZES:
        images = images_of(*size)
        np.testing.assert_array_equal(loaded(images), model(images))


def test_saved_model_with_an_any_size_signature(model, tmp_path):
    path = str(tmp_path / "export")
    model.export(
        path,
        verbose=False,
        input_signature=[keras.InputSpec(shape=(None, None, None, 3), dtype="float32")],
    )
    served = tf.saved_model.load(path)
    for size in [(32, 32), (24, 40)]:
        images = images_of(*size)
        np.testing.assert_allclose(served.serve(images), op_by_op(model, images), atol=1e-5, rtol=0)


def test_a_batch_of_another_layout_is_one_short_error_on_every_inference_path(model):
    """Channels first or no batch axis: one `ValueError` naming the shape (they were Keras'
    lines about the call around a patch-size message)."""
    for images in (np.zeros((2, 3, 32, 32), "float32"), np.zeros((32, 32, 3), "float32")):
        for call in (model, model.predict_on_batch, model.predict):
            with pytest.raises(ValueError, match=r"channels-last images .*Received: images shape"):
                call(images)


def test_a_dataset_of_single_images_or_of_a_size_off_the_patch_grid_is_one_line():
    """A dataset not yet batched gave "Cannot iterate over a shape with unknown rank" (predict),
    "ops.shape ... statically known rank" (fit/evaluate, once a step was traced) or the
    patch-size message about a `(32, 3)` image; a size off the patch grid, once a step had
    seen other sizes, a 45-line graph assertion."""
    from deit_keras.testing import compiled

    model = compiled(tiny_model(), None, "none")
    images = random_images(8, 32)
    labels = np.arange(8) % model.num_classes
    model.fit(images, labels, batch_size=4, verbose=0)
    model.predict(images, verbose=0)
    single = tf.data.Dataset.from_tensor_slices((images, labels))
    off_grid = tf.data.Dataset.from_tensor_slices((random_images(4, 36), labels[:4])).batch(4)
    for dataset, problem in ((single, r"single images .*dataset\.batch"), (off_grid, "multiples")):
        for call in (model.fit, model.evaluate, model.predict):
            with pytest.raises(ValueError, match=problem):
                call(dataset, verbose=0)
    # A dataset of unknown rank (a generator's, a py_function's) is left to the step.
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([images[:4]]), output_signature=tf.TensorSpec(None, tf.float32)
    )
    np.testing.assert_allclose(
        model.predict(unknown, verbose=0), model.predict(images[:4], verbose=0), atol=1e-6
    )
