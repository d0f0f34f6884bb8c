"""The DeiT augmentation policy (Touvron et al. 2021, timm defaults).

Per image (inside `tf.data`, stateless seeds): random resized crop, flip,
RandAugment `rand-m9-mstd0.5-inc1`, ImageNet normalisation, random erasing
(`reprob` 0.25, 'pixel' mode). DeiT III's recipe swaps RandAugment and
erasing for 3-Augment (`three_augment`, `deit_keras.data.three_augment`) and may swap the
crop for the "simple random crop" (`simple_random_crop`). Per batch: MixUp (alpha 0.8) or CutMix
(alpha 1.0) with timm's `Mixup(mode='batch')` semantics and label smoothing
0.1 folded into the targets.

Choice of implementation (measured under keras-cv 0.9 / Keras 3.15):
- RandAugment: own stateless op set (`deit_keras.data.rand_augment`), since
  KerasCV's is not reproducible from a seed and lacks 5 of timm's ops.
  `rand_augment_impl="keras_cv"` selects `keras_cv.layers.RandAugment`
  (rate 0.5, magnitude m/10, std s/10) for comparison; it is not seedable (no
  `--deterministic`), and its strengths at a magnitude are its own, not
  timm's (at m9: shear ~0.9 against 0.27, translate up to 0.9 of the side
  against 0.405, brightness added rather than multiplied).
- MixUp/CutMix: own, because `keras_cv.layers.MixUp`/`CutMix` draw one
  lambda per sample and mix with a random permutation, where timm draws
  one lambda per batch and mixes with the flipped batch.
- Random erasing: own, because `keras.layers.RandomErasing` samples each box
  side independently (area is not uniform in [0.02, 1/3] with a log-uniform
  aspect ratio as timm) and cannot take a per-example stateless seed.
"""

import tensorflow as tf

from deit_keras.data import rand_augment as rand_augment_lib
from deit_keras.data import three_augment as three_augment_lib
from deit_keras.data import transforms
from deit_keras.data.image_ops import paste_box, select
from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING, Preprocessing, normalize


def make_keras_cv_rand_augment(config, seed=None):
    """`keras_cv.layers.RandAugment` at `rand-mM-mstdS`'s count, rate and magnitude on
    KerasCV's own scale (not seedable; other strengths than timm's, module docstring)."""
    import keras_cv  # Confined here: only this optional path needs it.

    return keras_cv.layers.RandAugment(
        value_range=(0, 255),
        augmentations_per_image=config.rand_augment_ops,
        magnitude=config.rand_augment_magnitude / 10.0,
        magnitude_stddev=config.rand_augment_std / 10.0,
        rate=0.5,
        seed=seed,
    )


def keras_cv_rand_augment_layer(config, seed=None):
    """The KerasCV RandAugment layer when `config` asks for that implementation, else None."""
    if config.rand_augment_ops and config.rand_augment_impl == "keras_cv":
        return make_keras_cv_rand_augment(config, seed)
    return None


def rand_augment_images(images, seed, config, keras_cv_layer=None):
    """RandAugment of a batch `[B, H, W, 3]` in `[0, 255]`, each image its own draws.

    `seed`: one stateless seed `[2]` for the batch's draws (`rand_augment.rand_augment_batch`).
    """
    if config.rand_augment_ops == 0:
        return images
    if keras_cv_layer is not None:
        return keras_cv_layer(images)  # maps over images: one draw per image
    return rand_augment_lib.rand_augment_batch(
        images,
        seed,
        config.rand_augment_ops,
        config.rand_augment_magnitude,
        config.rand_augment_std,
    )


def random_erasing(image, seed, probability=0.25, area=(0.02, 1 / 3), aspect=0.3):
    """timm `RandomErasing(mode='pixel', max_count=1)` on a normalised image.

    With `probability`, one box (10 tries to fit: area uniform in `area` of
    the image, log-uniform aspect in `[aspect, 1/aspect]`) is replaced by
    per-pixel N(0, 1) noise.
    """
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    target, ratio = transforms.sample_box_candidates(
        height, width, seeds, area, (aspect, 1 / aspect)
    )
    box_h = tf.round(tf.sqrt(target * ratio))
    box_w = tf.round(tf.sqrt(target / ratio))
    valid = (box_w < width) & (box_h < height)
    first = tf.argmax(tf.cast(valid, tf.int32))
    box_h, box_w = box_h[first], box_w[first]
    offsets = tf.random.stateless_uniform([2], seeds[2])
    top = tf.floor(offsets[0] * (height - box_h + 1))
    left = tf.floor(offsets[1] * (width - box_w + 1))
    erase = (tf.random.stateless_uniform([], seeds[3]) < probability) & tf.reduce_any(valid)

    def erased():
        # Noise for the box only: a whole image of normals cost ~2.5 ms per image at 224 px.
        box = tf.cast(tf.stack([top, left, box_h, box_w]), tf.int32)
        noise = tf.random.stateless_normal(
            tf.stack([box[2], box[3], shape[2]]), seeds[4], dtype=image.dtype
        )
        return paste_box(image, noise, box[0], box[1])

    return tf.cond(erase, erased, lambda: tf.identity(image))


def random_erasing_batch(images, seed, probability=0.25, area=(0.02, 1 / 3), aspect=0.3):
    """`random_erasing` of each image of a batch `[B, H, W, C]` of one static size.

    The same distribution per image, the draws made for the batch at once from one
    `seed`; the boxes are written by one masked select (the in-memory path's images
    are small, so noise for whole images costs less than a per-image loop).
    """
    count = tf.shape(images)[0]
    height, width = float(images.shape[1]), float(images.shape[2])
    seeds = tf.random.experimental.stateless_split(seed, 5)
    target, ratio = transforms.sample_box_candidates(
        height, width, seeds, area, (aspect, 1 / aspect), count=count
    )
    box_h = tf.round(tf.sqrt(target * ratio))
    box_w = tf.round(tf.sqrt(target / ratio))
    valid = (box_w < width) & (box_h < height)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1)
    box_h = tf.gather(box_h, first, batch_dims=1)
    box_w = tf.gather(box_w, first, batch_dims=1)
    offsets = tf.random.stateless_uniform(tf.stack([count, 2]), seeds[2])
    top = tf.floor(offsets[:, 0] * (height - box_h + 1))
    left = tf.floor(offsets[:, 1] * (width - box_w + 1))
    erase = tf.random.stateless_uniform([count], seeds[3]) < probability
    erase &= tf.reduce_any(valid, axis=1)

    def inside(start, length, size):  # [B, size]: in [start, start + length) and erased
        steps = tf.range(size, dtype=tf.float32)[None, :]
        return (steps >= start[:, None]) & (steps < (start + length)[:, None]) & erase[:, None]

    rows, cols = inside(top, box_h, height), inside(left, box_w, width)
    box = rows[:, :, None, None] & cols[:, None, :, None]
    noise = tf.random.stateless_normal(tf.shape(images), seeds[4], dtype=images.dtype)
    return select(box, noise, images)


def split_seeds(seed):
    """Per-image seeds of crop, flip and RandAugment."""
    return tf.random.experimental.stateless_split(seed, 3)


def train_transform_image(image, seed, image_size, config, keras_cv_layer=None):
    """Crop + translate + flip (+ RandAugment or 3-Augment); float32 in `[0, 255]`."""
    seeds = split_seeds(seed)
    if config.simple_random_crop:
        image = transforms.simple_random_crop(image, image_size, seeds[0])
    else:
        image = transforms.random_resized_crop(
            image, image_size, seeds[0], config.crop_scale, config.crop_ratio
        )
    if config.translate:
        # Its own seed, folded in: the crop/flip/RandAugment streams stay as they were.
        translate_seed = tf.random.experimental.stateless_fold_in(seed, 11)
        image = transforms.random_translate(image, translate_seed, config.translate)
    image = transforms.random_horizontal_flip(image, seeds[1], config.hflip)
    if config.rand_augment_ops:
        if keras_cv_layer is not None:
            image = keras_cv_layer(image)
        else:
            image = rand_augment_lib.rand_augment(
                image,
                seeds[2],
                config.rand_augment_ops,
                config.rand_augment_magnitude,
                config.rand_augment_std,
            )
    if config.three_augment:
        image = three_augment_lib.three_augment(image, seeds[2], config.color_jitter)
    return image


def three_augment_images(images, seeds, config):
    """3-Augment of a batch `[B, H, W, 3]` in `[0, 255]`, per image (when enabled)."""
    if not config.three_augment:
        return images

    def one(args):
        return three_augment_lib.three_augment(args[0], args[1], config.color_jitter)

    return tf.map_fn(one, (images, seeds), fn_output_signature=tf.float32)


def finish_image(image, seed, config, preprocessing: Preprocessing = DEFAULT_PREPROCESSING):
    """Normalise, then random erasing (timm order)."""
    image = normalize(image, preprocessing)
    if config.reprob > 0:
        erase_seed = tf.random.experimental.stateless_fold_in(seed, 7)
        image = random_erasing(image, erase_seed, config.reprob)
    return image


def smooth_one_hot(labels, num_classes, smoothing=0.0):
    """timm `mixup_target` one-hot: on = 1 - s + s/C, off = s/C."""
    off = smoothing / num_classes
    return tf.one_hot(
        tf.cast(labels, tf.int32),
        num_classes,
        on_value=1.0 - smoothing + off,
        off_value=off,
        dtype=tf.float32,
    )


def _sample_beta(alpha, seed):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    return a / (a + b)


def mix_batch_in_groups(images, labels, num_classes, seed, config, groups=1):
    """`mix_batch` on each of `groups` equal, consecutive parts of the batch, each part
    its own draw (lambda, MixUp or CutMix, box) and its own flipped partners.

    The reference mixes each GPU's batch apart (timm's `Mixup` in every process); a
    pipeline whose batch `tf.distribute` splits over `groups` replicas (consecutive
    slices) mixes each replica's part so.

    Args:
        images, labels, num_classes, seed, config: as `mix_batch`; the batch size a
            multiple of `groups`.
        groups: int. Parts of the batch mixed apart. Defaults to 1 (`mix_batch`).

    Returns:
        `(images, targets)` as `mix_batch`'s.
    """
    if groups == 1:
        return mix_batch(images, labels, num_classes, seed, config)[:2]
    seeds = tf.random.experimental.stateless_split(seed, groups)
    parts = [
        mix_batch(part_images, part_labels, num_classes, seeds[index], config)
        for index, (part_images, part_labels) in enumerate(
            zip(tf.split(images, groups), tf.split(labels, groups), strict=True)
        )
    ]
    return tf.concat([part[0] for part in parts], 0), tf.concat([part[1] for part in parts], 0)


def mix_batch(images, labels, num_classes, seed, config):
    """timm `Mixup(mode='batch')`: one lambda per batch, mixed with the flip.

    Args:
        images: float32 `[B, H, W, C]`.
        labels: int `[B]` class ids.
        num_classes: int.
        seed: int tensor `[2]`, a stateless seed.
        config: `AugmentConfig`.

    Returns:
        `(images, targets, lam)`: targets float32 `[B, num_classes]` =
        `lam * smooth(y) + (1 - lam) * smooth(flip(y))`; for CutMix `lam` is
        1 - pasted area / image area.
    """
    targets = smooth_one_hot(labels, num_classes, config.smoothing)
    if not config.mixing:
        return images, targets, tf.constant(1.0)
    seeds = tf.random.experimental.stateless_split(seed, 6)
    do_mix = tf.random.stateless_uniform([], seeds[0]) < config.mixup_prob
    if config.mixup > 0 and config.cutmix > 0:
        use_cutmix = tf.random.stateless_uniform([], seeds[1]) < config.mixup_switch_prob
    else:
        use_cutmix = tf.constant(config.cutmix > 0)
    alpha_mix = max(config.mixup, 1e-3)
    alpha_cut = max(config.cutmix, 1e-3)
    lam = tf.where(use_cutmix, _sample_beta(alpha_cut, seeds[2]), _sample_beta(alpha_mix, seeds[3]))
    lam = tf.where(do_mix, lam, 1.0)

    # CutMix box as timm 1.0's `rand_bbox` (cut_h x cut_w before clipping) + `correct_lam=True`.
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    cy = tf.random.stateless_uniform([], seeds[4], 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seeds[5], 0, width, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + (cut_h + 1) // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + (cut_w + 1) // 2, 0, width)
    cut_lam = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)

    def cut_images():
        patch = tf.reverse(images[:, y0:y1, x0:x1], axis=[0])
        return paste_box(images, patch, y0, x0)

    def mix_images():
        return lam * images + (1.0 - lam) * tf.reverse(images, axis=[0])

    # Only the chosen branch is computed: a batch of 224-px images is ~19 MB a pass.
    apply_cut = do_mix & use_cutmix
    branch = tf.where(apply_cut, 2, tf.where(do_mix, 1, 0))
    images = tf.switch_case(branch, [lambda: tf.identity(images), mix_images, cut_images])
    lam = tf.where(apply_cut, cut_lam, lam)
    targets = lam * targets + (1.0 - lam) * tf.reverse(targets, axis=[0])
    return images, targets, lam
