"""One entry point for the three export formats (the library of `deit_keras.cli.export`).

| format        | file      | input                           | runs on                 |
|---------------|-----------|---------------------------------|-------------------------|
| `saved_model` | directory | uint8 `[B, H, W, 3]`, any size  | TF Serving, TF, Keras   |
| `litert`      | `.tflite` | uint8 `[B, S, S, 3]` eval crops | ai_edge_litert, phones  |
| `onnx`        | `.onnx`   | uint8 `[B, S, S, 3]` eval crops | onnxruntime, ONNX tools |

All give `probabilities`, `logits`, `cls_logits` (+ `dist_logits`); see
`deploy.signatures`.
"""

from deit_keras.deploy import litert_export, onnx_export
from deit_keras.deploy.saved_model import export_saved_model
from deit_keras.errors import UserInputError

FORMATS = ("saved_model", "litert", "onnx")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}


def check_export_options(export_format: str, path: str, quantize: str = "none") -> None:
    """One-line `ValueError`s for a format, output path and quantization that do not go together."""
    if export_format not in FORMATS:
        raise UserInputError(f"format must be one of {FORMATS}. Received: format={export_format!r}")
    suffix = SUFFIXES.get(export_format)
    if suffix and not path.lower().endswith(suffix):
        raise UserInputError(
            f"A {export_format} export is a single {suffix} file. Received: output={path!r}"
        )
    if export_format == "saved_model" and path.lower().endswith((".tflite", ".onnx", ".keras")):
        raise UserInputError(f"A SavedModel is a directory. Received: output={path!r}")
    litert_export.check_quantize_name(quantize)
    if quantize != "none" and export_format != "litert":
        raise UserInputError(
            f"Quantization is for LiteRT exports (--format=litert). Received: "
            f"format={export_format!r}, quantize={quantize!r}"
        )


def export_model(
    model,
    path: str,
    export_format: str = "saved_model",
    *,
    quantize: str = "none",
    calibration_images=None,
    opset: int = onnx_export.DEFAULT_OPSET,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Writes `model` in `export_format` to `path` (atomically); returns its serving config.

    Args:
        model: a `DeiT` with a classification head.
        path: str. A directory (saved_model), `.tflite` (litert) or `.onnx` file.
        export_format: str. One of `FORMATS`.
        quantize: str. LiteRT only: `litert_export.QUANTIZATIONS`.
        calibration_images: uint8 eval crops for quantize="int8"
            (`deploy.calibration.eval_crops`).
        opset: int. ONNX only.
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        class_names: list of str or None. Recorded with the export.
        extra_files: SavedModel only: file name -> text written beside it.
    """
    check_export_options(export_format, path, quantize)
    if export_format == "litert":
        return litert_export.export_litert(
            model, path, quantize, calibration_images, crop_pct=crop_pct, class_names=class_names
        )
    if export_format == "onnx":
        return onnx_export.export_onnx(
            model, path, opset, crop_pct=crop_pct, class_names=class_names
        )
    return export_saved_model(model, path, crop_pct, class_names, extra_files)
