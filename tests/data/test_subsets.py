"""Class-balanced, seeded subsets of the training split (`--train_fraction`)."""

import numpy as np
import pytest

from deit_keras.data import augment_config, dataset_info, make_dataset, subsets

NO_MIXING = augment_config.AugmentConfig(mixup=0.0, cutmix=0.0, smoothing=0.0, reprob=0.0)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    dataset_info("digits", data_dir)  # builds deit_digits offline
    return data_dir


def test_each_class_keeps_its_share_drawn_by_the_seed():
    labels = np.repeat([0, 1, 2], [40, 20, 3])
    kept = subsets.balanced_subset(labels, 0.25, seed=0)
    assert np.bincount(labels[kept]).tolist() == [10, 5, 1]  # round(0.75) = 1, at least 1
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept, subsets.balanced_subset(labels, 0.25, seed=0))
    assert not np.array_equal(kept, subsets.balanced_subset(labels, 0.25, seed=1))
    np.testing.assert_array_equal(subsets.balanced_subset(labels, 1.0, 3), np.arange(63))
    with pytest.raises(ValueError, match="train_fraction"):
        subsets.balanced_subset(labels, 0.0, 0)


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_training_stream_is_the_subset(digits_dir, in_memory):
    """Both input paths train on exactly the subset's images: its size, its labels."""
    info = dataset_info("digits", digits_dir, train_fraction=0.1)
    labels = subsets.train_labels("digits", digits_dir)
    kept = subsets.train_subset("digits", digits_dir, 0.1, seed=4)
    by_hand = sum(max(1, round(0.1 * count)) for count in np.bincount(labels))
    assert info.num_train_examples == len(kept) == by_hand and 130 < by_hand < 150
    assert dataset_info("digits", digits_dir).num_train_examples == 1437
    ds = make_dataset(
        "digits",
        "train",
        image_size=8,
        batch_size=16,
        training=True,
        data_dir=digits_dir,
        seed=4,
        augment=NO_MIXING,
        drop_remainder=False,
        in_memory=in_memory,
        train_fraction=0.1,
    )
    seen = np.concatenate([np.argmax(targets, -1) for _, targets in ds.as_numpy_iterator()])
    assert len(seen) == by_hand
    np.testing.assert_array_equal(np.bincount(seen, minlength=10), np.bincount(labels[kept]))
    evaluation = make_dataset(
        "digits",
        "eval",
        image_size=8,
        batch_size=360,
        training=False,
        data_dir=digits_dir,
        train_fraction=0.1,
    )
    assert sum(len(y) for _, y in evaluation.as_numpy_iterator()) == 360  # never cut
