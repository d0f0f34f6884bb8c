"""Top-1/top-5 accuracy of a saved DeiT on a dataset, or the paper's Table 5 benchmarks.

    python -m deit_keras.evaluate --model_path model.keras --dataset digits \\
        [--split eval] [--data_dir DIR] [--batch_size 64] [--output results.json]
    python -m deit_keras.evaluate --model deit_tiny_patch16_224 --pretrained \\
        --dataset imagenet2012
    python -m deit_keras.evaluate --model deit_base_distilled_patch16_224 --pretrained \\
        --benchmarks imagenet,real,v2 [--v2_variant matched-frequency] [--data_dir DIR]
    python -m deit_keras.evaluate --model_path model_int8.onnx --dataset folder:DIR \\
        --reference_model model.keras   # + top-1 agreement with the fp32 model
"""

import json
import os
import sys

from absl import flags, logging

from deit_keras import cli
from deit_keras.cli import launch, model_source
from deit_keras.data import imagenet_test_set_names as benchmarks
from deit_keras.data.image_check import BAD_IMAGES
from deit_keras.io import paths
from deit_keras.io.atomic import write_text_atomic
from deit_keras.schema import CROP_PCT, POSITIVE

_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "'digits', 'folder:PATH' or a TFDS name, e.g. 'imagenet2012' (or --benchmarks instead).",
)
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks",
    None,
    "Instead of --dataset, the DeiT paper's Table 5 test sets, a subset of "
    f"{','.join(benchmarks.BENCHMARKS)}: ImageNet top-1 (tfds imagenet2012, or "
    "imagenet2012_real's original_label when real is asked for too), ImageNet-ReaL "
    "top-1 (imagenet2012_real; images without ReaL labels left out) and ImageNet-V2 "
    "top-1 (imagenet_v2/<--v2_variant>), each prepared in --data_dir.",
)
_V2_VARIANT = flags.DEFINE_enum(
    "v2_variant",
    benchmarks.DEFAULT_V2_VARIANT,
    list(benchmarks.V2_VARIANTS),
    "The ImageNet-V2 config of --benchmarks=v2 (the paper's: matched-frequency).",
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
_REFERENCE_MODEL = flags.DEFINE_string(
    "reference_model",
    None,
    "With --dataset: a .keras model (or an export) run on the same crops, e.g. the fp32 "
    "model an int8 file was exported from: adds reference_top1 and agreement_with_reference "
    "(share of images with the same top-1 class).",
)

cli.check_path("data_dir", "directory")
cli.check_path("output", "output_file")
cli.check_path("reference_model", "model_input")
cli.check_range("batch_size", POSITIVE)
cli.check_range("max_batches", POSITIVE)
cli.check_range("crop_pct", CROP_PCT)


def format_results(results: dict) -> str:
    """One line per metric, for people."""
    lines = []
    width = max(18, *(len(key) for key in results))
    for key, value in results.items():
        if key == "flags":
            continue
        if isinstance(value, float):
            lines.append(f"{key:>{width}}: {value:.4f}")
        elif not isinstance(value, (dict, list)):
            lines.append(f"{key:>{width}}: {value}")
    return "\n".join(lines)


def _check_flags() -> None:
    """One of --dataset / --benchmarks, and no flag the other one ignores (before any loading)."""
    if bool(_DATASET.value) == bool(_BENCHMARKS.value):
        raise cli.UsageError(
            "Pass either --dataset=NAME or --benchmarks="
            f"{','.join(benchmarks.BENCHMARKS)} (the paper's test sets), not both or neither."
        )
    chosen = benchmarks.parse_benchmarks(_BENCHMARKS.value) if _BENCHMARKS.value else ()
    if flags.FLAGS["v2_variant"].present and benchmarks.V2 not in chosen:
        raise cli.UsageError(
            f"--v2_variant is for --benchmarks with {benchmarks.V2}. Received: "
            + (f"--benchmarks={','.join(_BENCHMARKS.value)}" if _BENCHMARKS.value else "--dataset")
        )
    if _BENCHMARKS.value:
        if _REFERENCE_MODEL.value:
            raise cli.UsageError("--reference_model is for --dataset, not --benchmarks.")
        ignored = [name for name in ("split", "bad_images") if flags.FLAGS[name].present]
        if ignored:
            raise cli.UsageError(
                f"--{ignored[0]} is for --dataset; the benchmarks read each test set's own split."
            )
    cli.check_outputs_spare_inputs(
        {"--output": _OUTPUT.value},
        {
            "--model_path": cli.model_files(model_source.MODEL_PATH.value),
            "--reference_model": cli.model_files(_REFERENCE_MODEL.value),
        },
    )
    model_source.check_runtimes_installed(model_source.MODEL_PATH.value, _REFERENCE_MODEL.value)


def _evaluate(model, class_names) -> tuple:
    """`(summary, lines for people)` of --dataset or --benchmarks."""
    from deit_keras.inference.evaluate import evaluate_on_dataset
    from deit_keras.inference.imagenet_test_sets import evaluate_benchmarks, format_benchmarks

    summary = {"model_path": model_source.model_description()}
    if _BENCHMARKS.value:
        report = evaluate_benchmarks(
            model,
            _BENCHMARKS.value,
            class_names=class_names,
            data_dir=_DATA_DIR.value,
            batch_size=_BATCH_SIZE.value,
            max_batches=_MAX_BATCHES.value,
            crop_pct=_CROP_PCT.value,
            v2_variant=_V2_VARIANT.value,
        )
        summary.update(report)
        return summary, format_benchmarks(report)
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
            reference=_reference_model(model, class_names),
        )
    )
    if _REFERENCE_MODEL.value:
        summary["reference_model"] = _REFERENCE_MODEL.value
    return summary, format_results(summary)


def _reference_model(model, class_names):
    """The --reference_model, with a warning when its class names are not the model's."""
    from deit_keras.deploy.runtimes import load_for_inference
    from deit_keras.inference.evaluate import class_names_mismatch

    if not _REFERENCE_MODEL.value:
        return None
    reference, reference_names = load_for_inference(_REFERENCE_MODEL.value)
    if reference_names:
        mismatch = class_names_mismatch(
            class_names,
            list(reference_names),
            model.num_classes,
            other="--reference_model's",
            measure="agreement",
        )
        if mismatch:
            logging.warning(mismatch)
    return reference


def _check_output_outside_the_dataset() -> None:
    """`--output` may not land among a `folder:` dataset's images (it replaced one): in
    its split or class folders; beside them, at the dataset's top, it is never read."""
    from deit_keras.data.sources import dataset_folder

    folder = dataset_folder(_DATASET.value or "")
    if not (folder and _OUTPUT.value):
        return
    parent = os.path.dirname(os.path.abspath(_OUTPUT.value))
    if paths.is_within(parent, folder) and not paths.is_within(folder, parent):
        raise cli.UsageError(
            "--output lies among the dataset's images (in its split or class folders): "
            f"write it elsewhere. Received: --output={_OUTPUT.value}, --dataset={_DATASET.value}"
        )


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    _check_flags()  # before a model is loaded or downloaded
    model_source.check_model_flags()  # seconds before TensorFlow would have started
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    _check_output_outside_the_dataset()
    model, class_names = model_source.load_model_from_flags(allow_exported=True)
    summary, for_people = _evaluate(model, class_names)
    if _OUTPUT.value:
        summary["flags"] = cli.command_flags_text()
        write_text_atomic(_OUTPUT.value, json.dumps(summary, indent=1) + "\n")
        print(for_people)
        print(f"wrote {_OUTPUT.value}")
    else:
        print(json.dumps(summary, indent=1))


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
