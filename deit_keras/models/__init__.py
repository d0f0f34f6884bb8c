"""DeiT, DeiT III and CaiT models, their presets and the builder behind `create_model`.

The names below load on first use (PEP 562), so `deit_keras.models.flops`
imports without TensorFlow (the `benchmarks/` drivers count FLOPs with it).
"""

import importlib

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


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
