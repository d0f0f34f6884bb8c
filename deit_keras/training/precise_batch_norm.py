"""Precise BatchNorm statistics: a trained model's moving averages recomputed.

A CNN trained for few steps keeps moving averages that are mostly their starting
values (momentum 0.9 after 3 updates: 73% of the start), so in inference mode it
predicts far worse than it did in training. pycls ("precise BN", the RegNet
authors' code) recomputes them after training as the plain average of the batch
statistics over a number of training batches; this does the same in Keras.
Measured on the digits teacher trained 8 epochs on 216 images (2026-12-07):
inference top-1 0.59-0.78 before, 0.84-0.85 after.
"""

import keras
import numpy as np

# Batches of the training stream read (pycls reads 8,192 ImageNet images; a teacher
# trained here is a small CNN on small data: 32 x 64 images, ~1 s for the digits CNN).
PRECISE_BATCHES = 32


def batch_norm_layers(model: keras.Model) -> list:
    """The `BatchNormalization` layers of `model` that training updates (nested ones
    included; a frozen one runs in inference mode and keeps its statistics)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def recalibrate_batch_norm(model: keras.Model, batches) -> int:
    """Sets each trainable `BatchNormalization` layer's moving mean and variance to the
    average of its training-mode statistics over `batches`.

    Args:
        model: a Keras model, called on each batch with `training=True` (its other
            layers' weights are not changed).
        batches: an iterable of image batches the model takes.

    Returns:
        The number of batches read (0: `model` has no such layer; nothing read; 1: the
        first batch changed no statistics: the layers run in inference mode inside, as a
        fine-tuned backbone called with `training=False` does).
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    trained = [np.array(layer.moving_mean) for layer in layers]
    count = 0
    try:
        for count, images in enumerate(batches, start=1):
            # moving = moving * m + batch * (1 - m) with m = (n - 1) / n: the running mean
            # of the n batches' statistics, the first replacing the trained values.
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(images, training=True)
            if count == 1 and all(
                np.array_equal(layer.moving_mean, mean)
                for layer, mean in zip(layers, trained, strict=True)
            ):
                break
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return count
