"""The runtimes `deit_keras.benchmark` times: how each is prepared, what each needs installed.

Each runtime is a `Runtime`: a description, the modules it imports, and
`build(setup)`, which makes (exports, loads) what it runs once and returns
`step_for(batch_size) -> step()`, one forward pass on fixed random images.
The Keras runtimes and the reference take the model's normalised float32
images; the exports take the uint8 eval crops their serving contract names
(`deploy.signatures`), so their steps include the normalisation, as a
deployed model's calls do. int8 calibration uses random crops: fine for
speed, not for accuracy (the export tests check that).
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import numpy as np

from deit_keras.data.preprocessing import normalize
from deit_keras.deploy import litert_export, onnx_export, openvino_export, saved_model
from deit_keras.deploy.export_options import DEPLOY_EXTRA
from deit_keras.deploy.runtimes import ONNX_NO_SPINNING, ExportedModel
from deit_keras.inference import torch_reference
from deit_keras.inference.benchmark_names import REFERENCE
from deit_keras.inference.predict import predict_function
from deit_keras.models import precision

CALIBRATION_IMAGES = 8


@dataclasses.dataclass
class Setup:
    """What every runtime is built from.

    Args:
        model: the `DeiT` being timed.
        workdir: str. Where exports are written.
        num_threads: int. Threads of the runtimes that take a count (LiteRT,
            onnxruntime, torch); TensorFlow keeps its own pools (all cores).
        quiet_onnx: bool. onnxruntime's idle threads sleep instead of spinning
            (`deploy.runtimes.ONNX_NO_SPINNING`): set when other runtimes are
            timed in turns with it.
    """

    model: object
    workdir: str
    num_threads: int
    quiet_onnx: bool = True
    files: dict = dataclasses.field(default_factory=dict)  # exports made so far, reused
    closers: dict = dataclasses.field(default_factory=dict)  # name -> close(), its peak RSS MiB


@dataclasses.dataclass(frozen=True)
class Runtime:
    description: str
    modules: tuple
    build: Callable
    install: str = DEPLOY_EXTRA

    def missing_module(self) -> str | None:
        """The first of `modules` that is not installed, or None."""
        return next((m for m in self.modules if importlib.util.find_spec(m) is None), None)


def uint8_images(batch_size: int, size: int, seed: int = 0) -> np.ndarray:
    """Fixed random uint8 `[B, S, S, 3]` crops."""
    return np.random.default_rng(seed).integers(0, 256, (batch_size, size, size, 3), np.uint8)


def float_images(model, batch_size: int) -> np.ndarray:
    """The same crops normalised as the model takes them."""
    return np.asarray(normalize(uint8_images(batch_size, model.image_size), model.preprocessing))


# === Keras ===


def _eager(setup):
    def step_for(batch_size):
        images = float_images(setup.model, batch_size)
        return lambda: np.asarray(setup.model(images, training=False))

    return step_for


def _predict_on_batch(setup):
    def step_for(batch_size):
        images = float_images(setup.model, batch_size)
        return lambda: setup.model.predict_on_batch(images)

    return step_for


def _keras_bf16(setup):
    """`predict_on_batch` of a copy of the model in Keras' `mixed_bfloat16` (same weights)."""
    copy = precision.with_dtype_policy(setup.model, "mixed_bfloat16")
    return _predict_on_batch(dataclasses.replace(setup, model=copy))


def _xla(setup):
    predict = predict_function(setup.model)

    def step_for(batch_size):
        images = float_images(setup.model, batch_size)
        return lambda: predict(images).numpy()

    return step_for


def _saved_model(setup):
    import tensorflow as tf

    path = os.path.join(setup.workdir, "saved_model")
    saved_model.export_saved_model(setup.model, path)
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def step_for(batch_size):
        images = tf.constant(uint8_images(batch_size, setup.model.image_size))
        return lambda: serve(images=images)["logits"].numpy()

    return step_for


# === Exports ===


def _exported_steps(setup, path):
    session = ONNX_NO_SPINNING if setup.quiet_onnx else None
    exported = ExportedModel(path, num_threads=setup.num_threads, onnx_session_config=session)

    def step_for(batch_size):
        images = uint8_images(batch_size, exported.image_size)
        return lambda: exported.run_uint8(images)["logits"]

    return step_for


def _onnx_file(setup):
    if "onnx" not in setup.files:
        setup.files["onnx"] = os.path.join(setup.workdir, "model.onnx")
        onnx_export.export_onnx(setup.model, setup.files["onnx"])
    return setup.files["onnx"]


def _onnx(setup):
    return _exported_steps(setup, _onnx_file(setup))


def _onnx_int8(setup):
    path = os.path.join(setup.workdir, "model_int8.onnx")
    # The export's own dynamic int8 (ORT's fusions, then per-channel int8), as deit-export.
    onnx_export.export_onnx(setup.model, path, quantize="dynamic_int8")
    return _exported_steps(setup, path)


def _quantized_export(export, filename, quantize):
    """A runtime that writes `export(model, path, quantize, calibration)`, then runs that file."""

    def build(setup):
        path = os.path.join(setup.workdir, filename)
        calibration = None
        if quantize == "int8":
            calibration = uint8_images(CALIBRATION_IMAGES, setup.model.image_size, seed=1)
        export(setup.model, path, quantize, calibration)
        return _exported_steps(setup, path)

    return build


def _litert(quantize):
    return _quantized_export(litert_export.export_litert, f"model_{quantize}.tflite", quantize)


def _openvino(quantize):
    filename = f"model_openvino_{quantize}.xml"
    return _quantized_export(openvino_export.export_openvino, filename, quantize)


# === The reference ===


def _torch(setup):
    reference = torch_reference.ReferenceProcess(setup.model, setup.num_threads)
    setup.closers[REFERENCE] = reference.close
    return reference.step_for


_ONNX = ("tf2onnx", "onnx", "onnxruntime")
_LITERT = ("ai_edge_litert",)
_OPENVINO = ("tf2onnx", "onnx", "openvino", "nncf")

RUNTIMES = {
    "eager": Runtime(
        "model(images, training=False): the eager call (on a CPU what predict_on_batch "
        "runs, compiled, unless run_eagerly)",
        (),
        _eager,
    ),
    "keras": Runtime(
        "model.predict_on_batch(images): Keras' predict function (on a CPU one XLA pass, "
        "or shards side by side for large batches: models.cpu_predict)",
        (),
        _predict_on_batch,
    ),
    "keras_bf16": Runtime(
        "predict_on_batch of the model in Keras' mixed_bfloat16 policy (bf16 products on "
        "AVX512_BF16 / AMX; emulated, slow, elsewhere)",
        (),
        _keras_bf16,
    ),
    "xla": Runtime("inference.predict_function(model): tf.function(jit_compile=True)", (), _xla),
    "saved_model": Runtime(
        "SavedModel serving_default (uint8 in; its eval resize + crop + normalise inside)",
        (),
        _saved_model,
    ),
    "onnx": Runtime("ONNX fp32 (tf2onnx) on onnxruntime CPU", _ONNX, _onnx),
    "onnx_int8": Runtime(
        "ONNX dynamic int8 (per-channel MatMul weights) on onnxruntime CPU", _ONNX, _onnx_int8
    ),
    "litert": Runtime("LiteRT fp32 (XNNPACK)", _LITERT, _litert("none")),
    "litert_fp16": Runtime("LiteRT float16 weights", _LITERT, _litert("float16")),
    "litert_dynamic_int8": Runtime(
        "LiteRT dynamic-range int8 weights", _LITERT, _litert("dynamic_int8")
    ),
    "litert_int8": Runtime(
        "LiteRT int8 matmuls, calibrated (random crops here)", _LITERT, _litert("int8")
    ),
    "openvino": Runtime(
        "OpenVINO fp32 (IR from the fusable ONNX graph)", _OPENVINO, _openvino("none")
    ),
    "openvino_bf16": Runtime(
        "OpenVINO bf16 inference precision (AVX512_BF16 / AMX; fp32 elsewhere)",
        _OPENVINO,
        _openvino("bf16"),
    ),
    "openvino_int8": Runtime(
        "OpenVINO NNCF int8, calibrated (random crops here)", _OPENVINO, _openvino("int8")
    ),
    REFERENCE: Runtime(
        "PyTorch eager reference: transformers DeiT of the same architecture (sdpa attention, "
        "random weights, torch.inference_mode), in a process of its own",
        ("torch", "transformers"),
        _torch,
        install=torch_reference.INSTALL,
    ),
}
