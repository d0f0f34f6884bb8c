"""DeiT models and the named variants."""

from deit_keras.models.deit import DeiT
from deit_keras.models.variants import create_model, get_variant, list_models

__all__ = ["DeiT", "create_model", "get_variant", "list_models"]
