"""CaiT's class attention: only the class token queries; the patch tokens stay frozen."""

import keras
from keras import ops

from deit_keras.layers.attention import (
    HeadsLayer,
    attention_weights,
    merge_heads,
    split_heads,
    with_scores,
)
from deit_keras.layers.basic import dense, layer_norm
from deit_keras.layers.encoder import MLP, DropPath
from deit_keras.layers.frozen import KeepsFrozen
from deit_keras.layers.layer_scale import LayerScale


@keras.saving.register_keras_serializable(package="deit_keras")
class ClassAttention(HeadsLayer):
    """Attention of the class token over `[class token, patch tokens]`.

    CaiT (arXiv:2103.17239), Sec. 3: in the class-attention stage the class
    token is the only query; keys and values come from the class token and
    all patch tokens. Separate q, k, v projections (with bias), as timm's
    `ClassAttn` and the official `Class_Attention`.

    Args:
        embed_dim: int. Token size; a multiple of `num_heads`.
        num_heads: int. Attention heads.

    Call arguments:
        x: `[B, 1 + T, embed_dim]`, the class token first.
        return_attention_scores: bool. Also return the attention
            `[B, num_heads, 1, 1 + T]`.

    Returns:
        `[B, 1, embed_dim]`: the class token's update (and the attention).
    """

    def __init__(self, embed_dim, num_heads, **kwargs):
        super().__init__(embed_dim, num_heads, **kwargs)
        policy = self.dtype_policy
        self.q = dense(embed_dim, "q", policy)
        self.k = dense(embed_dim, "k", policy)
        self.v = dense(embed_dim, "v", policy)
        self.proj = dense(embed_dim, "proj", policy)

    def build(self, input_shape):
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build(input_shape)

    def call(self, x, return_attention_scores=False):
        shape = ops.shape(x)
        batch, tokens = shape[0], shape[1]
        heads = (self.num_heads, self.head_dim)
        query = split_heads(self.q(x[:, :1]), batch, 1, *heads)
        key = split_heads(self.k(x), batch, tokens, *heads)
        value = split_heads(self.v(x), batch, tokens, *heads)
        attention = attention_weights(query, key)
        out = self.proj(merge_heads(ops.matmul(attention, value), batch, 1, self.embed_dim))
        if return_attention_scores:
            return out, attention
        return out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.embed_dim)


@keras.saving.register_keras_serializable(package="deit_keras")
class ClassAttentionBlock(KeepsFrozen, keras.layers.Layer):
    """CaiT's class-attention block with LayerScale (timm's `LayerScaleBlockClassAttn`).

    `cls + gamma_1 * CA(LN([cls, x]))`, then `cls + gamma_2 * MLP(LN(cls))`;
    the patch tokens `x` pass through unchanged.

    Args:
        embed_dim: int. Token size.
        num_heads: int. Attention heads.
        mlp_ratio: float. MLP hidden size over `embed_dim`. Defaults to 4.
        layer_scale_init: float. Initial LayerScale value. Defaults to 1e-5.
        drop_path_rate: float. Stochastic depth rate. Defaults to 0 (CaiT
            applies none in this stage).

    Call arguments:
        x: `[B, T, embed_dim]`, the patch tokens.
        cls_token: `[B, 1, embed_dim]`.

    Returns:
        The updated class token `[B, 1, embed_dim]`.
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        mlp_ratio=4.0,
        layer_scale_init=1e-5,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.layer_scale_init = layer_scale_init
        self.drop_path_rate = drop_path_rate
        policy = self.dtype_policy
        self.norm1 = layer_norm("norm1", policy)
        self.attn = ClassAttention(embed_dim, num_heads, dtype=policy, name="attn")
        self.norm2 = layer_norm("norm2", policy)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), dtype=policy, name="mlp")
        self.gamma_1 = LayerScale(embed_dim, layer_scale_init, dtype=policy, name="gamma_1")
        self.gamma_2 = LayerScale(embed_dim, layer_scale_init, dtype=policy, name="gamma_2")
        self.drop_path = DropPath(drop_path_rate, dtype=policy, name="drop_path")

    def build(self, x_shape, cls_token_shape=None):
        tokens = (x_shape[0], None, self.embed_dim)
        for layer in (self.norm1, self.attn, self.norm2, self.mlp, self.gamma_1, self.gamma_2):
            layer.build(tokens)
        self.drop_path.build(tokens)  # no weights; built, so `Model.quantize` accepts it

    def call(self, x, cls_token, training=None, return_attention_scores=False):
        joined = ops.concatenate([cls_token, x], axis=1)
        attended, attention = with_scores(
            self.attn(self.norm1(joined), return_attention_scores=return_attention_scores),
            return_attention_scores,
        )
        cls_token = cls_token + self.drop_path(self.gamma_1(attended), training=training)
        update = self.gamma_2(self.mlp(self.norm2(cls_token)))
        cls_token = cls_token + self.drop_path(update, training=training)
        return (cls_token, attention) if return_attention_scores else cls_token

    def compute_output_shape(self, x_shape, cls_token_shape=None):
        return (x_shape[0], 1, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            layer_scale_init=self.layer_scale_init,
            drop_path_rate=self.drop_path_rate,
        )
        return config
