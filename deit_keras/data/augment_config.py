"""`AugmentConfig`: the training recipe's augmentation settings, their defaults and checks.

A TensorFlow-free module, so that the train command defines its flags and reports a
bad value before TensorFlow loads; the ops live in `deit_keras.data.augment`.
"""

import dataclasses

from deit_keras.errors import UserInputError
from deit_keras.schema import NON_NEGATIVE, POSITIVE, PROBABILITY, Range, field, range_problems


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (defaults: DeiT `main.py`).

    Args:
        rand_augment_ops: int. RandAugment ops per image; 0 disables.
        rand_augment_magnitude: float in [0, 10]. RandAugment magnitude.
        rand_augment_std: float. Gaussian noise std on the magnitude.
        rand_augment_impl: str. `"timm"` (own, seedable) or `"keras_cv"`.
        reprob: float. Random erasing probability; 0 disables.
        mixup: float. MixUp Beta(alpha, alpha); 0 disables MixUp.
        cutmix: float. CutMix Beta(alpha, alpha); 0 disables CutMix.
        mixup_prob: float. Probability a batch is mixed at all.
        mixup_switch_prob: float. Probability of CutMix when both enabled.
        smoothing: float. Label smoothing folded into the targets.
        hflip: float. Horizontal flip probability.
        crop_scale_min: float. Smallest random resized crop area (the
            largest is the whole image).
        crop_ratio: tuple of two floats. Random resized crop aspect range.
        translate: int. After the crop, shift the image by up to this many
            pixels on each axis, filling with zeros (CIFAR's pad-and-crop);
            0 disables (the DeiT recipe has none).
        three_augment: bool. DeiT III's 3-Augment after the flip (one of
            grayscale / solarize / Gaussian blur, then colour jitter), in
            place of RandAugment and random erasing (official
            `--ThreeAugment`, an alias): needs rand_augment_ops=0, reprob=0.
        color_jitter: float. 3-Augment's colour jitter strength (official
            `--color-jitter`, 0.3); 0 disables. Only with `three_augment`:
            as timm, the RandAugment recipe has no colour jitter.
        simple_random_crop: bool. DeiT III's "simple random crop": resize
            the shorter side, pad 4 pixels by reflection, random crop, in
            place of the random resized crop (official `--src`, an alias).

    Field names are the official DeiT `main.py` flag names (`--mixup`,
    `--cutmix`, `--smoothing`, ...); the train CLI's flags are generated
    from these fields (`deit_keras.training.config`).
    """

    rand_augment_ops: int = field(2, "RandAugment ops per image (0 = off).", valid=NON_NEGATIVE)
    rand_augment_magnitude: float = field(9.0, "RandAugment magnitude (0-10).", valid=Range(0, 10))
    rand_augment_std: float = field(0.5, "RandAugment magnitude noise std.", valid=NON_NEGATIVE)
    rand_augment_impl: str = field(
        "timm",
        "RandAugment implementation: timm (own, seedable) or keras_cv.",
        choices=("timm", "keras_cv"),
    )
    reprob: float = field(0.25, "Random erasing probability.", valid=PROBABILITY)
    mixup: float = field(0.8, "MixUp alpha (0 = off).", valid=NON_NEGATIVE)
    cutmix: float = field(1.0, "CutMix alpha (0 = off).", valid=NON_NEGATIVE)
    mixup_prob: float = field(1.0, "Probability of mixing a batch.", valid=PROBABILITY)
    mixup_switch_prob: float = field(0.5, "Probability of CutMix over MixUp.", valid=PROBABILITY)
    smoothing: float = field(0.1, "Label smoothing.", valid=Range(0, 1, high_open=True))
    hflip: float = field(0.5, "Horizontal flip probability.", valid=PROBABILITY)
    crop_scale_min: float = field(
        0.08, "Random resized crop: smallest area.", valid=Range(0, 1, low_open=True)
    )
    crop_ratio: tuple = field((3 / 4, 4 / 3), "Random resized crop: aspect range.", valid=POSITIVE)
    translate: int = field(
        0,
        "Random shift of up to this many pixels per axis after the crop, zero fill (0 = off).",
        valid=NON_NEGATIVE,
    )
    three_augment: bool = field(
        False,
        "DeiT III 3-Augment: grayscale, solarize or blur, then colour jitter (not with "
        "RandAugment or random erasing).",
        aliases=("ThreeAugment",),
    )
    color_jitter: float = field(
        0.3, "3-Augment colour jitter strength (0 = off).", valid=NON_NEGATIVE
    )
    simple_random_crop: bool = field(
        False,
        "DeiT III simple random crop: resize, reflect-pad 4, random crop (not the random "
        "resized crop).",
        aliases=("src",),
    )

    def __post_init__(self):
        problems = range_problems(self)  # every numeric field's `valid` range
        if problems:
            raise UserInputError("; ".join(problems))
        if len(self.crop_ratio) != 2 or self.crop_ratio[0] > self.crop_ratio[1]:
            raise UserInputError(
                f"crop_ratio must be two numbers, min <= max, got {list(self.crop_ratio)}"
            )
        object.__setattr__(self, "crop_ratio", tuple(float(v) for v in self.crop_ratio))
        if self.translate < 0:
            raise UserInputError(f"`translate` must be >= 0. Received: translate={self.translate}")
        if self.rand_augment_impl not in ("timm", "keras_cv"):
            raise UserInputError(
                "`rand_augment_impl` must be 'timm' or 'keras_cv'. "
                f"Received: rand_augment_impl={self.rand_augment_impl!r}"
            )
        keras_cv = self.rand_augment_impl == "keras_cv" and self.rand_augment_ops
        if keras_cv and self.rand_augment_std > 10:
            raise UserInputError(
                "keras_cv's RandAugment takes rand_augment_std up to 10 (its magnitude_stddev "
                f"is std / 10, at most 1). Received: rand_augment_std={self.rand_augment_std}"
            )
        if self.three_augment and (self.rand_augment_ops or self.reprob):
            # Official DeiT III swaps the whole per-image transform, erasing included.
            raise UserInputError(
                "three_augment replaces RandAugment and random erasing (DeiT III): set "
                "rand_augment_ops=0 and reprob=0. "
                f"Received: rand_augment_ops={self.rand_augment_ops}, reprob={self.reprob}"
            )
        if self.simple_random_crop and self.translate:
            raise UserInputError(
                "simple_random_crop already pads and crops: set translate=0. "
                f"Received: translate={self.translate}"
            )

    @property
    def crop_scale(self) -> tuple:
        """Random resized crop area range."""
        return (self.crop_scale_min, 1.0)

    @property
    def mixing(self) -> bool:
        """Whether MixUp or CutMix can be applied."""
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


DEFAULT_AUGMENT = AugmentConfig()
NO_AUGMENT = AugmentConfig(rand_augment_ops=0, reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.0)
