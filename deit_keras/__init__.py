"""deit_keras: DeiT (data-efficient image transformers) in Keras 3.

Packages, each depending only on those listed before it (`tests/test_architecture.py`):
`schema`, `io`, `data`, `layers`, `distill`, `models`, `deploy`, `inference`,
`analysis`, `training`, `cli`. See docs/architecture.md.

The public API below is loaded lazily (PEP 562): `import deit_keras` alone
does not import TensorFlow, so the commands can quiet TensorFlow's C++
start-up lines before it loads. The first use of any name loads all of it,
and with it registers every Keras object of the package (layers, `DeiT`,
the LR schedule) for `keras.models.load_model`. So that `import deit_keras`
then `keras.models.load_model(...)` works in either import order, the API
also loads as soon as Keras has been imported: at once if it already is,
else right after its import finishes. On Keras' JAX or PyTorch backend only
the layers and models load (docs/backends.md); the other names raise an
ImportError naming `KERAS_BACKEND=tensorflow`.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "Preprocessing": "deit_keras.data.preprocessing",
    "create_model": "deit_keras.deploy.pretrained",
    "MLP": "deit_keras.layers",
    "DropPath": "deit_keras.layers",
    "MultiHeadSelfAttention": "deit_keras.layers",
    "PatchEmbedding": "deit_keras.layers",
    "TokensAndPositionEmbedding": "deit_keras.layers",
    "TransformerBlock": "deit_keras.layers",
    "LayerScale": "deit_keras.layers",
    "TalkingHeadsAttention": "deit_keras.layers",
    "ClassAttention": "deit_keras.layers",
    "ClassAttentionBlock": "deit_keras.layers",
    "resample_position_embeddings": "deit_keras.layers",
    "DeiT": "deit_keras.models",
    "CaiT": "deit_keras.models",
    "get_variant": "deit_keras.models",
    "list_models": "deit_keras.models",
}
# Imported with the API for their side effect: they register what compiled `.keras`
# files hold beside the model (`deit_keras>WarmupCosine` and the layer-decay optimizers,
# DeiT III's `BinaryCrossEntropy` loss), so `keras.models.load_model` finds them.
_REGISTERS = ("deit_keras.training.optim", "deit_keras.distill.base_losses")
# What loads on Keras' other backends (JAX, PyTorch): the layers and models run there;
# training, data, deployment and the commands are TensorFlow's (docs/backends.md).
_ANY_BACKEND = ("deit_keras.layers", "deit_keras.models")

__all__ = sorted(_EXPORTS)


_loading = False


def _load_api() -> None:
    global _loading
    if _loading:  # our own modules import keras, which calls back here
        return
    _loading = True
    try:
        for module in _api_modules():
            importlib.import_module(module)
    finally:
        _loading = False
    for name, module in _EXPORTS.items():
        if module in sys.modules:
            globals()[name] = getattr(sys.modules[module], name)


def _api_modules() -> tuple:
    from deit_keras.backend import on_tensorflow

    if on_tensorflow():
        return (*sorted(set(_EXPORTS.values())), *_REGISTERS)
    return _ANY_BACKEND


def _initializing(module) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _load_api_when_safe(just_loaded: str) -> None:
    """Loads the API once Keras is in and no module it needs is half-imported."""
    if _loading or "keras" not in sys.modules:
        return
    for name, module in list(sys.modules.items()):
        if name == just_loaded:
            continue  # executed in full; only its import flag is still up
        half_imported = name.startswith("deit_keras.") or name in ("tensorflow", "keras")
        if half_imported and _initializing(module):
            return  # an outer import finishing later calls back here
    for finder in [f for f in sys.meta_path if isinstance(f, _LoadAfterKeras)]:
        sys.meta_path.remove(finder)
    _load_api()


class _LoadAfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing of its own: it wraps the loaders of `keras`, `tensorflow` and of our
    submodules so that the API loads right after the import that makes it possible,
    whichever that is (`import keras` after `import deit_keras`; `import tensorflow`,
    which imports Keras while it is itself half-imported; `from deit_keras.deploy import
    ...`)."""

    def find_spec(self, name, path=None, target=None):
        if name not in ("keras", "tensorflow") and not name.startswith("deit_keras."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_module_then_load_api(module):
            exec_module(module)
            _load_api_when_safe(name)

        spec.loader.exec_module = exec_module_then_load_api
        return spec


def __getattr__(name: str):
    if name in _EXPORTS:
        _load_api()
        if name not in globals():
            raise _needs_tensorflow(f"deit_keras.{name}")
        return globals()[name]
    if importlib.util.find_spec(f"deit_keras.{name}") is not None:  # `deit_keras.models`
        _load_api()
        return importlib.import_module(f"deit_keras.{name}")
    raise AttributeError(f"module 'deit_keras' has no attribute {name!r}")


def _needs_tensorflow(what: str) -> ImportError:
    import keras

    return ImportError(
        f"{what} needs Keras' TensorFlow backend; on {keras.backend.backend()!r} only the "
        "layers and models (deit_keras.models.build_model) run. Set KERAS_BACKEND=tensorflow."
    )


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if "keras" in sys.modules:
    _load_api()
elif not any(isinstance(finder, _LoadAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _LoadAfterKeras())
