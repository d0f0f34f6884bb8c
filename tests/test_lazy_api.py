"""`import deit_keras` loads no TensorFlow; its Keras objects are registered either way round.

Each case runs in a fresh interpreter, since the point is what an import does first.
"""

import subprocess
import sys

import pytest

from deit_keras.testing import tiny_model


def _python(code):
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout.strip()


@pytest.mark.parametrize("module", ["deit_keras", "deit_keras.models.flops"])
def test_import_alone_loads_neither_tensorflow_nor_keras(module):
    code = f"import sys, {module}; print(sorted({{'tensorflow', 'keras'}} & set(sys.modules)))"
    assert _python(code) == "[]"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("lazy") / "tiny.keras"
    tiny_model().save(path)
    return path


@pytest.mark.parametrize(
    "imports",
    [
        "import deit_keras\nimport keras",
        "import keras\nimport deit_keras",
        "from deit_keras.deploy import onnx_export\nimport keras",  # a submodule imports keras
        "import deit_keras.layers\nimport keras",
        "from deit_keras.models import flops\nimport keras",
        "import tensorflow as tf\nimport deit_keras\nimport keras",
        # TensorFlow imports Keras while it is itself half-imported.
        "import deit_keras\nimport tensorflow as tf\nimport keras",
    ],
)
def test_load_model_finds_the_classes_in_either_import_order(saved, imports):
    code = f"{imports}\nprint(type(keras.models.load_model({str(saved)!r})).__name__)"
    assert _python(code) == "DeiT"


def test_without_deit_keras_keras_cannot_load_the_file(saved):
    """The control: the registration above is deit_keras's doing."""
    process = subprocess.run(
        [sys.executable, "-c", f"import keras; keras.models.load_model({str(saved)!r})"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode != 0
    assert "DeiT" in process.stderr


def test_a_model_compiled_with_the_deit3_loss_loads_in_a_fresh_process(tmp_path):
    """DeiT III's recipe compiles with `BinaryCrossEntropy`, kept in the `.keras` file."""
    import keras

    from deit_keras.distill.base_losses import BinaryCrossEntropy

    model = tiny_model(distilled=False)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=BinaryCrossEntropy())
    path = tmp_path / "deit3.keras"
    model.save(path)
    load = f"keras.models.load_model({str(path)!r})"
    code = f"import deit_keras, keras\nprint({load}.get_compile_config()['loss']['class_name'])"
    assert _python(code) == "BinaryCrossEntropy"
