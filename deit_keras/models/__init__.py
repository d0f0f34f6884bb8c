"""DeiT, DeiT III and CaiT models, their presets and the builder behind `create_model`.

The names below load on first use (PEP 562), so `deit_keras.models.flops`
imports without TensorFlow (the `benchmarks/` drivers count FLOPs with it).
"""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "CaiT": "deit_keras.models.cait",
    "DeiT": "deit_keras.models.deit",
    "TokenClassifier": "deit_keras.models.classifier",
    "build_model": "deit_keras.models.variants",
    "get_variant": "deit_keras.models.variants",
    "list_models": "deit_keras.models.variants",
    "vit_flops": "deit_keras.models.flops",
}
_SUBMODULES = ("deit_presets",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

__getattr__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
