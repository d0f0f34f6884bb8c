"""Exported DeiTs (`.tflite`, `.onnx`, OpenVINO `.xml`, SavedModel) run, shaped like a `DeiT`.

`load_exported(path)` returns `(ExportedModel, class_names)`, as
`deploy.saving.load_model` returns `(DeiT, class_names)`, so `predict` and
`evaluate` take an exported file where they take a `.keras` one and a user
can check an export's accuracy before shipping it. An `ExportedModel` has
the attributes those commands read (`name`, `image_size`, `num_classes`,
`distilled`, `preprocessing`, `in_channels`) and takes normalised float32
`[B, S, S, 3]` images like the model: they are mapped back to the uint8
crops the file expects (`data.preprocessing.to_uint8`, exact on eval
crops, whose pixels are integers).

Runtimes: `ai_edge_litert` for LiteRT (tf.lite.Interpreter is deprecated),
`onnxruntime` for ONNX, `openvino` for OpenVINO IR; all are in the `deploy`
extra. Each uses all the machine's cores unless told otherwise (LiteRT's
interpreter alone defaults to one thread, so it is given `os.cpu_count()`).
A SavedModel runs in TensorFlow, through its `serving_crops` signature
(`deploy.saved_model`; TensorFlow's threads, `num_threads` does not apply).
"""

import os

import numpy as np

from deit_keras.data.preprocessing import Preprocessing, to_uint8
from deit_keras.deploy.export_options import SUFFIXES, check_runtime_installed
from deit_keras.deploy.litert_export import read_litert_config
from deit_keras.deploy.onnx_export import read_onnx_config
from deit_keras.deploy.openvino_export import read_openvino_config
from deit_keras.deploy.saved_model import (
    CROPS_SIGNATURE,
    check_saved_model_weights,
    is_saved_model,
    read_saved_model_config,
)
from deit_keras.deploy.saving import check_takes_rgb, load_model
from deit_keras.deploy.signatures import METADATA_NAME
from deit_keras.errors import UserInputError
from deit_keras.io.quiet_stderr import quiet_stderr

EXPORTED_SUFFIXES = tuple(SUFFIXES.values())
# onnxruntime's idle intra-op threads spin, waiting for work, and take the CPU from
# whatever runs next in the process (measured: another runtime timed in turns with
# it slowed down); this entry makes them sleep instead.
ONNX_NO_SPINNING = {"session.intra_op.allow_spinning": "0"}


def is_exported(path: str) -> bool:
    """A `.tflite`, `.onnx` or OpenVINO `.xml` file, or a SavedModel directory."""
    return str(path).lower().endswith(EXPORTED_SUFFIXES) or is_saved_model(path)


class _LiteRTRunner:
    def __init__(self, path, num_threads):
        from ai_edge_litert import interpreter as interpreter_lib

        threads = num_threads or os.cpu_count() or 1
        self.interpreter = interpreter_lib.Interpreter(model_path=path, num_threads=threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.ran = False

    def __call__(self, images: np.ndarray) -> dict:
        if self.ran:
            return self.runner(images=images)
        self.ran = True
        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            return self.runner(images=images)


class _OnnxRunner:
    def __init__(self, path, num_threads, session_config=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict:
        values = self.session.run(None, {self.input_name: images})
        return dict(zip(self.output_names, values, strict=True))


class _OpenVINORunner:
    def __init__(self, path, num_threads, precision):
        import openvino as ov

        properties = {"INFERENCE_PRECISION_HINT": precision}
        if num_threads:
            properties["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = ov.Core().compile_model(path, "CPU", properties)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> dict:
        results = self.request.infer({0: images})
        return {output.get_any_name(): value for output, value in results.items()}


class _SavedModelRunner:
    def __init__(self, path):
        import tensorflow as tf

        check_saved_model_weights(path)
        try:
            self._loaded = tf.saved_model.load(path)  # the signature lives as long as it does
        except (IndexError, tf.errors.DataLossError) as error:  # "Read less bytes than ..."
            raise UserInputError(
                f"{path}'s weights (variables/) are damaged or cut short ({type(error).__name__}:"
                f" {' '.join(str(error).split())[:120]}): copy the directory again, or export "
                "it again."
            ) from error
        if CROPS_SIGNATURE not in self._loaded.signatures:
            raise UserInputError(
                f"{path} has no '{CROPS_SIGNATURE}' signature (exported by an earlier "
                "version): export it again with `python -m deit_keras.export`."
            )
        self._serve = self._loaded.signatures[CROPS_SIGNATURE]

    def __call__(self, images: np.ndarray) -> dict:
        return {name: value.numpy() for name, value in self._serve(images=images).items()}


def _reader_and_runner(path: str, num_threads, onnx_session_config):
    """`(read the serving config, make the runner from that config)` for `path`'s kind of
    export: the caller checks the config before the runtime loads the file."""
    if is_saved_model(path):
        return read_saved_model_config, lambda config: _SavedModelRunner(path)
    if path.lower().endswith(".tflite"):
        return read_litert_config, lambda config: _LiteRTRunner(path, num_threads)
    if path.lower().endswith(".xml"):
        return read_openvino_config, lambda config: _OpenVINORunner(
            path, num_threads, config.get("inference_precision", "f32")
        )
    return read_onnx_config, lambda config: _OnnxRunner(path, num_threads, onnx_session_config)


class ExportedModel:
    """An exported DeiT file and its runtime (see the module docstring).

    Args:
        path: str. A `.tflite`, `.onnx` or OpenVINO `.xml` file, or a
            SavedModel directory, written by `deit_keras.export`.
        num_threads: int or None. Runtime threads; None for all cores.
        onnx_session_config: dict of str -> str or None. onnxruntime session
            config entries, e.g. `{"session.intra_op.allow_spinning": "0"}`
            (`ONNX_NO_SPINNING`); ignored for the other runtimes.
    """

    def __init__(
        self,
        path: str,
        num_threads: int | None = None,
        onnx_session_config: dict | None = None,
    ):
        self.path = path
        check_runtime_installed(path)
        read_config, make_runner = _reader_and_runner(path, num_threads, onnx_session_config)
        self.config = read_config(path)
        try:
            self.format = self.config["format"]
            self.name = self.config["model"]
            self.image_size = int(self.config["image_size"])
            self.num_classes = int(self.config["num_classes"])
            self.distilled = bool(self.config["distilled"])
            self.preprocessing = Preprocessing.from_config(self.config["preprocessing"])
            saved = self.config.get("class_names_source") == "saved"
            self.class_names = list(self.config["class_names"]) if saved else None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserInputError(
                f"{path} has damaged or foreign {METADATA_NAME} metadata ({type(error).__name__}: "
                f"{error}): export the model again with deit-export."
            ) from None
        self.in_channels = 3
        self._run = make_runner(self.config)

    def run_uint8(self, crops: np.ndarray) -> dict:
        """The file's outputs dict for uint8 `[B, S, S, 3]` eval crops."""
        crops = np.asarray(crops)
        expected = (self.image_size, self.image_size, 3)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise UserInputError(
                f"{os.path.basename(self.path)} takes [batch, {self.image_size}, "
                f"{self.image_size}, 3] images. Received shape: {crops.shape}"
            )
        return {name: np.asarray(value) for name, value in self._run(crops).items()}

    def call_heads(self, images, training=None):
        """`(cls_logits, dist_logits)` of normalised float32 images, as `DeiT.call_heads`."""
        outputs = self.run_uint8(to_uint8(images, self.preprocessing))
        return outputs["cls_logits"], outputs.get("dist_logits")

    def __call__(self, images, training=None):
        return self.run_uint8(to_uint8(images, self.preprocessing))["logits"]


def load_exported(path: str, num_threads: int | None = None):
    """`(ExportedModel, class_names)` of a `.tflite` / `.onnx` / `.xml` from `deit_keras.export`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file of the wrong kind, or without the serving metadata.
    """
    if not (os.path.isfile(path) or is_saved_model(path)):
        raise FileNotFoundError(f"No model file at {path}.")
    model = ExportedModel(path, num_threads=num_threads)
    return model, model.class_names


def load_for_inference(path: str):
    """`(model, class_names)` of a `.keras` file (a `DeiT`) or an exported one (`is_exported`)."""
    if is_exported(path):
        return load_exported(path)
    model, class_names = load_model(path, compile=False)
    check_takes_rgb(model, path)
    return model, class_names
