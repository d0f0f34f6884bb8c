"""ONNX export of a DeiT through tf2onnx, with an exact GELU and its serving config embedded.

The graph has the fixed-size contract of `deploy.signatures` (uint8
`[B, S, S, 3]` crops in, dynamic batch; `probabilities`, `logits`,
`cls_logits`, `dist_logits` out) at opset `DEFAULT_OPSET`, and holds only
standard ONNX operators, so onnxruntime (or any ONNX runtime) loads it.
`deit_serving.json` is stored in the model's `metadata_props` under
"deit_serving" (`read_onnx_config`).

Why a custom handler: TensorFlow's exact GELU is `0.5 * x * erfc(-x / sqrt(2))`
and tf2onnx 1.17 has no conversion for `Erfc`, so a plain conversion
writes a node onnxruntime rejects. `erfc(z)` is written as `1 - erf(z)`
with ONNX's `Erf` (opset >= 9): the same function, and in float32 equal to
the TF graph's outputs up to round-off (the export tests compare logits).
"""

import contextlib
import json
import os
import warnings

import keras
import numpy as np

from deit_keras.deploy import onnx_quantize
from deit_keras.deploy.export_options import DEFAULT_OPSET, MIN_OPSET
from deit_keras.deploy.onnx_fusable import rewrite_for_fusion
from deit_keras.deploy.signatures import METADATA_NAME, fixed_size_function, serving_config
from deit_keras.errors import UserInputError
from deit_keras.io import atomic


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler: `Erfc(x)` -> `Sub(1, Erf(x))`."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    # Named in the node's scope, so `onnx_fusable` finds the whole block under one prefix.
    ctx.insert_new_node_on_output(
        "Sub", node.output[0], name=f"{name}_one_minus", inputs=[one.output[0], node.output[0]]
    )


@contextlib.contextmanager
def _environment_unchanged(name="TF_CPP_MIN_LOG_LEVEL"):
    """tf2onnx sets TF_CPP_MIN_LOG_LEVEL on import and while converting; the library
    changes no environment variable, so the caller's value (or its absence) comes back."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _tf2onnx():
    import tf2onnx

    # Keras' own compatibility patch of tf2onnx 1.17 for numpy 2 (it calls
    # numpy names that numpy 2 removed); keras.export(format="onnx") applies it too.
    # It asks numpy for `np.object`, which warns on every export (Keras' line, not the
    # user's to act on).
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="In the future `np.object`", category=FutureWarning
        )
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    return tf2onnx


def max_opset() -> int:
    """The newest opset the installed tf2onnx (and onnx) can write."""
    from onnx import defs

    with _environment_unchanged():
        from tf2onnx import constants
    return min(max(constants.OPSET_TO_IR_VERSION), defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    highest = max_opset()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise UserInputError(
            f"opset must be an integer from {MIN_OPSET} to {highest} (the newest the installed "
            f"tf2onnx writes). Received: opset={opset!r}"
        )


def export_onnx(
    model: keras.Model,
    path: str,
    opset: int = DEFAULT_OPSET,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    fusable: bool = True,
    optimize: bool = False,
    quantize: str = "none",
    calibration_images=None,
) -> dict:
    """Writes `model` as an ONNX file (atomically) and returns its serving config.

    Args:
        model: a `DeiT` with a classification head.
        path: str. Output `.onnx` file (replaced).
        opset: int. ONNX opset, from `MIN_OPSET` to `max_opset()`. Defaults
            to 17.
        crop_pct: float or None. Recorded in the config: the crop the caller
            applies. Defaults to the model's.
        class_names: list of str or None. Recorded in the config.
        fusable: bool. Rewrite the transformer blocks into the form ONNX
            Runtime's transformer optimizer fuses (`deploy.onnx_fusable`).
            Defaults to True.
        optimize: bool. Apply ONNX Runtime's transformer fusions
            (`deploy.onnx_quantize`); the file then needs onnxruntime. The
            config's "fused_ops" counts the fused kernels; a model none of them
            matches (DeiT III, CaiT) is refused unless quantized.
        quantize: str. One of `onnx_quantize.QUANTIZATIONS`; int8 variants
            imply `optimize`.
        calibration_images: uint8 `[N, S, S, 3]` eval crops for "int8".

    Returns:
        The `deit_serving` config stored in the file.
    """
    check_opset(opset)
    onnx_quantize.check_quantize(quantize, calibration_images)
    optimize = optimize or quantize != "none"
    if optimize and not fusable:
        raise UserInputError(
            "optimize / quantize need fusable=True (the fusions match that graph)."
        )
    extra = {"optimized": True, "quantize": quantize} if optimize else {}
    config = serving_config(
        model, "onnx", crop_pct=crop_pct, class_names=class_names, opset=opset, **extra
    )
    serve = fixed_size_function(model)
    with _environment_unchanged():
        tf2onnx = _tf2onnx()
        proto, _ = tf2onnx.convert.from_function(
            serve,
            input_signature=serve.input_signature,
            opset=opset,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
        )
    if fusable:
        rewrite_for_fusion(proto, model)
    if optimize:
        proto, config["fused_ops"] = onnx_quantize.optimize(proto, model)
        if not config["fused_ops"] and quantize == "none":
            raise UserInputError(
                f"optimize: none of ONNX Runtime's transformer fusions matches {model.name}'s "
                "blocks (they fuse DeiT's; DeiT III's and CaiT's LayerScale blocks stay as they "
                "are): export without it."
            )
    if quantize != "none":
        proto = onnx_quantize.quantize(proto, quantize, calibration_images)
    _set_metadata(proto, json.dumps(config))
    atomic.write_bytes_atomic(path, proto.SerializeToString())
    return config


def _set_metadata(proto, text: str) -> None:
    kept = [entry for entry in proto.metadata_props if entry.key != METADATA_NAME]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, text


def read_onnx_config(path: str) -> dict:
    """The `deit_serving` metadata of an `.onnx` file written by `export_onnx`.

    Raises:
        ValueError: not an ONNX model, or one without the metadata.
    """
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise UserInputError(f"{path} is not an ONNX model: {error}") from error
    props = {entry.key: entry.value for entry in proto.metadata_props}
    if METADATA_NAME not in props:
        raise UserInputError(
            f"{path} has no '{METADATA_NAME}' metadata: export it with "
            "`python -m deit_keras.export --format=onnx`."
        )
    return json.loads(props[METADATA_NAME])
