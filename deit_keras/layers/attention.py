"""Multi-head self-attention, and the scaled dot-product core every attention layer shares."""

import keras
from keras import ops

from deit_keras.backend import on_tensorflow
from deit_keras.layers import onednn_form
from deit_keras.layers.basic import check_heads, dense
from deit_keras.layers.frozen import KeepsFrozen


def split_heads(x, batch, tokens, num_heads, head_dim):
    """`[B, T, N * H]` -> `[B, N, T, H]`."""
    return ops.transpose(ops.reshape(x, (batch, tokens, num_heads, head_dim)), (0, 2, 1, 3))


def merge_heads(x, batch, tokens, embed_dim):
    """`[B, N, T, H]` -> `[B, T, N * H]`."""
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, tokens, embed_dim))


def with_scores(result, scores: bool):
    """`(output, attention)` of an attention call: `result` itself with `scores`, else
    `(result, None)`."""
    return result if scores else (result, None)


def attention_weights(query, key, mix_logits=None):
    """`softmax(q k^T / sqrt(H))` `[B, N, Tq, Tk]`, the logits optionally mixed first.

    Args:
        query: `[B, N, Tq, H]`.
        key: `[B, N, Tk, H]`.
        mix_logits: callable or None. Applied to the scaled logits before the
            softmax (talking heads).
    """
    scale = ops.cast(query.shape[-1] ** -0.5, query.dtype)
    logits = ops.matmul(query * scale, ops.transpose(key, (0, 1, 3, 2)))
    if mix_logits is not None:
        logits = mix_logits(logits)
    # Softmax in float32 for stability under mixed precision.
    return ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), query.dtype)


class HeadsLayer(KeepsFrozen, keras.layers.Layer):
    """The head layout every attention layer has: `embed_dim` split into `num_heads`.

    Subclasses create their projections after `super().__init__`.
    """

    def __init__(self, embed_dim, num_heads, **kwargs):
        check_heads(embed_dim, num_heads)
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, num_heads=self.num_heads)
        return config


@keras.saving.register_keras_serializable(package="deit_keras")
class MultiHeadSelfAttention(HeadsLayer):
    """Multi-head self-attention with one fused qkv projection (with bias).

    Args:
        embed_dim: int. Token size; a multiple of `num_heads`.
        num_heads: int. Number of attention heads.

    Call arguments:
        x: `[B, T, embed_dim]`.
        return_attention_scores: bool. Also return the softmax attention
            `[B, num_heads, T, T]` (used for attention maps).

    Returns:
        `[B, T, embed_dim]`, and the attention when asked.

    On Keras' JAX and PyTorch backends, a call that returns no attention runs
    `keras.ops.dot_product_attention` (cuDNN's / PyTorch's fused kernel on a
    GPU; H100, bf16: DeiT-B training 1.19x, inference 1.18x, see
    benchmarks/README.md, `gpu_throughput.py`). TensorFlow keeps the matmul/softmax/matmul,
    which its CPU paths are tuned for (`layers.onednn_form`).
    """

    # Whether `_attention` is the plain softmax, so the fused op computes the same.
    _fusable = True

    def __init__(self, embed_dim, num_heads, **kwargs):
        super().__init__(embed_dim, num_heads, **kwargs)
        self.qkv = dense(3 * embed_dim, "qkv", self.dtype_policy)
        self.proj = dense(embed_dim, "proj", self.dtype_policy)

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def _attention(self, query, key):
        """The attention weights `[B, N, T, T]`; subclasses mix heads here."""
        return attention_weights(query, key)

    def call(self, x, return_attention_scores=False):
        shape = ops.shape(x)
        batch, tokens = shape[0], shape[1]
        qkv = onednn_form.token_dense(self.qkv, x)
        qkv = ops.reshape(qkv, (batch, tokens, 3, self.num_heads, self.head_dim))
        if self._fusable and not return_attention_scores and not on_tensorflow():
            out = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
            merged = ops.reshape(out, (batch, tokens, self.embed_dim))  # [B, T, N, H] in
            return onednn_form.token_dense(self.proj, merged)
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B, N, T, H]
        query, key, value = qkv[0], qkv[1], qkv[2]
        attention = self._attention(query, key)
        merged = merge_heads(ops.matmul(attention, value), batch, tokens, self.embed_dim)
        out = onednn_form.token_dense(self.proj, merged)
        if return_attention_scores:
            return out, attention
        return out

    def compute_output_shape(self, input_shape):
        return input_shape
