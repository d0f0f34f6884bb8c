"""The test sets of the DeiT paper's Table 5: ImageNet, ImageNet-ReaL and ImageNet-V2.

Each is a prepared tfds dataset, read with its own feature layout:

- `imagenet`: `imagenet2012` split `validation` (50,000 images), `label`.
- `real`: `imagenet2012_real` split `validation`: the same 50,000 images
  with `original_label` (the ImageNet label) and `real_label`, the set of
  ReaL labels ("Are we done with ImageNet?", Beyer et al. 2020), empty for
  the images none of whose labels the raters kept.
- `v2`: `imagenet_v2/<variant>` split `test` (10,000 images), `label`;
  the paper's is `matched-frequency` (Recht et al. 2019).

With `real` among the benchmarks, ImageNet top-1 is read from the same pass
over `imagenet2012_real` (`original_label`): the images and labels are
ImageNet's validation set, so the model runs once and `imagenet2012` (whose
preparation needs the 140 GB training archive) need not be prepared.
"""

import dataclasses

import tensorflow as tf
import tensorflow_datasets as tfds

from deit_keras.data import transforms
from deit_keras.data.imagenet_test_set_names import (
    DEFAULT_V2_VARIANT,
    IMAGENET,
    REAL,
    V2,
    V2_VARIANTS,
)
from deit_keras.data.preprocessing import Preprocessing, preprocess
from deit_keras.data.sources import DatasetNotFoundError, prepared_builder
from deit_keras.errors import UserInputError

NO_LABEL = -1  # pads the ReaL label sets of a batch to one length


@dataclasses.dataclass(frozen=True)
class BenchmarkData:
    """Where a pass of the evaluation reads its images and labels.

    Args:
        tfds_name: str. The tfds dataset (with its config, if any).
        split: str. Its split.
        label_key: str. The feature holding the single ImageNet label.
        label_set_key: str or None. The feature holding a set of labels
            (ReaL's `real_label`), or None.
        benchmarks: tuple of str. The benchmarks this pass reports.
    """

    tfds_name: str
    split: str
    label_key: str
    label_set_key: str | None
    benchmarks: tuple


def evaluation_passes(benchmarks, v2_variant: str = DEFAULT_V2_VARIANT) -> list:
    """The datasets to read for `benchmarks` (a `parse_benchmarks` tuple), one pass each."""
    if v2_variant not in V2_VARIANTS:
        raise UserInputError(
            f"v2_variant must be one of {', '.join(V2_VARIANTS)}. "
            f"Received: v2_variant={v2_variant!r}"
        )
    passes = []
    if REAL in benchmarks:
        shared = tuple(name for name in (IMAGENET, REAL) if name in benchmarks)
        passes.append(
            BenchmarkData("imagenet2012_real", "validation", "original_label", "real_label", shared)
        )
    elif IMAGENET in benchmarks:
        passes.append(BenchmarkData("imagenet2012", "validation", "label", None, (IMAGENET,)))
    if V2 in benchmarks:
        passes.append(BenchmarkData(f"imagenet_v2/{v2_variant}", "test", "label", None, (V2,)))
    return passes


@dataclasses.dataclass(frozen=True)
class PreparedPass:
    """A `BenchmarkData` whose tfds dataset is prepared: its builder and facts."""

    data: BenchmarkData
    builder: object
    num_classes: int
    class_names: tuple
    num_examples: int


def prepare_pass(data: BenchmarkData, data_dir: str | None = None) -> PreparedPass:
    """Checks that `data`'s dataset is prepared in `data_dir` and has its features.

    Raises:
        sources.DatasetNotFoundError: not prepared (one line naming the
            `tfds build` command); UserInputError: a feature is missing.
    """
    try:
        builder = prepared_builder(data.tfds_name, data_dir)
    except DatasetNotFoundError as error:
        if data.tfds_name != "imagenet2012":
            raise
        raise DatasetNotFoundError(
            f"{error} Or ask for real too (benchmarks=imagenet,real): ImageNet top-1 is "
            "then read from imagenet2012_real, which needs only ILSVRC2012_img_val.tar."
        ) from None
    features = builder.info.features
    keys = [data.label_key] + ([data.label_set_key] if data.label_set_key else [])
    missing = [key for key in ["image", *keys] if key not in features]
    if missing or data.split not in builder.info.splits:
        raise UserInputError(
            f"tfds dataset {data.tfds_name!r} in {builder.data_dir} lacks the features "
            f"{missing} or the split {data.split!r} of its catalogue layout "
            f"(features {sorted(features)}, splits {list(builder.info.splits)})."
        )
    label = features[data.label_key]
    return PreparedPass(
        data=data,
        builder=builder,
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        num_examples=builder.info.splits[data.split].num_examples,
    )


def pass_dataset(
    prepared: PreparedPass, *, image_size: int, batch_size: int, preprocessing: Preprocessing
):
    """`tf.data.Dataset` of `(images, labels, label_sets)` batches of one pass.

    Images go through the one eval transform (`preprocessing.preprocess`, as
    `make_dataset(training=False)`), in the dataset's order.

    Returns:
        batches of float32 `[B, image_size, image_size, 3]` images, int64
        `[B]` labels and int64 `[B, L]` label sets padded with `NO_LABEL`
        (`L` = 0 when the dataset has no label sets).
    """
    data = prepared.data
    ds = prepared.builder.as_dataset(
        split=data.split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )

    def eval_map(example):
        image = preprocess(transforms.decode_image(example["image"]), image_size, preprocessing)
        label = tf.cast(example[data.label_key], tf.int64)
        if data.label_set_key:
            label_set = tf.cast(example[data.label_set_key], tf.int64)
        else:
            label_set = tf.zeros([0], tf.int64)
        return image, label, label_set

    ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(
        batch_size, padding_values=(0.0, tf.constant(0, tf.int64), tf.constant(NO_LABEL, tf.int64))
    )
    return ds.prefetch(tf.data.AUTOTUNE)
