"""Talking-heads self-attention (Shazeer et al., 2020), as CaiT uses it."""

import keras
from keras import ops

from deit_keras.layers.attention import MultiHeadSelfAttention, attention_weights
from deit_keras.layers.basic import dense


@keras.saving.register_keras_serializable(package="deit_keras")
class TalkingHeadsAttention(MultiHeadSelfAttention):
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

    _fusable = False  # the heads mix inside the softmax

    def __init__(self, embed_dim, num_heads, **kwargs):
        super().__init__(embed_dim, num_heads, **kwargs)
        self.proj_l = dense(num_heads, "proj_l", self.dtype_policy)
        self.proj_w = dense(num_heads, "proj_w", self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        self.proj_l.build((None, None, None, self.num_heads))
        self.proj_w.build((None, None, None, self.num_heads))

    def _mix_heads(self, projection, attention):
        # [B, N, T, T] -> heads last for the Dense -> back.
        return ops.transpose(projection(ops.transpose(attention, (0, 2, 3, 1))), (0, 3, 1, 2))

    def _attention(self, query, key):
        attention = attention_weights(query, key, lambda x: self._mix_heads(self.proj_l, x))
        return self._mix_heads(self.proj_w, attention)
