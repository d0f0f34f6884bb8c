"""Input data for DeiT: sources, transforms, the `tf.data` pipeline and class names.

`make_dataset("digits" | "folder:PATH" | tfds name, "train" | "eval", ...)`
yields `(images, targets)` batches; see `deit_keras.data.pipeline`.

The names below load on first use (PEP 562), so the models import the
constants and `Preprocessing` without the TensorFlow pipeline (docs/backends.md).
"""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "AugmentConfig": "deit_keras.data.augment_config",
    "DatasetInfo": "deit_keras.data.sources",
    "DatasetNotFoundError": "deit_keras.data.sources",
    "Preprocessing": "deit_keras.data.preprocessing",
    "dataset_info": "deit_keras.data.pipeline",
    "default_class_names": "deit_keras.data.labels",
    "imagenet_class_names": "deit_keras.data.labels",
    "imagenet_synsets": "deit_keras.data.labels",
    "make_dataset": "deit_keras.data.pipeline",
    "normalize": "deit_keras.data.preprocessing",
    "preprocess": "deit_keras.data.preprocessing",
    "resolve_class_names": "deit_keras.data.labels",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
