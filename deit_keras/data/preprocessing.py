"""The eval transform, and the normalisation every path shares.

The DeiT evaluation transform (facebookresearch/deit `datasets.py`, timm
`transforms_factory.py`): resize the shorter side to
`floor(image_size / crop_pct)` with bicubic interpolation, take the central
`image_size` square, scale to [0, 1] and normalise with the mean and std.
One implementation, in graph-friendly TensorFlow ops (dynamic height and
width, batched or not), serves the `tf.data` eval pipeline, `predict`,
`visualize` and the exported `serving_default` signature, so their numbers
agree. A model's own settings are a `Preprocessing`, saved in its config.
"""

import dataclasses
import math

import numpy as np
from absl import logging

from deit_keras.backend import tf
from deit_keras.data.constants import (
    DEFAULT_CROP_PCT,
    DEFAULT_INTERPOLATION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
)
from deit_keras.errors import UserInputError
from deit_keras.schema import CROP_PCT


def check_crop_pct(crop_pct: float) -> None:
    """Raises ValueError unless `crop_pct` is in `schema.CROP_PCT` ([0.1, 1])."""
    if not CROP_PCT.contains(crop_pct):
        raise UserInputError(f"crop_pct must be {CROP_PCT}. Received: crop_pct={crop_pct}")


def check_interpolation(interpolation: str) -> None:
    """Raises ValueError unless `interpolation` is one of `INTERPOLATIONS`."""
    if interpolation not in INTERPOLATIONS:
        raise UserInputError(
            f"interpolation must be one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images become a model's input (timm's `pretrained_cfg` eval fields).

    Args:
        mean: tuple of 3 floats. Per-channel mean of pixels scaled to [0, 1].
        std: tuple of 3 floats. Per-channel std.
        crop_pct: float in [0.1, 1]. Eval centre-crop fraction.
        interpolation: str. Resize kernel, "bicubic" or "bilinear".
    """

    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self):
        check_crop_pct(self.crop_pct)
        check_interpolation(self.interpolation)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserInputError(
                f"mean and std need 3 values, std > 0. Received: mean={self.mean}, std={self.std}"
            )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def replace(self, **changes) -> "Preprocessing":
        """A copy with `changes`; a None value keeps the field."""
        changes = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **changes)

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: "dict | Preprocessing | None") -> "Preprocessing":
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        return cls(**config)


DEFAULT_PREPROCESSING = Preprocessing()


def normalize(pixels, preprocessing: Preprocessing = DEFAULT_PREPROCESSING):
    """`[..., 3]` pixels in [0, 255] (uint8 or float) -> float32 `(x / 255 - mean) / std`."""
    from deit_keras.data.image_ops import per_channel  # TensorFlow's private ops: loaded on use

    pixels = tf.cast(pixels, tf.float32)
    channels = pixels.shape[-1] if pixels.shape.rank else None
    rgb_only = (
        "normalize takes RGB pixels [..., 3]: convert grayscale with "
        "tf.image.grayscale_to_rgb(images), drop an alpha channel with images[..., :3]."
    )
    if channels is not None and channels != 3:
        raise UserInputError(f"{rgb_only} Received: shape={tuple(pixels.shape)}")
    if channels is None:  # known when the batch runs (decode_image(channels=0) in tf.data)
        with tf.control_dependencies(
            [tf.debugging.assert_equal(tf.shape(pixels)[-1], 3, message=rgb_only)]
        ):
            pixels = tf.identity(pixels)
    if tf.executing_eagerly() and tf.size(pixels) > 0:
        brightest = float(tf.reduce_max(pixels))
        if 0.0 < brightest <= 1.0:
            logging.warning(
                "normalize takes pixels in [0, 255]; these are all in (0, 1] (the range of "
                "tf.image.convert_image_dtype): multiply them by 255 first."
            )
    return per_channel(
        lambda x, mean, std: (x / 255.0 - mean) / std, pixels, preprocessing.mean, preprocessing.std
    )


def denormalize(images, preprocessing: Preprocessing = DEFAULT_PREPROCESSING):
    """Inverse of `normalize`: float32 pixels, about [0, 255] (not clipped)."""
    from deit_keras.data.image_ops import per_channel  # TensorFlow's private ops: loaded on use

    images = tf.cast(images, tf.float32)
    return per_channel(
        lambda x, mean, std: (x * std + mean) * 255.0, images, preprocessing.mean, preprocessing.std
    )


def to_uint8(images, preprocessing: Preprocessing = DEFAULT_PREPROCESSING) -> np.ndarray:
    """Normalised images -> the uint8 pixels they came from (exact for integer pixels)."""
    pixels = np.asarray(denormalize(images, preprocessing))
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# tf.image.resize's kernels for our interpolations (its antialiased path).
_SCALE_AND_TRANSLATE_KERNELS = {"bicubic": "keyscubic", "bilinear": "triangle"}


def resize(images, size, interpolation=DEFAULT_INTERPOLATION):
    """Antialiased resize to `size`, rounded and clipped to [0, 255] like PIL's uint8 (timm)."""
    resized = tf.image.resize(
        tf.cast(images, tf.float32), size, method=interpolation, antialias=True
    )
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def resize_and_center_crop(
    images,
    image_size: int,
    crop_pct: float = DEFAULT_CROP_PCT,
    interpolation: str = DEFAULT_INTERPOLATION,
):
    """Resize of the shorter side to `floor(image_size / crop_pct)`, then a central square crop.

    Only the crop's pixels are computed (the antialiased kernel of `resize`,
    offset to the crop's corner): a 1 x 4000 image costs what a square one
    does, where resizing it whole would make a 256 x 1,024,000 image first.
    The values equal `resize`-then-crop's but for float rounding of the
    kernel's sample positions: under 1% of pixels one level apart (values
    near a half; bilinear's weights make those often).

    Args:
        images: `[B, H, W, C]` or `[H, W, C]` pixels in [0, 255] (uint8 or
            float), any H and W (1x1 included).
        image_size: int. Side of the output square.
        crop_pct: float in [0.1, 1]. Defaults to 0.875.
        interpolation: str. "bicubic" (default) or "bilinear".

    Returns:
        float32 `[B, image_size, image_size, C]` (or unbatched like the
        input) with integer values in [0, 255].
    """
    check_crop_pct(crop_pct)
    check_interpolation(interpolation)
    images = tf.convert_to_tensor(images)
    unbatched = images.shape.rank == 3
    if unbatched:
        images = images[tf.newaxis]
    if images.shape.rank != 4:
        raise UserInputError(
            f"images must be [B, H, W, C] or [H, W, C]. Received shape: {images.shape}"
        )
    scale_size = math.floor(image_size / crop_pct)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    short = tf.minimum(height, width)
    # torchvision Resize(int): shorter side -> size, longer side int(size * long / short).
    new_height = tf.where(height <= width, scale_size, scale_size * height // short)
    new_width = tf.where(width <= height, scale_size, scale_size * width // short)
    # torchvision CenterCrop: offset round((size - crop) / 2).
    top = tf.round(tf.cast(new_height - image_size, tf.float32) / 2)
    left = tf.round(tf.cast(new_width - image_size, tf.float32) / 2)
    scale = tf.cast(tf.stack([new_height, new_width]), tf.float32) / tf.cast(
        tf.stack([height, width]), tf.float32
    )
    cropped = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(images, tf.float32),
        size=[image_size, image_size],
        scale=scale,
        translation=-tf.stack([top, left]),
        kernel_type=_SCALE_AND_TRANSLATE_KERNELS[interpolation],
        antialias=True,
    )
    cropped = tf.clip_by_value(tf.round(cropped), 0.0, 255.0)
    cropped = tf.ensure_shape(cropped, [None, image_size, image_size, images.shape[-1]])
    return cropped[0] if unbatched else cropped


def preprocess(images, image_size: int, preprocessing: Preprocessing = DEFAULT_PREPROCESSING):
    """uint8 (or [0, 255] float) images of any size -> normalised float32 model input.

    The eval transform: `normalize(resize_and_center_crop(...))`. Works on one
    `[H, W, 3]` image or a `[B, H, W, 3]` batch; the exported serving
    signature and the eval pipeline both call exactly this.
    """
    crop = resize_and_center_crop(
        images, image_size, preprocessing.crop_pct, preprocessing.interpolation
    )
    return normalize(crop, preprocessing)
