"""deit_keras: DeiT (data-efficient image transformers) in Keras 3."""

import os

# TensorFlow's C++ start-up chatter (CPU feature notes, CUDA probes) is noise
# for library users; a value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
