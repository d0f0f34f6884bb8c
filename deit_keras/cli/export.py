"""Exports a `.keras` DeiT as a SavedModel, a LiteRT (.tflite), an ONNX or an OpenVINO file.

python -m deit_keras.export --model_path model.keras --output exported/
python -m deit_keras.export --model_path model.keras --format=litert --output model.tflite \\
    [--quantize=float16|dynamic_int8|int8 --calibration_dataset=digits]
python -m deit_keras.export --model_path model.keras --format=onnx --output model.onnx \\
    [--optimize] [--quantize=dynamic_int8|int8 --calibration_dataset=digits]
python -m deit_keras.export --model_path model.keras --format=openvino --output model.xml \\
    [--quantize=bf16|int8 --calibration_dataset=digits]
python -m deit_keras.export --model deit_base_patch16_384 --pretrained --output exported/

The library is `deit_keras.deploy.export_formats`; inputs and outputs of
each format are in its docstring and in docs/deployment.md.
"""

import os
import sys

from absl import flags

from deit_keras import cli
from deit_keras.cli import launch, model_source
from deit_keras.deploy import export_options
from deit_keras.io import paths
from deit_keras.schema import CROP_PCT, POSITIVE

_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Output: a SavedModel directory (only an earlier SavedModel there is replaced), a "
    ".tflite, an .onnx or an OpenVINO .xml file (with its .bin; files are replaced).",
)
_FORMAT = flags.DEFINE_enum(
    "format",
    "saved_model",
    list(export_options.FORMATS),
    "saved_model: uint8 images of any size in. litert / onnx / openvino: uint8 "
    "[batch, image_size, image_size, 3] eval crops in (see docs/deployment.md).",
)
_QUANTIZE = flags.DEFINE_enum(
    "quantize",
    "none",
    list(export_options.ALL_QUANTIZATIONS),
    "litert: float16, dynamic_int8, int8. onnx: dynamic_int8, int8 (ONNX Runtime's fused "
    "graph). openvino: bf16, int8 (NNCF). int8 needs --calibration_dataset.",
)
_OPTIMIZE = flags.DEFINE_bool(
    "optimize",
    False,
    "onnx only: ONNX Runtime's fused Attention / LayerNorm / GELU kernels (the file then "
    "runs on onnxruntime only); implied by --quantize.",
)
_CALIBRATION_DATASET = flags.DEFINE_string(
    "calibration_dataset",
    None,
    "Dataset whose images calibrate --quantize=int8: 'digits', 'folder:PATH' or a TFDS name.",
)
_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "calibration_images", 200, "How many images of --calibration_dataset (its train split)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_OPSET = flags.DEFINE_integer(
    "opset",
    export_options.DEFAULT_OPSET,
    f"ONNX opset (onnx only): {export_options.MIN_OPSET} up to the newest the installed tf2onnx "
    "writes.",
)
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)
cli.check_path("output", "output_path")
cli.check_path("data_dir", "directory")
cli.check_range("crop_pct", CROP_PCT)
cli.check_range("opset", POSITIVE)
cli.check_range("calibration_images", POSITIVE)


def _check_flags() -> None:
    """Flag combinations that are wrong before any model is loaded (and before TensorFlow
    starts, but for the opset: the installed tf2onnx decides the newest)."""
    try:
        export_options.check_export_options(_FORMAT.value, _OUTPUT.value, _QUANTIZE.value)
    except ValueError as error:
        raise cli.UsageError(str(error)) from error
    model_path = model_source.MODEL_PATH.value
    outputs = export_options.output_files(_FORMAT.value, _OUTPUT.value)
    if model_path and any(paths.is_within(model_path, output) for output in outputs):
        raise cli.UsageError(
            f"--output would replace --model_path, which it holds: write the export elsewhere. "
            f"Received: --output={_OUTPUT.value}, --model_path={model_path}"
        )
    if _OPTIMIZE.value and _FORMAT.value != "onnx":
        raise cli.UsageError(
            f"--optimize is for --format=onnx (ONNX Runtime's fusions). Received: "
            f"--format={_FORMAT.value}"
        )
    if _QUANTIZE.value == "int8" and not _CALIBRATION_DATASET.value:
        raise cli.UsageError(
            "--quantize=int8 calibrates on real images: add --calibration_dataset "
            "(e.g. the dataset the model was trained on)."
        )
    if _CALIBRATION_DATASET.value and _QUANTIZE.value != "int8":
        raise cli.UsageError(
            "--calibration_dataset is for --quantize=int8 (the other precisions need no "
            f"calibration). Received: --quantize={_QUANTIZE.value}"
        )
    if _CALIBRATION_IMAGES.value <= 0:
        raise cli.UsageError(
            f"--calibration_images must be positive. Received: {_CALIBRATION_IMAGES.value}"
        )
    _check_flags_used()
    export_options.check_export_dependencies(_FORMAT.value, _QUANTIZE.value, _OPTIMIZE.value)


def _check_flags_used() -> None:
    """Flags set for an export that does not read them: the user meant another export.
    Their defaults pass (a run's `flags.txt` holds every flag, defaults included)."""
    if _OPSET.value != flags.FLAGS["opset"].default and _FORMAT.value != "onnx":
        raise cli.UsageError(
            f"--opset is for --format=onnx (the openvino export picks its own). Received: "
            f"--format={_FORMAT.value}"
        )
    unused = _CALIBRATION_IMAGES.value != flags.FLAGS["calibration_images"].default
    if unused and _QUANTIZE.value != "int8":
        raise cli.UsageError(
            "--calibration_images is for --quantize=int8 (the images it calibrates on). "
            f"Received: --quantize={_QUANTIZE.value}"
        )


def _check_opset() -> None:
    if _FORMAT.value != "onnx":  # tf2onnx and onnx: the [deploy] extra, ONNX only
        return
    from deit_keras.deploy import onnx_export

    try:
        onnx_export.check_opset(_OPSET.value)
    except ValueError as error:
        raise cli.UsageError(str(error)) from error


def _calibration_images(model):
    if _QUANTIZE.value != "int8":
        return None
    from deit_keras.deploy.calibration import eval_crops

    return eval_crops(
        _CALIBRATION_DATASET.value,
        _CALIBRATION_IMAGES.value,
        model.image_size,
        model.preprocessing.replace(crop_pct=_CROP_PCT.value),
        data_dir=_DATA_DIR.value,
    )


def _describe(config: dict) -> str:
    size = config["image_size"]
    outputs = ", ".join(config["outputs"])
    if config["format"] == "saved_model":
        return f"serving_default: uint8 [B, H, W, 3] -> {outputs}"
    quantize = config.get("quantize", "none")
    suffix = f", quantize={quantize}" if quantize != "none" else ""
    if config.get("optimized"):
        fused = config.get("fused_ops") or {}
        counted = ", ".join(f"{op} x{count}" for op, count in sorted(fused.items()))
        suffix += f", ONNX Runtime fused: {counted}" if fused else ", no ONNX Runtime fusion"
    return f"uint8 [B, {size}, {size}, 3] eval crops -> {outputs}{suffix}"


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    _check_flags()
    model_source.check_model_flags()  # seconds before TensorFlow would have started
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    _check_opset()
    from deit_keras.deploy import export_formats

    model, class_names = model_source.load_model_from_flags()
    config = export_formats.export_model(
        model,
        _OUTPUT.value,
        _FORMAT.value,
        quantize=_QUANTIZE.value,
        calibration_images=_calibration_images(model),
        opset=_OPSET.value,
        optimize=_OPTIMIZE.value,
        crop_pct=_CROP_PCT.value,
        class_names=class_names,
        extra_files={"flags.txt": cli.command_flags_text()},
    )
    print(
        f"Exported {model_source.model_description()} to {os.path.abspath(_OUTPUT.value)} "
        f"({_describe(config)})"
    )


def run() -> None:
    flags.mark_flags_as_required(["output"])
    cli.run(main)


if __name__ == "__main__":
    run()
