"""DeiT, DeiT III and CaiT models, their presets and the builder behind `create_model`."""

from deit_keras.models import deit_presets
from deit_keras.models.cait import CaiT
from deit_keras.models.classifier import TokenClassifier
from deit_keras.models.deit import DeiT
from deit_keras.models.variants import build_model, get_variant, list_models

__all__ = [
    "CaiT",
    "DeiT",
    "TokenClassifier",
    "build_model",
    "deit_presets",
    "get_variant",
    "list_models",
]
