"""Input data for DeiT: sources, transforms, the `tf.data` pipeline and class names.

`make_dataset("digits" | "folder:PATH" | tfds name, "train" | "eval", ...)`
yields `(images, targets)` batches; see `deit_keras.data.pipeline`.
"""

from deit_keras.data.augment import AugmentConfig
from deit_keras.data.labels import (
    default_class_names,
    imagenet_class_names,
    imagenet_synsets,
    resolve_class_names,
)
from deit_keras.data.pipeline import dataset_info, make_dataset
from deit_keras.data.preprocessing import Preprocessing, preprocess
from deit_keras.data.sources import DatasetInfo, DatasetNotFoundError

__all__ = [
    "AugmentConfig",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Preprocessing",
    "dataset_info",
    "default_class_names",
    "imagenet_class_names",
    "imagenet_synsets",
    "make_dataset",
    "preprocess",
    "resolve_class_names",
]
