"""Calibration images for int8 quantization: uint8 eval crops of a dataset's images."""

import numpy as np
from absl import logging

from deit_keras.data.pipeline import make_dataset
from deit_keras.data.preprocessing import Preprocessing, to_uint8
from deit_keras.errors import UserInputError


def eval_crops(
    dataset_name: str,
    count: int,
    image_size: int,
    preprocessing: Preprocessing,
    split: str = "train",
    data_dir: str | None = None,
) -> np.ndarray:
    """The first `count` images of a split as uint8 `[N, image_size, image_size, 3]` eval crops
    (all of them, with a warning, when the split has fewer).

    The crops the exported fixed-size signature takes (`deploy.signatures`):
    the eval resize and centre crop, without normalisation.

    Raises:
        ValueError: `count` is not positive, or the split is empty.
    """
    if count <= 0:
        raise UserInputError(f"count must be positive. Received: count={count}")
    dataset = make_dataset(
        dataset_name,
        split,
        image_size=image_size,
        batch_size=min(count, 256),
        training=False,
        preprocessing=preprocessing,
        data_dir=data_dir,
    )
    crops, total = [], 0
    for images, _ in dataset:
        crops.append(to_uint8(images, preprocessing))
        total += len(crops[-1])
        if total >= count:
            break
    if not total:
        raise UserInputError(f"Dataset {dataset_name!r} ({split}) has no images to calibrate on.")
    if total < count:
        logging.warning(
            "Calibrating on the %d images of %s's %s split, fewer than the %d asked for.",
            total,
            dataset_name,
            split,
            count,
        )
    return np.concatenate(crops)[:count]
