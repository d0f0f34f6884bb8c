"""Geometric train-time transforms of the DeiT recipe (timm `create_transform`).

Train: random resized crop (bicubic) -> [random translation] -> horizontal flip -> [RandAugment]
-> normalise -> [random erasing]. The bracketed steps live in
`deit_keras.data.augment`, normalisation and the eval transform in
`deit_keras.data.preprocessing`.

All random steps are stateless: they take a `seed` tensor of shape `[2]`, so
the same seed gives the same image, inside or outside `tf.data`.
"""

import functools
import math

import tensorflow as tf

from deit_keras.data import exif
from deit_keras.data.preprocessing import resize

# libjpeg's accurate integer IDCT, as Pillow (timm's and `deit-predict`'s reader) uses;
# TensorFlow's default, the fast one, is up to 6 levels off on ordinary photos.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_jpeg(encoded):
    return tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD)


def decode_image(encoded, orientation=None):
    """Decodes JPEG/PNG/BMP/GIF/WebP bytes to an upright uint8 `[H, W, 3]` image.

    The EXIF orientation is applied, an animation gives its first frame and
    alpha is dropped, as `deit-predict`'s Pillow reading does
    (`ImageOps.exif_transpose`, then `convert("RGB")`).

    Args:
        encoded: scalar string tensor, the file's bytes.
        orientation: int32 scalar, `exif.orientation(encoded)` when the
            caller has it already.
    """
    if orientation is not None:
        return _decode_upright(encoded, orientation)
    image = tf.cond(
        exif.needs_no_parse(encoded),
        lambda: decode_jpeg(encoded),
        lambda: _decoded_upright(encoded),
    )
    image.set_shape([None, None, 3])
    return image


def _decode_upright(encoded, orientation=None):
    image = tf.cond(
        is_webp(encoded),
        lambda: _decoded_webp(encoded),
        lambda: tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: decode_jpeg(encoded),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        ),
    )
    image.set_shape([None, None, 3])
    orientation = exif.orientation(encoded) if orientation is None else orientation
    image = exif.apply_orientation(image, orientation)
    image.set_shape([None, None, 3])
    return image


# An extended WebP file's `VP8X` chunk has a flags byte at offset 20 with these bits.
_WEBP_FLAGS_AT = 20
_WEBP_HEADER_BYTES = _WEBP_FLAGS_AT + 1
_WEBP_ALPHA, _WEBP_ANIMATION, _WEBP_DEFINED_FLAGS = 0x10, 0x02, 0x3F


def _webp_header(encoded):
    """The first bytes of `encoded` up to the flags as uint8, zero-padded when it is shorter."""
    header = tf.io.decode_raw(tf.strings.substr(encoded, 0, _WEBP_HEADER_BYTES), tf.uint8)
    return tf.pad(header, [[0, _WEBP_HEADER_BYTES - tf.size(header)]])


def _bytes_equal(values, text):
    return tf.reduce_all(tf.equal(values, tf.constant(list(text), tf.uint8)))


def is_webp(encoded):
    """Whether the bytes `encoded` start as a WebP file does (`RIFF`, 4 size bytes, `WEBP`)."""
    header = _webp_header(encoded)
    return tf.logical_and(_bytes_equal(header[0:4], b"RIFF"), _bytes_equal(header[8:12], b"WEBP"))


def _decode_webp(encoded):
    """WebP bytes -> `[H, W, 3]`, alpha dropped; an animation's first frame.

    TensorFlow 2.21's `DecodeWebP` allocates an animation's frames with the
    channels the alpha flag announces but writes them as RGBA: an animation
    without that flag corrupts the heap and aborts the process (Pillow writes
    such files). With the flag set, the frames come back as RGBA.
    """
    header = _webp_header(encoded)
    flags = header[_WEBP_FLAGS_AT]
    animated_without_alpha = tf.logical_and(
        _bytes_equal(header[12:16], b"VP8X"),
        tf.equal(tf.bitwise.bitwise_and(flags, _WEBP_ALPHA | _WEBP_ANIMATION), _WEBP_ANIMATION),
    )

    def with_alpha_flag():
        # The reserved bits cleared (readers ignore them): the byte stays below 0x80,
        # one byte in UTF-8.
        defined = tf.bitwise.bitwise_and(flags, _WEBP_DEFINED_FLAGS)
        flagged = tf.bitwise.bitwise_or(defined, _WEBP_ALPHA)
        flag_byte = tf.strings.unicode_encode(tf.cast(flagged, tf.int32)[None], "UTF-8")
        head = tf.strings.substr(encoded, 0, _WEBP_FLAGS_AT)
        rest = tf.strings.substr(encoded, _WEBP_HEADER_BYTES, -1)
        return tf.strings.join([head, flag_byte, rest])

    safe = tf.cond(animated_without_alpha, with_alpha_flag, lambda: encoded)
    return tf.io.decode_webp(safe)[0, :, :, :3]


def sample_box_candidates(height, width, seeds, area, ratio, attempts=10, count=None):
    """timm's box proposals (RandomResizedCrop, RandomErasing): `(areas, aspects)`.

    `attempts` areas uniform in `area` x image area (with `seeds[0]`) and
    aspects log-uniform in `ratio` (with `seeds[1]`); callers keep the first
    box that fits. With `count`, `[count, attempts]` of each: `count` images' proposals.
    """
    shape = [attempts] if count is None else tf.stack([count, attempts])
    target_area = height * width * tf.random.stateless_uniform(shape, seeds[0], area[0], area[1])
    aspect = tf.exp(
        tf.random.stateless_uniform(shape, seeds[1], math.log(ratio[0]), math.log(ratio[1]))
    )
    return target_area, aspect


def random_crop_window(shape, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Samples a timm `RandomResizedCrop` window (10 tries, then a fallback).

    Args:
        shape: int tensor `[height, width]` of the source image.
        seed: int tensor `[2]`, a stateless seed.
        scale: tuple of two floats. Range of the crop area over image area.
        ratio: tuple of two floats. Range of the crop aspect ratio (w / h).

    Returns:
        int32 tensor `[top, left, crop_height, crop_width]`.
    """
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    target_area, aspect = sample_box_candidates(height, width, seeds, scale, ratio)
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    valid = (crop_w <= width) & (crop_h <= height) & (crop_w > 0) & (crop_h > 0)
    first = tf.argmax(tf.cast(valid, tf.int32))

    # Fallback as timm: a centre crop with the ratio clamped to `ratio`.
    in_ratio = width / tf.maximum(height, 1.0)
    fb_w = tf.where(
        in_ratio < ratio[0],
        width,
        tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width),
    )
    fb_h = tf.where(
        in_ratio < ratio[0],
        tf.round(width / ratio[0]),
        tf.where(in_ratio > ratio[1], height, height),
    )
    found = tf.reduce_any(valid)
    crop_h = tf.where(found, crop_h[first], fb_h)
    crop_w = tf.where(found, crop_w[first], fb_w)
    offsets = tf.random.stateless_uniform([2], seeds[2])
    top = tf.where(
        found,
        tf.floor(offsets[0] * (height - crop_h + 1)),
        tf.floor((height - crop_h) / 2),
    )
    left = tf.where(
        found,
        tf.floor(offsets[1] * (width - crop_w + 1)),
        tf.floor((width - crop_w) / 2),
    )
    return tf.cast(tf.stack([top, left, crop_h, crop_w]), tf.int32)


def random_resized_crop(image, image_size, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm `RandomResizedCropAndInterpolation` with bicubic resizing.

    Args:
        image: uint8 `[H, W, 3]` image, or a scalar string of encoded bytes
            (JPEGs are decoded only inside the crop window, which is faster).
        image_size: int. Output side length.
        seed: int tensor `[2]`, a stateless seed.
        scale: tuple of two floats. Crop area range. Defaults to
            `(0.08, 1.0)`.
        ratio: tuple of two floats. Crop aspect ratio range. Defaults to
            `(3/4, 4/3)`.

    Returns:
        float32 `[image_size, image_size, 3]` in `[0, 255]`.
    """
    if image.dtype == tf.string:
        encoded, seed = image, tf.convert_to_tensor(seed)
        scale, ratio = tuple(map(float, scale)), tuple(map(float, ratio))
        crop = tf.cond(
            exif.needs_no_parse(encoded),
            lambda: _jpeg_crop(encoded, seed, scale, ratio),
            lambda: _cropped_any(scale, ratio, seed.dtype)(encoded, seed),
        )
    else:
        crop = _window_of(image, seed, scale, ratio)
    return resize(crop, [image_size, image_size])


def _jpeg_crop(encoded, seed, scale, ratio):
    """The window decoded alone (faster than decoding the whole JPEG)."""
    shape = tf.image.extract_jpeg_shape(encoded)
    window = random_crop_window(shape[:2], seed, scale, ratio)
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=JPEG_DCT_METHOD)
    crop.set_shape([None, None, 3])
    return crop


def _window_of(image, seed, scale, ratio):
    window = random_crop_window(tf.shape(image)[:2], seed, scale, ratio)
    return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]


def _crop_any(encoded, seed, scale, ratio):
    """A crop of any image file; the window is drawn on the upright image, so JPEGs
    stored turned decode whole."""
    orientation = exif.orientation(encoded)
    upright_jpeg = tf.logical_and(tf.io.is_jpeg(encoded), tf.equal(orientation, 1))
    return tf.cond(
        upright_jpeg,
        lambda: _jpeg_crop(encoded, seed, scale, ratio),
        lambda: _window_of(_decode_upright(encoded, orientation), seed, scale, ratio),
    )


@functools.cache
def _cropped_any(scale, ratio, seed_dtype):
    """`_crop_any` out of line (see `_decoded_webp`), one function per crop range and
    seed type (an int32 seed draws other numbers than the same seed as int64)."""
    return tf.function(
        functools.partial(_crop_any, scale=scale, ratio=ratio),
        input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], seed_dtype)],
        experimental_attributes={"_noinline": True},
    )


def random_translate(image, seed, padding):
    """Random translation by up to `padding` pixels along each axis (zero fill).

    The CIFAR-style "pad and random crop": the `[H, W, C]` image is padded
    with `padding` zeros on every side and an `H x W` window is cut at a
    uniformly random integer offset, so the content moves by
    `-padding..padding` pixels on each axis independently.

    Args:
        image: float32 `[H, W, C]`.
        seed: int tensor `[2]`, a stateless seed.
        padding: int >= 0. Largest shift in pixels; 0 returns `image`.

    Returns:
        float32 `[H, W, C]`, the static shape of `image` kept.
    """
    if padding == 0:
        return image
    shape = tf.shape(image)
    offsets = tf.random.stateless_uniform([2], seed, 0, 2 * padding + 1, dtype=tf.int32)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    moved = padded[offsets[0] : offsets[0] + shape[0], offsets[1] : offsets[1] + shape[1]]
    return tf.ensure_shape(moved, image.shape)


def random_horizontal_flip(image, seed, probability=0.5):
    """Flips `[H, W, C]` left-right with `probability` (stateless)."""
    flip = tf.random.stateless_uniform([], seed) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def resized_shape(height, width, size):
    """torchvision `Resize(size)` (an int): the shorter side -> `size`, the longer
    `int(size * long / short)`. Works on ints and on int32 tensors."""
    short = tf.minimum(height, width)
    new_height = tf.where(height <= width, size, size * height // short)
    new_width = tf.where(width <= height, size, size * width // short)
    return new_height, new_width


def simple_random_crop(image, image_size, seed, padding=4):
    """DeiT III's "simple random crop" (`--src`): resize, pad by reflection, crop.

    The official `augment.py`: `Resize(image_size, bicubic)` of the shorter
    side, then `RandomCrop(image_size, padding=4, padding_mode='reflect')`
    (an `image_size` square at a uniformly random integer offset of the
    reflect-padded image), in place of the random resized crop.

    Args:
        image: uint8 `[H, W, 3]` image, or a scalar string of encoded bytes.
        image_size: int. Output side length.
        seed: int tensor `[2]`, a stateless seed.
        padding: int >= 0. Reflection padding on each side. Defaults to 4.

    Returns:
        float32 `[image_size, image_size, 3]` in `[0, 255]`.
    """
    if image.dtype == tf.string:
        image = decode_image(image)
    shape = tf.shape(image)
    new_height, new_width = resized_shape(shape[0], shape[1], image_size)
    resized = resize(image, tf.stack([new_height, new_width]))
    padded = tf.pad(resized, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform(
        [], seeds[0], 0, new_height + 2 * padding - image_size + 1, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [], seeds[1], 0, new_width + 2 * padding - image_size + 1, dtype=tf.int32
    )
    crop = padded[top : top + image_size, left : left + image_size]
    return tf.ensure_shape(crop, [image_size, image_size, 3])


# Out of line, as `exif._turned`: inlined, a skipped branch's ops would each be
# scheduled (as dead) for every image; called, the skipped branch is one op.
_decoded_webp = tf.function(
    _decode_webp,
    input_signature=[tf.TensorSpec([], tf.string)],
    experimental_attributes={"_noinline": True},
)
_decoded_upright = tf.function(
    _decode_upright,
    input_signature=[tf.TensorSpec([], tf.string)],
    experimental_attributes={"_noinline": True},
)
