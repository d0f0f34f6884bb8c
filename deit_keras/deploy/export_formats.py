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

from deit_keras.deploy import (
    litert_export,
    onnx_export,
    onnx_quantize,
    openvino_export,
    signatures,
)
from deit_keras.deploy.saved_model import SAVED_MODEL_FILE, export_saved_model
from deit_keras.errors import UserInputError
from deit_keras.io import paths
from deit_keras.models import precision, quantized

FORMATS = ("saved_model", "litert", "onnx", "openvino")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx", "openvino": ".xml"}
QUANTIZATIONS = {
    "saved_model": ("none",),
    "litert": litert_export.QUANTIZATIONS,
    "onnx": onnx_quantize.QUANTIZATIONS,
    "openvino": openvino_export.QUANTIZATIONS,
}
ALL_QUANTIZATIONS = tuple(dict.fromkeys(q for qs in QUANTIZATIONS.values() for q in qs))


def output_files(export_format: str, path: str) -> list[str]:
    """The files an export writes: `path`, and for openvino the `.bin` beside the `.xml`."""
    if export_format == "openvino":
        return [path, path[: -len(".xml")] + ".bin"]
    return [path]


def _output_problem(export_format: str, path: str) -> str | None:
    """What is already at the output and may not be replaced (only an earlier SavedModel may)."""
    if export_format == "saved_model":
        return paths.replaceable_dir_problem("output", path, SAVED_MODEL_FILE)
    problems = (
        paths.output_file_problem("output", name) for name in output_files(export_format, path)
    )
    return next(filter(None, problems), None)


def check_export_options(export_format: str, path: str, quantize: str = "none") -> None:
    """One-line `ValueError`s for a format, output path and quantization that do not go together.

    Also what is already at the output: a directory where a file goes, a file
    where a SavedModel goes, or a directory other than an earlier SavedModel.
    """
    if export_format not in FORMATS:
        raise UserInputError(f"format must be one of {FORMATS}. Received: format={export_format!r}")
    suffix = SUFFIXES.get(export_format)
    if suffix and not path.lower().endswith(suffix):
        raise UserInputError(
            f"The {export_format} export is a single {suffix} file. Received: output={path!r}"
        )
    if export_format == "saved_model" and path.lower().endswith(
        (".tflite", ".onnx", ".xml", ".keras")
    ):
        raise UserInputError(f"A SavedModel is a directory. Received: output={path!r}")
    problem = _output_problem(export_format, path)
    if problem:
        raise UserInputError(problem)
    if quantize not in ALL_QUANTIZATIONS:
        raise UserInputError(
            f"quantize must be one of {ALL_QUANTIZATIONS}. Received: quantize={quantize!r}"
        )
    if quantize not in QUANTIZATIONS[export_format]:
        supported = [f for f, qs in QUANTIZATIONS.items() if quantize in qs]
        raise UserInputError(
            f"quantize={quantize!r} is for format {' / '.join(supported)}; {export_format} takes "
            f"{QUANTIZATIONS[export_format]}. Received: format={export_format!r}"
        )


def exportable(model, export_format: str):
    """The model an export converts: `model`, or for the converted formats (all but the
    SavedModel, which keeps the model's own graph) its float32 copy when it computes in
    mixed precision: they are float32 graphs, made smaller by `quantize`.

    Raises:
        UserInputError: a model without a head, with other than 3 input channels, or
            with layers quantized in Keras (`model.quantize`) for a converted format.
    """
    signatures.check_servable(model)
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
    opset: int = onnx_export.DEFAULT_OPSET,
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
    """
    check_export_options(export_format, path, quantize)
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
