"""The export formats, their files and quantizations, and the checks of an export's options.

One home for these facts, free of Keras and TensorFlow, so that `deit-export` and
`deit-train --export_savedmodel` check a format, an output path and a quantization
before TensorFlow loads; `deploy.export_formats` does the exports.
"""

import os

from deit_keras.errors import UserInputError, check_installed
from deit_keras.io import paths

FORMATS = ("saved_model", "litert", "onnx", "openvino")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx", "openvino": ".xml"}
QUANTIZATIONS = {
    "saved_model": ("none",),
    "litert": ("none", "float16", "dynamic_int8", "int8"),
    "onnx": ("none", "dynamic_int8", "int8"),  # int8 variants on ONNX Runtime's fused graph
    "openvino": ("none", "bf16", "int8"),  # int8: NNCF
}
ALL_QUANTIZATIONS = tuple(dict.fromkeys(q for qs in QUANTIZATIONS.values() for q in qs))
SAVED_MODEL_FILE = "saved_model.pb"  # what makes a directory an earlier export, to replace
DEFAULT_OPSET = 17  # ONNX
MIN_OPSET = 9  # ONNX Erf
CLASSES_SUFFIX = ".classes.json"
DEPLOY_EXTRA = "pip install 'deit_keras[deploy]'"
# The runtime each exported file runs on (`deploy.runtimes`), by suffix.
RUNTIME_MODULES = {
    ".tflite": ("ai_edge_litert",),
    ".onnx": ("onnx", "onnxruntime"),
    ".xml": ("openvino",),
}


def classes_path(path: str) -> str:
    """Where the class names of the model saved (or exported) at `path` live."""
    return os.fspath(path) + CLASSES_SUFFIX


def savedmodel_beside(keras_path: str) -> str:
    """Where `deit-train --export_savedmodel` writes the SavedModel of the `.keras` it saves."""
    return os.path.splitext(keras_path)[0] + "_savedmodel"


def output_files(export_format: str, path: str) -> list[str]:
    """The files an export writes: `path`, and for openvino the `.bin` beside the `.xml`."""
    if export_format == "openvino":
        return [path, openvino_weights_path(path)]
    return [path]


def openvino_weights_path(xml_path: str) -> str:
    """The `.bin` an OpenVINO `.xml` reads its weights from: the same name beside it."""
    return xml_path[: -len(".xml")] + ".bin"


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
        what = (
            f"a {suffix} file (its weights beside it in a .bin)"
            if suffix == ".xml"
            else f"a single {suffix} file"
        )
        raise UserInputError(f"The {export_format} export is {what}. Received: output={path!r}")
    if export_format == "saved_model" and path.lower().endswith((*SUFFIXES.values(), ".keras")):
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


def export_modules(export_format: str, quantize: str = "none", optimize: bool = False) -> tuple:
    """The optional packages (the `deploy` extra) an export needs; TensorFlow writes the rest."""
    if export_format not in ("onnx", "openvino"):
        return ()
    modules = ("tf2onnx", "onnx")  # the OpenVINO export converts the ONNX graph
    if export_format == "onnx" and (optimize or quantize != "none"):
        modules += ("onnxruntime",)  # its transformer optimizer and quantizer
    if export_format == "openvino":
        modules += ("openvino", "nncf") if quantize == "int8" else ("openvino",)
    return modules


def check_export_dependencies(export_format: str, quantize: str = "none", optimize: bool = False):
    """`MissingDependencyError` (one line, the pip command) when the export needs a package
    that is not installed, before any work."""
    modules = export_modules(export_format, quantize, optimize)
    check_installed(modules, f"The {export_format} export", DEPLOY_EXTRA)


def check_runtime_installed(path: str) -> None:
    """`MissingDependencyError` when the runtime of the exported file at `path` is missing."""
    suffix = os.path.splitext(str(path))[1].lower()
    check_installed(RUNTIME_MODULES.get(suffix, ()), f"Running a {suffix} file", DEPLOY_EXTRA)
