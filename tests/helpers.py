"""Shared test helpers: tiny models, round-trip checks, CLI runs."""

import os
import re
import subprocess
import sys

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


# TensorFlow 2.21 prints these C++ start-up lines whatever TF_CPP_MIN_LOG_LEVEL says.
TF_NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|To enable the following)")


def run_cli(module, *args, timeout=300):
    """Runs `python -m deit_keras.<module> args...`; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", f"deit_keras.{module}", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def user_stderr(process):
    """stderr without TensorFlow's start-up lines."""
    return [line for line in process.stderr.splitlines() if line and not TF_NOISE.match(line)]


def assert_one_line_error(process, *fragments):
    """Exit 2, exactly one `error: ...` line naming each fragment, no traceback."""
    assert process.returncode == 2, process.stderr
    lines = user_stderr(process)
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    assert "Traceback" not in process.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
