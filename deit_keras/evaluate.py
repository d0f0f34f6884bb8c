"""Top-1/top-5 accuracy of a DeiT on a labelled dataset.

Library:
    evaluate_model(model, dataset, max_batches=None) -> dict

For a distilled model the headline numbers are those of the inference
output, the mean of the class and distillation heads (DeiT paper, Table 3,
"DeiT⚗: class+distillation"); each head alone is reported too.

Command line:
    python -m deit_keras.evaluate --model_path model.keras --dataset digits \\
        [--split eval] [--data_dir DIR] [--batch_size 64] [--output results.json]
"""

import json
import time

import numpy as np

from deit_keras import cli, export, io_utils

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402


def _top_k_correct(logits, labels, k):
    """Number of rows whose label is among the `k` largest logits."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return int(np.sum(np.any(top == labels[:, None], axis=-1)))


def _labels_to_indices(labels):
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot (or smoothed) [B, C]
        return np.argmax(labels, axis=-1)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    raise ValueError(f"Labels must be [B] indices or [B, C] one-hot. Received shape: {labels.shape}")


def _cross_entropy(logits, labels):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.sum(log_probs[np.arange(len(labels)), labels]))


def evaluate_model(model, dataset, max_batches=None):
    """Accuracy of `model` on `dataset`, per head and for the averaged heads.

    Args:
        model: a `DeiT` with a classification head.
        dataset: iterable of `(images, labels)` batches (e.g. a `tf.data`
            dataset): images normalised float32 `[B, H, W, 3]`, labels one-hot
            `[B, num_classes]` or integer `[B]`.
        max_batches: int or None. Stop after this many batches.

    Returns:
        dict with `top1`, `top5` (percent, of the averaged heads), `cls_top1`,
        `cls_top5` and, for distilled models, `dist_top1`, `dist_top5`;
        `loss` (mean cross-entropy of the inference logits), `num_examples`,
        `seconds` (whole loop) and `images_per_second` (model forward only,
        without the first, tracing batch when there are several).
    """
    if not model.num_classes:
        raise ValueError("Cannot evaluate a model without a head (num_classes=0).")

    size = model.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, model.in_channels], tf.float32)])
    def heads(images):
        cls_logits, dist_logits = model.call_heads(images, training=False)
        if dist_logits is None:
            return cls_logits, cls_logits
        return cls_logits, dist_logits

    names = ("", "cls_", "dist_") if model.distilled else ("", "cls_")
    correct = {f"{name}top{k}": 0 for name in names for k in (1, 5)}
    total = 0
    loss = 0.0
    forward_seconds, forward_images = 0.0, 0
    start = time.perf_counter()
    for index, (images, labels) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        tick = time.perf_counter()
        if tuple(images.shape[1:3]) != (size, size):
            raise ValueError(
                f"The model takes {size}x{size} images; the dataset gives "
                f"{images.shape[1]}x{images.shape[2]}."
            )
        cls_logits, dist_logits = heads(tf.cast(images, tf.float32))
        cls_logits, dist_logits = cls_logits.numpy(), dist_logits.numpy()
        if index > 0:
            forward_seconds += time.perf_counter() - tick
            forward_images += len(cls_logits)
        else:
            first_seconds, first_images = time.perf_counter() - tick, len(cls_logits)
        labels = _labels_to_indices(labels)
        if labels.shape[0] != cls_logits.shape[0]:
            raise ValueError("Images and labels of a batch differ in batch size.")
        if labels.size and labels.max() >= model.num_classes:
            raise ValueError(
                f"Label {int(labels.max())} out of range for a model with "
                f"num_classes={model.num_classes}."
            )
        outputs = {"cls_": cls_logits}
        if model.distilled:
            outputs["dist_"] = dist_logits
            outputs[""] = (cls_logits + dist_logits) / 2
        else:
            outputs[""] = cls_logits
        for name in names:
            for k in (1, 5):
                correct[f"{name}top{k}"] += _top_k_correct(outputs[name], labels, k)
        loss += _cross_entropy(outputs[""], labels)
        total += len(labels)
    seconds = time.perf_counter() - start
    if total == 0:
        raise ValueError("The dataset yielded no examples.")
    if forward_images == 0:  # a single batch: include its tracing time
        forward_seconds, forward_images = first_seconds, first_images
    results = {key: 100.0 * value / total for key, value in correct.items()}
    results.update(
        loss=loss / total,
        num_examples=total,
        seconds=seconds,
        images_per_second=forward_images / max(forward_seconds, 1e-9),
    )
    return results


def format_results(results):
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


def evaluate_file(model_path, dataset_name, split="eval", data_dir=None, batch_size=64,
                  max_batches=None, crop_pct=0.875):
    """Loads `model_path` and evaluates it on the named dataset.

    The images go through `deit_keras.data.pipeline.make_dataset(...,
    training=False)`: the eval resize/centre-crop/normalise, the same as
    `predict` and the exported SavedModel.

    Returns:
        the `evaluate_model` dict plus model path/name, dataset and split.
    """
    from deit_keras.augment import AugmentConfig  # lazily: the data stack is heavy
    from deit_keras.data import pipeline

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    model, _ = export.load_model(model_path, compile=False)
    info = pipeline.dataset_info(dataset_name, data_dir=data_dir)
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"Dataset {dataset_name!r} has {info.num_classes} classes but the model "
            f"has num_classes={model.num_classes}."
        )
    dataset = pipeline.make_dataset(
        dataset_name, split, image_size=model.image_size, batch_size=batch_size,
        training=False, data_dir=data_dir, augment=AugmentConfig(crop_pct=crop_pct),
    )
    results = evaluate_model(model, dataset, max_batches=max_batches)
    summary = {
        "model_path": model_path,
        "model": model.name,
        "distilled": bool(model.distilled),
        "dataset": dataset_name,
        "split": split,
        "crop_pct": crop_pct,
    }
    summary.update(results)
    return summary


# === Command line ===
# Flags are defined only when run as a program (train imports this module).


def main(argv):
    export.quiet_logging()
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    summary = evaluate_file(
        _MODEL_PATH.value, _DATASET.value, split=_SPLIT.value, data_dir=_DATA_DIR.value,
        batch_size=_BATCH_SIZE.value, max_batches=_MAX_BATCHES.value,
        crop_pct=_CROP_PCT.value,
    )
    if _OUTPUT.value:
        summary["flags"] = flags.FLAGS.flags_into_string()
        io_utils.write_text_atomic(_OUTPUT.value, json.dumps(summary, indent=1) + "\n")
        print(format_results(summary))
        print(f"wrote {_OUTPUT.value}")
    else:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    _MODEL_PATH = flags.DEFINE_string("model_path", None, "The .keras model to evaluate.")
    _DATASET = flags.DEFINE_string(
        "dataset", None, "'digits', 'folder:PATH' or a TFDS name, e.g. 'imagenet2012'."
    )
    _SPLIT = flags.DEFINE_enum("split", "eval", ["train", "eval"], "Which split.")
    _DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.")
    _MAX_BATCHES = flags.DEFINE_integer("max_batches", None, "Stop after this many batches.")
    _CROP_PCT = flags.DEFINE_float(
        "crop_pct", 0.875, "Eval crop fraction: the shorter side is resized to image_size / crop_pct."
    )
    _OUTPUT = flags.DEFINE_string(
        "output", None, "Write the JSON summary here (atomically) instead of stdout."
    )
    flags.mark_flags_as_required(["model_path", "dataset"])
    cli.run(main)
