"""What a DeiT attends to: attention maps, rollout, cls/dist token similarity, pictures."""

from deit_keras.analysis.attention import (
    attention_maps,
    attention_rollout,
    batch_attention_maps,
    token_cosine_similarity,
)

__all__ = [
    "attention_maps",
    "attention_rollout",
    "batch_attention_maps",
    "token_cosine_similarity",
]
