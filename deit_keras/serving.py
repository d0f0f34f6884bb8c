"""Eval-time preprocessing in pure TensorFlow ops, usable inside a SavedModel.

The DeiT evaluation transform (facebookresearch/deit `datasets.py`, timm
`transforms_factory.py`): resize the shorter side to
`floor(image_size / crop_pct)` with bicubic interpolation, take the central
`image_size` square, scale to [0, 1] and normalise with the ImageNet mean and
std. Everything here is graph-friendly (dynamic height and width), so the
same function serves `predict`, `visualize` and the exported
`serving_default` signature, and their numbers agree.
"""

import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875


def check_crop_pct(crop_pct):
    """Raises ValueError unless `0 < crop_pct <= 1`."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1]. Received: crop_pct={crop_pct}")


def resize_and_crop(images, image_size, crop_pct=DEFAULT_CROP_PCT):
    """Bicubic resize of the shorter side, then a central square crop.

    Args:
        images: `[B, H, W, C]` or `[H, W, C]` tensor of pixels in [0, 255]
            (uint8 or float), any H and W (1x1 included).
        image_size: int. Side of the output square.
        crop_pct: float in (0, 1]. The shorter side is first resized to
            `floor(image_size / crop_pct)`. Defaults to 0.875.

    Returns:
        float32 `[B, image_size, image_size, C]` (or unbatched like the input)
        with integer values in [0, 255].
    """
    check_crop_pct(crop_pct)
    images = tf.convert_to_tensor(images)
    unbatched = images.shape.rank == 3
    if unbatched:
        images = images[tf.newaxis]
    if images.shape.rank != 4:
        raise ValueError(
            f"images must be [B, H, W, C] or [H, W, C]. Received shape: {images.shape}"
        )
    scale_size = math.floor(image_size / crop_pct)
    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float64)
    width = tf.cast(shape[2], tf.float64)
    short = tf.minimum(height, width)
    # torchvision Resize(int): shorter side -> size, longer side truncated.
    new_height = tf.cast(tf.floor(scale_size * height / short), tf.int32)
    new_width = tf.cast(tf.floor(scale_size * width / short), tf.int32)
    new_height = tf.where(height <= width, scale_size, new_height)
    new_width = tf.where(width <= height, scale_size, new_width)
    resized = tf.image.resize(
        tf.cast(images, tf.float32), tf.stack([new_height, new_width]),
        method="bicubic", antialias=True,
    )
    # PIL (timm, and `data.transforms.eval_transform`) rounds to uint8 here.
    resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    # torchvision CenterCrop: offset round((size - crop) / 2).
    top = tf.cast(tf.round((new_height - image_size) / 2), tf.int32)
    left = tf.cast(tf.round((new_width - image_size) / 2), tf.int32)
    cropped = resized[:, top:top + image_size, left:left + image_size, :]
    cropped = tf.ensure_shape(cropped, [None, image_size, image_size, images.shape[-1]])
    return cropped[0] if unbatched else cropped


def normalize(pixels):
    """`[..., 3]` pixels in [0, 255] -> float32 normalised with the ImageNet mean/std."""
    pixels = tf.cast(pixels, tf.float32) / 255.0
    return (pixels - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def denormalize(images):
    """Inverse of `normalize`: float32 pixels in [0, 255]."""
    images = tf.convert_to_tensor(images, tf.float32)
    pixels = (images * tf.constant(IMAGENET_STD) + tf.constant(IMAGENET_MEAN)) * 255.0
    return tf.clip_by_value(pixels, 0.0, 255.0)


def preprocess(images, image_size, crop_pct=DEFAULT_CROP_PCT):
    """uint8 images of any size -> normalised float32 model input.

    `normalize(resize_and_crop(images, image_size, crop_pct))`; the input of
    the exported serving signature goes through exactly this.
    """
    return normalize(resize_and_crop(images, image_size, crop_pct))
