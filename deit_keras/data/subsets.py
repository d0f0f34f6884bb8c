"""Class-balanced, seeded subsets of a training split (data-efficiency studies).

`--train_fraction=f` keeps, of each class, `max(1, round(f x its count))` of its
training images, drawn without replacement by a generator seeded with the run's
seed: the same images for the same `(dataset, f, seed)` in every process (the
teacher and the student of a run, a resumed run), other images for another seed.
Two fractions of one seed draw independently: their subsets are not nested (a
`deit-ablate --train_fractions` curve carries that sampling noise too).
The subset is given as indices into the split in the source's unshuffled read
order (iterated in order: a training pipeline's interleave may reorder files), and
its encoded images are read once and held in memory (`train_subset_examples`):
subsets are for small-data studies. The evaluation split is never cut.
"""

import functools

import numpy as np

from deit_keras.data import sources
from deit_keras.errors import UserInputError

_SALT = 0x5EED_5AB5  # the subset's generator is not the augmentations' (same seed)


def balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced, seeded subset of `labels`.

    Args:
        labels: int array `[N]`. Class ids, in the split's read order.
        fraction: float in (0, 1]. Share of each class kept (at least one image).
        seed: int. Which images of each class are kept.

    Returns:
        int64 array of indices into `labels`, ascending; all of them when
        `fraction` is 1.
    """
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"train_fraction must be in (0, 1]. Received: fraction={fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, _SALT])
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        kept.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(kept)).astype(np.int64)


@functools.lru_cache(maxsize=8)
def train_labels(name: str, data_dir: str | None) -> np.ndarray:
    """The training split's labels in the source's unshuffled read order (read once)."""
    source = sources.get_source(name, data_dir)
    labels = source.read("train", shuffle_files=False).map(lambda encoded, label: label)
    return np.fromiter(labels.as_numpy_iterator(), dtype=np.int64)


def train_subset(name: str, data_dir: str | None, fraction: float, seed: int) -> np.ndarray:
    """`balanced_subset` of dataset `name`'s training split (see the module docstring)."""
    return balanced_subset(train_labels(name, data_dir), fraction, seed)


@functools.lru_cache(maxsize=8)
def train_subset_examples(name: str, data_dir: str | None, fraction: float, seed: int) -> tuple:
    """`(encoded images, int64 labels)` of `train_subset`, in read order, as numpy arrays."""
    keep = set(train_subset(name, data_dir, fraction, seed).tolist())
    encoded = sources.get_source(name, data_dir).read("train", shuffle_files=False)
    kept = [example for index, example in enumerate(encoded.as_numpy_iterator()) if index in keep]
    images = np.array([image for image, _ in kept], dtype=object)
    return images, np.array([label for _, label in kept], dtype=np.int64)


def subset_size(name: str, data_dir: str | None, fraction: float) -> int:
    """How many training images `--train_fraction=fraction` keeps (the same for any seed)."""
    return len(balanced_subset(train_labels(name, data_dir), fraction, 0))
