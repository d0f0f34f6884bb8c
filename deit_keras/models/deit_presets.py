"""The presets: every named model's architecture, eval preprocessing and published weights.

One table (`PRESETS`), keyed by timm's names, is the one home of these facts:
`deit_keras.create_model(name, pretrained=...)` builds from it, the importer
checks the downloads against it, and `docs/models.md` quotes it. Each entry
names its architecture (`"deit"` here), so that other model families of the
official repository join the same table.
"""

import dataclasses
import os
import re
from types import MappingProxyType

from deit_keras.data.constants import DEFAULT_CROP_PCT
from deit_keras.data.preprocessing import Preprocessing

_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


def sha256_prefix_of(filename: str) -> str | None:
    """The torch.hub hash prefix in a file name (`name-<hex>.pth`), or None."""
    match = _HASH_SUFFIX.search(os.path.basename(filename))
    return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """Where a preset's ImageNet-1k weights live and what the paper reports for them."""

    filename: str  # official release file; ends in a SHA-256 prefix
    hf_hub_id: str
    top1: float  # ImageNet-1k top-1 in the paper (Table 5 and 384 px rows)

    @property
    def sha256_prefix(self) -> str | None:
        return sha256_prefix_of(self.filename)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One preset: an architecture, its constructor arguments, eval preprocessing, weights.

    `preprocessing` is timm's eval config of the published weights: ImageNet
    mean/std, bicubic, crop_pct 0.875 at 224 px and 1.0 at 384 px. The
    architecture's arguments are also readable as attributes
    (`variant.embed_dim`).
    """

    architecture: str
    config: MappingProxyType
    preprocessing: Preprocessing = Preprocessing()
    weights: PublishedWeights | None = None

    def __getattr__(self, name):
        config = self.__dict__.get("config", {})
        if name in config:
            return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_DEIT_WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
# name -> (release file, hub copy, paper top-1 %): the official repository's table.
_DEIT_WEIGHTS = {
    "deit_tiny_patch16_224": ("a1311bcf", 72.2),
    "deit_small_patch16_224": ("cd65a155", 79.8),
    "deit_base_patch16_224": ("b5f2ef4d", 81.8),
    "deit_base_patch16_384": ("8de9b5d1", 83.1),
    "deit_tiny_distilled_patch16_224": ("b40b3cf7", 74.5),
    "deit_small_distilled_patch16_224": ("649709d9", 81.2),
    "deit_base_distilled_patch16_224": ("df68dfff", 83.4),
    "deit_base_distilled_patch16_384": ("d0272ac0", 85.2),
}


def _deit_presets() -> dict:
    presets = {}
    for size, (embed_dim, num_heads) in _DEIT_WIDTHS.items():
        for distilled in (False, True):
            for image_size in (224, 384):
                if image_size == 384 and size != "base":
                    continue  # the paper fine-tunes only DeiT-B at 384
                name = f"deit_{size}{'_distilled' if distilled else ''}_patch16_{image_size}"
                sha256_prefix, top1 = _DEIT_WEIGHTS[name]
                presets[name] = Variant(
                    "deit",
                    MappingProxyType(
                        dict(
                            embed_dim=embed_dim,
                            num_heads=num_heads,
                            distilled=distilled,
                            image_size=image_size,
                            depth=12,
                            patch_size=16,
                        )
                    ),
                    Preprocessing(crop_pct=1.0 if image_size == 384 else DEFAULT_CROP_PCT),
                    PublishedWeights(
                        f"{name}-{sha256_prefix}.pth",
                        "facebook/" + name.replace("_", "-"),
                        top1,
                    ),
                )
    return presets


PRESETS = _deit_presets()

ALIASES = dict(
    {
        "deit_t": "deit_tiny_patch16_224",
        "deit_s": "deit_small_patch16_224",
        "deit_b": "deit_base_patch16_224",
        "deit_t_distilled": "deit_tiny_distilled_patch16_224",
        "deit_s_distilled": "deit_small_distilled_patch16_224",
        "deit_b_distilled": "deit_base_distilled_patch16_224",
    }
)
