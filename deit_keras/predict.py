"""Top-k predictions of a DeiT for image files.

Library:
    load_image(path) -> uint8 [H, W, 3]
    predict_images(model, images, class_names=None, crop_pct=0.875, top_k=5)

Images go through `deit_keras.serving.preprocess`, the same ops as the
exported SavedModel, so the probabilities printed here match it.

Command line:
    python -m deit_keras.predict --model_path model.keras cat.jpg dog.png
"""

import json
import os

import numpy as np

from deit_keras import cli, export, io_utils, serving

from absl import flags  # noqa: E402


def load_image(path):
    """Reads a JPEG/PNG/... file as RGB uint8 `[H, W, 3]`.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are
    converted; EXIF orientation is applied.

    Raises:
        ValueError: one line, when the file is missing, empty or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Image file {path} is empty.")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Could not read {path} as an image: {error}") from error
    return _to_rgb_uint8(image)


def _to_rgb_uint8(image):
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode != "F" and pixels.max(initial=0) > 255:  # 16-bit
            pixels = pixels / 257.0
        elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        return np.repeat(pixels[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def predict_images(model, images, class_names=None, crop_pct=serving.DEFAULT_CROP_PCT,
                   top_k=5):
    """Top-k classes of each image.

    Args:
        model: a `DeiT` with a classification head.
        images: list of uint8 `[H, W, 3]` arrays (sizes may differ).
        class_names: list of str or None. Without names a class is
            called `class_<index>`.
        crop_pct: float. Eval crop fraction. Defaults to 0.875.
        top_k: int. How many classes per image. Defaults to 5.

    Returns:
        A list (one per image) of lists of `(class_name, index, probability)`,
        most probable first.
    """
    if not model.num_classes:
        raise ValueError("Cannot predict with a model without a head (num_classes=0).")
    if top_k <= 0:
        raise ValueError(f"top_k must be positive. Received: top_k={top_k}")
    if not images:
        return []
    batch = np.stack(
        [serving.preprocess(image, model.image_size, crop_pct).numpy() for image in images]
    )
    logits = np.asarray(model(batch, training=False), dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    k = min(top_k, model.num_classes)
    results = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:k]
        results.append([
            (class_names[i] if class_names else f"class_{i}", int(i), float(row[i]))
            for i in order
        ])
    return results


def format_predictions(paths, predictions):
    """Text for people: the path, then one `probability  name` line per class."""
    lines = []
    for path, top in zip(paths, predictions):
        lines.append(path)
        lines.extend(f"  {probability:.4f}  {name}" for name, _, probability in top)
    return "\n".join(lines)


def predict_files(model_path, image_paths, crop_pct=serving.DEFAULT_CROP_PCT, top_k=5):
    """Loads the model and images, returns `(predictions, class_names_were_stored)`.

    All images are read (and checked) before the model is loaded.
    """
    if not image_paths:
        raise ValueError("Give at least one image path.")
    images = [load_image(path) for path in image_paths]
    model, class_names = export.load_model(model_path, compile=False)
    predictions = predict_images(model, images, class_names, crop_pct=crop_pct, top_k=top_k)
    return predictions, class_names is not None


# === Command line ===
# Flags are defined only when run as a program.


def main(argv):
    export.quiet_logging()
    paths = argv[1:]
    predictions, named = predict_files(
        _MODEL_PATH.value, paths, crop_pct=_CROP_PCT.value, top_k=_TOP_K.value
    )
    print(format_predictions(paths, predictions))
    if not named:
        print("(no class names stored with the model: classes shown as class_<index>)")
    if _OUTPUT.value:
        records = [
            {"image": path, "top": [{"class": n, "index": i, "probability": p} for n, i, p in top]}
            for path, top in zip(paths, predictions)
        ]
        io_utils.write_text_atomic(_OUTPUT.value, json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    _MODEL_PATH = flags.DEFINE_string("model_path", None, "The .keras model.")
    _TOP_K = flags.DEFINE_integer("top_k", 5, "Classes to show per image.")
    _CROP_PCT = flags.DEFINE_float(
        "crop_pct", serving.DEFAULT_CROP_PCT,
        "Eval crop fraction: the shorter side is resized to image_size / crop_pct.",
    )
    _OUTPUT = flags.DEFINE_string("output", None, "Also write the predictions as JSON here.")
    flags.mark_flags_as_required(["model_path"])
    cli.run(main)
