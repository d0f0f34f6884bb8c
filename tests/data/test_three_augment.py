"""DeiT III's 3-Augment and simple random crop against hand-computed values."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.data import augment_config, in_memory, pipeline, three_augment, transforms
from deit_keras.data.preprocessing import resize
from deit_keras.errors import UserInputError

THREE_AUGMENT = augment_config.AugmentConfig(
    rand_augment_ops=0, three_augment=True, reprob=0.0, mixup=0.0, cutmix=0.0
)


def _seed(value):
    return tf.constant([value, 17], tf.int64)


def _colourful(size=16, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (size, size, 3)), tf.float32)


def test_grayscale_is_pil_luma_on_three_channels():
    pixels = tf.constant([[[255.0, 0.0, 0.0], [10.0, 200.0, 30.0], [0.0, 0.0, 255.0]]])
    out = three_augment.grayscale(pixels).numpy()
    # PIL "L": 0.299 R + 0.587 G + 0.114 B, rounded: 76.245 -> 76, 123.81 -> 124, 29.07 -> 29.
    np.testing.assert_array_equal(out[0, :, 0], [76.0, 124.0, 29.0])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("enhance", ["Brightness", "Contrast", "Color"])
def test_colour_jitter_factors_are_pils_image_enhance(enhance):
    """torchvision's `ColorJitter` on a PIL image is `ImageEnhance`, whose blend truncates
    to uint8 (rounding read 0.2-0.4 levels high on average)."""
    from PIL import Image, ImageEnhance

    pixels = _colourful(size=32, seed=4)
    ours = {"Brightness": three_augment._brightness, "Contrast": three_augment._contrast}
    ours["Color"] = three_augment._saturation
    image = Image.fromarray(pixels.numpy().astype(np.uint8))
    for factor in (0.7, 0.85, 1.15, 1.3):
        want = np.asarray(getattr(ImageEnhance, enhance)(image).enhance(factor), np.float32)
        got = ours[enhance](pixels, factor).numpy()
        # float32 here, float in PIL: a product landing within ~1e-5 of an integer may
        # truncate to either side.
        assert np.mean(got != want) < 0.002, (factor, np.mean(got - want))
        assert np.abs(got - want).max() <= 1


def test_solarize_inverts_from_128_up():
    pixels = tf.constant([0.0, 127.0, 128.0, 200.0, 255.0])
    np.testing.assert_array_equal(three_augment.solarize(pixels), [0.0, 127.0, 127.0, 55.0, 0.0])


def test_blur_of_a_delta_is_the_gaussian():
    sigma = 1.5
    image = np.zeros((25, 25, 3), np.float32)
    image[12, 12] = 255.0
    out = three_augment.gaussian_blur(tf.constant(image), sigma).numpy()
    taps = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    expected = np.zeros((25, 25))
    expected[6:19, 6:19] = 255.0 * np.outer(kernel, kernel)
    np.testing.assert_allclose(out[..., 1], expected, atol=0.5)  # the output is rounded
    assert out[12, 12, 0] == np.round(255.0 * kernel[6] ** 2) < 255.0


def test_blur_extends_edges_so_a_flat_image_stays_flat():
    flat = tf.fill([9, 7, 3], 77.0)
    np.testing.assert_array_equal(three_augment.gaussian_blur(flat, 2.0), flat)


def test_color_jitter_on_gray_is_brightness_in_its_range():
    # On a flat gray image contrast and saturation are the identity: only brightness acts.
    flat = tf.fill([4, 4, 3], 100.0)
    values = set()
    for seed in range(20):
        out = three_augment.color_jitter(flat, _seed(seed), 0.3).numpy()
        assert np.all(out == out.flat[0]) and 70.0 <= out.flat[0] <= 130.0
        values.add(float(out.flat[0]))
    assert len(values) > 5
    np.testing.assert_array_equal(three_augment.color_jitter(flat, _seed(0), 0.0), flat)


def test_three_augment_picks_each_op_a_third_of_the_time_and_is_seeded():
    image = _colourful()
    gray, solarized = three_augment.grayscale(image), three_augment.solarize(image)
    counts = {"gray": 0, "solarize": 0, "blur": 0}
    for seed in range(90):
        out = three_augment.three_augment(image, _seed(seed), color_jitter_strength=0.0)
        again = three_augment.three_augment(image, _seed(seed), color_jitter_strength=0.0)
        np.testing.assert_array_equal(out, again)
        if np.array_equal(out, gray):
            counts["gray"] += 1
        elif np.array_equal(out, solarized):
            counts["solarize"] += 1
        else:
            # The blur at the radius drawn from the same seed (official: uniform in
            # [0.1, 2.0]); one that keeps the image would not be a blur.
            radius_seed = tf.random.experimental.stateless_split(_seed(seed), 3)[1]
            radius = tf.random.stateless_uniform([], radius_seed, *three_augment.BLUR_RADIUS)
            want = three_augment.gaussian_blur(image, radius)
            np.testing.assert_allclose(out, want, rtol=0, atol=1e-4)
            blurs_visibly = float(radius) > 0.5
            assert not blurs_visibly or float(tf.reduce_mean(tf.abs(out - image))) > 1.0
            counts["blur"] += 1
    assert all(15 <= count <= 45 for count in counts.values()), counts


def _padded_resized(image, size, padding=4):
    height, width = image.shape[:2]
    short = min(height, width)
    shape = [size if height <= width else size * height // short]
    shape.append(size if width <= height else size * width // short)
    resized = resize(tf.constant(image), shape).numpy()
    return np.pad(resized, [(padding, padding), (padding, padding), (0, 0)], mode="reflect")


def _offset(crop, padded):
    """The (top, left) of `crop` in `padded`, or None."""
    size = crop.shape[0]
    for top in range(padded.shape[0] - size + 1):
        for left in range(padded.shape[1] - size + 1):
            if np.array_equal(padded[top : top + size, left : left + size], crop):
                return top, left
    return None


def test_simple_random_crop_is_a_window_of_the_reflect_padded_resize():
    image = np.random.default_rng(1).integers(0, 256, (40, 30, 3)).astype(np.uint8)
    padded = _padded_resized(image, 24)  # 30 -> 24, 40 -> int(24 * 40 / 30) = 32; + 2 x 4
    assert padded.shape == (40, 32, 3)
    offsets = set()
    for seed in range(12):
        crop = transforms.simple_random_crop(tf.constant(image), 24, _seed(seed)).numpy()
        assert crop.shape == (24, 24, 3)
        offset = _offset(crop, padded)
        assert offset is not None and offset[0] <= 16 and offset[1] <= 8
        offsets.add(offset)
    assert len(offsets) > 6
    encoded = tf.io.encode_png(tf.constant(image))
    np.testing.assert_array_equal(
        transforms.simple_random_crop(encoded, 24, _seed(3)),
        transforms.simple_random_crop(tf.constant(image), 24, _seed(3)),
    )


def test_batched_simple_random_crops_are_windows_too():
    images = np.random.default_rng(2).integers(0, 256, (3, 20, 20, 3)).astype(np.uint8)
    crops = in_memory.simple_random_crops(tf.constant(images), 16, _seed(5)).numpy()
    assert crops.shape == (3, 16, 16, 3)
    for image, crop in zip(images, crops, strict=True):
        assert _offset(crop, _padded_resized(image, 16)) is not None


def test_config_rejects_three_augment_with_rand_augment():
    with pytest.raises(UserInputError, match="rand_augment_ops=0 and reprob=0"):
        augment_config.AugmentConfig(three_augment=True)
    # Official DeiT III's transform has no erasing; the default reprob 0.25 is not kept.
    with pytest.raises(UserInputError, match=r"Received: rand_augment_ops=0, reprob=0.25"):
        augment_config.AugmentConfig(three_augment=True, rand_augment_ops=0)
    with pytest.raises(UserInputError, match="translate=0"):
        augment_config.AugmentConfig(simple_random_crop=True, translate=2)
    with pytest.raises(UserInputError, match="color_jitter"):
        dataclasses.replace(THREE_AUGMENT, color_jitter=-0.1)


@pytest.mark.parametrize("in_memory_path", [False, True])
def test_pipeline_trains_on_three_augment_views(in_memory_path):
    config = dataclasses.replace(THREE_AUGMENT, simple_random_crop=True)
    dataset = pipeline.make_dataset(
        "digits",
        "train",
        image_size=16,
        batch_size=8,
        training=True,
        augment=config,
        seed=3,
        in_memory=in_memory_path,
        deterministic=True,
    )
    images, targets = next(iter(dataset))
    assert images.shape == (8, 16, 16, 3) and targets.shape == (8, 10)
    plain = pipeline.make_dataset(
        "digits",
        "train",
        image_size=16,
        batch_size=8,
        training=True,
        augment=dataclasses.replace(config, three_augment=False),
        seed=3,
        in_memory=in_memory_path,
        deterministic=True,
    )
    np.testing.assert_array_equal(targets, next(iter(plain))[1])  # same examples
    assert float(tf.reduce_mean(tf.abs(images - next(iter(plain))[0]))) > 0.05


def _recorded_jitters(monkeypatch):
    """`color_jitter`'s ops replaced by ones recording `(name, factor)`; eagerly only the
    chosen branch of each slot runs. Returns the record, one list per call of the caller."""
    record = []

    def recording(fn):
        def op(image, factor):
            record.append((fn.__name__, float(factor)))
            return fn(image, factor)

        return op

    monkeypatch.setattr(three_augment, "_JITTERS", tuple(map(recording, three_augment._JITTERS)))
    return record


def test_color_jitter_factors_dim_as_often_as_they_brighten(monkeypatch):
    """torchvision `ColorJitter(0.3, 0.3, 0.3)`: each factor uniform in [0.7, 1.3], below 1
    (darker, flatter, greyer) as often as above."""
    record = _recorded_jitters(monkeypatch)
    image = _colourful()
    for seed in range(100):
        three_augment.color_jitter(image, _seed(seed), 0.3)
    factors = np.array([factor for _, factor in record])
    assert len(factors) == 300
    assert 0.7 <= factors.min() < 0.75 and 1.25 < factors.max() <= 1.3
    below = np.mean(factors < 1.0)
    assert 0.38 <= below <= 0.62, below  # Binomial(300, 0.5): std ~0.03


def test_color_jitter_order_is_drawn_per_image(monkeypatch):
    """torchvision's `randperm`: the three ops (which do not commute) in a random order per
    image, each order about a sixth of the time, not one fixed order."""
    record = _recorded_jitters(monkeypatch)
    image = _colourful()
    orders = []
    for seed in range(60):
        del record[:]
        three_augment.color_jitter(image, _seed(seed), 0.3)
        orders.append(tuple(name for name, _ in record))
    assert all(sorted(order) == ["_brightness", "_contrast", "_saturation"] for order in orders)
    assert len(set(orders)) >= 5, set(orders)  # all 6 expected: P(one missing) ~1e-4


def test_blur_radius_reaches_two():
    """The official `GaussianBlur(radius_min=0.1, radius_max=2.)`: on a white dot the blur's
    centre tells its std; over half of the blurs are wider than std 1."""
    dot = np.zeros((25, 25, 3), np.float32)
    dot[12, 12] = 255.0
    taps = np.arange(-6, 7)
    centre_at_std_1 = 255.0 * (1 / np.exp(-0.5 * taps**2.0).sum()) ** 2  # ~40.6
    centres = []
    for seed in range(150):
        out = three_augment.three_augment(dot, _seed(seed), color_jitter_strength=0.0).numpy()
        if 0.0 < out[12, 12, 0] < 255.0:  # a visible blur: gray keeps the dot, solarize clears it
            centres.append(out[12, 12, 0])
    assert len(centres) >= 25, len(centres)  # a third of 150 are blurs
    wide = np.mean(np.array(centres) < centre_at_std_1)
    assert 0.3 <= wide <= 0.8, wide  # radius uniform in [0.1, 2]: ~0.55
