"""deit_keras: DeiT (data-efficient image transformers) in Keras 3."""

from deit_keras.layers import (
    MLP,
    DropPath,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TokensAndPositionEmbedding,
    TransformerBlock,
    resample_position_embeddings,
)
from deit_keras.models import DeiT, create_model, get_variant, list_models

__version__ = "0.1.0"

__all__ = [
    "DeiT",
    "DropPath",
    "MLP",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "TokensAndPositionEmbedding",
    "TransformerBlock",
    "create_model",
    "get_variant",
    "list_models",
    "resample_position_embeddings",
]
