"""One entry point for the four export formats (the library of `deit_keras.cli.export`).

| format        | file      | input                           | runs on                 |
|---------------|-----------|---------------------------------|-------------------------|
| `saved_model` | directory | uint8 `[B, H, W, 3]`, any size  | TF Serving, TF, Keras   |
| `litert`      | `.tflite` | uint8 `[B, S, S, 3]` eval crops | ai_edge_litert, phones  |
| `onnx`        | `.onnx`   | uint8 `[B, S, S, 3]` eval crops | onnxruntime, ONNX tools |
| `openvino`    | `.xml`    | uint8 `[B, S, S, 3]` eval crops | openvino                |

Quantizations per format: `QUANTIZATIONS` (litert: float16, dynamic_int8,
int8; onnx: dynamic_int8, int8 on ORT's fused graph; openvino: bf16, NNCF int8).

All give `probabilities`, `logits`, `cls_logits` (+ `dist_logits`); see
`deploy.signatures`.
"""

import math

from deit_keras.deploy import (
    litert_export,
    onnx_export,
    openvino_export,
    signatures,
)
from deit_keras.deploy.export_options import (
    DEFAULT_OPSET,
    check_export_dependencies,
    check_export_options,
)
from deit_keras.deploy.saved_model import export_saved_model
from deit_keras.errors import UserInputError
from deit_keras.models import precision, quantized

# ONNX is one protobuf (and so is the TensorFlow graph tf2onnx converts): 2 GiB at most.
# The OpenVINO export goes through ONNX.
PROTOBUF_LIMIT = 2**31


def _check_fits_one_protobuf(model, export_format: str) -> None:
    """DeiT III-H (632M parameters, 2.5 GB) failed late, in the converter, with
    "Invalid GraphDef"."""
    if export_format not in ("onnx", "openvino"):
        return
    size = sum(math.prod(weight.shape) for weight in model.weights) * 4  # float32 copies
    if size >= PROTOBUF_LIMIT:
        raise UserInputError(
            f"{model.name}'s float32 weights are {size / 2**30:.2f} GiB: the {export_format} "
            "export is one ONNX protobuf, 2 GiB at most; export a SavedModel instead. "
            f"Received: format={export_format}"
        )


def exportable(model, export_format: str):
    """The model an export converts: `model`, or for the converted formats (all but the
    SavedModel, which keeps the model's own graph) its float32 copy when it computes in
    mixed precision: they are float32 graphs, made smaller by `quantize`.

    Raises:
        UserInputError: a model without a head, with other than 3 input channels,
            with layers quantized in Keras (`model.quantize`) for a converted format, or
            over 2 GiB of weights for ONNX / OpenVINO.
    """
    signatures.check_servable(model)
    _check_fits_one_protobuf(model, export_format)
    modes = sorted(set(quantized.quantized_layers(model).values()))
    if modes and export_format != "saved_model":
        raise UserInputError(
            f"The {export_format} converter cannot take layers quantized in Keras "
            f"(model.quantize, mode {', '.join(modes)}): export the float model and pass "
            f"--quantize instead, or export a SavedModel. Received: format={export_format}"
        )
    if export_format == "saved_model" or precision.computes_in_float32(model):
        return model
    return precision.with_dtype_policy(model, "float32")


def export_model(
    model,
    path: str,
    export_format: str = "saved_model",
    *,
    quantize: str = "none",
    calibration_images=None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Writes `model` in `export_format` to `path` (atomically); returns its serving config.

    Args:
        model: a `DeiT` with a classification head.
        path: str. A directory (saved_model: an earlier SavedModel there is
            replaced, any other directory is an error), `.tflite` (litert),
            `.onnx` or `.xml` (openvino) file.
        export_format: str. One of `FORMATS`.
        quantize: str. One of `QUANTIZATIONS[export_format]`.
        calibration_images: uint8 eval crops for quantize="int8"
            (`deploy.calibration.eval_crops`).
        opset: int. ONNX only.
        optimize: bool. ONNX only: ONNX Runtime's fused transformer kernels.
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        class_names: list of str or None. Recorded with the export.
        extra_files: SavedModel only: file name -> text written beside it.

    Raises:
        UserInputError: options that do not go together, an output that may not be
            replaced, or a model the format cannot take.
        MissingDependencyError: the format needs a package of the `deploy` extra that
            is not installed.
    """
    check_export_options(export_format, path, quantize)
    check_export_dependencies(export_format, quantize, optimize)
    model = exportable(model, export_format)
    if export_format == "litert":
        return litert_export.export_litert(
            model, path, quantize, calibration_images, crop_pct=crop_pct, class_names=class_names
        )
    if export_format == "onnx":
        return onnx_export.export_onnx(
            model,
            path,
            opset,
            crop_pct=crop_pct,
            class_names=class_names,
            optimize=optimize,
            quantize=quantize,
            calibration_images=calibration_images,
        )
    if export_format == "openvino":
        return openvino_export.export_openvino(
            model, path, quantize, calibration_images, crop_pct=crop_pct, class_names=class_names
        )
    return export_saved_model(model, path, crop_pct, class_names, extra_files)
