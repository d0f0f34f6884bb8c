"""Keras layers of the DeiT, DeiT III and CaiT models."""

from deit_keras.layers.attention import MultiHeadSelfAttention
from deit_keras.layers.class_attention import ClassAttention, ClassAttentionBlock
from deit_keras.layers.embedding import (
    PatchEmbedding,
    TokensAndPositionEmbedding,
    resample_position_embeddings,
)
from deit_keras.layers.encoder import MLP, DropPath, TransformerBlock
from deit_keras.layers.layer_scale import LayerScale
from deit_keras.layers.replica_dropout import ReplicaDropout
from deit_keras.layers.talking_heads import TalkingHeadsAttention

__all__ = [
    "ClassAttention",
    "ClassAttentionBlock",
    "DropPath",
    "LayerScale",
    "MLP",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "ReplicaDropout",
    "TalkingHeadsAttention",
    "TokensAndPositionEmbedding",
    "TransformerBlock",
    "resample_position_embeddings",
]
