"""DeiT models, their presets and the builder behind `deit_keras.create_model`."""

from deit_keras.models import deit_presets
from deit_keras.models.deit import DeiT
from deit_keras.models.variants import build_model, get_variant, list_models

__all__ = ["DeiT", "build_model", "deit_presets", "get_variant", "list_models"]
