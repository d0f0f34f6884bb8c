"""Tests of deit_keras.data: digits builder, sources, transforms, pipeline."""

import collections
import dataclasses
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deit_keras.data import (
    DatasetInfo,
    augment_config,
    dataset_info,
    in_memory,
    make_dataset,
    pipeline,
    sources,
    transforms,
)
from deit_keras.data.constants import IMAGENET_MEAN, IMAGENET_STD
from deit_keras.data.preprocessing import (
    Preprocessing,
    denormalize,
    normalize,
    preprocess,
    resize,
    resize_and_center_crop,
)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    dataset_info("digits", data_dir)  # builds deit_digits offline
    return data_dir


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for class_name in ("cat", "ant", "bee"):
            os.makedirs(root / split / class_name)
            for i in range(count):
                array = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(array).save(root / split / class_name / f"{i}.{ext}")
    return str(root)


def test_digits_builder(digits_dir):
    info = dataset_info("digits", digits_dir)
    assert isinstance(info, DatasetInfo)
    assert info.num_classes == 10
    assert info.class_names == tuple(str(i) for i in range(10))
    assert info.num_train_examples + info.num_eval_examples == 1797
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert (info.train_split, info.eval_split) == ("train", "test")
    labels = [int(y) for _, y in sources.get_source("digits", digits_dir).read("eval")]
    # Stratified: every class has 35-37 test images.
    assert set(np.bincount(labels, minlength=10)) <= {35, 36, 37}


def test_digits_train_batch(digits_dir):
    ds = make_dataset(
        "digits", "train", image_size=32, batch_size=16, training=True, data_dir=digits_dir, seed=0
    )
    images, targets = next(iter(ds))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert targets.shape == (16, 10) and targets.dtype == tf.float32
    np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-5)
    assert float(tf.reduce_min(targets)) > 0.0  # smoothing mass everywhere


def test_digits_eval_one_hot_and_length(digits_dir):
    ds = make_dataset(
        "digits",
        "eval",
        image_size=32,
        batch_size=100,
        training=False,
        data_dir=digits_dir,
        preprocessing=Preprocessing(crop_pct=1.0),
    )
    batches = list(ds)
    assert sum(x.shape[0] for x, _ in batches) == 360
    targets = np.concatenate([y.numpy() for _, y in batches])
    assert set(np.unique(targets)) == {0.0, 1.0}
    np.testing.assert_array_equal(targets.sum(1), 1.0)
    again = list(ds)
    np.testing.assert_array_equal(batches[0][0].numpy(), again[0][0].numpy())


def test_deterministic_training_batches(digits_dir):
    def first_batches():
        ds = make_dataset(
            "digits",
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            data_dir=digits_dir,
            seed=3,
            deterministic=True,
        )
        return [x.numpy() for x, _ in ds.take(2)]

    a, b = first_batches(), first_batches()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_repeated_augmentation_copies_and_epoch_length(digits_dir):
    config = augment_config.AugmentConfig(mixup=0.0, cutmix=0.0, smoothing=0.0, reprob=0.0)
    ds = make_dataset(
        "digits",
        "train",
        image_size=16,
        batch_size=3,
        training=True,
        data_dir=digits_dir,
        seed=1,
        repeated_aug=3,
        augment=config,
        drop_remainder=False,
    )
    batches = list(ds)
    assert sum(x.shape[0] for x, _ in batches) == 1437  # epoch length kept
    images, targets = batches[0]
    labels = np.argmax(targets.numpy(), 1)
    assert len(set(labels)) == 1  # three copies of one image, in a row
    flat = images.numpy().reshape(3, -1)
    assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[1], flat[2])


def test_repeated_augmentation_sharding_disjoint(digits_dir):
    """Two pipelines cut one common stream (RASampler): together they hold each drawn
    image's 3 copies, so the images (whole, unflipped: each copy alike) number n / 3."""
    config = dataclasses.replace(
        augment_config.NO_AUGMENT, hflip=0.0, crop_scale_min=1.0, crop_ratio=(1.0, 1.0)
    )

    def shard_stream(index):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2
        )
        ds = make_dataset(
            "digits",
            "train",
            image_size=8,
            batch_size=1,
            training=True,
            data_dir=digits_dir,
            seed=4,
            repeated_aug=3,
            augment=config,
            input_context=context,
        )
        return [x.numpy().tobytes() + y.numpy().tobytes() for x, y in ds]

    first, second = shard_stream(0), shard_stream(1)
    assert len(first) == len(second) == 1437 // 2
    copies = collections.Counter(first + second)
    # 1437 // 2 * 2 of the stream's 1437 places: the last image may keep 2 copies.
    assert len(copies) == 1437 // 3, len(copies)
    assert sorted(collections.Counter(copies.values()).items()) == [(2, 1), (3, 478)]
    assert set(first) & set(second)  # an image's copies go to both pipelines


@pytest.mark.parametrize("num_pipelines", [1, 2, 4])
def test_repeated_sampler_semantics(num_pipelines):
    """RASampler: k copies per image, disjoint shares, epoch ~ N / P each."""
    n, k = 48, 3
    shares = [
        [
            int(x)
            for x in pipeline.sample_training_stream(
                tf.data.Dataset.range(n), n, k, num_pipelines, i, seed=0
            )
        ]
        for i in range(num_pipelines)
    ]
    assert all(len(share) == n // num_pipelines for share in shares)
    counts = np.bincount(np.concatenate(shares), minlength=n)
    # All shares cut one common stream: n/k distinct images, k copies each.
    assert sorted(set(counts)) == [0, k]
    assert int((counts == k).sum()) == n // k
    if num_pipelines > 1:  # copies of one image go to different pipelines
        assert len(set(shares[0]) & set(shares[1])) > 0
    # A new epoch samples a different subset.
    ds = pipeline.sample_training_stream(tf.data.Dataset.range(n), n, k, seed=0)
    assert set(map(int, ds)) != set(map(int, ds))


def test_sharding_without_repeated_aug(digits_dir):
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=1)
    ds = make_dataset(
        "digits",
        "eval",
        image_size=8,
        batch_size=50,
        training=False,
        data_dir=digits_dir,
        input_context=context,
    )
    assert sum(x.shape[0] for x, _ in ds) == 120


def test_folder_source(image_folder):
    name = "folder:" + image_folder
    info = dataset_info(name)
    assert info.class_names == ("ant", "bee", "cat")
    assert (info.num_train_examples, info.num_eval_examples) == (18, 6)
    train = make_dataset(name, "train", image_size=24, batch_size=4, training=True, seed=0)
    images, targets = next(iter(train))
    assert images.shape == (4, 24, 24, 3) and targets.shape == (4, 3)
    evals = list(make_dataset(name, "eval", image_size=24, batch_size=4, training=False))
    assert sum(x.shape[0] for x, _ in evals) == 6


@pytest.mark.parametrize("in_memory", [None, False], ids=["in memory", "streamed"])
def test_a_folder_is_drawn_in_a_full_permutation_not_a_window(tmp_path, monkeypatch, in_memory):
    """A folder lists its images class by class: a shuffle window (here 4 images, 10,000
    by default, against ImageNet's 1.28M) with repeated augmentation x3 trained on the first
    third of the classes only. Each epoch is a full permutation, as RASampler's randperm."""
    monkeypatch.setattr(pipeline, "SHUFFLE_BUFFER", 4)
    classes, per_class = 6, 8
    for split, count in (("train", per_class), ("val", 1)):
        for label in range(classes):
            os.makedirs(tmp_path / split / f"c{label}")
            for i in range(count):
                pixels = np.full((8, 8, 3), 40 * label + i, np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / f"c{label}" / f"{i}.png")
    config = augment_config.AugmentConfig(rand_augment_ops=0, reprob=0.0, mixup=0.0, cutmix=0.0)
    train = make_dataset(
        f"folder:{tmp_path}",
        "train",
        image_size=8,
        batch_size=classes * per_class // 4,
        training=True,
        augment=config,
        repeated_aug=3,
        seed=0,
        in_memory=in_memory,
    )
    epochs = [[np.argmax(targets, -1) for _, targets in train] for _ in range(3)]
    assert [len(batches) for batches in epochs] == [4, 4, 4]
    # With x3 an epoch holds a third of the images: over three, every class (a window over
    # the class-sorted list never reached the last classes), and no run of one class.
    assert set(np.concatenate([np.concatenate(batches) for batches in epochs])) == set(
        range(classes)
    )
    assert all(len(set(np.concatenate(batches[:2]))) >= 3 for batches in epochs)


def test_the_permutation_and_the_window_shuffle_draw_independently():
    """Both once drew from one seed: two shuffles of one stream compose to no uniform
    permutation (2 examples: the order never changed, whatever the seed)."""
    firsts = []
    for seed in range(40):
        permuted = sources.permuted_slices((np.arange(2),), seed)
        stream = pipeline.sample_training_stream(permuted, 2, seed=seed)
        firsts.append(int(next(iter(stream))[0]))
    assert 8 <= firsts.count(0) <= 32, firsts


def test_a_moved_seed_keeps_the_train_fraction_subset(digits_dir, monkeypatch):
    """A resumed run draws with a new seed (`training.inputs.resumed_data_kwargs`) on the
    images its own seed chose."""
    from deit_keras.data import subsets

    chosen_with = []
    choose = subsets.train_subset

    def recording(name, data_dir, fraction, seed):
        chosen_with.append(seed)
        return choose(name, data_dir, fraction, seed)

    monkeypatch.setattr(subsets, "train_subset", recording)
    for seeds in (dict(seed=3), dict(seed=999, subset_seed=3), dict(seed=999)):
        make_dataset(
            "digits",
            "train",
            image_size=8,
            batch_size=16,
            training=True,
            data_dir=digits_dir,
            train_fraction=0.1,
            **seeds,
        )
    assert chosen_with == [3, 3, 999]


def test_folder_missing_split(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(ValueError, match="val/"):
        dataset_info(f"folder:{tmp_path}")


def test_a_versioned_manual_download_names_the_catalogue_page_without_the_version(tmp_path):
    with pytest.raises(sources.DatasetNotFoundError) as error:
        sources.prepared_builder("imagenet2012:5.1.0", str(tmp_path))
    message = str(error.value)
    assert "tfds build imagenet2012:5.1.0" in message and "ILSVRC2012_img_val.tar" in message
    assert message.endswith("https://www.tensorflow.org/datasets/catalog/imagenet2012.")


def test_missing_tfds_dataset_clear_error(tmp_path):
    with pytest.raises(sources.DatasetNotFoundError) as error:
        dataset_info("mnist", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "tfds build mnist" in message
    assert isinstance(error.value, ValueError)
    assert os.listdir(tmp_path) == []  # nothing downloaded
    with pytest.raises(ValueError, match="Unknown dataset"):
        dataset_info("no_such_dataset_xyz", str(tmp_path))


def test_eval_transform_shape_range_deterministic():
    rng = np.random.default_rng(1)
    image = tf.constant(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    a = preprocess(image, 32, Preprocessing(crop_pct=0.875))
    b = preprocess(image, 32, Preprocessing(crop_pct=0.875))
    assert a.shape == (32, 32, 3) and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.all(a.numpy() >= low - 1e-5) and np.all(a.numpy() <= high + 1e-5)
    # crop_pct=1.0 of a square image is a plain resize.
    square = tf.constant(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    np.testing.assert_allclose(
        preprocess(square, 32, Preprocessing(crop_pct=1.0)).numpy(),
        normalize(square).numpy(),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="crop_pct"):
        preprocess(square, 32, Preprocessing(crop_pct=1.5))
    # A tiny fraction would resize the shorter side to 32 / 1e-9 pixels (past int32).
    for tiny in (1e-9, 0.05):
        with pytest.raises(ValueError, match=r"crop_pct must be in \[0.1, 1\]"):
            resize_and_center_crop(square, 32, crop_pct=tiny)
    assert resize_and_center_crop(square, 32, crop_pct=0.1).shape == (32, 32, 3)


@pytest.mark.parametrize("height, width", [(60, 90), (90, 60), (37, 41), (33, 200), (20, 25)])
def test_eval_crop_equals_timms_eval_transform(height, width):
    """Resize of the shorter side and the central crop, where timm's `create_transform`
    (official DeiT's eval transform: PIL bicubic, torchvision's centre) puts them."""
    timm_data = pytest.importorskip("timm.data")
    rng = np.random.default_rng(height * width)
    coarse = rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    for crop_pct in (0.875, 0.9, 1.0):
        reference = timm_data.create_transform(
            32, crop_pct=crop_pct, interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1)
        )
        want = np.round(reference(Image.fromarray(image)).permute(1, 2, 0).numpy() * 255)
        got = resize_and_center_crop(image, 32, crop_pct).numpy()
        # PIL's and TensorFlow's antialiased bicubic kernels differ in rounding only.
        np.testing.assert_allclose(got, want, rtol=0, atol=1, err_msg=f"crop_pct={crop_pct}")
        assert np.mean(got != want) < 0.3


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_eval_crop_equals_the_whole_resize_cropped(interpolation):
    """The crop is computed alone, with the whole resize's kernel at the crop's offset:
    the same pixels but for the float rounding of the kernel's sample positions, which
    moves a value that sits near a half to the other integer (bilinear's weights on
    integer pixels make such values often)."""
    rng = np.random.default_rng(11)
    differ = total = 0
    for height, width in [(375, 500), (500, 375), (37, 41), (2, 300), (300, 2), (1, 1), (32, 32)]:
        image = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        for size, crop_pct in ((32, 0.875), (24, 1.0), (40, 0.9)):
            got = resize_and_center_crop(image, size, crop_pct, interpolation).numpy()
            scale_size = int(size / crop_pct)
            short = min(height, width)
            new = (scale_size * height // short, scale_size * width // short)
            whole = resize(image, new, interpolation).numpy()
            top, left = round((new[0] - size) / 2), round((new[1] - size) / 2)
            want = whole[:, top : top + size, left : left + size]
            np.testing.assert_array_less(np.abs(got - want), 1.5)
            differ, total = differ + np.sum(got != want), total + want.size
    assert differ / total < 0.01, (differ, total)


def test_eval_crop_of_a_sliver_resizes_only_the_crop():
    """A 1 x 4000 image resized whole would be 256 x 1,024,000 (3 GB of float32, more in
    the kernel) before its 224 crop; only the crop's square is computed."""
    for shape in ((1, 4000, 3), (4000, 1, 3)):
        sliver = np.zeros(shape, np.uint8)
        sliver[..., 0] = 200
        crop = resize_and_center_crop(sliver, 224).numpy()
        assert crop.shape == (224, 224, 3)
        np.testing.assert_array_equal(crop[..., 0], 200)
        np.testing.assert_array_equal(crop[..., 1:], 0)
    graph = (
        tf.function(lambda images: resize_and_center_crop(images, 224))
        .get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.uint8))
        .graph
    )
    resizes = [op for op in graph.get_operations() if op.type == "ScaleAndTranslate"]
    assert len(resizes) == 1
    assert tf.get_static_value(resizes[0].inputs[1]).tolist() == [224, 224]


def test_an_unknown_interpolation_is_one_line_on_both_resize_paths():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"interpolation must be one of .*'nearest'"):
        resize_and_center_crop(image, 2, 1.0, "nearest")
    with pytest.raises(ValueError, match=r"interpolation must be one of .*'nearest'"):
        in_memory.resize_weights([0], [4], 4, 2, "nearest")


def test_the_eval_transform_resizes_with_the_preprocessings_interpolation():
    """A model whose `Preprocessing` says bilinear (as some timm `pretrained_cfg`s) is
    evaluated and served with that kernel, not with the bicubic default."""
    image = np.random.default_rng(7).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    bilinear = Preprocessing(interpolation="bilinear")
    got = preprocess(image, 32, bilinear).numpy()
    crop = resize_and_center_crop(image, 32, bilinear.crop_pct, "bilinear")
    np.testing.assert_allclose(got, normalize(crop, bilinear).numpy(), atol=1e-6)
    bicubic = preprocess(image, 32, bilinear.replace(interpolation="bicubic")).numpy()
    assert np.abs(got - bicubic).mean() > 0.05  # ~3 levels of 255 in normalised units


@pytest.mark.parametrize("in_memory", [True, False], ids=["in memory", "streamed"])
def test_training_views_are_normalised_with_the_given_preprocessing(tmp_path, in_memory):
    """Both train paths (batched in memory, streamed per image) normalise with the model's
    `Preprocessing`, as its eval and serving do, not with ImageNet's mean and std: with
    an identity recipe (whole-image crop at the stored size, no flip, RandAugment,
    erasing or mixing) a training view is the stored image so normalised."""
    rng = np.random.default_rng(8)
    stored = {}
    for split in ("train", "val"):
        for label in range(3):
            os.makedirs(tmp_path / split / f"c{label}")
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / f"c{label}" / "0.png")
            if split == "train":
                stored[label] = pixels
    config = dataclasses.replace(
        augment_config.NO_AUGMENT, hflip=0.0, crop_scale_min=1.0, crop_ratio=(1.0, 1.0)
    )
    halves = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    train = make_dataset(
        f"folder:{tmp_path}",
        "train",
        image_size=12,
        batch_size=3,
        training=True,
        augment=config,
        preprocessing=halves,
        seed=0,
        in_memory=in_memory,
    )
    images, targets = next(iter(train))
    labels = np.argmax(targets.numpy(), axis=-1)
    assert sorted(labels) == [0, 1, 2]
    for image, label in zip(images.numpy(), labels, strict=True):
        expected = stored[label] / 255.0 * 2.0 - 1.0  # (x / 255 - 0.5) / 0.5
        np.testing.assert_allclose(image, expected, atol=1e-5)


def test_normalize_round_trip():
    image = tf.constant([[[0, 128, 255]]], tf.uint8)
    normalised = normalize(image)
    np.testing.assert_allclose(normalised.numpy()[0, 0, 0], (0 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(denormalize(normalised).numpy(), [[[0, 128, 255]]], atol=1e-3)


def test_normalize_warns_of_pixels_in_zero_one(caplog):
    """[0, 1] floats (tf.image.convert_image_dtype's) were normalised as 0-255 pixels: every
    image came out near -2, silently."""
    import logging

    caplog.set_level(logging.WARNING)
    normalize(tf.constant([[[0.2, 0.5, 1.0]]]))
    (said,) = [r.getMessage() for r in caplog.records if "normalize takes" in r.getMessage()]
    assert "multiply them by 255" in said
    caplog.clear()
    for pixels in ([[[0, 128, 255]]], [[[0.0, 0.0, 0.0]]], [[[0.5, 0.9, 2.0]]]):
        normalize(tf.constant(pixels, tf.float32))
    assert not [r for r in caplog.records if "normalize takes" in r.getMessage()]


@pytest.mark.parametrize("channels", [1, 4])
def test_preprocess_of_other_than_rgb_pixels_is_one_line(channels):
    """Grayscale was TensorFlow's `Incompatible shapes: [2,32,32] vs. [96] [Op:Sub]`."""
    from deit_keras.data import preprocess
    from deit_keras.errors import UserInputError

    with pytest.raises(UserInputError, match="takes RGB pixels .*grayscale_to_rgb") as caught:
        preprocess(np.zeros((2, 37, 53, channels), "uint8"), 32)
    assert "\n" not in str(caught.value) and f"{channels})" in str(caught.value)
    # In tf.data, where the channels are known only when a batch runs.
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((5, 7, channels), "uint8")]),
        output_signature=tf.TensorSpec([None, None, None], tf.uint8),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="takes RGB pixels"):
        next(iter(unknown.map(normalize)))


def test_random_resized_crop_jpeg_and_array_shapes():
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    seed = tf.constant([5, 6])
    for image in (tf.constant(array), tf.io.encode_jpeg(array), tf.io.encode_png(array)):
        out = transforms.random_resized_crop(image, 20, seed)
        assert out.shape == (20, 20, 3) and out.dtype == tf.float32
        assert 0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255
    windows = np.stack(
        [transforms.random_crop_window([37, 53], tf.constant([s, 0])).numpy() for s in range(200)]
    )
    top, left, h, w = windows.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= 37) and np.all(left + w <= 53)
    area = h * w / (37 * 53)
    assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.1


@pytest.mark.parametrize("seed_dtype", [tf.int32, tf.int64])
def test_random_resized_crop_of_a_file_is_the_crop_of_its_pixels(seed_dtype):
    """Encoded or decoded, with either seed type, an image gets the same window (a JPEG
    takes another path: the window decoded alone)."""
    array = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    seed = tf.constant([5, 6], seed_dtype)
    for encoded in (tf.io.encode_png(array), tf.io.encode_jpeg(array)):
        # The pixels as Pillow (timm's reader) decodes the file.
        pixels = np.asarray(Image.open(io.BytesIO(encoded.numpy())).convert("RGB"))
        expected = transforms.random_resized_crop(pixels, 20, seed).numpy()
        crop = transforms.random_resized_crop(encoded, 20, seed).numpy()
        if encoded.numpy().startswith(b"\x89PNG"):
            np.testing.assert_array_equal(crop, expected)
        else:  # decoded in part, the colours near the window's edges differ a little
            assert np.abs(crop - expected).mean() < 0.5  # 1.5 with TF's fast IDCT


def test_make_dataset_argument_errors(digits_dir):
    with pytest.raises(ValueError, match="split"):
        make_dataset(
            "digits", "validation", image_size=8, batch_size=2, training=False, data_dir=digits_dir
        )
    with pytest.raises(ValueError, match="repeated_aug"):
        make_dataset(
            "digits",
            "train",
            image_size=8,
            batch_size=2,
            training=True,
            data_dir=digits_dir,
            repeated_aug=0,
        )


def test_keras_cv_rand_augment_is_a_working_choice(digits_dir):
    """--rand_augment_impl=keras_cv (KerasCV's layer) in the real pipeline: it augments."""

    def first_batch(impl, ops):
        config = augment_config.AugmentConfig(
            rand_augment_impl=impl, rand_augment_ops=ops, reprob=0.0, mixup_prob=0.0
        )
        ds = make_dataset(
            "digits",
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            data_dir=digits_dir,
            seed=2,
            deterministic=True,
            augment=config,
        )
        return next(iter(ds))[0].numpy()

    plain, keras_cv = first_batch("timm", 0), first_batch("keras_cv", 2)
    assert keras_cv.shape == plain.shape == (8, 16, 16, 3) and np.isfinite(keras_cv).all()
    assert np.abs(keras_cv - plain).mean() > 1e-3  # same crops, RandAugment on top


@pytest.mark.parametrize(
    "mix_groups, drop_remainder, error",
    [
        (0, None, r"`mix_groups` must be an int >= 1 dividing `batch_size` \(6\)"),
        (4, None, r"`mix_groups` must be an int >= 1 dividing `batch_size` \(6\)"),
        (1.5, None, r"`mix_groups` must be an int >= 1 dividing `batch_size` \(6\)"),
        (2, False, r"`mix_groups` > 1 needs whole batches"),
    ],
)
def test_mix_groups_must_divide_whole_batches(mix_groups, drop_remainder, error):
    with pytest.raises(ValueError, match=error):
        make_dataset(
            "digits",
            "train",
            image_size=16,
            batch_size=6,
            training=True,
            mix_groups=mix_groups,
            drop_remainder=drop_remainder,
        )


def test_normalize_in_a_dataset_of_0_255_pixels_does_not_warn(caplog):
    """The (0, 1] check runs eagerly only: traced (tf.data, tf.function), AutoGraph made it a
    tf.cond whose branch logged at trace time, whatever the pixels."""
    import logging

    caplog.set_level(logging.WARNING)
    pixels = tf.data.Dataset.from_tensor_slices(np.full((2, 4, 4, 3), 200, "uint8"))
    next(iter(pixels.map(normalize)))
    tf.function(normalize)(tf.fill((4, 4, 3), 200.0))
    assert not [r for r in caplog.records if "normalize takes" in r.getMessage()]
