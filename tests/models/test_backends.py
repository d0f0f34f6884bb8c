"""The layers and models on Keras' other backends: a `.keras` file saved here loads there.

Checked on JAX and PyTorch (CPU, both in the test extra), each in a process where
TensorFlow is blocked from importing, so the check also fails if anything the
models import reaches TensorFlow (docs/backends.md).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deit_keras.models import build_model

_ON_ANOTHER_BACKEND = """
import json, sys

sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
import keras
import numpy as np
import deit_keras

fused_calls = []
fused = keras.ops.dot_product_attention
keras.ops.dot_product_attention = lambda *a, **k: fused_calls.append(1) or fused(*a, **k)


def error_of(action):
    try:
        action()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


folder, names = sys.argv[1], sys.argv[2:]
report = {"backend": keras.backend.backend()}
for name in names:
    model = keras.models.load_model(f"{folder}/{name}.keras")
    images = np.load(f"{folder}/{name}_images.npy")
    expected = np.load(f"{folder}/{name}_logits.npy")
    inputs = keras.Input((None, None, 3))  # a functional backbone of any size
    tokens, maps = model.forward_features(inputs, blocks=[-1])
    backbone = keras.Model(inputs, [tokens, *maps])
    larger = np.tile(images, (1, 2, 2, 1))[:, :48, :48]
    tokens, maps = model.forward_features(larger, blocks=[-1])
    pairs = zip(backbone(larger), [tokens, *maps], strict=True)
    report[name + "_features"] = max(
        float(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b)).max())
        for a, b in pairs
    )
    fused_calls.clear()
    outputs = [
        keras.ops.convert_to_numpy(model(images)),
        model.predict(images, verbose=0),
        keras.ops.convert_to_numpy(model.predict_on_batch(images)),
    ]
    report[name] = float(max(np.abs(out - expected).max() for out in outputs))
    report[name + "_class"] = type(model).__name__
    report[name + "_fused"] = len(fused_calls)
    fused_calls.clear()
compiled = keras.models.load_model(f"{folder}/compiled.keras")
targets = np.eye(7, dtype="float32")[:2]
report["fit_error"] = error_of(lambda: compiled.fit(images, targets, verbose=0))
report["evaluate_error"] = error_of(lambda: compiled.evaluate(images, targets, verbose=0))
report["compile_error"] = error_of(lambda: model.compile(optimizer="adamw"))
report["api_error"] = error_of(lambda: deit_keras.create_model)
pixels = np.zeros((2, 32, 32, 3), "uint8")
report["predict_uint8_error"] = error_of(lambda: model.predict(pixels, verbose=0))
report["predict_on_batch_uint8_error"] = error_of(lambda: model.predict_on_batch(pixels))
report["export_error"] = error_of(lambda: model.export(f"{folder}/exported"))
print(json.dumps(report))
"""

_MODELS = {
    "deit_tiny_distilled_patch16_224": {"depth": 2},
    "deit3_small_patch16_224": {"depth": 2},
    "cait_xxs24_224": {},
}
_TRAINS_ON_TENSORFLOW = "trains on Keras' TensorFlow backend (KERAS_BACKEND=tensorflow)"


def _save_models(folder):
    rng = np.random.default_rng(0)
    for name, overrides in _MODELS.items():
        model = build_model(name, image_size=32, num_classes=7, **overrides)
        images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
        np.save(folder / f"{name}_images.npy", images)
        np.save(folder / f"{name}_logits.npy", np.asarray(model(images)))
        model.save(folder / f"{name}.keras")
    compiled = build_model("deit_tiny_distilled_patch16_224", image_size=32, num_classes=7, depth=1)
    compiled.compile(optimizer="adamw")  # its compile config goes into the file
    compiled.save(folder / "compiled.keras")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_on_tensorflow")
    _save_models(folder)
    return folder


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_saved_on_tensorflow_run_on_another_backend(saved_models, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e .[test])")
    process = subprocess.run(
        [sys.executable, "-c", _ON_ANOTHER_BACKEND, str(saved_models), *_MODELS],
        capture_output=True,
        text=True,
        env=os.environ | {"KERAS_BACKEND": backend},
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    for name in _MODELS:  # a call, predict and predict_on_batch
        assert report[name] < 1e-5, (name, report[name])
        assert report[name + "_features"] < 1e-5, (name, report[name + "_features"])
    assert report["deit_tiny_distilled_patch16_224_class"] == "DeiT"
    assert report["cait_xxs24_224_class"] == "CaiT"
    # Self-attention runs the fused op there (three runs: once per block each);
    # talking heads cannot.
    assert report["deit_tiny_distilled_patch16_224_fused"] == 6
    assert report["deit3_small_patch16_224_fused"] == 6
    assert report["cait_xxs24_224_fused"] == 0
    # A file compiled on TensorFlow loads; training it says where it trains, in one line.
    for action in ("fit", "evaluate", "compile"):
        error = report[f"{action}_error"]
        assert error.startswith("NotImplementedError: ") and _TRAINS_ON_TENSORFLOW in error, error
        assert "\n" not in error, error
    assert "deit_keras.create_model needs Keras' TensorFlow backend" in report["api_error"]
    # uint8 pixels: Keras' data adapter made them float before the model's own check.
    for action in ("predict", "predict_on_batch"):
        error = report[f"{action}_uint8_error"]
        assert error and "takes float images" in error and "dtype=uint8" in error, error
    error = report["export_error"]
    assert error.startswith("NotImplementedError: ") and "exports on Keras' TensorFlow" in error
