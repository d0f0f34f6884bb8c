"""LiteRT (TFLite) export of a DeiT, fp32 or quantized, with its serving config embedded.

The file holds one `serving_default` signature with the fixed-size contract
of `deploy.signatures` (uint8 `[B, S, S, 3]` crops in; `probabilities`,
`logits`, `cls_logits`, `dist_logits` out; the batch dimension is dynamic)
and only LiteRT builtin ops, so the plain `ai_edge_litert` interpreter (no
Flex delegate) runs it. `deit_serving.json` is stored as the flatbuffer
metadata entry "deit_serving" (`read_litert_config`).

Quantization (`quantize=`):
- "none": float32 weights and activations.
- "float16": float16 weights, dequantized to float32 at load.
- "dynamic_int8": int8 weights; activations quantized on the fly per
  operation (no calibration data).
- "int8": the dense and patch-embedding matmuls in int8 (weights and
  activations, ranges calibrated on `calibration_images`); normalisation,
  attention products and softmax stay float32 (`FLOAT_OPS`, why in
  `_int8_matmuls`).
"""

import json
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from deit_keras.deploy import export_options
from deit_keras.deploy.signatures import METADATA_NAME, fixed_size_function, serving_config
from deit_keras.errors import UserInputError
from deit_keras.io import atomic
from deit_keras.io.quiet_stderr import quiet_stderr

QUANTIZATIONS = export_options.QUANTIZATIONS["litert"]
# Kept in float32 by quantize="int8" (`_int8_matmuls`): LayerNorm's element-wise
# ops, the attention products (scores and probabilities x values), softmax.
FLOAT_OPS = ["BATCH_MATMUL", "SOFTMAX", "MEAN", "RSQRT", "SQUARED_DIFFERENCE", "MUL", "ADD", "SUB"]


def check_quantize_name(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise UserInputError(
            f"quantize must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}"
        )


def check_quantize(quantize: str, calibration_images) -> None:
    check_quantize_name(quantize)
    if quantize == "int8" and calibration_images is None:
        raise UserInputError(
            "quantize='int8' calibrates activation ranges on images: pass calibration_images "
            "(the export command's --calibration_dataset)."
        )


def _convert(model, quantize, calibration_images) -> bytes:
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", fixed_size_function(model))
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        if quantize == "none":
            return converter.convert()
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize != "int8":
            return converter.convert()
        return _int8_matmuls(converter, np.asarray(calibration_images, dtype=np.uint8))


def _int8_matmuls(converter, images) -> bytes:
    """Calibrated int8 for the weight matmuls; `FLOAT_OPS` stay float32.

    Measured on a digits DeiT (tests/deploy/test_export_formats.py): with every
    op in int8, top-1 agreement with fp32 was 75%; attention's probability x
    value product and LayerNorm's element-wise ops carry most of that error
    (TFLite's quantization debugger), and keeping them float gave 95%. The
    dense and patch-embedding matmuls, nearly all of the FLOPs, stay int8.
    """
    converter.representative_dataset = lambda: ({"images": image[None]} for image in images)
    # The calibrator runs TF's own deprecated tf.lite.Interpreter (a warning not ours to
    # fix), and its C++ prints a "fully_quantize: 0, inference_type: 6, ..." line per
    # conversion; its errors still come as Python exceptions.
    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: ([image[None]] for image in images),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=FLOAT_OPS),
        )
        return debugger.get_nondebug_quantized_model()


def _with_metadata(flatbuffer: bytes, name: str, text: str) -> bytes:
    """`flatbuffer` with a metadata entry `name` holding `text` (replacing one of that name)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_litert_config(path: str) -> dict:
    """The `deit_serving` metadata of a `.tflite` written by `export_litert`.

    Raises:
        ValueError: not a LiteRT flatbuffer, or one without the metadata.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as handle:
        content = handle.read()
    try:
        # Unpacking every table follows every offset, so a truncated file fails here, in
        # one line, rather than later in the interpreter. Buffers stay views of `content`.
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    except Exception as error:  # flatbuffers raises assorted errors on garbage
        raise UserInputError(
            f"{path} is not a readable LiteRT (.tflite) model (truncated, or not one): {error}"
        ) from error
    entries = {entry.name.decode(): entry.buffer for entry in model.metadata or []}
    if METADATA_NAME not in entries:
        raise UserInputError(
            f"{path} has no '{METADATA_NAME}' metadata: export it with "
            "`python -m deit_keras.export --format=litert`."
        )
    data = model.buffers[entries[METADATA_NAME]].data
    return json.loads(bytes(data).decode("utf-8"))


def export_litert(
    model: keras.Model,
    path: str,
    quantize: str = "none",
    calibration_images=None,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
) -> dict:
    """Writes `model` as a LiteRT flatbuffer (atomically) and returns its serving config.

    Args:
        model: a `DeiT` with a classification head.
        path: str. Output `.tflite` file (replaced).
        quantize: str. One of `QUANTIZATIONS` (module docstring).
        calibration_images: uint8 `[N, S, S, 3]` eval crops (S the model's
            image size); needed for "int8", ignored otherwise.
        crop_pct: float or None. Recorded in the config: the crop the caller
            applies. Defaults to the model's.
        class_names: list of str or None. Recorded in the config.

    Returns:
        The `deit_serving` config stored in the file.
    """
    check_quantize(quantize, calibration_images)
    config = serving_config(
        model, "litert", crop_pct=crop_pct, class_names=class_names, quantize=quantize
    )
    flatbuffer = _convert(model, quantize, calibration_images)
    flatbuffer = _with_metadata(flatbuffer, METADATA_NAME, json.dumps(config))
    atomic.write_bytes_atomic(path, flatbuffer)
    return config
