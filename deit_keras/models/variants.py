"""Named models by timm name: the registry over `deit_presets.PRESETS`, and the builder.

`build_model` makes a preset's architecture with fresh (reference-style)
weights; `deit_keras.create_model` (in `deploy.pretrained`) is the one public
factory, which calls it and adds published weights.
"""

from __future__ import annotations  # `TokenClassifier` annotations stay unevaluated

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING

from deit_keras.errors import UserInputError
from deit_keras.models.deit_presets import ALIASES, PRESETS, Variant

if TYPE_CHECKING:
    from deit_keras.models.classifier import TokenClassifier

# The model class of each preset's `architecture` (DeiT III is DeiT with LayerScale), by
# its name in `deit_keras.models`, which loads it on first use: the names above load
# without Keras (the train command's flags need them).
ARCHITECTURES = {"deit": "DeiT", "deit3": "DeiT", "cait": "CaiT"}


def model_class(architecture: str) -> type:
    """The model class that builds a preset of `architecture` ("deit", "deit3", "cait")."""
    return getattr(importlib.import_module("deit_keras.models"), ARCHITECTURES[architecture])


def list_models() -> list:
    """Names accepted by `create_model`, sorted."""
    return sorted(PRESETS)


def accepted_names() -> list:
    """Every name `create_model` takes: the presets, then their aliases (`deit_t`, timm's
    default tags such as `cait_xxs24_224.fb_dist_in1k`)."""
    return list_models() + sorted(ALIASES)


def canonical_name(name: str) -> str:
    """`name` with an alias (`deit_t`) replaced by the preset name it stands for."""
    return ALIASES.get(name, name)


def get_variant(name: str) -> Variant:
    """The preset registered as `name` (or an alias); `UserInputError` listing valid names."""
    variant = PRESETS.get(canonical_name(name))
    if variant is None:
        raise UserInputError(unknown_model(name))
    return variant


def unknown_model(name: str) -> str:
    """The one line refusing a model name: the nearest known names, not all of them (the
    list ran to ~1,900 characters)."""
    names = accepted_names()
    started = [known for known in list_models() if known.startswith(str(name))]
    near = started or difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(near[:3])}?"
        if near
        else "names look like deit_tiny_distilled_patch16_224, deit3_small_patch16_224 or "
        "cait_s24_224."
    )
    return f"Unknown model {name!r}: {hint} deit_keras.list_models() lists all {len(PRESETS)}."


def with_dist_token(name: str, dist_token: bool) -> str:
    """The preset of `name`'s architecture with (DeiT⚗) or without the distillation token.

    Args:
        name: str. A preset name or alias, e.g. "deit_tiny_distilled_patch16_224".
        dist_token: bool. Whether the preset returned has the dist token and head.

    Returns:
        The preset's name, e.g. "deit_tiny_patch16_224" for
        `("deit_tiny_distilled_patch16_224", False)`; `name`'s own when it already matches.
    """
    variant = get_variant(name)
    wanted = dict(variant.config)
    if dist_token or "distilled" in wanted:  # CaiT's presets take no dist token at all
        wanted["distilled"] = dist_token
    if dict(variant.config) == wanted:
        return canonical_name(name)
    for other, candidate in PRESETS.items():
        if candidate.architecture == variant.architecture and dict(candidate.config) == wanted:
            return other
    raise UserInputError(
        f"No preset is {name!r} {'with' if dist_token else 'without'} a distillation token. "
        f"Received: name={name!r}, dist_token={dist_token}"
    )


def build_model(
    name: str,
    /,
    num_classes: int = 1000,
    image_size: int | None = None,
    drop_path_rate: float = 0.0,
    crop_pct: float | None = None,
    **overrides,
) -> TokenClassifier:
    """Builds the preset `name` with fresh (reference-style) weights.

    Args:
        name: str. A timm name, e.g. "deit_tiny_distilled_patch16_224"; see
            `list_models()`.
        num_classes: int. Classes of the head(s). Defaults to 1000.
        image_size: int or None. Input side; defaults to the preset's.
        drop_path_rate: float. Stochastic depth rate. Defaults to 0.
        crop_pct: float or None. Eval crop fraction saved with the model;
            defaults to the preset's.
        **overrides: other constructor arguments (for DeiT: patch_size,
            embed_dim, depth, num_heads, mlp_ratio, in_channels, dtype, name)
            on top of the preset, e.g. to make a small model for small images.

    Returns:
        A built model of the preset's architecture.
    """
    variant = get_variant(name)
    config = dict(variant.config)
    config["preprocessing"] = variant.preprocessing.replace(crop_pct=crop_pct)
    if image_size is not None:
        config["image_size"] = image_size
    built_class = model_class(variant.architecture)
    _check_overrides(name, built_class, overrides)
    config.update(overrides)
    config.setdefault("name", canonical_name(name).replace(".", "_"))
    return built_class(num_classes=num_classes, drop_path_rate=drop_path_rate, **config)


def _check_overrides(name, model_class, overrides):
    """One line naming the arguments a preset's model class does not take."""
    taken = set(inspect.signature(model_class.__init__).parameters) - {"self", "kwargs"}
    taken |= {"dtype", "name"}
    unknown = sorted(set(overrides) - taken)
    if unknown:
        raise UserInputError(
            f"{name} ({model_class.__name__}) does not take {', '.join(unknown)}. "
            f"It takes: {', '.join(sorted(taken))}. Received: {overrides}"
        )
