"""ONNX Runtime's transformer fusions and int8 quantization of an exported DeiT graph.

`optimize=True` runs `onnxruntime.transformers.optimizer` (model_type "vit")
on the graph `deploy.onnx_fusable` wrote: `Attention`, `SkipLayerNormalization`,
`BiasGelu` and `LayerNormalization` kernels (com.microsoft ops, so the file
then runs on ONNX Runtime only). Quantization (`quantize=`) always starts
from that fused graph:

- "dynamic_int8": `quantize_dynamic(per_channel=True)`: int8 weights of every
  matmul, the fused `Attention` included (it becomes `QAttention`);
  activations quantized on the fly. No calibration data.
- "int8": static QDQ (S8S8, per channel) with activation ranges calibrated
  on `calibration_images`: the dense matmuls outside attention and the
  patch embedding in int8; the fused `Attention` stays float (QDQ has no
  quantized Attention).
"""

import contextlib
import logging
import os
import tempfile

import numpy as np

from deit_keras.deploy import export_options
from deit_keras.errors import UserInputError

QUANTIZATIONS = export_options.QUANTIZATIONS["onnx"]
CALIBRATION_BATCH = 16
# Static int8 quantizes these only; LayerNorm in int8 cost agreement (measured in
# tests/deploy/test_fused_and_int8_exports.py's digits student: 95.8% with it, see the note below).
STATIC_OPS = ["MatMul", "Conv"]
# Warnings of ONNX Runtime's tools about what this module sees to, by the logger that
# makes the record (a filter applies there, not where the record propagates to):
# the "vit" fusions expect a PyTorch export, and `deploy.onnx_fusable` rewrites
# tf2onnx's graph into the form they match; the quantizer asks for its shape
# pre-processing, which `_with_shapes` runs (its symbolic shape inference).
_SEEN_TO = {
    "onnxruntime.transformers.optimizer": "Model producer not matched",
    # "Please consider to run pre-processing ..." (dynamic), "... consider pre-processing" (static)
    "": "pre-processing before quantization",
}


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self._fragment = fragment

    def filter(self, record) -> bool:
        return self._fragment not in str(record.msg)


@contextlib.contextmanager
def _without_warnings_seen_to():
    loggers = [(logging.getLogger(name), _DropMessage(start)) for name, start in _SEEN_TO.items()]
    for logger, message_filter in loggers:
        logger.addFilter(message_filter)
    try:
        yield
    finally:
        for logger, message_filter in loggers:
            logger.removeFilter(message_filter)


def check_quantize(quantize: str, calibration_images=None, *, need_images=True) -> None:
    if quantize not in QUANTIZATIONS:
        raise UserInputError(
            f"ONNX quantize must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}"
        )
    if need_images and quantize == "int8" and calibration_images is None:
        raise UserInputError(
            "quantize='int8' calibrates activation ranges on images: pass calibration_images "
            "(the export command's --calibration_dataset)."
        )


def fused_operator_counts(proto, model) -> dict:
    """`{op: count}` (non-zero) of the fused kernels ONNX Runtime's optimizer finds in `proto`."""
    fused = _optimizer(proto, model)
    return {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def _optimizer(proto, model):
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.onnx")
        with open(path, "wb") as handle:
            handle.write(proto.SerializeToString())
        # opt_level=0: the Python fusions only; ORT applies its own at load.
        with _without_warnings_seen_to():
            return optimize_model(
                path,
                model_type="vit",
                num_heads=model.blocks[0].attn.num_heads,
                hidden_size=model.embed_dim,
                opt_level=0,
            )


def optimize(proto, model):
    """`(proto, counts)`: `proto` with ONNX Runtime's transformer fusions applied (a new
    `ModelProto`) and `{op: count}` of the fused kernels (empty where none matched: DeiT
    III's and CaiT's LayerScale blocks)."""
    from onnx import helper

    optimizer = _optimizer(proto, model)
    counts = {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n}
    fused = optimizer.model
    # The fused ops' domain; OnnxModel.save_model_to_file declares it, `.model` does not.
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused, counts


class _CalibrationReader:
    """`onnxruntime.quantization.CalibrationDataReader` over uint8 crops, in small batches."""

    def __init__(self, images, input_name):
        self._batches = iter(
            {input_name: images[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _with_shapes(proto):
    """`proto` with value types and shapes: ONNX's own shape inference does not know the
    fused com.microsoft ops, ORT's symbolic one does (the quantizer needs each matmul's type)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)


def quantize(proto, quantize_name: str, calibration_images=None):
    """The fused `proto` quantized as "dynamic_int8" or "int8" (a new `ModelProto`)."""
    import onnx

    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "fp32.onnx")
        target = os.path.join(directory, "int8.onnx")
        onnx.save(_with_shapes(proto), source)
        input_name = proto.graph.input[0].name
        with _without_warnings_seen_to():
            _quantize_file(source, target, quantize_name, calibration_images, input_name)
        return onnx.load(target)


def _quantize_file(source, target, quantize_name, calibration_images, input_name):
    import onnx
    from onnxruntime import quantization

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if quantize_name == "dynamic_int8":
        quantization.quantize_dynamic(
            source,
            target,
            per_channel=True,
            weight_type=quantization.QuantType.QInt8,
            extra_options=extra,
        )
        return
    images = np.asarray(calibration_images, dtype=np.uint8)
    quantization.quantize_static(
        source,
        target,
        _CalibrationReader(images, input_name),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=STATIC_OPS,
        per_channel=True,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        extra_options=extra,
    )
