"""Input data for DeiT: sources, transforms and the `tf.data` pipeline.

`make_dataset("digits" | "folder:PATH" | tfds name, "train" | "eval", ...)`
yields `(images, targets)` batches; see `deit_keras.data.pipeline`.
"""

from deit_keras.data.augment import AugmentConfig
from deit_keras.data.pipeline import dataset_info, make_dataset
from deit_keras.data.preprocessing import Preprocessing, preprocess
from deit_keras.data.sources import DatasetInfo, DatasetNotFoundError

__all__ = [
    "AugmentConfig",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Preprocessing",
    "dataset_info",
    "make_dataset",
    "preprocess",
]
