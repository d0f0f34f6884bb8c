"""Keras layers of the DeiT model."""

from deit_keras.layers.embedding import (
    PatchEmbedding,
    TokensAndPositionEmbedding,
    resample_position_embeddings,
)
from deit_keras.layers.encoder import MLP, DropPath, MultiHeadSelfAttention, TransformerBlock

__all__ = [
    "DropPath",
    "MLP",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "TokensAndPositionEmbedding",
    "TransformerBlock",
    "resample_position_embeddings",
]
