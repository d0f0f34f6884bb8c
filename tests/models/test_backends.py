"""The layers and models on Keras' other backends: a `.keras` file saved here loads there.

PyTorch (CPU, in the test extra) is the other backend checked; JAX takes the same
path (docs/backends.md). TensorFlow is blocked from importing in that process, so the
check also fails if anything the models import reaches TensorFlow.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deit_keras.models import build_model

pytest.importorskip("torch")

_ON_TORCH = """
import json, sys

sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
import keras
import numpy as np
import deit_keras

fused_calls = []
fused = keras.ops.dot_product_attention
keras.ops.dot_product_attention = lambda *a, **k: fused_calls.append(1) or fused(*a, **k)

folder, names = sys.argv[1], sys.argv[2:]
report = {"backend": keras.backend.backend()}
for name in names:
    model = keras.models.load_model(f"{folder}/{name}.keras")
    images = np.load(f"{folder}/{name}_images.npy")
    logits = keras.ops.convert_to_numpy(model(images))
    predicted = model.predict(images, verbose=0)
    expected = np.load(f"{folder}/{name}_logits.npy")
    report[name] = float(max(np.abs(logits - expected).max(), np.abs(predicted - expected).max()))
    report[name + "_class"] = type(model).__name__
    report[name + "_fused"] = len(fused_calls)
    fused_calls.clear()
try:
    model.compile(optimizer="adamw")
except NotImplementedError as error:
    report["compile_error"] = str(error)
try:
    deit_keras.create_model
except ImportError as error:
    report["api_error"] = str(error)
print(json.dumps(report))
"""

_MODELS = {
    "deit_tiny_distilled_patch16_224": {"depth": 2},
    "deit3_small_patch16_224": {"depth": 2},
    "cait_xxs24_224": {},
}


def _save_models(folder):
    rng = np.random.default_rng(0)
    for name, overrides in _MODELS.items():
        model = build_model(name, image_size=32, num_classes=7, **overrides)
        if name.startswith("deit_tiny"):
            model.compile(optimizer="adamw")  # the compile config goes into the file
        images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
        np.save(folder / f"{name}_images.npy", images)
        np.save(folder / f"{name}_logits.npy", np.asarray(model(images)))
        model.save(folder / f"{name}.keras")


def test_models_saved_on_tensorflow_run_on_torch(tmp_path):
    _save_models(tmp_path)
    env = os.environ | {"KERAS_BACKEND": "torch"}
    process = subprocess.run(
        [sys.executable, "-c", _ON_TORCH, str(tmp_path), *_MODELS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["backend"] == "torch"
    for name in _MODELS:
        assert report[name] < 1e-5, (name, report[name])
    assert report["deit_tiny_distilled_patch16_224_class"] == "DeiT"
    assert report["cait_xxs24_224_class"] == "CaiT"
    # Self-attention runs the fused op there (the call and predict: once per block each);
    # talking heads cannot.
    assert report["deit_tiny_distilled_patch16_224_fused"] == 4
    assert report["deit3_small_patch16_224_fused"] == 4
    assert report["cait_xxs24_224_fused"] == 0
    assert "trains on Keras' TensorFlow backend" in report["compile_error"]
    assert "deit_keras.create_model needs Keras' TensorFlow backend" in report["api_error"]
