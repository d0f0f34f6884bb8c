"""TensorFlow imported on first use, which Keras backend runs, and packages' lazy names.

The layers and models run on any Keras 3 backend (JAX, PyTorch, TensorFlow);
training, the data pipeline, deployment and the commands are TensorFlow's.
Modules the models import reach TensorFlow through `tf` here, so that
`deit_keras.models` loads where TensorFlow is not installed
(docs/backends.md); `keras` here is Keras the same way, for the few modules whose
names the commands' flags read.
"""

import importlib
import sys
import types


class _ImportedOnUse(types.ModuleType):
    """A stand-in for a module that imports it at its first attribute access."""

    def __init__(self, name: str):
        super().__init__(name)
        self._module = None

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return getattr(self._module, attribute)


tf = _ImportedOnUse("tensorflow")
# For the modules whose names a command's flags need (choices, defaults): `--help` and a
# bad flag are answered before Keras, and with it TensorFlow, loads.
keras = _ImportedOnUse("keras")


def on_tensorflow() -> bool:
    """Whether Keras runs on its TensorFlow backend."""
    import keras

    return keras.backend.backend() == "tensorflow"


def replica_position():
    """`(replicas in sync, this replica's index among them)`: `(1, 0)` outside a
    `tf.distribute` replica context or on another backend. Under several workers the index
    counts over all of them."""
    if not on_tensorflow():
        return 1, 0
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def lazy_exports(package: str, exports: dict, submodules: tuple = ()):
    """A package's PEP 562 `__getattr__`: `exports` ({name: module}) load on first use.

    So that a package's light modules import without the heavy ones (TensorFlow's
    pipeline, say) that its other names need.
    """

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
