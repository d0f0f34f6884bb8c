import keras
import numpy as np
import pytest

from deit_keras.training.precise_batch_norm import recalibrate_batch_norm


def _batch_norm_model():
    """Dense -> BN (trainable), a nested model's BN, and a frozen BN."""
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.99)])
    frozen = keras.layers.BatchNormalization(momentum=0.5, name="frozen")
    frozen.trainable = False
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = frozen(inner(x))
    return keras.Model(inputs, x)


def test_moving_statistics_become_the_average_of_the_batches_statistics():
    model = _batch_norm_model()
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(16, 4)).astype("float32") for _ in range(3)]
    dense_weights = [np.array(w) for w in model.get_layer("dense").weights]

    assert recalibrate_batch_norm(model, iter(batches)) == 3

    outputs = [batch @ dense_weights[0] + dense_weights[1] for batch in batches]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, np.mean([o.mean(0) for o in outputs], 0), rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance, np.mean([o.var(0) for o in outputs], 0), rtol=1e-4
    )
    assert bn.momentum == 0.9  # put back
    (inner_bn,) = model.layers[3].layers
    assert inner_bn.momentum == 0.99
    assert float(np.abs(np.array(inner_bn.moving_mean)).max()) > 0  # nested: recomputed too
    frozen = model.get_layer("frozen")
    np.testing.assert_array_equal(frozen.moving_mean, np.zeros(4))  # frozen: kept
    np.testing.assert_array_equal(frozen.moving_variance, np.ones(4))
    for before, after in zip(dense_weights, model.get_layer("dense").weights, strict=True):
        np.testing.assert_array_equal(before, after)


def test_momentum_is_put_back_when_a_batch_fails():
    model = _batch_norm_model()

    def batches():
        yield np.ones((2, 4), "float32")
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        recalibrate_batch_norm(model, batches())
    assert model.get_layer("bn").momentum == 0.9


def test_a_model_without_batch_norm_reads_nothing():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    def batches():
        raise AssertionError("read")
        yield

    assert recalibrate_batch_norm(model, batches()) == 0


def test_a_briefly_trained_teacher_keeps_its_training_statistics(tmp_path):
    """One epoch on 216 digits is 3 updates: at momentum 0.9 the moving averages stay 73%
    at their start (mean 0), and the teacher predicted 0.1-0.6 top-1 in inference mode."""
    from deit_keras.data.pipeline import dataset_info
    from deit_keras.testing import digits_config
    from deit_keras.training import teacher as teacher_lib

    config = digits_config(tmp_path, teacher_epochs=1, train_fraction=0.15)
    info = dataset_info(config.dataset, data_dir=config.data_dir, train_fraction=0.15)
    image_size, preprocessing = teacher_lib.student_input(config)
    keras.utils.set_random_seed(0)
    teacher = teacher_lib.train_teacher(config, info, image_size, config.teacher, preprocessing)

    last_bn = [
        layer for layer in teacher.layers if isinstance(layer, keras.layers.BatchNormalization)
    ][-1]
    before_last_bn = keras.Model(teacher.input, last_bn.input)
    stream = teacher_lib.teacher_train_dataset(config, info, image_size, preprocessing, seed=7)
    means = [
        np.array(before_last_bn(images)).mean(axis=(0, 1, 2))
        for images, _ in stream.repeat().take(8)
    ]
    expected = np.mean(means, axis=0)
    error = np.abs(np.array(last_bn.moving_mean) - expected).max()
    assert error < 0.25 * np.abs(expected).max()
    saved = keras.models.load_model(config.teacher)
    np.testing.assert_array_equal(saved.layers[-5].moving_mean, teacher.layers[-5].moving_mean)


def test_a_fine_tuned_backbone_keeps_its_pretrained_statistics():
    """`--teacher_base`'s backbone runs in inference mode (the Keras transfer-learning
    recipe): its statistics are the pretrained ones, not this dataset's."""
    from deit_keras.distill.teachers import build_finetune_teacher
    from deit_keras.training.precise_batch_norm import batch_norm_layers

    tuned = build_finetune_teacher("mobilenetv3small", 3, 32, weights=None)
    layers = batch_norm_layers(tuned)
    assert layers  # its backbone's, found through the adapter and the nested model
    before = [np.array(layer.moving_mean) for layer in layers]
    batches = [np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")] * 5
    assert recalibrate_batch_norm(tuned, iter(batches)) == 1  # nothing changed: stopped
    for layer, mean in zip(layers, before, strict=True):
        np.testing.assert_array_equal(layer.moving_mean, mean)
