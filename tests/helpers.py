"""Shared test helpers: tiny models and round-trip checks."""

import keras
import numpy as np

import deit_keras

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_model(distilled=True, num_classes=10, **overrides):
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    config = {**TINY, **overrides}
    return deit_keras.create_model(name, num_classes=num_classes, **config)


def random_images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def assert_layer_round_trip(layer, inputs):
    """get_config -> from_config rebuilds a layer that, with the same weights, gives the same output."""
    expected = keras.ops.convert_to_numpy(layer(inputs))
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone(inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(inputs)), expected)
    assert clone.get_config() == layer.get_config()
