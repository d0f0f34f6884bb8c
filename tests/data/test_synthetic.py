"""The generated image-folder datasets (`deit_keras.data.synthetic`)."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from deit_keras.data import dataset_info, make_dataset, synthetic


def _digest(root):
    files = sorted(os.path.join(path, name) for path, _, names in os.walk(root) for name in names)
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(os.path.relpath(file, root).encode())
        with open(file, "rb") as handle:
            hasher.update(handle.read())
    return len(files), hasher.hexdigest()


@pytest.mark.parametrize("name", sorted(synthetic.DATASETS))
def test_same_seed_same_bytes(tmp_path, name):
    counts = dict(train_per_class=3, val_per_class=2)
    synthetic.write_dataset(name, str(tmp_path / "a"), seed=5, **counts)
    synthetic.write_dataset(name, str(tmp_path / "b"), seed=5, **counts)
    synthetic.write_dataset(name, str(tmp_path / "c"), seed=6, **counts)
    classes = len(synthetic.DATASETS[name][0])
    first = _digest(tmp_path / "a")
    assert first[0] == classes * 5
    assert first == _digest(tmp_path / "b")
    assert first[1] != _digest(tmp_path / "c")[1]


def test_more_images_keep_the_first_ones(tmp_path):
    synthetic.write_dataset("shapes", str(tmp_path / "small"), train_per_class=2, val_per_class=1)
    synthetic.write_dataset("shapes", str(tmp_path / "large"), train_per_class=4, val_per_class=1)
    for file in ("train/circle/00000.png", "train/cross/00001.png", "val/square/00000.png"):
        assert (tmp_path / "small" / file).read_bytes() == (tmp_path / "large" / file).read_bytes()


@pytest.mark.parametrize("name", ["glyphs", "objects"])
def test_folder_loads_through_the_pipeline(tmp_path, name):
    classes, size, _, _ = synthetic.DATASETS[name]
    dataset = synthetic.write_dataset(name, str(tmp_path), train_per_class=4, val_per_class=2)
    assert dataset == f"folder:{tmp_path}"
    image = np.asarray(Image.open(tmp_path / "train" / classes[0] / "00000.png"))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert image.std() > 10  # drawn, not blank
    info = dataset_info(dataset)
    assert info.class_names == tuple(sorted(classes))
    assert (info.num_train_examples, info.num_eval_examples) == (4 * len(classes), 2 * len(classes))
    train = make_dataset(dataset, "train", image_size=32, batch_size=4, training=True, seed=0)
    images, targets = next(iter(train))
    assert images.shape == (4, 32, 32, 3) and targets.shape == (4, len(classes))
    evaluation = make_dataset(dataset, "eval", image_size=32, batch_size=8, training=False)
    labels = np.concatenate([y.numpy().argmax(-1) for _, y in evaluation])
    np.testing.assert_array_equal(np.bincount(labels), [2] * len(classes))


def test_unknown_name_refused(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        synthetic.write_dataset("cats", str(tmp_path))
