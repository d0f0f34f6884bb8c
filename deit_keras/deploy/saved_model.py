"""SavedModel export with a uint8, any-size `serving_default` signature.

The signature does the model's own eval resize/crop/normalisation inside
(`deit_keras.data.preprocessing.preprocess`), in the style of the TF Model
Garden `export_saved_model` binary/library pair (the binary is
`deit_keras.cli.export`).
"""

import json
import os

import keras
import tensorflow as tf

from deit_keras.data.labels import resolve_class_names
from deit_keras.data.preprocessing import preprocess
from deit_keras.io import atomic

SERVING_CONFIG = "deit_serving.json"


def serving_function(model: keras.Model, crop_pct: float | None = None):
    """A `tf.function` mapping uint8 `[B, H, W, 3]` images to probabilities and logits.

    The logits are the model's inference output (the mean of both heads for
    a distilled model). Images go through `model.preprocessing`, with
    `crop_pct` (when given) in place of its crop fraction.
    """
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    if not model.num_classes:
        raise ValueError("Cannot export a model without a head (num_classes=0).")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        inputs = preprocess(images, model.image_size, preprocessing)
        logits = tf.cast(model(inputs, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}

    return serve


def export_saved_model(
    model: keras.Model,
    out_dir: str,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Exports `model` as a SavedModel with a uint8 `serving_default` signature.

    Signature `serving_default`: `images` uint8 `[B, H, W, 3]` (any H, W) ->
    `{"probabilities": float32 [B, C], "logits": float32 [B, C]}`. The
    directory also holds `deit_serving.json` (image size, crop_pct, class
    names and where they come from, `class_names_source`). It is written
    atomically: on failure `out_dir` is left as it was.

    Args:
        model: a `DeiT` with a classification head.
        out_dir: str. Output directory (replaced if it exists).
        crop_pct: float in (0, 1] or None. Eval crop fraction; defaults to
            the model's (`model.preprocessing.crop_pct`).
        class_names: list of str or None. The model's saved names, recorded
            in `deit_serving.json`; without them a 1000-class model records
            the ImageNet-1k names and any other `class_<index>`
            (`data.labels.resolve_class_names`).
        extra_files: dict of file name -> text to write into `out_dir`
            (e.g. the command's flags).
    """
    serve = serving_function(model, crop_pct)
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    class_names, class_names_source = resolve_class_names(model.num_classes, class_names)
    config = {
        "signature": "serving_default",
        "inputs": {"images": "uint8 [batch, height, width, 3], any height and width"},
        "outputs": {
            "probabilities": "float32 [batch, num_classes]",
            "logits": "float32 [batch, num_classes]",
        },
        "image_size": model.image_size,
        "crop_pct": preprocessing.crop_pct,
        "preprocessing": preprocessing.get_config(),
        "num_classes": model.num_classes,
        "distilled": model.distilled,
        "class_names": class_names,
        "class_names_source": class_names_source,
    }
    with atomic.atomic_output(out_dir) as temporary:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve)
        archive.write_out(temporary, verbose=False)
        files = {SERVING_CONFIG: json.dumps(config, indent=1) + "\n"}
        files.update(extra_files or {})
        for name, text in files.items():
            with open(os.path.join(temporary, name), "w", encoding="utf-8") as handle:
                handle.write(text)
