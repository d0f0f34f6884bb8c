"""Stateless RandAugment with timm's `rand-mM-mstdS-inc1` semantics.

Own implementation because KerasCV's `RandAugment` is not reproducible (two
layers built with the same `seed` give different outputs, measured under
keras-cv 0.9 / Keras 3), lacks 5 of timm's 15 ops (invert, rotate,
posterize, sharpness, solarize-add), and Keras core's runs all ops per slot
(~3.5x slower). Per image: `num_ops` ops drawn uniformly with replacement
from the 15 "increasing" ops, each applied with probability 0.5 at a
magnitude drawn from `N(magnitude, magnitude_std)` clipped to `[0, 10]`;
signed ops flip sign with probability 0.5. Geometric ops resample bicubically
with PIL's kernel and edge clamping (timm's under DeiT's `--train-interpolation
bicubic`) and fill with the ImageNet mean colour (124, 116, 104), as timm's
`create_transform` sets it.
Pixel values are float32 in `[0, 255]`; each op's result is truncated to integers, as
PIL stores timm's in uint8 for the next op (equal to timm's but for the geometric ops'
float32 resampling: one level on under 1% of the pixels, tests/data/test_augment.py).

Every op works on a batch `[B, H, W, 3]` with one magnitude and sign per image:
`rand_augment` (the streaming path, one image) runs the drawn op on a batch of
one; `rand_augment_batch` (the in-memory path) partitions a batch by drawn op
and runs each op once (`apply_ops`).
"""

import math

import tensorflow as tf

from deit_keras.data.constants import IMAGENET_MEAN
from deit_keras.data.image_ops import case, per_channel, select

_MAX_LEVEL = 10.0
# timm's `img_mean`: round(255 x mean) per channel.
_FILL = tuple(float(round(255 * mean)) for mean in IMAGENET_MEAN)
# Batch sizes the geometric ops compile for (the powers of two; zero images take one).
_BATCH_BUCKETS = tuple(2**k for k in range(31))


# === Ops ===
# Each op maps a batch `[B, H, W, 3]` with one `level` (magnitude / 10) and one
# `sign` per image (`[B]`, float64) to its output; one image is a batch of one.
# Levels are float64, as timm's (Python floats): in float32 a shear of 0.4 x 0.3 moves
# pixels on PIL's edge of the image (a coordinate of exactly 0) outside it.


def _per_image(values):
    """`[B]` values shaped `[B, 1, 1, 1]`, to broadcast over each image."""
    return values[:, None, None, None]


def _as_pil_uint8(images):
    # timm's ops run on PIL images: a result is stored as uint8, truncated (PIL's blends
    # and resampling cast with `(UINT8)`), and the next op sees that. The other ops map
    # integers to integers.
    return tf.floor(images)


def _blend(degenerate, images, factor):
    factor = _per_image(tf.cast(factor, tf.float32))
    blended = degenerate + factor * (images - degenerate)
    return _as_pil_uint8(tf.clip_by_value(blended, 0.0, 255.0))


def _grayscale(images):
    # PIL's "L" conversion in its fixed point (`Convert.c`'s L24, then >> 16); exact in
    # float32 for integer pixels (at most 255 x 65536 + 32768 < 2**24).
    weighted = tf.tensordot(images, tf.constant([19595.0, 38470.0, 7471.0]), axes=1)
    return tf.floor((weighted + 32768.0) / 65536.0)[..., None]


def _bicubic_taps(offsets):
    """PIL's four bicubic weights (`Geometry.c`, the cubic with a = -1) at fractional `offsets`."""
    squared = offsets * offsets
    cubed = squared * offsets
    return (
        -offsets + 2.0 * squared - cubed,
        1.0 - 2.0 * squared + cubed,
        offsets + squared - cubed,
        cubed - squared,
    )


def _source_pixels(matrices, height, width):
    """Where each output pixel samples the input, for PIL's affine transform.

    Output pixel (x, y) samples the input at (a (x + .5) + b (y + .5) + c, ...), PIL's
    pixel centres, in float64 as PIL's doubles. Plain TensorFlow, not XLA: inside one XLA
    computation the tap index and its weight came from differently rounded copies of the
    same coordinate (a rotation of an odd-sided image read the wrong row, 215 levels off).

    Returns:
        `(x_floor, y_floor, x_offset, y_offset, inside)`, each `[B, H, W]`: the int32
        index of the sample's second tap on each axis, float32 offsets in [0, 1) from
        it, and whether the sample is inside the input (outside: the fill colour).
    """
    a, b, c, d, e, f = (m[:, None, None] for m in tf.unstack(matrices, axis=1))
    ys = tf.cast(tf.range(height), tf.float64)[None, :, None] + 0.5
    xs = tf.cast(tf.range(width), tf.float64)[None, None, :] + 0.5
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0.0) & (x_in < tf.cast(width, tf.float64))
    inside &= (y_in >= 0.0) & (y_in < tf.cast(height, tf.float64))
    x_floor = tf.floor(x_in - 0.5)
    y_floor = tf.floor(y_in - 0.5)
    x_offset = tf.cast(x_in - 0.5 - x_floor, tf.float32)
    y_offset = tf.cast(y_in - 0.5 - y_floor, tf.float32)
    return tf.cast(x_floor, tf.int32), tf.cast(y_floor, tf.int32), x_offset, y_offset, inside


@tf.function(
    jit_compile=True,
    input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
    + [tf.TensorSpec([None, None, None], dtype) for dtype in (tf.int32,) * 2 + (tf.float32,) * 2]
    + [tf.TensorSpec([None, None, None], tf.bool)],
)
def _bicubic_samples(images, x_floor, y_floor, x_offset, y_offset, inside):
    """PIL's bicubic samples of `images` at `_source_pixels`' places; `_FILL` outside.

    The 4 x 4 taps clamp to the edge pixels, as PIL's do. Sixteen gathers, which XLA
    fuses into one loop (1.8 ms for a 224 px image on one core, against 9.6 ms as
    TensorFlow ops and 2.3 ms for TensorFlow's own bilinear transform).
    """
    shape = tf.shape(images)
    count, height, width = shape[0], shape[1], shape[2]
    pixels = tf.reshape(images, [-1, 3])
    first_pixel = tf.range(count)[:, None, None] * height * width
    out = 0.0
    for i, y_weight in enumerate(_bicubic_taps(y_offset)):
        row = first_pixel + tf.clip_by_value(y_floor + i - 1, 0, height - 1) * width
        along_row = 0.0
        for j, x_weight in enumerate(_bicubic_taps(x_offset)):
            column = tf.clip_by_value(x_floor + j - 1, 0, width - 1)
            along_row += x_weight[..., None] * tf.gather(pixels, row + column)
        out += y_weight[..., None] * along_row
    out = tf.clip_by_value(out, 0.0, 255.0)
    return tf.where(inside[..., None], out, tf.constant(_FILL, tf.float32))


def _affine(images, matrices):
    """PIL's `Image.transform(AFFINE, resample=BICUBIC, fillcolor=_FILL)` of each image,
    as timm's RandAugment under DeiT.

    `matrices`: float64 `[B, 6]`, each `(a, b, c, d, e, f)`, in PIL's coordinates. The
    batch is padded to a power of two, so that XLA compiles a few batch sizes (the
    in-memory path's op groups come in every size), not one per size.
    """
    count = tf.shape(images)[0]
    buckets = tf.constant(_BATCH_BUCKETS)
    padded = buckets[tf.searchsorted(buckets, count[None])[0]]
    padding = [[0, padded - count], [0, 0], [0, 0], [0, 0]]
    images = tf.pad(images, padding)
    places = _source_pixels(tf.pad(matrices, padding[:2]), tf.shape(images)[1], tf.shape(images)[2])
    return _as_pil_uint8(_bicubic_samples(images, *places)[:count])


def _auto_contrast(images, level, sign):
    low = tf.reduce_min(images, axis=[1, 2])
    high = tf.reduce_max(images, axis=[1, 2])
    # PIL's lookup table: `int(ix * scale + offset)` in doubles.
    low, high = tf.cast(low, tf.float64), tf.cast(high, tf.float64)
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    offset = tf.where(high > low, -low * scale, 0.0)
    pixels = tf.cast(images, tf.float64)
    stretched = per_channel(lambda x, scale, offset: x * scale + offset, pixels, scale, offset)
    # Truncated before float32 could round 101.99999999999999 up to 102.
    return tf.clip_by_value(tf.cast(tf.floor(stretched), tf.float32), 0.0, 255.0)


def _equalize(images, level, sign):
    # PIL ImageOps.equalize (as TF Model Garden's autoaugment), every image and channel
    # at once: one histogram of 256 bins per (image, channel), `bins` indexes them all.
    values = tf.clip_by_value(tf.cast(images, tf.int32), 0, 255)
    count = tf.shape(images)[0]
    bins = (tf.range(count)[:, None, None, None] * 3 + tf.range(3)) * 256 + values
    size = count * 3 * 256
    hist = tf.math.bincount(tf.reshape(bins, [-1]), minlength=size, maxlength=size)
    hist = tf.reshape(hist, [count, 3, 256])
    # PIL leaves the count of the highest value present out of the step.
    top_count = tf.gather(hist, tf.reduce_max(values, axis=[1, 2]), batch_dims=2)
    pixels = tf.shape(images)[1] * tf.shape(images)[2]
    step = (pixels - top_count) // 255
    below = tf.cumsum(hist, axis=2, exclusive=True)
    lut = (below + (step // 2)[..., None]) // tf.maximum(step, 1)[..., None]
    lut = tf.clip_by_value(lut, 0, 255)
    equalized = tf.cast(tf.gather(tf.reshape(lut, [-1]), bins), tf.float32)
    return select((step == 0)[:, None, None, :], images, equalized)


def _invert(images, level, sign):
    return 255.0 - images


def _rotate(images, level, sign):
    # PIL's `Image.rotate(degrees)`: counter-clockwise about (w / 2, h / 2).
    angle = sign * level * 30.0 * math.pi / 180.0
    shape = tf.cast(tf.shape(images)[1:3], tf.float64)
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrices = tf.stack(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy,
            sin,
            cos,
            cy - sin * cx - cos * cy,
        ],
        axis=1,
    )
    return _affine(images, matrices)


def _posterize(images, level, sign):
    bits = 4 - tf.cast(tf.floor(level * 4.0), tf.int32)
    shift = _per_image(8 - bits)
    values = tf.cast(images, tf.int32)
    return tf.cast(
        tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift),
        tf.float32,
    )


def _solarize(images, level, sign):
    threshold = _per_image(tf.cast(256.0 - tf.floor(level * 256.0), tf.float32))
    return select(images >= threshold, 255.0 - images, images)


def _solarize_add(images, level, sign):
    add = _per_image(tf.cast(tf.floor(level * 110.0), tf.float32))
    return select(images < 128.0, tf.minimum(images + add, 255.0), images)


def _color(images, level, sign):
    return _blend(_grayscale(images), images, 1.0 + sign * level * 0.9)


def _contrast(images, level, sign):
    # PIL's `int(mean + 0.5)`: a tie rounds up (tf.round takes it to even).
    mean = tf.floor(tf.reduce_mean(_grayscale(images), axis=[1, 2, 3], keepdims=True) + 0.5)
    return _blend(mean, images, 1.0 + sign * level * 0.9)


def _brightness(images, level, sign):
    return _blend(tf.zeros_like(images), images, 1.0 + sign * level * 0.9)


def _sharpness(images, level, sign):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    # "SAME", then the interior: TF 2.21's "VALID" gives an empty batch (an op group no
    # image drew) the input's height and width.
    smooth = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")[:, 1:-1, 1:-1]
    # PIL keeps the border pixels unfiltered.
    smooth = tf.pad(tf.round(smooth) - images[:, 1:-1, 1:-1], [[0, 0], [1, 1], [1, 1], [0, 0]])
    smooth += images
    return _blend(smooth, images, 1.0 + sign * level * 0.9)


def _identity_but(images, values, slot):
    """`_affine` by the identity `(1, 0, 0, 0, 1, 0)` with entry `slot` set to `values` `[B]`."""
    zeros, ones = tf.zeros_like(values), tf.ones_like(values)
    matrix = [ones, zeros, zeros, zeros, ones, zeros]
    matrix[slot] = values
    return _affine(images, tf.stack(matrix, axis=1))


def _shear_x(images, level, sign):
    return _identity_but(images, sign * level * 0.3, slot=1)


def _shear_y(images, level, sign):
    return _identity_but(images, sign * level * 0.3, slot=3)


def _translate_x(images, level, sign):
    width = tf.cast(tf.shape(images)[2], tf.float64)
    return _identity_but(images, sign * level * 0.45 * width, slot=2)


def _translate_y(images, level, sign):
    height = tf.cast(tf.shape(images)[1], tf.float64)
    return _identity_but(images, sign * level * 0.45 * height, slot=5)


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


# === Choosing ops ===


def apply_op(image, op_index, magnitude, sign=1.0):
    """Applies op `OPS[op_index]` at `magnitude` (0..10) to one image (`len(OPS)`: none)."""
    images = tf.convert_to_tensor(image, tf.float32)[None]
    level = tf.reshape(tf.cast(magnitude, tf.float64) / _MAX_LEVEL, [1])
    sign = tf.reshape(tf.cast(sign, tf.float64), [1])
    branches = [(lambda fn=fn: fn(images, level, sign)) for _, fn in OPS]
    branches.append(lambda: tf.identity(images))  # index len(OPS): the op is not applied
    out = case(op_index, branches)[0]
    out.set_shape(images.shape[1:])
    return out


def apply_ops(images, op_indices, magnitudes, signs):
    """Applies op `OPS[op_indices[b]]` to each image `b` of a batch (`len(OPS)`: none).

    The batch is partitioned by op, each op runs once on its images, and the
    results are stitched back in order: a few hundred kernels for the batch,
    where a per-image loop runs its ops and control flow once per image.

    Args:
        images: float32 `[B, H, W, 3]` in `[0, 255]`.
        op_indices: int32 `[B]` in `[0, len(OPS)]`.
        magnitudes: float32 `[B]` in `[0, 10]`.
        signs: float32 `[B]` of +-1.

    Returns:
        float32 `[B, H, W, 3]`.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    groups = len(OPS) + 1
    op_indices = tf.cast(op_indices, tf.int32)
    positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), op_indices, groups)
    parts = tf.dynamic_partition(images, op_indices, groups)
    levels = tf.cast(magnitudes, tf.float64) / _MAX_LEVEL
    levels = tf.dynamic_partition(levels, op_indices, groups)
    signs = tf.dynamic_partition(tf.cast(signs, tf.float64), op_indices, groups)
    outputs = [fn(parts[k], levels[k], signs[k]) for k, (_, fn) in enumerate(OPS)]
    outputs.append(parts[len(OPS)])
    out = tf.dynamic_stitch(positions, outputs)
    out.set_shape(images.shape)
    return out


def _draws(shape, seed, magnitude, magnitude_std, probability):
    """Op indices (`len(OPS)` where not applied), magnitudes and signs of shape `shape`."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    ops = tf.random.stateless_uniform(shape, seeds[0], 0, len(OPS), dtype=tf.int32)
    apply = tf.random.stateless_uniform(shape, seeds[1]) < probability
    mags = magnitude + magnitude_std * tf.random.stateless_normal(shape, seeds[2])
    mags = tf.clip_by_value(mags, 0.0, _MAX_LEVEL)
    signs = tf.where(tf.random.stateless_uniform(shape, seeds[3]) < 0.5, -1.0, 1.0)
    return tf.where(apply, ops, len(OPS)), mags, signs


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
    ops, mags, signs = _draws([num_ops], seed, magnitude, magnitude_std, probability)
    for i in range(num_ops):
        # Not applied: the identity branch (one `Case` op, no `tf.cond` around it).
        image = apply_op(image, ops[i], mags[i], signs[i])
    return image


def rand_augment_batch(images, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, probability=0.5):
    """RandAugment of a batch, every image drawing its own ops: `rand_augment` per image.

    The same distribution as `rand_augment` on each image, the draws made for the
    batch at once from one seed (so not the per-image seeds' values), each op
    slot applied by `apply_ops`.

    Args:
        images: float32 `[B, H, W, 3]`, values in `[0, 255]`.
        seed: int tensor `[2]`, a stateless seed.
        num_ops, magnitude, magnitude_std, probability: as `rand_augment`.

    Returns:
        float32 `[B, H, W, 3]` in `[0, 255]`.
    """
    if num_ops <= 0:
        return images
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.stack([tf.shape(images)[0], num_ops])
    ops, mags, signs = _draws(shape, seed, magnitude, magnitude_std, probability)
    for i in range(num_ops):
        images = apply_ops(images, ops[:, i], mags[:, i], signs[:, i])
    return images
