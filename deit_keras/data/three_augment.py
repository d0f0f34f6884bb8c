"""DeiT III's 3-Augment, stateless (Touvron et al. 2022, "DeiT III: Revenge of the ViT").

As the official `augment.py` (`new_data_aug_generator`, `--ThreeAugment`): after
the crop and the flip, each image gets one of grayscale, solarization or
Gaussian blur, chosen uniformly (torchvision `RandomChoice` of the three, each
with p=1), then torchvision `ColorJitter(c, c, c)` (brightness, contrast,
saturation, no hue; `--color-jitter`, 0.3) in a random order. Pixel values are
float32 in `[0, 255]`, kept integer after each op (PIL works on uint8 images).

PIL's ops, written in TensorFlow:
  * grayscale: `Image.convert("L")` (ITU-R 601-2 luma 0.299 R + 0.587 G +
    0.114 B, rounded) copied to the three channels (`Grayscale(3)`);
  * solarization: `ImageOps.solarize(threshold=128)`: values >= 128 become
    `255 - value`;
  * Gaussian blur: `ImageFilter.GaussianBlur(radius)`, radius uniform in
    [0.1, 2]; PIL approximates the Gaussian of std `radius` by three box
    blurs, this is the exact separable Gaussian (13 taps, edges extended as
    PIL's) of the same std.
"""

import tensorflow as tf

from deit_keras.data.image_ops import case, select

# `GaussianBlur(p=1.0, radius_min=0.1, radius_max=2.)` of the official augment.py.
BLUR_RADIUS = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128.0
# Taps each side of the blur kernel: 3 std of the largest radius.
_BLUR_HALF_WIDTH = 6


def _luma(image):
    """PIL `convert("L")`: ITU-R 601-2 luma `[..., 1]`, rounded."""
    return tf.round(tf.tensordot(image, tf.constant([0.299, 0.587, 0.114]), axes=1))[..., None]


def _blend(degenerate, image, factor):
    """PIL `ImageEnhance`: `degenerate + factor * (image - degenerate)`, clipped, then cut
    to an integer (`Image.blend`'s `(UINT8)temp`: truncation; rounding read 0.2-0.4 levels
    high on average)."""
    return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))


def grayscale(image):
    """torchvision `Grayscale(3)`: the PIL "L" image of `[..., 3]` pixels on 3 channels."""
    gray = _luma(image)
    return tf.concat([gray, gray, gray], axis=-1)


def solarize(image, threshold=SOLARIZE_THRESHOLD):
    """PIL `ImageOps.solarize`: values `>= threshold` are inverted."""
    return select(image >= threshold, 255.0 - image, image)


def gaussian_kernel(sigma):
    """The normalised 1-D Gaussian of std `sigma` on taps `-6..6`."""
    taps = tf.range(-_BLUR_HALF_WIDTH, _BLUR_HALF_WIDTH + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(taps / sigma))
    return weights / tf.reduce_sum(weights)


def _blur_axis(image, kernel, axis):
    """1-D convolution of `[H, W, C]` along `axis` (0 or 1), edge pixels extended."""
    size = tf.shape(image)[axis]
    offsets = tf.range(-_BLUR_HALF_WIDTH, _BLUR_HALF_WIDTH + 1)
    indices = tf.clip_by_value(tf.range(size)[:, None] + offsets[None, :], 0, size - 1)
    taps = tf.gather(image, indices, axis=axis)  # [size, taps, ...] moved into `axis`
    return tf.tensordot(taps, kernel, axes=[[axis + 1], [0]])


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of one `[H, W, C]` image with std `sigma` (> 0), rounded."""
    kernel = gaussian_kernel(tf.cast(sigma, tf.float32))
    blurred = _blur_axis(_blur_axis(image, kernel, 0), kernel, 1)
    return tf.clip_by_value(tf.round(blurred), 0.0, 255.0)


def _brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def _contrast(image, factor):
    # PIL ImageEnhance.Contrast: towards the rounded mean of the "L" image.
    return _blend(tf.round(tf.reduce_mean(_luma(image))), image, factor)


def _saturation(image, factor):
    # PIL ImageEnhance.Color: towards the "L" image.
    return _blend(grayscale(image), image, factor)


_JITTERS = (_brightness, _contrast, _saturation)


def color_jitter(image, seed, strength=0.3):
    """torchvision `ColorJitter(strength, strength, strength)` of one image.

    Brightness, contrast and saturation factors are each uniform in
    `[max(0, 1 - strength), 1 + strength]` and the three are applied in a
    uniformly random order (torchvision's `randperm`).

    Args:
        image: float32 `[H, W, 3]` in `[0, 255]`.
        seed: int tensor `[2]`, a stateless seed.
        strength: float >= 0. Defaults to 0.3; 0 returns `image`.

    Returns:
        float32 `[H, W, 3]` in `[0, 255]`.
    """
    if strength == 0:
        return image
    seeds = tf.random.experimental.stateless_split(seed, 2)
    factors = tf.random.stateless_uniform(
        [len(_JITTERS)], seeds[0], max(0.0, 1.0 - strength), 1.0 + strength
    )
    order = tf.argsort(tf.random.stateless_uniform([len(_JITTERS)], seeds[1]))
    for slot in range(len(_JITTERS)):
        op = order[slot]
        factor = tf.gather(factors, op)
        branches = [(lambda fn=fn, x=image, f=factor: fn(x, f)) for fn in _JITTERS]
        image = case(op, branches)
    return image


def three_augment(image, seed, color_jitter_strength=0.3):
    """3-Augment of one float32 `[H, W, 3]` image in `[0, 255]` (after crop and flip).

    Args:
        image: float32 `[H, W, 3]`, values in `[0, 255]`.
        seed: int tensor `[2]`, a stateless seed.
        color_jitter_strength: float >= 0. The official `--color-jitter`;
            0 skips the jitter. Defaults to 0.3.

    Returns:
        float32 `[H, W, 3]` in `[0, 255]`, the static shape of `image` kept.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    choice = tf.random.stateless_uniform([], seeds[0], 0, 3, dtype=tf.int32)
    radius = tf.random.stateless_uniform([], seeds[1], *BLUR_RADIUS)
    out = case(
        choice,
        [
            lambda: grayscale(image),
            lambda: solarize(image),
            lambda: gaussian_blur(image, radius),
        ],
    )
    out = color_jitter(out, seeds[2], color_jitter_strength)
    return tf.ensure_shape(out, image.shape)
