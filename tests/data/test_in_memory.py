"""Decoded in-memory splits and the batched training transform (`deit_keras.data.in_memory`)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deit_keras.data import in_memory, make_dataset, transforms
from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.preprocessing import Preprocessing, resize

SEED = tf.constant([3, 5], tf.int64)


def _images(count, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3)).astype(np.uint8)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 40, 32), (20, 30, 40)])
def test_crop_and_resize_is_the_per_image_crop_and_resize(shape, interpolation):
    height, width, size = shape
    images = _images(16, height, width)
    windows = in_memory.random_crop_windows(height, width, 16, SEED, (0.08, 1.0))
    batched = in_memory.crop_and_resize(images, windows, size, interpolation).numpy()
    for image, out, (top, left, h, w) in zip(images, batched, windows.numpy(), strict=True):
        expected = resize(image[top : top + h, left : left + w], [size, size], interpolation)
        difference = np.abs(out - expected.numpy())
        # Same kernel weights, another summation order: rounding may move a pixel by 1.
        assert difference.max() <= 1.0
        assert (difference > 0).mean() < 0.01


def test_windows_follow_random_resized_crop():
    windows = in_memory.random_crop_windows(32, 48, 4000, SEED, (0.25, 1.0)).numpy()
    top, left, height, width = windows.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 48).all()
    area = height * width / (32 * 48)
    assert area.min() >= 0.2 and area.max() <= 1.0
    per_image = np.stack(
        [
            transforms.random_crop_window(tf.constant([32, 48]), [i, 1], (0.25, 1.0)).numpy()
            for i in range(400)
        ]
    )
    # One distribution: the mean crop side agrees within sampling noise.
    np.testing.assert_allclose(windows[:, 2:].mean(0), per_image[:, 2:].mean(0), rtol=0.05)


def test_shifts_translate_with_zero_fill():
    images = _images(4, 32, 32).astype(np.float32)
    full = tf.constant([[0, 0, 32, 32]] * 4, tf.int32)
    shifts = tf.constant([[2, -3], [0, 0], [-1, 4], [3, 3]], tf.int32)
    moved = in_memory.crop_and_resize(images, full, 32, shifts=shifts).numpy()
    for image, out, (down, right) in zip(images, moved, shifts.numpy(), strict=True):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        np.testing.assert_array_equal(out, padded[4 - down : 36 - down, 4 - right : 36 - right])


def test_batched_translation_moves_both_ways_on_each_axis():
    """`translate=b` in the batched recipe shifts by -b..b on each axis, as the per-image
    `transforms.random_translate` (CIFAR's pad-and-crop), not only down and right."""
    config = AugmentConfig(
        rand_augment_ops=0,
        reprob=0.0,
        mixup_prob=0.0,
        hflip=0.0,
        crop_scale_min=1.0,
        crop_ratio=(1.0, 1.0),
        translate=2,
    )
    images = tf.constant(np.full((100, 12, 12, 3), 200, np.uint8))
    unscaled = Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3)  # the zero fill stays 0
    out = in_memory.train_transform_batch(images, SEED, 12, config, unscaled).numpy()
    shifts = set()
    for moved in out:
        rows = np.flatnonzero(moved[:, :, 0].any(axis=1))
        cols = np.flatnonzero(moved[:, :, 0].any(axis=0))
        # The content moved by (dy, dx): a block of 12 - |d| rows/cols survives, the rest is 0.
        dy = rows[0] if rows[0] else -(11 - rows[-1])
        dx = cols[0] if cols[0] else -(11 - cols[-1])
        assert len(rows) == 12 - abs(dy) and len(cols) == 12 - abs(dx)
        shifts.add((int(dy), int(dx)))
    assert {dy for dy, _ in shifts} == {dx for _, dx in shifts} == {-2, -1, 0, 1, 2}


def _folder(root, sizes):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(root / split / label)
            for index, size in enumerate(sizes):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")
    return f"folder:{root}"


AUGMENT = AugmentConfig(rand_augment_ops=0, reprob=0.0, mixup_prob=0.0, hflip=0.5, translate=2)


def test_in_memory_pipeline_is_seeded_and_eval_matches_streaming(tmp_path):
    name = _folder(tmp_path / "same", [24] * 6)
    options = dict(image_size=16, batch_size=4, augment=AUGMENT, seed=1, deterministic=True)

    def train_batches(**changes):
        data = make_dataset(name, "train", training=True, **{**options, **changes})
        return [images.numpy() for images, _ in data]

    first, again = train_batches(in_memory=True), train_batches(in_memory=True)
    assert len(first) == 3 and first[0].shape == (4, 16, 16, 3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], train_batches(in_memory=True, seed=2)[0])
    streamed = train_batches(in_memory=False)
    assert len(streamed) == 3 and streamed[0].shape == first[0].shape
    # Eval: the same deterministic transform, per batch or per image.
    evals = [
        list(make_dataset(name, "eval", image_size=16, batch_size=4, training=False, in_memory=m))
        for m in (True, False)
    ]
    for (x1, y1), (x2, y2) in zip(*evals, strict=True):
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), atol=1e-6)
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())


def test_mixed_sizes_stream_and_refuse_in_memory(tmp_path):
    name = _folder(tmp_path / "mixed", [24, 30, 24])
    assert in_memory.decoded_split(name, None, "train") is None
    data = make_dataset(name, "train", image_size=16, batch_size=2, training=True, seed=0)
    assert next(iter(data))[0].shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="in_memory=True"):
        make_dataset(name, "train", image_size=16, batch_size=2, training=True, in_memory=True)


def test_large_images_stream_unless_in_memory_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(in_memory, "AUTO_MAX_PIXELS", 24 * 24)
    small, large = _folder(tmp_path / "small", [24] * 2), _folder(tmp_path / "large", [25] * 2)
    assert in_memory.decoded_split(small, None, "train", in_memory.AUTO_MAX_PIXELS) is not None
    assert in_memory.decoded_split(large, None, "train", in_memory.AUTO_MAX_PIXELS) is None
    options = dict(image_size=16, batch_size=4, augment=AUGMENT, seed=1, deterministic=True)

    def first_batch(name, **changes):
        data = make_dataset(name, "train", training=True, **{**options, **changes})
        return next(iter(data))[0].numpy()

    # Auto is the streaming path for the large images, the in-memory one for the small.
    np.testing.assert_array_equal(first_batch(large), first_batch(large, in_memory=False))
    assert not np.array_equal(first_batch(large), first_batch(large, in_memory=True))
    np.testing.assert_array_equal(first_batch(small), first_batch(small, in_memory=True))


def test_in_memory_full_recipe_is_seeded_and_augments(tmp_path):
    """The DeiT recipe (RandAugment m9, erasing 0.25, MixUp/CutMix) on the batched path."""
    name = _folder(tmp_path / "same", [24] * 8)
    recipe = AugmentConfig(reprob=1.0)

    def batches(seed=1):
        data = make_dataset(
            name,
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            augment=recipe,
            seed=seed,
            deterministic=True,
            in_memory=True,
        )
        return [(x.numpy(), y.numpy()) for x, y in data]

    first = batches()
    for (x1, y1), (x2, y2) in zip(first, batches(), strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], batches(seed=2)[0][0])
    images = np.concatenate([x for x, _ in first])
    assert images.shape[1:] == (16, 16, 3) and np.isfinite(images).all()


def test_autotune_is_off_in_memory_only(tmp_path):
    """An autotuned pass ends waiting ~15-150 ms on its tuning thread: not for held splits."""
    name = _folder(tmp_path / "same", [24] * 4)
    for held in (True, False):
        for split, training in (("train", True), ("eval", False)):
            data = make_dataset(
                name, split, image_size=16, batch_size=2, training=training, in_memory=held
            )
            assert data.options().autotune.enabled is (not held), (held, split)
