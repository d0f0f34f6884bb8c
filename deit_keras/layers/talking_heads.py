"""Talking-heads self-attention (Shazeer et al., 2020), as CaiT uses it."""

import keras
from keras import ops

from deit_keras.layers.basic import check_heads, dense


@keras.saving.register_keras_serializable(package="deit_keras")
class TalkingHeadsAttention(keras.layers.Layer):
    """Self-attention whose heads are mixed by learned maps before and after the softmax.

    Shazeer et al., "Talking-Heads Attention" (arXiv:2003.02436); CaiT
    (arXiv:2103.17239) uses it in its self-attention stage. The attention
    logits `[B, N, T, T]` are mixed across the head axis by `proj_l`
    (a `num_heads x num_heads` linear map with bias) before the softmax and
    by `proj_w` after it, as timm's `TalkingHeadAttn`.

    Args:
        embed_dim: int. Token size; a multiple of `num_heads`.
        num_heads: int. Attention heads.

    Call arguments:
        x: `[B, T, embed_dim]`.
        return_attention_scores: bool. Also return the mixed attention
            `[B, num_heads, T, T]` (after `proj_w`).

    Returns:
        `[B, T, embed_dim]`, and the attention when asked.
    """

    def __init__(self, embed_dim, num_heads, **kwargs):
        check_heads(embed_dim, num_heads)
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        policy = self.dtype_policy
        self.qkv = dense(3 * embed_dim, "qkv", policy)
        self.proj_l = dense(num_heads, "proj_l", policy)
        self.proj_w = dense(num_heads, "proj_w", policy)
        self.proj = dense(embed_dim, "proj", policy)

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        self.proj_l.build((None, None, None, self.num_heads))
        self.proj_w.build((None, None, None, self.num_heads))

    def _mix_heads(self, projection, attention):
        # [B, N, T, T] -> heads last for the Dense -> back.
        return ops.transpose(projection(ops.transpose(attention, (0, 2, 3, 1))), (0, 3, 1, 2))

    def call(self, x, return_attention_scores=False):
        shape = ops.shape(x)
        batch, tokens = shape[0], shape[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B, N, T, H]
        query, key, value = qkv[0], qkv[1], qkv[2]
        scale = ops.cast(self.head_dim**-0.5, query.dtype)
        logits = self._mix_heads(
            self.proj_l, ops.matmul(query * scale, ops.transpose(key, (0, 1, 3, 2)))
        )
        # Softmax in float32 for stability under mixed precision.
        attention = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), value.dtype)
        attention = self._mix_heads(self.proj_w, attention)
        out = ops.matmul(attention, value)  # [B, N, T, H]
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, tokens, self.embed_dim))
        out = self.proj(out)
        if return_attention_scores:
            return out, attention
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, num_heads=self.num_heads)
        return config
