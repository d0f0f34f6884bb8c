"""The serving contract every export format shares: inputs, outputs and `deit_serving.json`.

Two input contracts, one set of outputs:

- any size (SavedModel): uint8 `[B, H, W, 3]` of any H, W; the model's eval
  resize / centre crop / normalisation (`data.preprocessing.preprocess`)
  runs inside the graph.
- fixed size (LiteRT, ONNX): uint8 `[B, S, S, 3]` with S the model's
  `image_size`, already resized and centre-cropped by the caller
  (`data.preprocessing.resize_and_center_crop`, or any image library);
  only the normalisation runs inside the graph. LiteRT builtins have no
  antialiased bicubic resize and ONNX's `Resize` differs from it, so the
  crop stays outside where it can be exact.

Outputs (float32 `[B, num_classes]`): `probabilities`, `logits` (the
model's inference output: the mean of both heads for a distilled model),
`cls_logits` and, for distilled models, `dist_logits`.
"""

import tensorflow as tf

from deit_keras.data.labels import resolve_class_names
from deit_keras.data.preprocessing import normalize, preprocess
from deit_keras.errors import UserInputError
from deit_keras.models.classifier import average_heads  # the inference output's one rule

SERVING_CONFIG = "deit_serving.json"
# The same config inside a single-file export (LiteRT metadata, ONNX metadata_props).
METADATA_NAME = SERVING_CONFIG.removesuffix(".json")  # "deit_serving"


def output_names(model) -> list[str]:
    """The output names of `model`'s serving functions, in signature (sorted) order."""
    names = ["cls_logits", "logits", "probabilities"]
    if model.distilled:
        names.append("dist_logits")
    return sorted(names)


def check_servable(model) -> None:
    """One-line errors for models the serving functions cannot take."""
    if not model.num_classes:
        raise UserInputError("Cannot export a model without a head (num_classes=0).")
    if model.in_channels != 3:
        raise UserInputError(
            "The exports take RGB images ([B, H, W, 3] uint8); this model takes "
            f"{model.in_channels} channel(s). Received: in_channels={model.in_channels}"
        )


def serving_outputs(model, inputs) -> dict:
    """The outputs dict (module docstring) of `model` on normalised float32 `inputs`."""
    cls_logits, dist_logits = model.call_heads(inputs, training=False)
    logits = tf.cast(average_heads(cls_logits, dist_logits), tf.float32)
    outputs = {
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "logits": logits,
        "cls_logits": tf.cast(cls_logits, tf.float32),
    }
    if dist_logits is not None:
        outputs["dist_logits"] = tf.cast(dist_logits, tf.float32)
    return outputs


def any_size_function(model, crop_pct: float | None = None):
    """A `tf.function`: uint8 `[B, H, W, 3]` of any size -> the outputs dict.

    Images go through `model.preprocessing`, with `crop_pct` (when given) in
    place of its crop fraction.
    """
    check_servable(model)
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        return serving_outputs(model, preprocess(images, model.image_size, preprocessing))

    return serve


def fixed_size_function(model):
    """A `tf.function`: uint8 `[B, image_size, image_size, 3]` crops -> the outputs dict."""
    check_servable(model)
    size = model.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serve(images):
        return serving_outputs(model, normalize(images, model.preprocessing))

    return serve


def serving_config(
    model,
    export_format: str,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    **extra,
) -> dict:
    """What an exported file needs to be used: the `deit_serving.json` content.

    Args:
        model: the exported `DeiT`.
        export_format: str. "saved_model", "litert" or "onnx".
        crop_pct: float or None. Eval crop fraction; defaults to the model's.
        class_names: list of str or None. The model's saved names
            (`data.labels.resolve_class_names` fills them in otherwise).
        **extra: more entries (e.g. `quantize`, `opset`).
    """
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    names, source = resolve_class_names(model.num_classes, class_names)
    size = model.image_size
    if export_format == "saved_model":
        images = "uint8 [batch, height, width, 3], any height and width"
    else:
        images = (
            f"uint8 [batch, {size}, {size}, 3]: resized so the shorter side is "
            f"floor({size} / crop_pct), then centre-cropped (bicubic, antialiased)"
        )
    config = {
        "format": export_format,
        "signature": "serving_default",
        "inputs": {"images": images},
        "outputs": {name: "float32 [batch, num_classes]" for name in output_names(model)},
        "image_size": size,
        "crop_pct": preprocessing.crop_pct,
        "preprocessing": preprocessing.get_config(),
        "num_classes": model.num_classes,
        "distilled": bool(model.distilled),
        "model": model.name,
        "class_names": names,
        "class_names_source": source,
    }
    config.update(extra)
    return config
