"""deit_keras: DeiT (data-efficient image transformers) in Keras 3.

Packages, each depending only on those listed before it (`tests/test_architecture.py`):
`schema`, `io`, `data`, `layers`, `distill`, `models`, `deploy`, `inference`,
`analysis`, `training`, `cli`. See README.md, "Architecture".
"""

from deit_keras.data.preprocessing import Preprocessing
from deit_keras.deploy.pretrained import create_model
from deit_keras.layers import (
    MLP,
    DropPath,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TokensAndPositionEmbedding,
    TransformerBlock,
    resample_position_embeddings,
)
from deit_keras.models import DeiT, get_variant, list_models

# Imported for its side effect: it registers `deit_keras>WarmupCosine`, the
# schedule inside compiled `.keras` files, so `keras.models.load_model` finds it.
from deit_keras.training import optim as _optim  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "DeiT",
    "DropPath",
    "MLP",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "Preprocessing",
    "TokensAndPositionEmbedding",
    "TransformerBlock",
    "create_model",
    "get_variant",
    "list_models",
    "resample_position_embeddings",
]
