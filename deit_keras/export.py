"""Saving, loading and exporting DeiT models.

Library:
    save_model(model, path, class_names=None)
    load_model(path, compile=True) -> (model, class_names or None)
    export_saved_model(model, out_dir, crop_pct=0.875, class_names=None,
                       extra_files=None)

`.keras` files are written atomically; class names, when known, go to
`<path>.classes.json` beside the model. The SavedModel's `serving_default`
signature takes uint8 images `[B, H, W, 3]` of any size and does the eval
resize/crop/normalisation inside (`deit_keras.serving`), in the style of the
TF Model Garden `export_saved_model` binary/library pair.

Command line:
    python -m deit_keras.export --model_path model.keras --output exported/
"""

import json
import os
import zipfile

from deit_keras import cli  # noqa: F401  (sets TF log level, --verbose)
from deit_keras import io_utils, serving

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402

from deit_keras.models.deit import DeiT  # noqa: E402

CLASSES_SUFFIX = ".classes.json"
SERVING_CONFIG = "deit_serving.json"


def classes_path(path):
    """Where the class names of the model saved at `path` live."""
    return os.fspath(path) + CLASSES_SUFFIX


def _check_class_names(class_names, num_classes):
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"Got {len(class_names)} class names for a model with "
            f"num_classes={num_classes}."
        )
    return class_names


def save_model(model, path, class_names=None):
    """Writes `model` to the `.keras` file `path` atomically.

    Args:
        model: a `DeiT` (compiled or not; the optimizer state is kept).
        path: str. Must end in ".keras".
        class_names: list of str or None. Saved to `<path>.classes.json`;
            when None, a stale classes file from an earlier save is removed.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"The model path must end in '.keras'. Received: {path}")
    if class_names is not None:
        class_names = _check_class_names(class_names, model.num_classes)
    with io_utils.atomic_output(path) as temporary:
        model.save(temporary)
    if class_names is not None:
        io_utils.write_text_atomic(classes_path(path), json.dumps(class_names, indent=1) + "\n")
    elif os.path.exists(classes_path(path)):
        os.remove(classes_path(path))


def _read_class_names(path, num_classes):
    sidecar = classes_path(path)
    if not os.path.exists(sidecar):
        return None
    try:
        with open(sidecar, encoding="utf-8") as handle:
            names = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not read class names {sidecar}: {error}") from error
    if not isinstance(names, list):
        raise ValueError(f"{sidecar} must hold a JSON list of class names.")
    return _check_class_names(names, num_classes)


def load_model(path, compile=True):
    """Loads a `.keras` DeiT and its class names.

    Args:
        path: str. A `.keras` file written by `save_model` (or `model.save`).
        compile: bool. Restore the optimizer and loss when the model was
            saved compiled. Defaults to True.

    Returns:
        `(model, class_names)`; `class_names` is None when none were saved.

    Raises:
        ValueError: with a one-line message when the file is missing, empty,
            not a `.keras` archive, corrupt, or not a DeiT model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Model file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, expected a .keras file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Model file {path} is empty.")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model file (a zip archive ending in .keras).")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many types for corrupt archives.
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"Could not load {path}: {type(error).__name__}: {message}") from error
    if not isinstance(model, DeiT):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a deit_keras DeiT model.")
    return model, _read_class_names(path, model.num_classes)


def serving_function(model, crop_pct=serving.DEFAULT_CROP_PCT):
    """A `tf.function` mapping uint8 `[B, H, W, 3]` images to probabilities and logits.

    The logits are the model's inference output (the mean of both heads for
    a distilled model).
    """
    serving.check_crop_pct(crop_pct)
    if not model.num_classes:
        raise ValueError("Cannot export a model without a head (num_classes=0).")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        inputs = serving.preprocess(images, model.image_size, crop_pct)
        logits = tf.cast(model(inputs, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}

    return serve


def export_saved_model(
    model, out_dir, crop_pct=serving.DEFAULT_CROP_PCT, class_names=None, extra_files=None
):
    """Exports `model` as a SavedModel with a uint8 `serving_default` signature.

    Signature `serving_default`: `images` uint8 `[B, H, W, 3]` (any H, W) ->
    `{"probabilities": float32 [B, C], "logits": float32 [B, C]}`. The
    directory also holds `deit_serving.json` (image size, crop_pct, class
    names). It is written atomically: on failure `out_dir` is left as it was.

    Args:
        model: a `DeiT` with a classification head.
        out_dir: str. Output directory (replaced if it exists).
        crop_pct: float in (0, 1]. Eval crop fraction. Defaults to 0.875.
        class_names: list of str or None. Recorded in `deit_serving.json`.
        extra_files: dict of file name -> text to write into `out_dir`
            (e.g. the command's flags).
    """
    serve = serving_function(model, crop_pct)
    if class_names is not None:
        class_names = _check_class_names(class_names, model.num_classes)
    config = {
        "signature": "serving_default",
        "inputs": {"images": "uint8 [batch, height, width, 3], any height and width"},
        "outputs": {"probabilities": "float32 [batch, num_classes]",
                    "logits": "float32 [batch, num_classes]"},
        "image_size": model.image_size,
        "crop_pct": crop_pct,
        "num_classes": model.num_classes,
        "distilled": model.distilled,
        "class_names": class_names,
    }
    with io_utils.atomic_output(out_dir) as temporary:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve)
        archive.write_out(temporary, verbose=False)
        files = {SERVING_CONFIG: json.dumps(config, indent=1) + "\n"}
        files.update(extra_files or {})
        for name, text in files.items():
            with open(os.path.join(temporary, name), "w", encoding="utf-8") as handle:
                handle.write(text)


# === Command line ===
# Flags are defined only when this module runs as a program, so that library
# users (train, evaluate) can import it without duplicate-flag errors.


def quiet_logging():
    """Hides TensorFlow's INFO log lines in CLIs unless --verbosity was given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")


def main(argv):
    quiet_logging()
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    model, class_names = load_model(_MODEL_PATH.value, compile=False)
    export_saved_model(
        model, _OUTPUT.value, crop_pct=_CROP_PCT.value, class_names=class_names,
        extra_files={"flags.txt": flags.FLAGS.flags_into_string()},
    )
    print(f"Exported {_MODEL_PATH.value} to {os.path.abspath(_OUTPUT.value)} "
          "(serving_default: uint8 [B, H, W, 3] -> probabilities, logits)")


if __name__ == "__main__":
    _MODEL_PATH = flags.DEFINE_string("model_path", None, "The .keras model to export.")
    _OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory to write (replaced).")
    _CROP_PCT = flags.DEFINE_float(
        "crop_pct", serving.DEFAULT_CROP_PCT,
        "Eval crop fraction: the shorter side is resized to image_size / crop_pct.",
    )
    flags.mark_flags_as_required(["model_path", "output"])
    cli.run(main)
