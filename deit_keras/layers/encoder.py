"""The pre-norm transformer block: self-attention, GELU MLP, stochastic depth."""

import keras
from keras import ops

from deit_keras.layers import onednn_form
from deit_keras.layers.attention import MultiHeadSelfAttention, with_scores
from deit_keras.layers.basic import dense, layer_norm
from deit_keras.layers.frozen import KeepsFrozen
from deit_keras.layers.layer_scale import LayerScale
from deit_keras.layers.replica_dropout import ReplicaDropout
from deit_keras.layers.talking_heads import TalkingHeadsAttention


@keras.saving.register_keras_serializable(package="deit_keras")
class DropPath(ReplicaDropout):
    """Stochastic depth: drops a whole residual branch per sample.

    In training each sample's branch output is zeroed with probability
    `rate` and the survivors are scaled by `1 / (1 - rate)`; at inference
    it is the identity. Under a `tf.distribute` strategy each replica keeps
    its own samples' draws (the seed generator's state is one mirrored
    variable, so every replica would otherwise drop the same rows, where
    official DeiT seeds each rank apart). `ReplicaDropout` with one draw per sample.

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: int or None. Seed of the layer's `SeedGenerator`.
    """

    def mask_shape(self, x) -> tuple:
        return (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)


@keras.saving.register_keras_serializable(package="deit_keras")
class MLP(KeepsFrozen, keras.layers.Layer):
    """Two Dense layers with an exact (erf) GELU between them.

    Args:
        embed_dim: int. Input and output size.
        hidden_dim: int. Hidden size (4 x embed_dim in DeiT).
    """

    def __init__(self, embed_dim, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.fc1 = dense(hidden_dim, "fc1", self.dtype_policy)
        self.fc2 = dense(embed_dim, "fc2", self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, x):
        return onednn_form.mlp(self.fc1, self.fc2, x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package="deit_keras")
class TransformerBlock(KeepsFrozen, keras.layers.Layer):
    """Pre-norm ViT block: `x + DropPath(Attn(LN(x)))`, `x + DropPath(MLP(LN(x)))`.

    With `layer_scale_init` each branch is scaled by a `LayerScale` (`ls1`,
    `ls2`) first: DeiT III and CaiT's self-attention stage. With
    `talking_heads` the attention is `TalkingHeadsAttention` (CaiT).

    Args:
        embed_dim: int. Token size.
        num_heads: int. Attention heads.
        mlp_ratio: float. MLP hidden size over `embed_dim`. Defaults to 4.
        drop_path_rate: float. Stochastic depth rate of this block.
        layer_scale_init: float or None. Initial LayerScale value; None
            (DeiT) for no LayerScale. Defaults to None.
        talking_heads: bool. Talking-heads attention. Defaults to False.
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        layer_scale_init=None,
        talking_heads=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init = layer_scale_init
        self.talking_heads = talking_heads
        policy = self.dtype_policy
        attention = TalkingHeadsAttention if talking_heads else MultiHeadSelfAttention
        self.norm1 = layer_norm("norm1", policy)
        self.attn = attention(embed_dim, num_heads, dtype=policy, name="attn")
        self.norm2 = layer_norm("norm2", policy)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), dtype=policy, name="mlp")
        self.drop_path = DropPath(drop_path_rate, dtype=policy, name="drop_path")
        self.ls1 = self.ls2 = None
        if layer_scale_init is not None:
            self.ls1 = LayerScale(embed_dim, layer_scale_init, dtype=policy, name="ls1")
            self.ls2 = LayerScale(embed_dim, layer_scale_init, dtype=policy, name="ls2")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp, self.ls1, self.ls2):
            if layer is not None:
                layer.build(input_shape)
        self.drop_path.build(input_shape)  # no weights; built, so `Model.quantize` accepts it

    def _scaled(self, layer_scale, x):
        return x if layer_scale is None else layer_scale(x)

    def call(self, x, training=None, return_attention_scores=False):
        attended, attention = with_scores(
            self.attn(self.norm1(x), return_attention_scores=return_attention_scores),
            return_attention_scores,
        )
        x = x + self.drop_path(self._scaled(self.ls1, attended), training=training)
        x = x + self.drop_path(self._scaled(self.ls2, self.mlp(self.norm2(x))), training=training)
        return (x, attention) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
            talking_heads=self.talking_heads,
        )
        return config
