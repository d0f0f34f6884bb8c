"""The compiled inference functions (ours and Keras' predict) return the eager call's logits."""

import numpy as np
import tensorflow as tf

import deit_keras
from deit_keras.inference.predict import predict_function
from deit_keras.testing import random_images, tiny_model


def test_predict_function_matches_eager_call():
    model = deit_keras.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=10, image_size=32, depth=2
    )
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    expected = model(images, training=False).numpy()
    for jit_compile in (True, False):
        logits = predict_function(model, jit_compile=jit_compile)(images).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def _predict_compiles_with_xla(model, images):
    """Whether Keras' predict function (`predict_on_batch`'s) has an XLA-compiled step."""
    model.predict_on_batch(images)
    graph = model.predict_function.get_concrete_function([(tf.constant(images),)]).graph
    return any(
        op.node_def.attr["_XlaMustCompile"].b
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr
    )


def test_predict_on_batch_uses_xla_on_cpu_by_default_and_matches_eager_call():
    model = tiny_model()
    images = random_images(batch=3)
    assert _predict_compiles_with_xla(model, images)
    np.testing.assert_allclose(
        model.predict_on_batch(images), model(images, training=False), atol=1e-5, rtol=1e-5
    )
    model.compile(optimizer="adamw")  # jit_compile="auto" keeps XLA for predict
    assert _predict_compiles_with_xla(model, images)


def test_predict_keeps_an_explicit_no_xla_choice():
    model = tiny_model()
    model.compile(optimizer="adamw", jit_compile=False)
    assert not _predict_compiles_with_xla(model, random_images(batch=3))
    assert model.jit_compile is False  # training and evaluation too
