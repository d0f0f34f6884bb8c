"""Predictions of a DeiT: a compiled forward pass, and top-k classes of images.

`predict_function(model)` traces the forward pass once per input shape into a
`tf.function` compiled by XLA (`jit_compile=True`), which fuses the
element-wise work (LayerNorm, GELU, softmax, bias adds) between the matrix
products, on any device. On a CPU an eager `model(images)` runs what
`predict_on_batch` runs, compiled (`TokenClassifier._eager_inference_step`);
on an accelerator, or with `run_eagerly`, it runs the ops. The numerics are
those of the ops up to float32 round-off (tests/inference/test_predict.py).
"""

import keras
import numpy as np
import tensorflow as tf

from deit_keras.data.labels import resolve_class_names
from deit_keras.data.preprocessing import preprocess
from deit_keras.deploy.runtimes import load_for_inference
from deit_keras.errors import UserInputError
from deit_keras.inference.predict_defaults import PREDICT_BATCH_SIZE
from deit_keras.io.images import load_image


def predict_function(model: keras.Model, jit_compile: bool = True):
    """`images -> logits` (the model's inference output), compiled.

    Args:
        model: a `DeiT` (or any Keras model called with `training=False`).
        jit_compile: bool. Compile with XLA. Defaults to True.

    Returns:
        A `tf.function`; each new input shape traces and compiles once.

    Example:
    >>> predict = predict_function(model)
    >>> logits = predict(images).numpy()
    """

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict


def predict_images(
    model: keras.Model,
    images,
    class_names: list[str] | None = None,
    crop_pct: float | None = None,
    top_k: int = 5,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> list[list[tuple[str, int, float]]]:
    """Top-k classes of each image, `batch_size` images per forward pass.

    Args:
        model: a `DeiT` with a classification head.
        images: iterable of uint8 `[H, W, 3]` arrays (sizes may differ): a
            list, or a generator reading them one by one (`read_images`).
        class_names: list of str or None. The model's saved names; without
            them a 1000-class model uses the ImageNet-1k names and any other
            calls its classes `class_<index>` (`data.labels.resolve_class_names`).
        crop_pct: float or None. Eval crop fraction; defaults to the
            model's (`model.preprocessing`).
        top_k: int. How many classes per image. Defaults to 5.
        batch_size: int. Images per forward pass. Defaults to 32.

    Returns:
        A list (one per image) of lists of `(class_name, index, probability)`,
        most probable first.
    """
    if not model.num_classes:
        raise UserInputError("Cannot predict with a model without a head (num_classes=0).")
    if top_k <= 0 or batch_size <= 0:
        raise UserInputError(
            f"top_k and batch_size must be positive. Received: top_k={top_k}, "
            f"batch_size={batch_size}"
        )
    names, _ = resolve_class_names(model.num_classes, class_names)
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    k = min(top_k, model.num_classes)
    results = []
    for chunk in _chunks(images, batch_size):
        batch = np.stack(
            [preprocess(image, model.image_size, preprocessing).numpy() for image in chunk]
        )
        for row in _probabilities(model(batch, training=False)):
            order = np.argsort(-row, kind="stable")[:k]
            results.append([(names[i], int(i), float(row[i])) for i in order])
    return results


def _chunks(items, size):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _probabilities(logits):
    logits = np.asarray(logits, dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


def read_images(paths: list[str], batch_size: int = PREDICT_BATCH_SIZE):
    """The images of `paths` for `predict_images`, each file checked now.

    Up to `batch_size` files: the decoded list. More: each file is decoded
    now to check it (a bad one is a `UserInputError` before any model work),
    and a generator decodes them again one by one, so memory holds one batch
    rather than every image.
    """
    if len(paths) <= batch_size:
        return [load_image(path) for path in paths]
    for path in paths:
        load_image(path)
    return (load_image(path) for path in paths)


def split_decodable(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`(decodable, skipped)`: the paths that decode as images, and `(path, reason)` for
    each that does not (missing, empty, not an image): `--bad_images=skip`."""
    decodable, skipped = [], []
    for path in paths:
        try:
            load_image(path)
        except UserInputError as error:
            skipped.append((path, str(error)))
        else:
            decodable.append(path)
    return decodable, skipped


def predict_files(
    model_path: str, image_paths: list[str], crop_pct: float | None = None, top_k: int = 5
) -> tuple[list, str]:
    """Top-k classes of image files; every file is checked before the model is loaded.

    Args:
        model_path: str. A `.keras` model (its `.classes.json` names are used), or a
            `.tflite` / `.onnx` / `.xml` export.
        image_paths: list of str. JPEG/PNG files.
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        top_k: int. How many classes per image. Defaults to 5.

    Returns:
        `(predictions, source)`: the `predict_images` lists, and where the
        class names come from: `"saved"`, `"imagenet"` or `"index"`
        (`data.labels.resolve_class_names`).
    """
    if not image_paths:
        raise UserInputError("Give at least one image path.")
    images = read_images(image_paths)
    model, class_names = load_for_inference(model_path)
    predictions = predict_images(model, images, class_names, crop_pct=crop_pct, top_k=top_k)
    return predictions, resolve_class_names(model.num_classes, class_names)[1]
