"""TensorFlow, imported on first use, and which Keras backend runs.

The layers and models run on any Keras 3 backend (JAX, PyTorch, TensorFlow);
training, the data pipeline, deployment and the commands are TensorFlow's.
Modules the models import reach TensorFlow through `tf` here, so that
`deit_keras.models` loads where TensorFlow is not installed
(docs/backends.md).
"""

import importlib
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


def on_tensorflow() -> bool:
    """Whether Keras runs on its TensorFlow backend."""
    import keras

    return keras.backend.backend() == "tensorflow"
