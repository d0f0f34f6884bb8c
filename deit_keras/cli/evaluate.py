"""Top-1/top-5 accuracy of a saved DeiT on a dataset.

    python -m deit_keras.evaluate --model_path model.keras --dataset digits \\
        [--split eval] [--data_dir DIR] [--batch_size 64] [--output results.json]
    python -m deit_keras.evaluate --model deit_tiny_patch16_224 --pretrained \
        --dataset imagenet2012
"""

import json

from absl import flags

from deit_keras import cli
from deit_keras.cli import model_source
from deit_keras.data.image_check import BAD_IMAGES
from deit_keras.inference.evaluate import check_batch_size, evaluate_on_dataset
from deit_keras.io.atomic import write_text_atomic
from deit_keras.schema import FRACTION, POSITIVE

_DATASET = flags.DEFINE_string(
    "dataset", None, "'digits', 'folder:PATH' or a TFDS name, e.g. 'imagenet2012'."
)
_SPLIT = flags.DEFINE_enum("split", "eval", ["train", "eval"], "Which split.")
_BAD_IMAGES = flags.DEFINE_enum(
    "bad_images",
    "skip",
    list(BAD_IMAGES),
    "A folder: dataset's files that do not decode: skip (counted, listed in the "
    "results) or fail naming the first.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", None, "Stop after this many batches.")
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Write the JSON summary here (atomically) instead of stdout."
)

cli.check_path("data_dir", "directory")
cli.check_path("output", "output_file")
cli.check_range("batch_size", POSITIVE)
cli.check_range("max_batches", POSITIVE)
cli.check_range("crop_pct", FRACTION)


def format_results(results: dict) -> str:
    """One line per metric, for people."""
    lines = []
    for key, value in results.items():
        if key == "flags":
            continue
        if isinstance(value, float):
            lines.append(f"{key:>18}: {value:.4f}")
        elif not isinstance(value, (dict, list)):
            lines.append(f"{key:>18}: {value}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    check_batch_size(_BATCH_SIZE.value)  # before a model is loaded or downloaded
    model, class_names = model_source.load_model_from_flags(allow_exported=True)
    summary = {"model_path": model_source.model_description()}
    summary.update(
        evaluate_on_dataset(
            model,
            _DATASET.value,
            class_names=class_names,
            split=_SPLIT.value,
            data_dir=_DATA_DIR.value,
            batch_size=_BATCH_SIZE.value,
            max_batches=_MAX_BATCHES.value,
            crop_pct=_CROP_PCT.value,
            bad_images=_BAD_IMAGES.value,
        )
    )
    if _OUTPUT.value:
        summary["flags"] = flags.FLAGS.flags_into_string()
        write_text_atomic(_OUTPUT.value, json.dumps(summary, indent=1) + "\n")
        print(format_results(summary))
        print(f"wrote {_OUTPUT.value}")
    else:
        print(json.dumps(summary, indent=1))


def run() -> None:
    flags.mark_flags_as_required(["dataset"])
    cli.run(main)


if __name__ == "__main__":
    run()
