"""Top-k predictions of a DeiT for image files.

python -m deit_keras.predict --model_path model.keras cat.jpg dog.png [--json]
python -m deit_keras.predict --model_path model.keras photos/ [--bad_images=skip]
python -m deit_keras.predict --model deit_small_patch16_224 --pretrained cat.jpg

Per image, the path, then one `  <class name> <probability>` line per class
(`  tabby, tabby cat 0.87`). `--json` prints one JSON document instead (and
nothing else on stdout): `[{"file", "predictions": [{"class_index",
"class_name", "probability"}, ...]}, ...]`; `--output` writes the same
document to a file.
"""

import json
import os
import sys

from absl import flags

from deit_keras import cli
from deit_keras.cli import launch, model_source
from deit_keras.data.labels import IMAGENET, INDEX, resolve_class_names
from deit_keras.inference.predict_defaults import PREDICT_BATCH_SIZE
from deit_keras.io.atomic import write_text_atomic
from deit_keras.io.images import image_files
from deit_keras.schema import CROP_PCT, POSITIVE

_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes to show per image.")
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    PREDICT_BATCH_SIZE,
    "Images per forward pass (memory holds one batch, however many files).",
)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the predictions as JSON here.")
_BAD_IMAGES = flags.DEFINE_enum(
    "bad_images",
    "fail",
    ["fail", "skip"],
    "A file that does not decode: fail names it before any model work; skip predicts the "
    "others and lists the skipped ones on stderr.",
)
_JSON = flags.DEFINE_bool(
    "json", False, "Print the predictions as one JSON document (nothing else on stdout)."
)
cli.check_path("output", "output_file")
flags.register_validator(  # a .csv name got JSON
    "output",
    lambda path: not path or os.path.splitext(path)[1].lower() in ("", ".json"),
    "--output writes JSON: name a .json file (or one without an extension).",
)
cli.check_range("top_k", POSITIVE)
cli.check_range("batch_size", POSITIVE)
cli.check_range("crop_pct", CROP_PCT)

# Where the class names came from, when it is worth saying (on stderr).
_NAMES_NOTE = {
    IMAGENET: "no class names stored with the model: 1000 classes, shown with ImageNet-1k names",
    INDEX: "no class names stored with the model: classes shown as class_<index>",
}


def format_predictions(paths: list[str], predictions: list) -> str:
    """Text for people: the path, then one `  name probability` line per class."""
    lines = []
    for path, top in zip(paths, predictions, strict=True):
        lines.append(path)
        lines.extend(f"  {name} {probability:.2f}" for name, _, probability in top)
    return "\n".join(lines)


def prediction_records(paths: list[str], predictions: list) -> list[dict]:
    """The `--json` / `--output` document: one record per image."""
    return [
        {
            "file": path,
            "predictions": [
                {"class_index": index, "class_name": name, "probability": probability}
                for name, index, probability in top
            ],
        }
        for path, top in zip(paths, predictions, strict=True)
    ]


def main(argv: list[str]) -> None:
    if not argv[1:]:
        raise cli.UsageError("Give at least one image path (files or folders).")
    paths = image_files(argv[1:])
    cli.check_outputs_spare_inputs(
        {"--output": _OUTPUT.value},
        {"--model_path": cli.model_files(model_source.MODEL_PATH.value), "an image": paths},
    )
    model_source.check_runtimes_installed(model_source.MODEL_PATH.value)
    model_source.check_model_flags()  # seconds before TensorFlow would have started
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    from deit_keras.inference.predict import predict_images, read_images, split_decodable

    if _BAD_IMAGES.value == "skip":
        paths = _without_bad_images(paths, split_decodable)
    images = read_images(paths, _BATCH_SIZE.value)  # all checked before the model loads
    model, class_names = model_source.load_model_from_flags(allow_exported=True)
    predictions = predict_images(
        model,
        images,
        class_names,
        crop_pct=_CROP_PCT.value,
        top_k=_TOP_K.value,
        batch_size=_BATCH_SIZE.value,
    )
    source = resolve_class_names(model.num_classes, class_names)[1]
    records = prediction_records(paths, predictions)
    if _OUTPUT.value:  # before printing: a closed pipe on stdout must not lose the file
        write_text_atomic(_OUTPUT.value, json.dumps(records, indent=1) + "\n")
    if _JSON.value:
        print(json.dumps(records, indent=1))
    else:
        print(format_predictions(paths, predictions))
    if source in _NAMES_NOTE:
        print(f"({_NAMES_NOTE[source]})", file=sys.stderr)


def _without_bad_images(paths: list[str], split_decodable) -> list[str]:
    """The paths that decode; one stderr line for those skipped (none left: an error)."""
    kept, skipped = split_decodable(paths)
    if skipped:
        reasons = "; ".join(reason for _, reason in skipped[:3])
        rest = ", ".join(path for path, _ in skipped[3:])
        also = f"; also {rest}" if rest else ""
        print(f"skipped {len(skipped)} of {len(paths)} files: {reasons}{also}", file=sys.stderr)
    if not kept:
        raise cli.UsageError(f"None of the {len(paths)} files decodes as an image.")
    return kept


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
