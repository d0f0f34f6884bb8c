"""The embedded default dataset `digits`, a local tfds builder.

scikit-learn's bundled `load_digits()`: 1,797 real 8x8 grayscale scans of
handwritten digits (values 0..16), 10 classes. Served as tfds dataset
`deit_digits` (a name not in the tfds catalogue); users call it `digits`.

- Split: stratified 80/20 by `sklearn.model_selection.train_test_split(
  test_size=0.2, stratify=y, random_state=0)`: 1,437 train / 360 test.
- Images: uint8 RGB 32x32: values scaled by 255/16 and rounded, each pixel
  repeated into a 4x4 block (nearest upscale), the channel replicated 3
  times, so the set flows through the ImageNet image pipeline.
- Labels: class names "0".."9".
Builds offline into `data_dir` in about a second on first use.
"""

import contextlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from deit_keras.io import run_lock

TFDS_NAME = "deit_digits"
IMAGE_SIZE = 32
NUM_EXAMPLES = 1797
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _load_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    factor = IMAGE_SIZE // images.shape[1]
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    indices = np.arange(len(images))
    train, test = train_test_split(
        indices,
        test_size=TEST_FRACTION,
        stratify=data.target,
        random_state=SPLIT_SEED,
    )
    return images, data.target, {"train": np.sort(train), "test": np.sort(test)}


class DeitDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn digits as 32x32 RGB, stratified 80/20 split."""

    VERSION = tfds.core.Version("1.0.0")

    # tfds announces a download before preparing and its place after; nothing is
    # downloaded here, and `digits_builder` says what happens in one line instead.
    def _log_download_bytes(self):
        pass

    def _log_download_done(self):
        pass

    RELEASE_NOTES = {"1.0.0": "scikit-learn load_digits, 32x32 RGB."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with sklearn.
        images, labels, splits = _load_arrays()
        return {
            name: self._generate_examples(images, labels, indices)
            for name, indices in splits.items()
        }

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}


@contextlib.contextmanager
def _without_tfds_chatter():
    """No progress bars, and no absl warning such as "Variant folder ... has no
    dataset_info.json" (tfds looking at the folder it is about to fill)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(True)
        logging.set_verbosity(verbosity)


def digits_builder(data_dir=None):
    """Returns the prepared `deit_digits` builder, building it if needed."""
    with _without_tfds_chatter():
        builder = DeitDigits(data_dir=data_dir)
        if builder.is_prepared():
            return builder
    # Processes that start at once (test workers, an ablation's seeds side by side) take
    # turns: the first prepares, the rest find it prepared.
    with run_lock.exclusive(os.path.dirname(builder.data_dir) + ".prepare.lock"):
        with _without_tfds_chatter():
            builder = DeitDigits(data_dir=data_dir)
            if builder.is_prepared():
                return builder
        logging.warning(
            "Preparing the embedded digits dataset (scikit-learn, offline, once) in %s",
            builder.data_dir,
        )
        with _without_tfds_chatter():
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return builder
