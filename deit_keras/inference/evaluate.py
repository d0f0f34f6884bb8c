"""Top-1/top-5 accuracy of a DeiT (or any classifier) on a labelled dataset.

For a distilled model the headline numbers are those of the inference
output, the mean of the class and distillation heads (DeiT paper, Table 3,
"DeiT⚗: class+distillation"); each head alone is reported too.
"""

import dataclasses
import functools
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from deit_keras.data import pipeline
from deit_keras.data.labels import (
    IMAGENET_200_SUBSETS,
    IMAGENET_NUM_CLASSES,
    INDEX,
    imagenet_class_index,
    imagenet_subset_indices,
    resolve_class_names,
)
from deit_keras.data.sources import dataset_folder, tfds_base_name
from deit_keras.deploy.runtimes import load_for_inference
from deit_keras.distill.step import average_heads
from deit_keras.errors import UserInputError
from deit_keras.models import cpu_predict


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Number of rows whose label is among the `k` largest logits."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return int(np.sum(np.any(top == labels[:, None], axis=-1)))


def _labels_to_indices(labels):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == 1:  # [B, 1] indices (keras.datasets' y)
        labels = labels[:, 0]
    if labels.ndim == 2:  # one-hot (or smoothed) [B, C]
        return np.argmax(labels, axis=-1)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    raise UserInputError(
        f"Labels must be [B] indices or [B, C] one-hot. Received shape: {labels.shape}"
    )


def _cross_entropy(logits, labels):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.sum(log_probs[np.arange(len(labels)), labels]))


@dataclasses.dataclass(frozen=True)
class ClassSubset:
    """Scoring over some of a model's classes (ImageNet-A's and -R's 200 of ImageNet's 1000).

    Args:
        name: str. What the classes are, for the summary.
        columns: tuple of ints. The model's logits kept, in order.
        positions: int numpy array. Each dataset label's place among `columns`
            (-1: a label outside them).
    """

    name: str
    columns: tuple
    positions: np.ndarray

    def select(self, logits: np.ndarray, labels: np.ndarray) -> tuple:
        """`(logits of the columns, labels as places among them)`."""
        places = self.positions[labels]
        if np.any(places < 0):
            outside = int(labels[np.argmin(places)])
            raise UserInputError(f"Label {outside} is not one of the {self.name} classes.")
        return logits[:, list(self.columns)], places


def evaluate_outputs(
    outputs_fn,
    dataset,
    num_classes: int,
    max_batches: int | None = None,
    reference_fn=None,
    class_subset: ClassSubset | None = None,
) -> dict:
    """Accuracy of each named output of a classifier on `dataset`.

    Args:
        outputs_fn: `images -> {prefix: logits}` (numpy or tensors); the
            output named "" is the headline one (`top1`, `top5`, `loss`),
            others are reported as `<prefix>top1`, `<prefix>top5`.
        dataset: iterable of `(images, labels)` batches, labels one-hot
            `[B, num_classes]` or integer `[B]`.
        num_classes: int. Labels must be below it.
        class_subset: `ClassSubset` or None. Score over its classes only.
        max_batches: int or None. Stop after this many batches.
        reference_fn: another `outputs_fn` or None. When given, its ""
            output runs on the same images (outside `images_per_second`,
            inside `seconds`) and is reported as `reference_top1` and
            `agreement_with_reference`, the fraction of images whose top-1
            class is the same in both.

    Returns:
        dict of top-k accuracies as fractions in [0, 1] (the unit of the
        Keras logs' `top1`), `loss` (mean cross-entropy of the ""
        output), `num_examples`, `seconds` (whole loop) and
        `images_per_second` (forward only, without the first, tracing batch
        when there are several; on a CPU a last, smaller batch of a large
        model may run in fewer shards and trace that graph inside the timing).
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
            raise UserInputError("Images and labels of a batch differ in batch size.")
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            unlabelled = " (an unlabelled split's -1: evaluate a labelled one)"
            unlabelled = unlabelled if outside[0] < 0 else ""
            raise UserInputError(
                f"Label {int(outside[0])} out of range for a model with "
                f"num_classes={num_classes}{unlabelled}."
            )
        scored = labels
        if class_subset is not None:
            for name, logits in outputs.items():
                outputs[name], scored = class_subset.select(logits, labels)
        for name, logits in outputs.items():
            for k in (1, 5):
                key = f"{name}top{k}"
                correct[key] = correct.get(key, 0) + top_k_correct(logits, scored, k)
        if reference_fn is not None:
            reference_logits = np.asarray(reference_fn(images)[""])
            if class_subset is not None:
                reference_logits, _ = class_subset.select(reference_logits, labels)
            _count_reference(correct, outputs[""], reference_logits, scored)
        loss += _cross_entropy(outputs[""], scored)
        total += batch
    seconds = time.perf_counter() - start
    if total == 0:
        raise UserInputError("The dataset yielded no examples.")
    if forward_images == 0:  # a single batch: include its tracing time
        forward_seconds, forward_images = first_seconds, first_images
    results = {key: value / total for key, value in correct.items()}  # fractions, as Keras
    results.update(
        loss=loss / total,
        num_examples=total,
        seconds=seconds,
        images_per_second=forward_images / max(forward_seconds, 1e-9),
    )
    return results


def _count_reference(correct, logits, reference_logits, labels):
    """Adds a batch's reference top-1 hits and top-1 agreements to `correct`."""
    agree = int(np.sum(np.argmax(logits, -1) == np.argmax(reference_logits, -1)))
    correct["agreement_with_reference"] = correct.get("agreement_with_reference", 0) + agree
    hits = top_k_correct(reference_logits, labels, 1)
    correct["reference_top1"] = correct.get("reference_top1", 0) + hits


def evaluate_model(
    model: keras.Model,
    dataset,
    max_batches: int | None = None,
    reference=None,
    class_subset: ClassSubset | None = None,
) -> dict:
    """Accuracy of a DeiT on `dataset`, per head and for the averaged heads.

    Args:
        model: a `DeiT` with a classification head, or a
            `deploy.runtimes.ExportedModel` (a `.tflite` / `.onnx` / `.xml` export).
        dataset: iterable of `(images, labels)` batches (e.g. a `tf.data`
            dataset): images normalised float32 `[B, H, W, 3]`, labels one-hot
            `[B, num_classes]` or integer `[B]`.
        max_batches: int or None. Stop after this many batches.
        reference: a model as `model` or None, e.g. the fp32 `.keras` model an
            int8 export was made from (`check_reference`): its top-1 and the
            top-1 agreement with it are reported too.
        class_subset: `ClassSubset` or None. Score over its classes only
            (the dataset's labels index the model's classes, or its places).

    Returns:
        The `evaluate_outputs` dict: `top1`, `top5` (of the averaged heads),
        `cls_top1`, `cls_top5` and, for distilled models, `dist_top1`,
        `dist_top5`, plus `loss`, `num_examples`, `seconds`, `images_per_second`
        (and `reference_top1`, `agreement_with_reference` with a reference).
    """
    reference_fn = None
    if reference is not None:
        check_reference(model, reference)
        reference_fn = outputs_function(reference)
    num_classes = model.num_classes if class_subset is None else len(class_subset.positions)
    return evaluate_outputs(
        outputs_function(model), dataset, num_classes, max_batches, reference_fn, class_subset
    )


def check_reference(model, reference) -> None:
    """Raises `UserInputError` unless `reference` takes `model`'s images and classes.

    Both must see the same normalised crops to be compared image by image:
    the same image size, number of classes and normalisation (mean, std).
    """
    theirs = (reference.image_size, reference.num_classes)
    ours = (model.image_size, model.num_classes)
    if theirs != ours:
        raise UserInputError(
            "The reference model must take the same images and classes as the model: "
            f"(image_size, num_classes) {ours}. Received: {theirs}"
        )
    normalisation = (reference.preprocessing.mean, reference.preprocessing.std)
    if normalisation != (model.preprocessing.mean, model.preprocessing.std):
        raise UserInputError(
            "The reference model normalises images otherwise than the model: mean, std "
            f"{(model.preprocessing.mean, model.preprocessing.std)}. Received: {normalisation}"
        )


def head_outputs(model, images):
    """`{"": averaged heads, "cls_": class head[, "dist_": distillation head]}` of `images`."""
    cls_logits, dist_logits = model.call_heads(images, training=False)
    outputs = {"": average_heads(cls_logits, dist_logits), "cls_": cls_logits}
    if dist_logits is not None:
        outputs["dist_"] = dist_logits
    return outputs


def batch_spec(model):
    """The `tf.TensorSpec` of a batch of the model's input images, any batch size."""
    size = model.image_size
    return tf.TensorSpec([None, size, size, model.in_channels], tf.float32)


def outputs_function(model: keras.Model):
    """`images -> {"": averaged heads, "cls_": class head[, "dist_": distillation head]}`.

    Args:
        model: a `DeiT` with a classification head, or a
            `deploy.runtimes.ExportedModel`.

    Returns:
        A function of a batch of normalised `[B, H, W, 3]` images of the
        model's size (UserInputError for another size). For a Keras model,
        traced once for each shard count its batches use (on a CPU, batches
        with the work for it run in shards, as in `predict_on_batch`).
    """
    if not model.num_classes:
        raise UserInputError("Cannot evaluate a model without a head (num_classes=0).")
    size = model.image_size
    heads = functools.partial(head_outputs, model)
    if isinstance(model, keras.Model):  # an ExportedModel runs in its own runtime
        heads = _traced_by_shards(heads, batch_spec(model), _cpu_flops_per_image(model))

    def outputs_fn(images):
        if tuple(images.shape[1:3]) != (size, size):
            raise UserInputError(
                f"The model takes {size}x{size} images; the dataset gives "
                f"{images.shape[1]}x{images.shape[2]}."
            )
        return heads(tf.cast(images, tf.float32))

    return outputs_fn


def _cpu_flops_per_image(model):
    """The model's FLOPs an image when its batches may run in shards here, else None."""
    if cpu_predict.cpu_only() and hasattr(model, "flops_per_image"):
        return model.flops_per_image()
    return None


def _traced_by_shards(heads, spec, flops_per_image):
    """`heads`, run in shards for batches with the work for them (`flops_per_image` not None).

    As in `predict_on_batch` (`models/cpu_predict.py`), with one function per
    shard count, made when a batch first needs it, rather than a `tf.cond` over
    all of them: training evaluates with a new function after every run (the
    multi-worker loop at every validation), and a small model's batches then
    trace only the plain graph they run. Every count calls the one traced
    `heads`. A batch of unknown size (inside another `tf.function`) is not split.
    """
    traced_heads = cpu_predict.traced_once(heads, spec)
    functions = {1: traced_heads}

    def run(images):
        shards = 1
        if flops_per_image is not None and images.shape[0] is not None:
            shards = cpu_predict.shards_for(images.shape[0], flops_per_image)
        if shards not in functions:
            in_shards = _in_shards(traced_heads, shards)
            functions[shards] = tf.function(in_shards, input_signature=[spec])
        return functions[shards](images)

    return run


def _in_shards(heads, shards):
    """`images -> heads(images)` computed in `shards` parts."""
    return lambda images: cpu_predict.sharded_forward(heads, images, shards)


def classifier_top1(classifier: keras.Model, dataset, num_classes: int) -> float:
    """Top-1 (a fraction in [0, 1]) of any `images -> logits` Keras model, e.g. a teacher."""
    results = evaluate_outputs(
        lambda images: {"": classifier(images, training=False)}, dataset, num_classes
    )
    return results["top1"]


def class_names_mismatch(
    model_names: list[str] | None,
    dataset_names: list[str],
    num_classes: int,
    *,
    other: str = "the dataset's",
    measure: str = "accuracy",
) -> str | None:
    """Why the model's classes may not be the dataset's, or None when their names agree.

    Both sides are named by `data.labels.resolve_class_names` (so ImageNet
    synset ids and lemmas compare equal). A model whose classes are only
    `class_<index>` is not compared.

    Args:
        model_names: list of str or None. The names saved with the model.
        dataset_names: list of str. The dataset's label names, index = label.
        num_classes: int. The number of classes of both.
        other: str. Whose names `dataset_names` are, in the message (e.g. a
            reference model's).
        measure: str. What the label order matters to, in the message.

    Returns:
        A one-line message naming the first class that differs, or None.
    """
    names, source = resolve_class_names(num_classes, model_names)
    if source == INDEX or len(dataset_names) != num_classes:
        return None
    by_index = list(dataset_names) == [str(index) for index in range(num_classes)]
    if by_index and not all(name.isdecimal() for name in names):
        return None  # folders named by class index (ImageNet-V2's 0..999) for a named model
    expected, _ = resolve_class_names(num_classes, dataset_names)
    raw = list(model_names) if model_names is not None else names
    pairs = zip(names, expected, raw, dataset_names, strict=True)
    for index, (name, label, raw_name, raw_label) in enumerate(pairs):
        if name != label and str(raw_name) != str(raw_label):  # a synset id vs its lemma: one
            return (
                f"The model's class names differ from {other} (first at index {index}: "
                f"{raw_name!r} vs {raw_label!r}); {measure} assumes both use the same label "
                "order."
            )
    return None


def check_batch_size(batch_size: int) -> None:
    """Raises a one-line ValueError unless `batch_size` is positive (before any loading)."""
    if batch_size <= 0:
        raise UserInputError(f"batch_size must be positive. Received: batch_size={batch_size}")


def evaluate_file(
    model_path: str,
    dataset_name: str,
    split: str = "eval",
    data_dir: str | None = None,
    batch_size: int = 64,
    max_batches: int | None = None,
    crop_pct: float | None = None,
) -> dict:
    """Loads `model_path` and evaluates it on the named dataset (`evaluate_on_dataset`).

    Returns:
        the `evaluate_on_dataset` dict plus `model_path`.
    """
    check_batch_size(batch_size)
    model, class_names = load_for_inference(model_path)
    summary = {"model_path": model_path}
    summary.update(
        evaluate_on_dataset(
            model,
            dataset_name,
            class_names=class_names,
            split=split,
            data_dir=data_dir,
            batch_size=batch_size,
            max_batches=max_batches,
            crop_pct=crop_pct,
        )
    )
    return summary


def class_subset_of(
    dataset_name: str, info, num_classes: int, model_class_names: list[str] | None = None
) -> ClassSubset | None:
    """The model's classes a dataset is scored over, when they are not its labels as they
    are; else None.

    ImageNet-A and ImageNet-R (tfds `imagenet_a`, `imagenet_r`: 1000-class labels)
    are scored over their 200 classes (`labels.IMAGENET_200_SUBSETS`); a folder
    dataset whose class folders are ImageNet synset ids (their releases' own
    layout, `n01498041/...`), or ImageNet class indices (ImageNet-V2's `0/`...`999/`)
    fewer than 1000, over those classes. A dataset whose classes are all among the
    model's names (`model_class_names`), in another order or fewer, is scored over
    those by name.
    """
    base = tfds_base_name(dataset_name)
    if base in IMAGENET_200_SUBSETS:
        if num_classes != IMAGENET_NUM_CLASSES:
            raise UserInputError(
                f"{dataset_name} is scored over 200 of ImageNet's {IMAGENET_NUM_CLASSES} "
                f"classes: it needs an ImageNet-1k model. Received: num_classes={num_classes}"
            )
        columns = imagenet_subset_indices(base)
        positions = np.full(IMAGENET_NUM_CLASSES, -1)
        positions[list(columns)] = np.arange(len(columns))
        return ClassSubset(f"{base} (200 ImageNet classes)", columns, positions)
    index_of = imagenet_class_index()
    names = list(info.class_names)
    if (
        num_classes == IMAGENET_NUM_CLASSES
        and info.num_classes < num_classes
        and all(name in index_of for name in names)
    ):
        columns = tuple(index_of[name] for name in names)
        name = f"the dataset's {len(columns)} ImageNet classes"
        return ClassSubset(name, columns, np.arange(len(columns)))
    # Only class folders name ImageNet classes by index (ImageNet-V2's layout); a tfds
    # dataset's numbered classes (`digits`, `mnist`) are its own.
    numbered = dataset_folder(dataset_name) is not None and all(
        name.isdecimal() and int(name) < num_classes for name in names
    )
    if num_classes == IMAGENET_NUM_CLASSES and info.num_classes < num_classes and numbered:
        columns = tuple(int(name) for name in names)
        name = f"the dataset's {len(columns)} ImageNet classes (by index)"
        return ClassSubset(name, columns, np.arange(len(columns)))
    return _classes_by_name(names, model_class_names, num_classes)


def _classes_by_name(dataset_names, model_names, num_classes) -> ClassSubset | None:
    """The model's classes in the dataset's label order when each of the dataset's is one
    of the model's by name (as saved, or as `resolve_class_names` shows it) and the
    order or count differs; else None."""
    if model_names is None or len(model_names) != num_classes:
        return None
    shown, _ = resolve_class_names(num_classes, model_names)
    index_of = {str(name): index for index, name in enumerate(model_names)}
    index_of.update((name, index) for index, name in enumerate(shown))
    if list(dataset_names) == [str(name) for name in model_names]:
        return None
    if not dataset_names or not all(name in index_of for name in dataset_names):
        return None
    columns = tuple(index_of[name] for name in dataset_names)
    if len(set(columns)) != len(columns) or columns == tuple(range(num_classes)):
        return None
    name = f"the model's classes by name ({len(columns)} of {num_classes})"
    return ClassSubset(name, columns, np.arange(len(columns)))


def evaluate_on_dataset(
    model: keras.Model,
    dataset_name: str,
    class_names: list[str] | None = None,
    split: str = "eval",
    data_dir: str | None = None,
    batch_size: int = 64,
    max_batches: int | None = None,
    crop_pct: float | None = None,
    bad_images: str = "skip",
    reference=None,
) -> dict:
    """Top-1/top-5 of `model` on the named dataset.

    The images go through `deit_keras.data.pipeline.make_dataset(...,
    training=False)`: the eval resize/centre-crop/normalise, the same as
    `predict` and the exported SavedModel, with the model's own settings
    (`crop_pct`, when given, replaces its crop fraction). A warning is logged
    when the model's class names differ from the dataset's
    (`class_names_mismatch`).

    Args:
        model: a `DeiT` with a classification head.
        dataset_name: str. "digits", "folder:PATH" or a TFDS name.
        class_names: list of str or None. The names saved with the model.
        split: str. "train" or "eval".
        data_dir: str or None. TFDS data directory.
        batch_size: int. Evaluation batch size.
        max_batches: int or None. Stop after this many batches.
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        bad_images: str. "skip" (default): a folder dataset's files that do
            not decode are left out, counted in a warning and listed under
            "skipped"; "fail": they raise, naming the first.
        reference: a model or None. Compared image by image (`evaluate_model`,
            which checks it); it sees the crops `model` sees.

    Returns:
        the `evaluate_model` dict plus model name, dataset, split and crop_pct
        (and "skipped": `[path, reason]` pairs when files were left out).
    """
    check_batch_size(batch_size)
    info = pipeline.dataset_info(
        dataset_name, data_dir=data_dir, bad_images=bad_images, splits=(split,)
    )
    if info.skipped:
        logging.warning(
            "%s: left out %d file(s) that do not decode or are not images, first %s",
            dataset_name,
            len(info.skipped),
            info.skipped[0][0],
        )
    if (info.num_train_examples if split == "train" else info.num_eval_examples) == 0:
        raise UserInputError(
            f"Dataset {dataset_name!r} has no readable image in its {split} split"
            + (
                f" ({len(info.skipped)} file(s) left out, first {info.skipped[0][0]})."
                if info.skipped
                else "."
            )
        )
    subset = class_subset_of(dataset_name, info, model.num_classes, class_names)
    if subset is None and info.num_classes != model.num_classes:
        raise UserInputError(
            f"Dataset {dataset_name!r} has {info.num_classes} classes but the model "
            f"has num_classes={model.num_classes}."
        )
    mismatch = class_names_mismatch(class_names, list(info.class_names), model.num_classes)
    if mismatch and subset is None:
        logging.warning(mismatch)
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
    results = evaluate_model(
        model, dataset, max_batches=max_batches, reference=reference, class_subset=subset
    )
    summary = {
        "model": model.name,
        "distilled": bool(model.distilled),
        "dataset": dataset_name,
        "split": split,
        "crop_pct": preprocessing.crop_pct,
    }
    if subset is not None:
        summary.update(classes_scored=subset.name, num_classes_scored=len(subset.columns))
    summary.update(results)
    if info.skipped:
        summary["skipped"] = [list(item) for item in info.skipped]
    return summary
