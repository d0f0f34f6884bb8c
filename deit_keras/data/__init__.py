"""Input data for DeiT: sources, transforms and the `tf.data` pipeline.

`make_dataset("digits" | "folder:PATH" | tfds name, "train" | "eval", ...)`
yields `(images, targets)` batches; see `deit_keras.data.pipeline`.
"""

import importlib

_EXPORTS = {
    "AugmentConfig": "deit_keras.augment",
    "DatasetInfo": "deit_keras.data.pipeline",
    "DatasetNotFoundError": "deit_keras.data.sources",
    "dataset_info": "deit_keras.data.pipeline",
    "make_dataset": "deit_keras.data.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Lazy, so `deit_keras.augment` can import `deit_keras.data.*` modules
    # without an import cycle through this package.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
