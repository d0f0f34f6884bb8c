"""The compiled inference functions (ours and Keras' predict) return the eager call's logits."""

import numpy as np
import tensorflow as tf

import deit_keras
from deit_keras.inference.predict import predict_function
from deit_keras.models import cpu_predict
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
    """Whether Keras' predict function (`predict_on_batch`'s) has an XLA-compiled step,
    as the step itself or as a function it calls (`models.cpu_predict`)."""
    model.predict_on_batch(images)
    graph = model.predict_function.get_concrete_function([(tf.constant(images),)]).graph
    library = graph.as_graph_def().library.function
    return any(
        op.node_def.attr["_XlaMustCompile"].b
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr
    ) or any(function.attr["_XlaMustCompile"].b for function in library)


def test_predict_on_batch_uses_xla_on_cpu_by_default_and_matches_eager_call():
    model = tiny_model()
    images = random_images(batch=3)
    assert _predict_compiles_with_xla(model, images)
    np.testing.assert_allclose(
        model.predict_on_batch(images), model(images, training=False), atol=1e-5, rtol=1e-5
    )
    model.compile(optimizer="adamw")  # jit_compile="auto" keeps XLA for predict
    assert _predict_compiles_with_xla(model, images)


def test_predict_on_batch_in_shards_matches_eager_call(monkeypatch):
    # The tiny model's batches split from 2 images on (2 shards) and 4 (4 shards).
    model = tiny_model()
    gflop = model.flops_per_image() / 1e9
    monkeypatch.setattr(cpu_predict, "SHARDS_FROM_GFLOP", ((4, 1.5 * gflop), (2, 0.5 * gflop)))
    assert cpu_predict.smallest_batches(model.flops_per_image()) == [(4, 4), (2, 2)]
    for batch in (1, 3, 9):
        images = random_images(batch=batch)
        np.testing.assert_allclose(
            model.predict_on_batch(images), model(images, training=False), atol=1e-5, rtol=1e-5
        )
    assert model._cpu_predict


def test_predict_keeps_an_explicit_no_xla_choice():
    model = tiny_model()
    model.compile(optimizer="adamw", jit_compile=False)
    assert not _predict_compiles_with_xla(model, random_images(batch=3))
    assert model.jit_compile is False  # training and evaluation too
    assert not model._cpu_predict
