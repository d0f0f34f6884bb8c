"""The DeiT paper's Table 5: top-1 on ImageNet, ImageNet-ReaL and ImageNet-V2.

ReaL top-1 ("Are we done with ImageNet?", Beyer et al. 2020): a prediction
is right when it is one of the image's ReaL labels; images whose set of ReaL
labels is empty are left out of the average (as that paper and the tfds
`imagenet2012_real` page say). ImageNet and V2 top-1 are plain top-1 against
the single label. The prediction is the argmax of the model's inference
output (the mean of both heads for a distilled DeiT, the paper's DeiT⚗).
"""

import time

import keras
import numpy as np
from absl import logging

from deit_keras.data import imagenet_test_sets as data_benchmarks
from deit_keras.data.imagenet_test_set_names import (
    BENCHMARKS,
    DEFAULT_V2_VARIANT,
    IMAGENET,
    REAL,
    V2,
    parse_benchmarks,
)
from deit_keras.data.imagenet_test_sets import NO_LABEL
from deit_keras.errors import UserInputError
from deit_keras.inference.evaluate import (
    check_batch_size,
    class_names_mismatch,
    outputs_function,
)

TITLES = {IMAGENET: "ImageNet", REAL: "ImageNet-ReaL", V2: "ImageNet-V2"}


def real_correct(predictions, label_sets) -> tuple:
    """ReaL counts of a batch: `(right, counted)`.

    Args:
        predictions: int `[B]`. The predicted class of each image.
        label_sets: int `[B, L]`, each row an image's ReaL labels padded with
            `data.imagenet_test_sets.NO_LABEL` (-1); a row of only padding is an image
            without ReaL labels.

    Returns:
        `(right, counted)`: ints, the images whose prediction is in their
        set, and the images with a non-empty set (the denominator).
    """
    predictions = np.asarray(predictions).reshape(-1)
    label_sets = np.asarray(label_sets).reshape(len(predictions), -1)
    has_labels = np.any(label_sets != NO_LABEL, axis=-1)
    hits = np.any(label_sets == predictions[:, None], axis=-1) & has_labels
    return int(hits.sum()), int(has_labels.sum())


def _check_pass(prepared, model, class_names) -> None:
    if prepared.num_classes != model.num_classes:
        raise UserInputError(
            f"{prepared.data.tfds_name!r} has {prepared.num_classes} classes but the model "
            f"has num_classes={model.num_classes}; the benchmarks need an ImageNet-1k model."
        )
    mismatch = class_names_mismatch(class_names, list(prepared.class_names), model.num_classes)
    if mismatch:
        logging.warning(mismatch)


def _run_pass(prepared, outputs_fn, dataset, max_batches) -> dict:
    """Counts of one pass: `{benchmark: (right, counted)}` and the images read."""
    counts = {name: [0, 0] for name in prepared.data.benchmarks}
    images_read = 0
    for index, (images, labels, label_sets) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        predictions = np.argmax(np.asarray(outputs_fn(images)[""]), axis=-1)
        labels = labels.numpy()
        images_read += len(labels)
        for name in counts:
            if name == REAL:
                right, counted = real_correct(predictions, label_sets.numpy())
            else:
                right, counted = int(np.sum(predictions == labels)), len(labels)
            counts[name][0] += right
            counts[name][1] += counted
    return counts, images_read


def _entry(name, prepared, right, counted, images_read) -> dict:
    data = prepared.data
    if counted == 0:
        raise UserInputError(f"{data.tfds_name!r} {data.split!r} gave no images to score {name}.")
    entry = {
        "top1": right / counted,  # a fraction, as the other evaluate numbers
        "num_examples": counted,
        "dataset": data.tfds_name,
        "split": data.split,
        "labels": data.label_set_key if name == REAL else data.label_key,
    }
    if name == REAL:
        entry["num_without_labels"] = images_read - counted
    return entry


def evaluate_benchmarks(
    model: keras.Model,
    benchmarks=BENCHMARKS,
    *,
    class_names: list[str] | None = None,
    data_dir: str | None = None,
    batch_size: int = 64,
    max_batches: int | None = None,
    crop_pct: float | None = None,
    v2_variant: str = DEFAULT_V2_VARIANT,
) -> dict:
    """Top-1 of `model` on the paper's test sets, from the prepared tfds datasets.

    Every dataset asked for is checked before any image is read, so a
    missing one fails at once with the `tfds build` command that prepares it.

    Args:
        model: an ImageNet-1k `DeiT` (or `deploy.runtimes.ExportedModel`).
        benchmarks: str or list of str. A subset of "imagenet", "real", "v2"
            (`data.imagenet_test_set_names.parse_benchmarks`). Defaults to all three.
        class_names: list of str or None. The names saved with the model
            (a warning is logged when they are not ImageNet's).
        data_dir: str or None. The tfds data directory.
        batch_size: int. Evaluation batch size.
        max_batches: int or None. Stop each pass after this many batches.
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        v2_variant: str. The ImageNet-V2 config; the paper's is
            "matched-frequency".

    Returns:
        dict: "model", "distilled", "crop_pct", "seconds" and "benchmarks":
        `{name: {"top1", "num_examples" (the images scored), "dataset",
        "split", "labels"}}` in `BENCHMARKS` order; ReaL's entry adds
        "num_without_labels" (the images left out).
    """
    check_batch_size(batch_size)
    names = parse_benchmarks(benchmarks)
    passes = data_benchmarks.evaluation_passes(names, v2_variant)
    prepared = [data_benchmarks.prepare_pass(data, data_dir) for data in passes]
    for item in prepared:
        _check_pass(item, model, class_names)
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    outputs_fn = outputs_function(model)
    start = time.perf_counter()
    results = {}
    for item in prepared:
        dataset = data_benchmarks.pass_dataset(
            item, image_size=model.image_size, batch_size=batch_size, preprocessing=preprocessing
        )
        counts, images_read = _run_pass(item, outputs_fn, dataset, max_batches)
        for name, (right, counted) in counts.items():
            results[name] = _entry(name, item, right, counted, images_read)
    return {
        "model": model.name,
        "distilled": bool(model.distilled),
        "crop_pct": preprocessing.crop_pct,
        "benchmarks": {name: results[name] for name in names},
        "seconds": time.perf_counter() - start,
    }


def format_benchmarks(report: dict) -> str:
    """The `evaluate_benchmarks` report as a table for people (top-1 in percent, as Table 5)."""
    lines = [f"{'benchmark':<14} {'top-1 %':>8} {'images':>7}  dataset"]
    for name, entry in report["benchmarks"].items():
        source = f"{entry['dataset']} {entry['split']} ({entry['labels']}"
        if "num_without_labels" in entry:
            source += f"; {entry['num_without_labels']} without labels left out"
        lines.append(
            f"{TITLES[name]:<14} {100 * entry['top1']:>8.2f} {entry['num_examples']:>7}  {source})"
        )
    return "\n".join(lines)
