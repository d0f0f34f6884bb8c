"""Small datasets held decoded in memory, augmented a whole batch at a time.

For a split that fits (`MAX_BYTES`) and whose images share one shape
(digits, the generated folders), `decoded_split` decodes every image once per
process; the training pipeline then shuffles and batches uint8 images and
runs the random resized crop, flip, RandAugment, normalisation and erasing as batched ops
(`train_transform_batch`) instead of ~100 small ops per image, and the
eval transform on whole batches. On 2 CPU cores the per-image path cost
~12 ms of CPU per digits batch of 32, about half a train step, taken from
the cores the step runs on.

The crop is timm's `RandomResizedCrop` (same window distribution as
`transforms.random_crop_window`, drawn for the batch at once from one
stateless seed) and the resize is `tf.image.resize(antialias=True)`'s
separable kernel (TensorFlow's `ScaleAndTranslate`: Keys cubic a=-0.5 or
triangle, widened by the downscale factor, renormalised) written as one
`[out, in]` matrix per image and axis, so crops of different sizes resize
in two batched matrix products. The result equals the per-image
`transforms.random_resized_crop` of the same window up to float rounding
(a pixel may differ by 1 after rounding to integers).
"""

import functools
import math

import numpy as np
import tensorflow as tf

from deit_keras.data import augment as augment_lib
from deit_keras.data import sources, transforms
from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.image_ops import select
from deit_keras.data.preprocessing import (
    DEFAULT_PREPROCESSING,
    Preprocessing,
    check_interpolation,
    normalize,
    resize,
)

# A decoded split above this stays on the streaming path (the tf.data graph
# holds it as a constant, which must stay well under protobuf's 2 GiB).
MAX_BYTES = 256 * 2**20
# Larger images stream by default: the batched crop's resize matrices cost grows with the
# stored size (500x375 JPEGs at 224 px, full recipe, one core: 110 img/s batched from
# memory against 195 decoded per image; benchmarks/input_pipeline.py, 2026-12-03).
AUTO_MAX_PIXELS = 128 * 128


@functools.lru_cache(maxsize=8)
def decoded_split(name: str, data_dir: str | None, split: str, max_pixels: int | None = None):
    """`(images uint8 [N, H, W, 3], labels int64 [N])` of a split, or None.

    None when the images do not share one shape, would take more than
    `MAX_BYTES`, or have more than `max_pixels` pixels each. Decoded once per
    process (the deterministic training path builds one pipeline per epoch).
    Raises what decoding raises.
    """
    source = sources.get_source(name, data_dir, splits=(split,))
    count = source.num_examples(split)
    images, labels, shape = [], [], None
    encoded = source.read(split, shuffle_files=False)
    for image, label in encoded.map(lambda e, y: (transforms.decode_image(e), y)):
        if shape is None:
            shape = tuple(image.shape)
            too_large = max_pixels is not None and shape[0] * shape[1] > max_pixels
            if too_large or count * math.prod(shape) > MAX_BYTES:
                return None
        elif tuple(image.shape) != shape:
            return None
        images.append(image.numpy())
        labels.append(label.numpy())
    if not images:
        return None
    return np.stack(images), np.asarray(labels, np.int64)


def random_crop_windows(height, width, count, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """`count` timm `RandomResizedCrop` windows of one `height x width` image size.

    The batched `transforms.random_crop_window`: 10 proposals per window,
    the first that fits, else the centre crop with the aspect clamped.

    Returns:
        int32 `[count, 4]`: top, left, crop height, crop width.
    """
    height, width = float(height), float(width)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    target, aspect = transforms.sample_box_candidates(
        height, width, seeds, scale, ratio, count=count
    )
    crop_w = tf.round(tf.sqrt(target * aspect))
    crop_h = tf.round(tf.sqrt(target / aspect))
    valid = (crop_w <= width) & (crop_h <= height) & (crop_w > 0) & (crop_h > 0)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1)
    found = tf.reduce_any(valid, axis=1)
    in_ratio = width / max(height, 1.0)
    if in_ratio < ratio[0]:
        fallback = (round(width / ratio[0]), width)
    elif in_ratio > ratio[1]:
        fallback = (height, round(height * ratio[1]))
    else:
        fallback = (height, width)
    crop_h = tf.where(found, tf.gather(crop_h, first, batch_dims=1), fallback[0])
    crop_w = tf.where(found, tf.gather(crop_w, first, batch_dims=1), fallback[1])
    offsets = tf.random.stateless_uniform([count, 2], seeds[2])
    top = tf.where(
        found, tf.floor(offsets[:, 0] * (height - crop_h + 1)), tf.floor((height - crop_h) / 2)
    )
    left = tf.where(
        found, tf.floor(offsets[:, 1] * (width - crop_w + 1)), tf.floor((width - crop_w) / 2)
    )
    return tf.cast(tf.stack([top, left, crop_h, crop_w], axis=1), tf.int32)


def _keys_cubic(x):
    x = tf.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, 0.0))


def _triangle(x):
    return tf.maximum(1.0 - tf.abs(x), 0.0)


KERNELS = {"bicubic": _keys_cubic, "bilinear": _triangle}


def resize_weights(starts, lengths, in_size, out_size, interpolation="bicubic"):
    """`[B, out_size, in_size]` matrices resizing windows of one axis, antialiased.

    Row `b` maps an axis of `in_size` pixels to `out_size` samples of the
    window `[starts[b], starts[b] + lengths[b])`, with the weights of
    `tf.image.resize(..., antialias=True)` on that window.
    """
    check_interpolation(interpolation)
    lengths = tf.cast(lengths, tf.float32)[:, None, None]
    inv_scale = lengths / out_size
    kernel_scale = tf.maximum(inv_scale, 1.0)
    sample = (tf.range(out_size, dtype=tf.float32)[None, :, None] + 0.5) * inv_scale
    local = (
        tf.range(in_size, dtype=tf.float32)[None, None, :]
        - tf.cast(starts, tf.float32)[:, None, None]
    )
    inside = (local >= 0.0) & (local < lengths)
    weights = tf.where(inside, KERNELS[interpolation]((local + 0.5 - sample) / kernel_scale), 0.0)
    return weights / tf.reduce_sum(weights, axis=2, keepdims=True)


def _shift(weights, shifts):
    """Rows of `[B, S, N]` moved down by `shifts` `[B]`, zero rows entering (a translation)."""
    size = weights.shape[1]
    positions = tf.range(size)[None, :, None] - shifts[:, None, None]
    moves = tf.cast(positions == tf.range(size)[None, None, :], weights.dtype)
    return tf.einsum("bst,btn->bsn", moves, weights)


def crop_and_resize(images, windows, image_size, interpolation="bicubic", shifts=None):
    """Each image's window resized to `image_size`: the batched `transforms.random_resized_crop`.

    Args:
        images: `[B, H, W, C]` pixels in [0, 255] (uint8 or float), H and W static.
        windows: int32 `[B, 4]` (top, left, height, width).
        image_size: int. Output side.
        interpolation: "bicubic" (the training crop's) or "bilinear".
        shifts: int32 `[B, 2]` or None. Then move each output by (down,
            right) pixels with zero fill, as `transforms.random_translate`.

    Returns:
        float32 `[B, image_size, image_size, C]`, rounded and clipped to [0, 255].
    """
    height, width = images.shape[1], images.shape[2]
    rows = resize_weights(windows[:, 0], windows[:, 2], height, image_size, interpolation)
    cols = resize_weights(windows[:, 1], windows[:, 3], width, image_size, interpolation)
    if shifts is not None:
        rows, cols = _shift(rows, shifts[:, 0]), _shift(cols, shifts[:, 1])
    images = tf.cast(images, tf.float32)
    out = tf.einsum("bsh,bhwc->bswc", rows, images)
    out = tf.einsum("bswc,btw->bstc", out, cols)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def simple_random_crops(images, image_size: int, seed, padding: int = 4):
    """The batched `transforms.simple_random_crop` of `[B, H, W, 3]` images of one static size.

    One resize of the batch, reflection padding, then an `image_size` square
    at each image's own uniformly random offset.

    Returns:
        float32 `[B, image_size, image_size, 3]` in [0, 255].
    """
    height, width = images.shape[1], images.shape[2]
    # `transforms.resized_shape` on the static size, in Python.
    short = min(height, width)
    new_height = image_size if height <= width else image_size * height // short
    new_width = image_size if width <= height else image_size * width // short
    resized = resize(images, [new_height, new_width])
    pad = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    padded = tf.pad(resized, pad, mode="REFLECT")
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform(
        [count], seeds[0], 0, new_height + 2 * padding - image_size + 1, tf.int32
    )
    left = tf.random.stateless_uniform(
        [count], seeds[1], 0, new_width + 2 * padding - image_size + 1, tf.int32
    )
    steps = tf.range(image_size)
    rows = tf.gather(padded, top[:, None] + steps, axis=1, batch_dims=1)
    return tf.gather(rows, left[:, None] + steps, axis=2, batch_dims=1)


def train_transform_batch(
    images,
    seed,
    image_size: int,
    config: AugmentConfig,
    preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
    keras_cv_layer=None,
):
    """The per-image training recipe on a uint8 batch `[B, H, W, 3]` of one static size.

    Crop (random resized or simple) + translation + flip + RandAugment + normalisation
    + random erasing are batched; 3-Augment, when enabled, still runs per image
    (`tf.map_fn`). One stateless `seed` gives the whole batch's draws.

    Returns:
        float32 `[B, image_size, image_size, 3]`, normalised.
    """
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if config.simple_random_crop:
        images = simple_random_crops(images, image_size, seeds[0])
    else:
        windows = random_crop_windows(
            images.shape[1], images.shape[2], count, seeds[0], config.crop_scale, config.crop_ratio
        )
        shifts = None
        if config.translate:
            shift_seed = tf.random.experimental.stateless_fold_in(seed, 11)
            bound = config.translate
            shifts = tf.random.stateless_uniform(
                [count, 2], shift_seed, -bound, bound + 1, tf.int32
            )
        images = crop_and_resize(images, windows, image_size, shifts=shifts)
    if config.hflip > 0:
        flip = tf.random.stateless_uniform([count], seeds[1]) < config.hflip
        images = select(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if config.rand_augment_ops:
        images = augment_lib.rand_augment_images(images, seeds[2], config, keras_cv_layer)
    if config.three_augment:
        image_seeds = tf.random.experimental.stateless_split(seeds[2], count)
        images = augment_lib.three_augment_images(images, image_seeds, config)
    images = normalize(images, preprocessing)
    if config.reprob > 0:
        images = augment_lib.random_erasing_batch(images, seeds[3], config.reprob)
    return tf.ensure_shape(images, [None, image_size, image_size, 3])
