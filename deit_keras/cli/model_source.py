"""The model a command runs: a `.keras` file, or a named variant with published weights.

    --model_path model.keras
    --model deit_tiny_distilled_patch16_224 --pretrained [--pretrained_weights=hf]

Imported by the commands that read a model (predict, evaluate, export); train
declares its own `--model` / `--pretrained` through `TrainConfig`.
"""

from absl import flags

from deit_keras import cli
from deit_keras.models.deit_presets import MIRROR_ENV

MODEL_PATH = flags.DEFINE_string(
    "model_path",
    None,
    "The .keras model (predict and evaluate also take an export: a .tflite, .onnx or "
    "OpenVINO .xml file, or a SavedModel directory).",
)
MODEL = flags.DEFINE_string(
    "model",
    None,
    "A model name (e.g. deit_tiny_distilled_patch16_224) to run with its published "
    "ImageNet weights; needs --pretrained. Instead of --model_path.",
)
PRETRAINED = flags.DEFINE_bool(
    "pretrained",
    False,
    "Use the published weights of --model: downloaded on first use, then cached "
    f"($KERAS_HOME/models/deit_keras; {MIRROR_ENV} sets a mirror).",
)
PRETRAINED_WEIGHTS = flags.DEFINE_string(
    "pretrained_weights",
    "official",
    "Where --pretrained gets the weights: 'official' (the DeiT release), 'hf' (the "
    "Hugging Face hub), 'hf-hub:OWNER/REPO', a URL or a checkpoint path.",
)

cli.check_path("model_path", "model_input")


def check_runtimes_installed(*paths: str | None) -> None:
    """One line naming the pip command when an exported model among `paths` needs a runtime
    that is not installed; before TensorFlow loads."""
    from deit_keras.deploy import export_options

    for path in filter(None, paths):
        export_options.check_runtime_installed(path)


def check_model_flags() -> None:
    """Refuses neither or both of `--model_path` and `--model`, or `--model` without
    `--pretrained`, in one line: before TensorFlow starts (seconds), not after."""
    if MODEL_PATH.value and MODEL.value:
        raise cli.UsageError("Pass either --model_path or --model with --pretrained, not both.")
    if not MODEL_PATH.value and not MODEL.value:
        raise cli.UsageError(
            "Pass --model_path=FILE.keras, or --model=NAME --pretrained for published weights."
        )
    # Set to other than their defaults (a replayed flags.txt lists every flag).
    given = [
        name
        for name in ("pretrained", "pretrained_weights")
        if flags.FLAGS[name].value != flags.FLAGS[name].default
    ]
    if MODEL_PATH.value and given:  # the file's weights are used: the flag would be ignored
        raise cli.UsageError(
            f"--{given[0]} is for --model (published weights); --model_path={MODEL_PATH.value} "
            "has its own: leave it out."
        )
    if MODEL.value and not PRETRAINED.value:
        raise cli.UsageError(
            f"--model={MODEL.value} has no trained weights without --pretrained; add it, or "
            "pass --model_path=FILE.keras."
        )


def load_model_from_flags(allow_exported: bool = False):
    """`(model, class_names)` from `--model_path`, or `--model` + `--pretrained`.

    Args:
        allow_exported: bool. Accept a `.tflite` / `.onnx` export
            (`deploy.runtimes.ExportedModel`) as `--model_path`.

    Raises:
        cli.UsageError: neither or both were given, or an export where
            only a `.keras` model will do.
    """
    check_model_flags()
    # Imported here: the flags above are defined before TensorFlow loads (`cli.launch`).
    from deit_keras.deploy.pretrained import create_model
    from deit_keras.deploy.runtimes import is_exported, load_for_inference
    from deit_keras.deploy.saving import check_takes_rgb, load_model

    if MODEL_PATH.value and is_exported(MODEL_PATH.value):
        if not allow_exported:
            raise cli.UsageError(
                f"--model_path={MODEL_PATH.value} is an exported file; this command needs the "
                ".keras model it was exported from."
            )
        return load_for_inference(MODEL_PATH.value)
    if MODEL_PATH.value:
        model, class_names = load_model(MODEL_PATH.value, compile=False)
        check_takes_rgb(model, MODEL_PATH.value)
        return model, class_names
    return create_model(MODEL.value, pretrained=PRETRAINED_WEIGHTS.value, require_heads=True), None


def model_description() -> str:
    """How the model was chosen, for a command's messages."""
    if MODEL_PATH.value:
        return MODEL_PATH.value
    return f"{MODEL.value} ({PRETRAINED_WEIGHTS.value} weights)"
