"""Initialisers shared by the DeiT layers."""

import keras


def trunc_normal(stddev=0.02):
    """The reference's `trunc_normal_(std=.02)` for tokens, position and Dense kernels.

    timm truncates at +-2 in absolute value, i.e. at 100 standard deviations,
    so its draw is a plain normal with std 0.02. Keras' `TruncatedNormal`
    truncates at 2 std and so would shrink the std to ~0.0176.
    """
    return keras.initializers.RandomNormal(stddev=stddev)
