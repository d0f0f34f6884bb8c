"""Initialisers shared by the DeiT layers."""

import keras


def trunc_normal(stddev=0.02):
    """Truncated normal, std 0.02: the reference init for tokens and Dense kernels.

    timm truncates at +-2 (absolute), i.e. +-100 std at std 0.02, so the
    reference is in effect a plain normal; Keras truncates at 2 std. The
    difference does not matter for training from scratch.
    """
    return keras.initializers.TruncatedNormal(stddev=stddev)
