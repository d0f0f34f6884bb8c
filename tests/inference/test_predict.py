"""The compiled inference function returns the eager call's logits."""

import numpy as np

import deit_keras
from deit_keras.inference.predict import predict_function


def test_predict_function_matches_eager_call():
    model = deit_keras.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=10, image_size=32, depth=2
    )
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    expected = model(images, training=False).numpy()
    for jit_compile in (True, False):
        logits = predict_function(model, jit_compile=jit_compile)(images).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
