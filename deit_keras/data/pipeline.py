"""The DeiT `tf.data` input pipeline: the API the training code calls.

Training: read (a folder's or an in-memory split's images in a full permutation,
tfds files shuffled) -> [shard] -> shuffle -> [repeated augmentation] -> per-image
crop/flip/RandAugment/normalise/erase (parallel map) -> batch -> MixUp/CutMix
with smoothed targets -> prefetch. Eval: read -> [shard] -> resize + centre
crop + normalise -> batch -> one-hot targets -> prefetch.

Randomness is stateless: each element is zipped with a seed drawn from
`tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`, so a given
`seed` gives the same batches on every run (with `deterministic=True`, which
also fixes the order of the parallel map) and new augmentations each epoch.
"""

import dataclasses

import tensorflow as tf

from deit_keras.data import augment as augment_lib
from deit_keras.data import in_memory as in_memory_lib
from deit_keras.data import sources, subsets, transforms
from deit_keras.data.augment_config import DEFAULT_AUGMENT, AugmentConfig
from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING, Preprocessing, preprocess
from deit_keras.data.sources import DatasetInfo
from deit_keras.errors import UserInputError

__all__ = ["DatasetInfo", "dataset_info", "make_dataset"]

AUTOTUNE = tf.data.AUTOTUNE


def dataset_info(
    name: str,
    data_dir: str | None = None,
    bad_images: str = "skip",
    train_fraction: float = 1.0,
    splits=sources.SPLITS,
) -> DatasetInfo:
    """Returns the `DatasetInfo` of `"digits"`, `"folder:PATH"` or a tfds name.

    With `train_fraction` < 1, `num_train_examples` is the size of the subset
    `make_dataset(train_fraction=...)` trains on (`data.subsets`).

    Raises `sources.DatasetNotFoundError` (a `ValueError`) when a tfds
    dataset is not prepared in `data_dir`; nothing is downloaded. A folder
    dataset's undecodable files are listed in `skipped` (`bad_images="skip"`)
    or raise `image_check.BadImageError` (`"fail"`); only those of `splits`
    ("train", "eval") are read.
    """
    info = sources.get_source(name, data_dir, bad_images, splits).info
    if train_fraction == 1.0:
        return info
    size = subsets.subset_size(name, data_dir, train_fraction)
    return dataclasses.replace(info, num_train_examples=size)


def _seed_pairs(seed, rerandomize=True):
    """Infinite dataset of int64 `[2]` stateless seeds, new each epoch when `rerandomize`."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize).batch(2)


def _derive(seed, salt):
    return None if seed is None else seed * 1_000_003 + salt


# Examples the training stream shuffles over: all of a small dataset, a window of a large
# one (whose order is random already: tfds writes its records shuffled, folders and
# in-memory splits are read in a full permutation).
SHUFFLE_BUFFER = 10_000


def make_dataset(
    name,
    split,
    *,
    image_size,
    batch_size,
    training,
    augment=DEFAULT_AUGMENT,
    preprocessing=DEFAULT_PREPROCESSING,
    data_dir=None,
    seed=None,
    repeated_aug=1,
    input_context=None,
    deterministic=False,
    drop_remainder=None,
    epoch=None,
    skip_batches=0,
    in_memory=None,
    train_fraction=1.0,
    subset_seed=None,
    mix_groups=1,
):
    """Builds the batched input pipeline of one split.

    Repeated augmentation (`repeated_aug=k`, the reference `RASampler`):
    the shuffled stream is expanded so that each image appears k times in a
    row (`flat_map` + `repeat(k)`), then sharded with `shard(P, i)` over
    the P input pipelines (each takes a disjoint, strided share, so copies
    of one image land on different replicas as in the reference) and cut to
    `num_examples // P` elements: one pass over the dataset is still one
    epoch of about `len(dataset)` images in total, of which about `1/k` are
    distinct, each seen k times with independent augmentations. All
    pipelines shuffle with the same seed (0 when `seed` is None) so the
    shares are disjoint. Without repeated augmentation the source is
    sharded first, then shuffled.

    Args:
        name: str. `"digits"`, `"folder:PATH"` or a tfds dataset name.
        split: str. `"train"` or `"eval"` (mapped to the dataset's splits).
        image_size: int. Output image side.
        batch_size: int. Batch size of this input pipeline.
        training: bool. Training (shuffle + augment + mix) or eval.
        augment: `AugmentConfig`. Defaults to the DeiT recipe.
        preprocessing: `Preprocessing`. Normalisation (both splits) and the
            eval resize/crop; pass the model's (`model.preprocessing`).
        data_dir: str. tfds data dir. Defaults to the tfds default.
        seed: int. Seeds shuffling and all augmentations. Defaults to None.
        repeated_aug: int. Copies per sampled image (>= 1). Defaults to 1.
        input_context: `tf.distribute.InputContext` for sharding.
        deterministic: bool. Keep element order fixed in parallel maps
            (always on in eval).
        drop_remainder: bool. Defaults to `training`.
        epoch: int or None. Build one epoch whose order and augmentations
            are a function of `(seed, epoch)` alone, not of how many times
            this process has iterated the dataset; a run restarted at epoch
            k then sees the same batches as an uninterrupted one.
        skip_batches: int. Training only: leave out the first batches of
            the (first) pass, as if they had been drawn: examples and their
            augmentation seeds are dropped before decoding, so a run resumed
            in the middle of an epoch gets that epoch's remaining batches
            (with `epoch`) without decoding the ones it already trained on.

        in_memory: bool or None. Hold the split decoded in memory and
            augment whole batches (`deit_keras.data.in_memory`): same
            recipe, other random draws, far less CPU per batch for small
            images. None (default): when the split is small
            (`in_memory.MAX_BYTES` decoded), its images share one shape and
            are small (`in_memory.AUTO_MAX_PIXELS`); False: never; True:
            required (ValueError when the split does not qualify).
        train_fraction: float in (0, 1]. The train split only: a class-balanced
            subset of this share, chosen by `seed` (`data.subsets`). Defaults to 1.
        subset_seed: int or None. Chooses the subset instead of `seed` (a resumed
            run draws with a new `seed`, on the same images).
        mix_groups: int. Training only: MixUp/CutMix each of this many equal parts
            of a batch apart (`augment.mix_batch_in_groups`): the replicas one
            pipeline feeds (MirroredStrategy, TPU), as the reference mixes each
            GPU's batch. `batch_size` must be a multiple. Defaults to 1.

    Returns:
        `tf.data.Dataset` of `(images, targets)`: float32
        `[B, image_size, image_size, 3]` ImageNet-normalised and float32
        `[B, num_classes]` probability targets.
    """
    _check_arguments(
        image_size, batch_size, repeated_aug, augment, preprocessing, skip_batches, training
    )
    _check_mix_groups(mix_groups, batch_size, drop_remainder)
    source = sources.get_source(name, data_dir, splits=(split,))
    num_classes = source.info.num_classes
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
    if drop_remainder is None:
        drop_remainder = training
    common_order = training and repeated_aug > 1 and num_pipelines > 1
    subset = None
    if split == "train" and train_fraction != 1.0:
        seed_value = (seed if subset_seed is None else subset_seed) or 0
        subset = subsets.train_subset(name, data_dir, train_fraction, seed_value)
    seed, order_seed = _seeds(seed, epoch, common_order)
    # With `epoch`, every iteration of the dataset repeats the same epoch.
    fresh_each_iteration = epoch is None
    # Pipelines that shard one order must draw the same one: a seed even when none is given.
    shared_order_seed = 0 if order_seed is None and num_pipelines > 1 else order_seed
    arrays = _decoded_in_memory(name, data_dir, split, in_memory)
    in_memory_examples = arrays
    if arrays is not None and subset is not None:
        in_memory_examples = tuple(array[subset] for array in arrays)
    elif subset is not None:
        examples = subsets.train_subset_examples(name, data_dir, train_fraction, seed_value)
        in_memory_examples = tuple(tf.constant(example) for example in examples)
    if in_memory_examples is not None and training:  # in read order: class by class for folders
        ds = sources.permuted_slices(in_memory_examples, shared_order_seed, fresh_each_iteration)
    elif in_memory_examples is not None:
        ds = tf.data.Dataset.from_tensor_slices(in_memory_examples)
    else:
        ds = source.read(
            split, shuffle_files=training, seed=shared_order_seed, reshuffle=fresh_each_iteration
        )
    num_examples = source.num_examples(split) if subset is None else len(subset)
    if training:
        ds = sample_training_stream(
            ds,
            num_examples,
            repeated_aug,
            num_pipelines,
            pipeline_id,
            order_seed,
            reshuffle=fresh_each_iteration,
        )
        train_maps = _train_maps if arrays is None else _batched_train_maps
        ds = train_maps(
            ds,
            image_size,
            batch_size,
            num_classes,
            augment,
            preprocessing,
            _derive(seed, pipeline_id),
            drop_remainder,
            fresh_each_iteration,
            skip_batches,
            mix_groups,
        )
    else:
        if num_pipelines > 1:
            ds = ds.shard(num_pipelines, pipeline_id)
        decoded = arrays is not None
        ds = _eval_batches(
            ds, decoded, image_size, batch_size, num_classes, preprocessing, drop_remainder
        )
    options = tf.data.Options()
    # Eval keeps the file order always; training only when asked (faster).
    options.deterministic = bool(deterministic) or not training
    # A pass over an autotuned pipeline ends with its iterator waiting ~15-150 ms, cores
    # idle, for the autotuning thread (TF 2.21); Keras starts a pass for every epoch and
    # every validation. Splits held in memory have little to tune: off for them.
    options.autotune.enabled = arrays is None
    return ds.with_options(options).prefetch(AUTOTUNE)


def _check_mix_groups(mix_groups, batch_size, drop_remainder):
    if not isinstance(mix_groups, int) or mix_groups < 1 or batch_size % mix_groups:
        raise UserInputError(
            f"`mix_groups` must be an int >= 1 dividing `batch_size` ({batch_size}). "
            f"Received: mix_groups={mix_groups!r}"
        )
    if mix_groups > 1 and drop_remainder is False:  # a last, smaller batch would not split
        raise UserInputError(
            f"`mix_groups` > 1 needs whole batches: drop_remainder=True (or None). "
            f"Received: mix_groups={mix_groups}, drop_remainder=False"
        )


def _check_arguments(
    image_size, batch_size, repeated_aug, augment, preprocessing, skip_batches, training
):
    if not isinstance(image_size, int) or image_size <= 0:
        raise UserInputError(f"`image_size` must be a positive int. Received: {image_size!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserInputError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    if not isinstance(repeated_aug, int) or repeated_aug < 1:
        raise UserInputError(f"`repeated_aug` must be an int >= 1. Received: {repeated_aug!r}")
    if not isinstance(augment, AugmentConfig):
        raise UserInputError(f"`augment` must be an AugmentConfig. Received: {augment!r}")
    if not isinstance(preprocessing, Preprocessing):
        raise UserInputError(
            f"`preprocessing` must be a Preprocessing. Received: {preprocessing!r}"
        )
    if not isinstance(skip_batches, int) or skip_batches < 0 or (skip_batches and not training):
        raise UserInputError(
            f"`skip_batches` must be an int >= 0, in training only. Received: {skip_batches!r}"
        )


def _seeds(seed, epoch, common_order):
    """`(augmentation seed, order seed)`: pipelines that must agree on the order share one,
    and with `epoch` both are a function of `(seed, epoch)` alone."""
    order_seed = 0 if (seed is None and common_order) else seed
    if epoch is not None:
        seed = _derive(seed or 0, 7919 + epoch)
        order_seed = _derive(order_seed or 0, 7919 + epoch)
    return seed, order_seed


def _decoded_in_memory(name, data_dir, split, in_memory):
    """The split's decoded `(images, labels)` when held in memory (`in_memory`), else None."""
    if not in_memory and in_memory is not None:  # False: never
        return None
    max_pixels = None if in_memory else in_memory_lib.AUTO_MAX_PIXELS
    arrays = in_memory_lib.decoded_split(name, data_dir, split, max_pixels)
    if arrays is None and in_memory:
        raise UserInputError(
            f"in_memory=True needs a split of one image shape under "
            f"{in_memory_lib.MAX_BYTES} bytes decoded; {name!r} {split!r} is not."
        )
    return arrays


def _eval_batches(ds, decoded, image_size, batch_size, num_classes, preprocessing, drop_remainder):
    """The eval transform and one-hot targets, batched."""
    if decoded:  # one shape: the eval transform on whole batches
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(lambda x, y: (preprocess(x, image_size, preprocessing), y))
        return ds.map(lambda x, y: (x, tf.one_hot(y, num_classes, dtype=tf.float32))).cache()

    def eval_map(encoded, label):
        return preprocess(transforms.decode_image(encoded), image_size, preprocessing), label

    ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda x, y: (x, tf.one_hot(y, num_classes, dtype=tf.float32)))


def sample_training_stream(
    ds,
    num_examples,
    repeated_aug=1,
    num_pipelines=1,
    pipeline_id=0,
    seed=None,
    reshuffle=True,
):
    """Shuffles (and repeats, shards) one epoch of examples for one pipeline.

    See `make_dataset` for the repeated augmentation semantics.
    """
    if repeated_aug == 1:
        if num_pipelines > 1:
            ds = ds.shard(num_pipelines, pipeline_id)
        return ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=reshuffle)
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=reshuffle)
    ds = ds.flat_map(lambda *x: tf.data.Dataset.from_tensors(x).repeat(repeated_aug))
    if num_pipelines > 1:
        ds = ds.shard(num_pipelines, pipeline_id)
    ds = ds.take(num_examples // num_pipelines)
    return ds.map(lambda *x: x[0] if len(x) == 1 else x)


def _train_maps(
    ds,
    image_size,
    batch_size,
    num_classes,
    config,
    preprocessing,
    seed,
    drop_remainder,
    rerandomize=True,
    skip_batches=0,
    mix_groups=1,
):
    keras_cv_layer = augment_lib.keras_cv_rand_augment_layer(config, seed)

    def per_image(example, image_seed):
        encoded, label = example
        image = augment_lib.train_transform_image(
            encoded, image_seed, image_size, config, keras_cv_layer
        )
        image = augment_lib.finish_image(image, image_seed, config, preprocessing)
        return image, label, image_seed

    ds = tf.data.Dataset.zip((ds, _seed_pairs(_derive(seed, 1), rerandomize)))
    if skip_batches:  # before the (costly) decoding map
        ds = ds.skip(skip_batches * batch_size)
    ds = ds.map(per_image, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def mix(batch, batch_seed):
        images, labels, _ = batch
        return augment_lib.mix_batch_in_groups(
            images, labels, num_classes, batch_seed, config, mix_groups
        )

    ds = tf.data.Dataset.zip((ds, _seed_pairs(_derive(seed, 2), rerandomize).skip(skip_batches)))
    return ds.map(mix, num_parallel_calls=AUTOTUNE)


def _batched_train_maps(
    ds,
    image_size,
    batch_size,
    num_classes,
    config,
    preprocessing,
    seed,
    drop_remainder,
    rerandomize=True,
    skip_batches=0,
    mix_groups=1,
):
    """`_train_maps` for decoded uint8 images of one shape: augmentation per batch."""
    keras_cv_layer = augment_lib.keras_cv_rand_augment_layer(config, seed)
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    seeds = _seed_pairs(_derive(seed, 3), rerandomize).skip(skip_batches)

    def augment_and_mix(batch, batch_seed):
        images, labels = batch
        transform_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
        images = in_memory_lib.train_transform_batch(
            images, transform_seed, image_size, config, preprocessing, keras_cv_layer
        )
        return augment_lib.mix_batch_in_groups(
            images, labels, num_classes, mix_seed, config, mix_groups
        )

    return tf.data.Dataset.zip((ds, seeds)).map(augment_and_mix, num_parallel_calls=AUTOTUNE)
