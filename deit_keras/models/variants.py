"""Named DeiT variants (timm names), their eval settings, and the one builder behind them all."""

import dataclasses

from deit_keras.data.constants import DEFAULT_CROP_PCT
from deit_keras.data.preprocessing import Preprocessing
from deit_keras.errors import UserInputError
from deit_keras.models.deit import DeiT


@dataclasses.dataclass(frozen=True)
class Variant:
    """One registered architecture and how its inputs are prepared.

    `preprocessing` is timm's eval config of the published weights: ImageNet
    mean/std, bicubic, crop_pct 0.875 at 224 px and 1.0 at 384 px.
    """

    embed_dim: int
    num_heads: int
    distilled: bool
    image_size: int
    depth: int = 12
    patch_size: int = 16
    preprocessing: Preprocessing = Preprocessing()


_WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def _build_registry():
    registry = {}
    for size, (embed_dim, num_heads) in _WIDTHS.items():
        for distilled in (False, True):
            for image_size in (224, 384):
                if image_size == 384 and size != "base":
                    continue  # the paper fine-tunes only DeiT-B at 384
                tag = "_distilled" if distilled else ""
                name = f"deit_{size}{tag}_patch16_{image_size}"
                crop_pct = 1.0 if image_size == 384 else DEFAULT_CROP_PCT
                registry[name] = Variant(
                    embed_dim,
                    num_heads,
                    distilled,
                    image_size,
                    preprocessing=Preprocessing(crop_pct=crop_pct),
                )
    return registry


VARIANTS = _build_registry()

ALIASES = {
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "deit_t_distilled": "deit_tiny_distilled_patch16_224",
    "deit_s_distilled": "deit_small_distilled_patch16_224",
    "deit_b_distilled": "deit_base_distilled_patch16_224",
}


def list_models() -> list:
    """Names accepted by `create_model`, sorted."""
    return sorted(VARIANTS)


def get_variant(name: str) -> Variant:
    """The `Variant` registered as `name` (or an alias); ValueError listing valid names."""
    variant = VARIANTS.get(ALIASES.get(name, name))
    if variant is None:
        raise UserInputError(
            f"Unknown model {name!r}. Valid names: {', '.join(list_models())} "
            f"(aliases: {', '.join(sorted(ALIASES))})."
        )
    return variant


def create_model(
    name: str,
    num_classes: int = 1000,
    image_size: int | None = None,
    drop_path_rate: float = 0.0,
    crop_pct: float | None = None,
    **overrides,
) -> DeiT:
    """Builds the DeiT variant `name` with fresh (reference-style) weights.

    Args:
        name: str. A timm name, e.g. "deit_tiny_distilled_patch16_224"; see
            `list_models()`.
        num_classes: int. Classes of the head(s). Defaults to 1000.
        image_size: int or None. Input side; defaults to the variant's.
        drop_path_rate: float. Stochastic depth rate. Defaults to 0.
        crop_pct: float or None. Eval crop fraction saved with the model;
            defaults to the variant's.
        **overrides: other `DeiT` arguments (patch_size, embed_dim, depth,
            num_heads, mlp_ratio, in_channels, dtype, name) on top of the variant,
            e.g. to make a small model for small images.

    Returns:
        A built `DeiT`.
    """
    variant = get_variant(name)
    config = {item.name: getattr(variant, item.name) for item in dataclasses.fields(variant)}
    config["preprocessing"] = variant.preprocessing.replace(crop_pct=crop_pct)
    if image_size is not None:
        config["image_size"] = image_size
    config.update(overrides)
    config.setdefault("name", ALIASES.get(name, name))
    return DeiT(num_classes=num_classes, drop_path_rate=drop_path_rate, **config)
