"""Input data for DeiT: sources, transforms, the `tf.data` pipeline and class names.

`make_dataset("digits" | "folder:PATH" | tfds name, "train" | "eval", ...)`
yields `(images, targets)` batches; see `deit_keras.data.pipeline`.

The names below load on first use (PEP 562), so the models import the
constants and `Preprocessing` without the TensorFlow pipeline (docs/backends.md).
"""

import importlib

_EXPORTS = {
    "AugmentConfig": "deit_keras.data.augment",
    "DatasetInfo": "deit_keras.data.sources",
    "DatasetNotFoundError": "deit_keras.data.sources",
    "Preprocessing": "deit_keras.data.preprocessing",
    "dataset_info": "deit_keras.data.pipeline",
    "default_class_names": "deit_keras.data.labels",
    "imagenet_class_names": "deit_keras.data.labels",
    "imagenet_synsets": "deit_keras.data.labels",
    "make_dataset": "deit_keras.data.pipeline",
    "preprocess": "deit_keras.data.preprocessing",
    "resolve_class_names": "deit_keras.data.labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
