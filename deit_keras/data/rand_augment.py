"""Stateless RandAugment with timm's `rand-mM-mstdS-inc1` semantics.

Own implementation because KerasCV's `RandAugment` is not reproducible (two
layers built with the same `seed` give different outputs, measured under
keras-cv 0.9 / Keras 3), lacks 5 of timm's 15 ops (invert, rotate,
posterize, sharpness, solarize-add), and Keras core's runs all ops per slot
(~3.5x slower). Per image: `num_ops` ops drawn uniformly with replacement
from the 15 "increasing" ops, each applied with probability 0.5 at a
magnitude drawn from `N(magnitude, magnitude_std)` clipped to `[0, 10]`;
signed ops flip sign with probability 0.5. Geometric ops fill with grey 128.
Pixel values are float32 in `[0, 255]`.
"""

import math

import tensorflow as tf

from deit_keras.data.image_ops import case, per_channel, select

_MAX_LEVEL = 10.0
_FILL = 128.0


def _blend(degenerate, image, factor):
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grayscale(image):
    # PIL "L" conversion weights.
    gray = tf.tensordot(image, tf.constant([0.299, 0.587, 0.114]), axes=1)
    return gray[..., None]


def _affine(image, matrix):
    """PIL-convention affine: output (x, y) samples input (a x + b y + c, ...)."""
    transform = tf.concat([matrix, tf.zeros([2])], axis=0)[None]
    shape = tf.shape(image)[:2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.cast(transform, tf.float32),
        output_shape=shape,
        fill_value=_FILL,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def _auto_contrast(image, level, sign):
    low = tf.reduce_min(image, axis=[0, 1])
    high = tf.reduce_max(image, axis=[0, 1])
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    low = tf.where(high > low, low, 0.0)
    stretched = per_channel(lambda x, low, scale: (x - low) * scale, image, low, scale)
    return tf.clip_by_value(stretched, 0.0, 255.0)


def _equalize_channel(channel):
    # PIL ImageOps.equalize, as in TF Model Garden's autoaugment.
    values = tf.cast(channel, tf.int32)
    hist = tf.histogram_fixed_width(values, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(hist, hist != 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(lut, 0, 255)
    equalized = tf.cast(tf.gather(lut, values), tf.float32)
    return select(step == 0, channel, equalized)


def _equalize(image, level, sign):
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def _invert(image, level, sign):
    return 255.0 - image


def _rotate(image, level, sign):
    angle = sign * level * 30.0 * math.pi / 180.0
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = tf.stack(
        [
            cos,
            sin,
            cx - cos * cx - sin * cy,
            -sin,
            cos,
            cy + sin * cx - cos * cy,
        ]
    )
    return _affine(image, matrix)


def _posterize(image, level, sign):
    bits = 4 - tf.cast(tf.floor(level * 4.0), tf.int32)
    shift = 8 - bits
    values = tf.cast(image, tf.int32)
    return tf.cast(
        tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift),
        tf.float32,
    )


def _solarize(image, level, sign):
    threshold = 256.0 - tf.floor(level * 256.0)
    return select(image >= threshold, 255.0 - image, image)


def _solarize_add(image, level, sign):
    add = tf.floor(level * 110.0)
    return select(image < 128.0, tf.minimum(image + add, 255.0), image)


def _color(image, level, sign):
    return _blend(_grayscale(image), image, 1.0 + sign * level * 0.9)


def _contrast(image, level, sign):
    mean = tf.round(tf.reduce_mean(_grayscale(image)))
    return _blend(mean, image, 1.0 + sign * level * 0.9)


def _brightness(image, level, sign):
    return _blend(tf.zeros_like(image), image, 1.0 + sign * level * 0.9)


def _sharpness(image, level, sign):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")
    smooth = tf.round(smooth[0])
    # PIL keeps the border pixels unfiltered.
    smooth = tf.pad(smooth - image[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]]) + image
    return _blend(smooth, image, 1.0 + sign * level * 0.9)


def _shear_x(image, level, sign):
    factor = sign * level * 0.3
    return _affine(image, tf.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0]))


def _shear_y(image, level, sign):
    factor = sign * level * 0.3
    return _affine(image, tf.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0]))


def _translate_x(image, level, sign):
    pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
    return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]))


def _translate_y(image, level, sign):
    pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
    return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]))


# timm `_RAND_INCREASING_TRANSFORMS`, in its order.
OPS = (
    ("AutoContrast", _auto_contrast),
    ("Equalize", _equalize),
    ("Invert", _invert),
    ("Rotate", _rotate),
    ("PosterizeIncreasing", _posterize),
    ("SolarizeIncreasing", _solarize),
    ("SolarizeAdd", _solarize_add),
    ("ColorIncreasing", _color),
    ("ContrastIncreasing", _contrast),
    ("BrightnessIncreasing", _brightness),
    ("SharpnessIncreasing", _sharpness),
    ("ShearX", _shear_x),
    ("ShearY", _shear_y),
    ("TranslateXRel", _translate_x),
    ("TranslateYRel", _translate_y),
)


def apply_op(image, op_index, magnitude, sign=1.0):
    """Applies op `OPS[op_index]` at `magnitude` (0..10) to one image (`len(OPS)`: none)."""
    image = tf.convert_to_tensor(image, tf.float32)
    level = tf.convert_to_tensor(magnitude, tf.float32) / _MAX_LEVEL
    sign = tf.convert_to_tensor(sign, tf.float32)
    branches = [(lambda fn=fn: fn(image, level, sign)) for _, fn in OPS]
    branches.append(lambda: tf.identity(image))  # index len(OPS): the op is not applied
    out = case(op_index, branches)
    out.set_shape(image.shape)
    return out


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, probability=0.5):
    """RandAugment of one float32 `[H, W, 3]` image in `[0, 255]`.

    Args:
        image: float32 `[H, W, 3]`, values in `[0, 255]`.
        seed: int tensor `[2]`, a stateless seed.
        num_ops: int. Ops applied in sequence. Defaults to `2`.
        magnitude: float in `[0, 10]`. Mean op strength. Defaults to `9`.
        magnitude_std: float. Std of the per-op Gaussian noise on the
            magnitude. Defaults to `0.5`.
        probability: float. Chance each drawn op is applied. Defaults to
            `0.5` (timm's `rand_augment_transform`).

    Returns:
        float32 `[H, W, 3]` in `[0, 255]`.
    """
    if num_ops <= 0:
        return image
    image = tf.convert_to_tensor(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    ops = tf.random.stateless_uniform([num_ops], seeds[0], 0, len(OPS), dtype=tf.int32)
    apply = tf.random.stateless_uniform([num_ops], seeds[1]) < probability
    mags = magnitude + magnitude_std * tf.random.stateless_normal([num_ops], seeds[2])
    mags = tf.clip_by_value(mags, 0.0, _MAX_LEVEL)
    signs = tf.where(tf.random.stateless_uniform([num_ops], seeds[3]) < 0.5, -1.0, 1.0)
    for i in range(num_ops):
        # Not applied: the identity branch (one `Case` op, no `tf.cond` around it).
        image = apply_op(image, tf.where(apply[i], ops[i], len(OPS)), mags[i], signs[i])
    return image
