"""Rewrites tf2onnx's transformer blocks into the graph ONNX Runtime's transformer optimizer fuses.

tf2onnx writes Keras' LayerNorm as `GlobalAveragePool`/`Sqrt`/`Reciprocal`
arithmetic, the fused qkv projection as one `MatMul` sliced three ways and
the GELU as `1 - Erf`: none of it matches the patterns of
`onnxruntime.transformers.optimizer` (model_type "vit": `fusion_attention.py`,
`fusion_layernorm.py`, `fusion_gelu.py`), so nothing fuses. This pass
replaces each plain `TransformerBlock` (no LayerScale, no talking heads) and
the final norm with the same function in the form those matchers expect,
written from the Keras layers' own weights:

    x -> LayerNormalization -> 3 x (MatMul -> Add -> Reshape [0,0,N,H] -> Transpose)
      q @ k^T -> Div(sqrt(H)) -> Softmax -> @ v -> Transpose -> Reshape -> MatMul -> Add
      Add(branch, x) -> LayerNormalization -> MatMul -> Add -> Div(sqrt 2) -> Erf
      -> Add(1) -> Mul(x) -> Mul(0.5) -> MatMul -> Add -> Add(branch, x)

It holds only standard ONNX operators (`LayerNormalization` is opset 17), so
any ONNX runtime still runs it; ONNX Runtime's optimizer turns it into
`Attention`, `SkipLayerNormalization`, `BiasGelu` and `LayerNormalization`.
A block is located by its name scope (`block_3_1/...`) and replaced only when
that scope has one input and one output; otherwise it stays as tf2onnx wrote it.

DeiT's head dimension is a power of two squared (16, 64), so `q * H^-0.5`
before the product (Keras) and `/ sqrt(H)` after it (here) are the same
float32 numbers; fp32 outputs agree with Keras to round-off.
"""

import re

import numpy as np
from absl import logging

from deit_keras.layers.attention import MultiHeadSelfAttention
from deit_keras.layers.encoder import TransformerBlock

SQRT2 = float(np.sqrt(2.0))
MIN_OPSET = 17  # ONNX LayerNormalization


def _scope_pattern(name: str):
    return re.compile(rf"^(?:.*/)?{re.escape(name)}(?:_\d+)?/")


def _constant_names(graph) -> set:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _region_boundary(graph, region, constants):
    """`(inputs, outputs)` of `region` (node indices): tensors crossing its border."""
    produced = {out for i in region for out in graph.node[i].output}
    inputs = {
        name
        for i in region
        for name in graph.node[i].input
        if name and name not in produced and name not in constants
    }
    consumed_outside = {
        name for i, node in enumerate(graph.node) if i not in region for name in node.input
    }
    consumed_outside.update(out.name for out in graph.output)
    return inputs, produced & consumed_outside


def _is_plain_block(layer) -> bool:
    return (
        isinstance(layer, TransformerBlock)
        and layer.ls1 is None
        and type(layer.attn) is MultiHeadSelfAttention
    )


class _Writer:
    """Appends nodes and float32 initializers named under one prefix."""

    def __init__(self, graph, prefix):
        from onnx import helper, numpy_helper

        self.graph, self.prefix = graph, prefix
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes = []

    def const(self, name, value, dtype=np.float32):
        full = f"{self.prefix}/{name}"
        self.graph.initializer.append(
            self.numpy_helper.from_array(np.asarray(value, dtype=dtype), full)
        )
        return full

    def node(self, op_type, inputs, name, **attributes):
        output = f"{self.prefix}/{name}"
        self.nodes.append(
            self.helper.make_node(op_type, inputs, [output], name=output, **attributes)
        )
        return output


def _weights(layer):
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


def _layer_norm(writer, x, layer, name, output=None):
    gamma, beta = _weights(layer)
    inputs = [x, writer.const(f"{name}/gamma", gamma), writer.const(f"{name}/beta", beta)]
    out = writer.node("LayerNormalization", inputs, name, axis=-1, epsilon=float(layer.epsilon))
    if output is not None:
        writer.nodes[-1].output[0] = output
        return output
    return out


def _dense(writer, x, kernel, bias, name):
    product = writer.node("MatMul", [x, writer.const(f"{name}/kernel", kernel)], f"{name}/matmul")
    return writer.node("Add", [product, writer.const(f"{name}/bias", bias)], f"{name}/bias_add")


def _attention(writer, x, attn):
    """Pre-normalised `x` `[B, T, C]` -> the attention branch (before the residual add)."""
    kernel, bias = _weights(attn.qkv)
    width, heads, head_dim = attn.embed_dim, attn.num_heads, attn.head_dim
    split = writer.const("heads_shape", [0, 0, heads, head_dim], np.int64)
    parts = {}
    for index, part in enumerate("qkv"):
        columns = slice(index * width, (index + 1) * width)
        projected = _dense(writer, x, kernel[:, columns], bias[columns], f"attn/{part}")
        shaped = writer.node("Reshape", [projected, split], f"attn/{part}/reshape")
        perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]  # k arrives transposed
        parts[part] = writer.node("Transpose", [shaped], f"attn/{part}/transpose", perm=perm)
    scores = writer.node("MatMul", [parts["q"], parts["k"]], "attn/scores")
    scaled = writer.node(
        "Div", [scores, writer.const("attn/sqrt_head_dim", np.sqrt(head_dim))], "attn/scaled"
    )
    probabilities = writer.node("Softmax", [scaled], "attn/softmax", axis=-1)
    context = writer.node("MatMul", [probabilities, parts["v"]], "attn/context")
    context = writer.node("Transpose", [context], "attn/context/transpose", perm=[0, 2, 1, 3])
    merged = writer.node(
        "Reshape", [context, writer.const("merge_shape", [0, 0, width], np.int64)], "attn/merge"
    )
    proj_kernel, proj_bias = _weights(attn.proj)
    return _dense(writer, merged, proj_kernel, proj_bias, "attn/proj")


def _mlp(writer, x, mlp):
    fc1_kernel, fc1_bias = _weights(mlp.fc1)
    hidden = _dense(writer, x, fc1_kernel, fc1_bias, "mlp/fc1")
    # Exact GELU as PyTorch exports it: x * (1 + erf(x / sqrt 2)) * 0.5.
    scaled = writer.node("Div", [hidden, writer.const("mlp/sqrt2", SQRT2)], "mlp/gelu/div")
    erf = writer.node("Erf", [scaled], "mlp/gelu/erf")
    shifted = writer.node("Add", [erf, writer.const("mlp/one", 1.0)], "mlp/gelu/add")
    product = writer.node("Mul", [hidden, shifted], "mlp/gelu/mul")
    gelu = writer.node("Mul", [product, writer.const("mlp/half", 0.5)], "mlp/gelu/half")
    fc2_kernel, fc2_bias = _weights(mlp.fc2)
    return _dense(writer, gelu, fc2_kernel, fc2_bias, "mlp/fc2")


def _block_nodes(writer, x, block, output):
    # The branch is the Add's first input: the optimizer's attention matcher
    # walks Add -> MatMul from there (fusion_attention.py).
    attended = _attention(writer, _layer_norm(writer, x, block.norm1, "norm1"), block.attn)
    x = writer.node("Add", [attended, x], "residual1")
    branch = _mlp(writer, _layer_norm(writer, x, block.norm2, "norm2"), block.mlp)
    writer.node("Add", [branch, x], "residual2")
    writer.nodes[-1].output[0] = output


def _replace(graph, layer, prefix, emit) -> bool:
    pattern = _scope_pattern(layer.name)
    region = {i for i, node in enumerate(graph.node) if pattern.match(node.name)}
    if not region:
        return False
    inputs, outputs = _region_boundary(graph, region, _constant_names(graph))
    if len(inputs) != 1 or len(outputs) != 1:
        logging.info(
            "ONNX: %s kept as tf2onnx wrote it (%s in, %s out)", layer.name, inputs, outputs
        )
        return False
    writer = _Writer(graph, prefix)
    emit(writer, next(iter(inputs)), layer, next(iter(outputs)))
    kept = [node for i, node in enumerate(graph.node) if i not in region]
    del graph.node[:]
    graph.node.extend(kept + writer.nodes)
    return True


def _topological_sort(graph) -> None:
    available = {init.name for init in graph.initializer} | {i.name for i in graph.input}
    available.add("")
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("ONNX rewrite left a node whose inputs nothing produces.")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
    del graph.node[:]
    graph.node.extend(ordered)


def _prune(graph) -> None:
    """Drops nodes and initializers no graph output depends on."""
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def rewrite_for_fusion(proto, model) -> int:
    """Rewrites `model`'s plain blocks and final norm in the tf2onnx graph `proto`, in place.

    Args:
        proto: `onnx.ModelProto` that tf2onnx wrote for `model`.
        model: the Keras model (a `DeiT`), whose weights the new nodes carry.

    Returns:
        The number of scopes (blocks and norm) rewritten.
    """
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET or getattr(model, "compute_dtype", "float32") != "float32":
        return 0
    graph, rewritten = proto.graph, 0
    for block in getattr(model, "blocks", []):
        if _is_plain_block(block):
            rewritten += _replace(graph, block, f"fusable/{block.name}", _block_nodes)
    norm = getattr(model, "norm", None)
    if norm is not None and rewritten:
        rewritten += _replace(
            graph,
            norm,
            "fusable/norm",
            lambda writer, x, layer, out: _layer_norm(writer, x, layer, "norm", output=out),
        )
    if rewritten:
        _topological_sort(graph)
        _prune(graph)
    return rewritten
