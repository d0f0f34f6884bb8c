"""Top-1/top-5 accuracy of a DeiT (or any classifier) on a labelled dataset.

For a distilled model the headline numbers are those of the inference
output, the mean of the class and distillation heads (DeiT paper, Table 3,
"DeiT⚗: class+distillation"); each head alone is reported too.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from deit_keras.data import pipeline
from deit_keras.deploy.saving import load_model
from deit_keras.distill.step import average_heads


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
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
    raise ValueError(
        f"Labels must be [B] indices or [B, C] one-hot. Received shape: {labels.shape}"
    )


def _cross_entropy(logits, labels):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.sum(log_probs[np.arange(len(labels)), labels]))


def evaluate_outputs(outputs_fn, dataset, num_classes: int, max_batches: int | None = None) -> dict:
    """Accuracy of each named output of a classifier on `dataset`.

    Args:
        outputs_fn: `images -> {prefix: logits}` (numpy or tensors); the
            output named "" is the headline one (`top1`, `top5`, `loss`),
            others are reported as `<prefix>top1`, `<prefix>top5`.
        dataset: iterable of `(images, labels)` batches, labels one-hot
            `[B, num_classes]` or integer `[B]`.
        num_classes: int. Labels must be below it.
        max_batches: int or None. Stop after this many batches.

    Returns:
        dict of top-k percentages, `loss` (mean cross-entropy of the ""
        output), `num_examples`, `seconds` (whole loop) and
        `images_per_second` (forward only, without the first, tracing batch
        when there are several).
    """
    correct, total, loss = {}, 0, 0.0
    forward_seconds, forward_images = 0.0, 0
    start = time.perf_counter()
    for index, (images, labels) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        tick = time.perf_counter()
        outputs = {name: np.asarray(logits) for name, logits in outputs_fn(images).items()}
        batch = len(outputs[""])
        if index > 0:
            forward_seconds += time.perf_counter() - tick
            forward_images += batch
        else:
            first_seconds, first_images = time.perf_counter() - tick, batch
        labels = _labels_to_indices(labels)
        if labels.shape[0] != batch:
            raise ValueError("Images and labels of a batch differ in batch size.")
        if labels.size and labels.max() >= num_classes:
            raise ValueError(
                f"Label {int(labels.max())} out of range for a model with "
                f"num_classes={num_classes}."
            )
        for name, logits in outputs.items():
            for k in (1, 5):
                key = f"{name}top{k}"
                correct[key] = correct.get(key, 0) + top_k_correct(logits, labels, k)
        loss += _cross_entropy(outputs[""], labels)
        total += batch
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


def evaluate_model(model: keras.Model, dataset, max_batches: int | None = None) -> dict:
    """Accuracy of a DeiT on `dataset`, per head and for the averaged heads.

    Args:
        model: a `DeiT` with a classification head.
        dataset: iterable of `(images, labels)` batches (e.g. a `tf.data`
            dataset): images normalised float32 `[B, H, W, 3]`, labels one-hot
            `[B, num_classes]` or integer `[B]`.
        max_batches: int or None. Stop after this many batches.

    Returns:
        The `evaluate_outputs` dict: `top1`, `top5` (of the averaged heads),
        `cls_top1`, `cls_top5` and, for distilled models, `dist_top1`,
        `dist_top5`, plus `loss`, `num_examples`, `seconds`, `images_per_second`.
    """
    if not model.num_classes:
        raise ValueError("Cannot evaluate a model without a head (num_classes=0).")
    size = model.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, model.in_channels], tf.float32)])
    def heads(images):
        cls_logits, dist_logits = model.call_heads(images, training=False)
        outputs = {"": average_heads(cls_logits, dist_logits), "cls_": cls_logits}
        if dist_logits is not None:
            outputs["dist_"] = dist_logits
        return outputs

    def outputs_fn(images):
        if tuple(images.shape[1:3]) != (size, size):
            raise ValueError(
                f"The model takes {size}x{size} images; the dataset gives "
                f"{images.shape[1]}x{images.shape[2]}."
            )
        return heads(tf.cast(images, tf.float32))

    return evaluate_outputs(outputs_fn, dataset, model.num_classes, max_batches)


def classifier_top1(classifier: keras.Model, dataset, num_classes: int) -> float:
    """Top-1 (percent) of any `images -> logits` Keras model, e.g. a teacher."""
    results = evaluate_outputs(
        lambda images: {"": classifier(images, training=False)}, dataset, num_classes
    )
    return results["top1"]


def evaluate_file(
    model_path,
    dataset_name,
    split="eval",
    data_dir=None,
    batch_size=64,
    max_batches=None,
    crop_pct=None,
):
    """Loads `model_path` and evaluates it on the named dataset.

    The images go through `deit_keras.data.pipeline.make_dataset(...,
    training=False)`: the eval resize/centre-crop/normalise, the same as
    `predict` and the exported SavedModel, with the model's own settings
    (`crop_pct`, when given, replaces its crop fraction).

    Returns:
        the `evaluate_model` dict plus model path/name, dataset and split.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    model, _ = load_model(model_path, compile=False)
    info = pipeline.dataset_info(dataset_name, data_dir=data_dir)
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"Dataset {dataset_name!r} has {info.num_classes} classes but the model "
            f"has num_classes={model.num_classes}."
        )
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    dataset = pipeline.make_dataset(
        dataset_name,
        split,
        image_size=model.image_size,
        batch_size=batch_size,
        training=False,
        data_dir=data_dir,
        preprocessing=preprocessing,
    )
    results = evaluate_model(model, dataset, max_batches=max_batches)
    summary = {
        "model_path": model_path,
        "model": model.name,
        "distilled": bool(model.distilled),
        "dataset": dataset_name,
        "split": split,
        "crop_pct": preprocessing.crop_pct,
    }
    summary.update(results)
    return summary
