"""Dense and LayerNorm layers with the reference init and epsilon (timm / official DeiT)."""

import keras

from deit_keras.errors import UserInputError
from deit_keras.layers.initializers import trunc_normal

LAYER_NORM_EPSILON = 1e-6


def dense(units, name, dtype_policy):
    return keras.layers.Dense(
        units,
        kernel_initializer=trunc_normal(),
        bias_initializer="zeros",
        dtype=dtype_policy,
        name=name,
    )


def layer_norm(name, dtype_policy):
    return keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, dtype=dtype_policy, name=name
    )


def check_heads(embed_dim, num_heads):
    """One line unless `embed_dim` splits into `num_heads` equal heads."""
    if num_heads <= 0 or embed_dim % num_heads:
        raise UserInputError(
            "embed_dim must be a positive multiple of num_heads. "
            f"Received: embed_dim={embed_dim}, num_heads={num_heads}"
        )
