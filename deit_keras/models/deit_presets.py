"""The presets: every named model's architecture, eval preprocessing and published weights.

One table (`PRESETS`), keyed by timm's names, is the one home of these facts:
`deit_keras.create_model(name, pretrained=...)` builds from it, the importer
checks the downloads against it, and `docs/models.md` quotes it. Each entry
names its architecture: `"deit"` (DeiT, 2021), `"deit3"` (DeiT III, 2022:
the DeiT class with LayerScale and patch-only position embeddings) and
`"cait"` (CaiT, 2021). A name with a timm tag (`.fb_in22k_ft_in1k`) is a
preset of its own: the same architecture with other published weights.
"""

import dataclasses
import os
import re
from types import MappingProxyType

from deit_keras.data.constants import DEFAULT_CROP_PCT
from deit_keras.data.preprocessing import Preprocessing

# Where the official release's files are, and the variable naming a mirror of them.
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/deit/"
MIRROR_ENV = "DEIT_KERAS_WEIGHTS_URL"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


def sha256_prefix_of(filename: str) -> str | None:
    """The torch.hub hash prefix in a file name (`name-<hex>.pth`), or None."""
    match = _HASH_SUFFIX.search(os.path.basename(filename))
    return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """Where a preset's ImageNet-1k weights live and what the paper reports for them."""

    filename: str  # official release file; DeiT's end in a SHA-256 prefix
    hf_hub_id: str
    top1: float | None  # ImageNet-1k top-1 in the paper / official README; None: not given

    @property
    def sha256_prefix(self) -> str | None:
        return sha256_prefix_of(self.filename)

    @property
    def checksum_source(self) -> str:
        """What verifies a download: the release file's name, or only the hub copy.

        DeiT's release files end in a SHA-256 prefix (checked as torch.hub
        does); DeiT III's and CaiT's do not, so only their hub copies
        (`pretrained="hf"`: huggingface_hub checks each file's SHA-256) are
        verified.
        """
        if self.sha256_prefix:
            return "file name (SHA-256 prefix)"
        return "hub (huggingface_hub SHA-256)"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One preset: an architecture, its constructor arguments, eval preprocessing, weights.

    `preprocessing` is the eval config of the published weights: ImageNet
    mean/std, bicubic, crop_pct 0.875 at 224 px (official DeiT's
    `--eval-crop-ratio`; timm's pretrained config says 0.9) and 1.0 at 384 px
    (timm's). The
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


# DeiT III (official README_revenge.md): size -> (embed_dim, heads, depth, patch).
_DEIT3_SIZES = {
    "small": (384, 6, 12, 16),
    "medium": (512, 8, 12, 16),
    "base": (768, 12, 12, 16),
    "large": (1024, 16, 24, 16),
    "huge": (1280, 16, 32, 14),
}
# (size, image size) -> ImageNet-1k top-1 of the in1k and the in22k -> in1k weights.
_DEIT3_TOP1 = {
    ("small", 224): (81.4, 83.1),
    ("small", 384): (83.4, 84.8),
    ("medium", 224): (83.0, 84.5),
    ("base", 224): (83.8, 85.7),
    ("base", 384): (85.0, 86.7),
    ("large", 224): (84.9, 87.0),
    ("large", 384): (85.8, 87.7),
    ("huge", 224): (85.2, 87.2),
}
IN22K_TAG = "fb_in22k_ft_in1k"


def _deit3_presets() -> dict:
    presets = {}
    for (size, image_size), (top1_1k, top1_22k) in _DEIT3_TOP1.items():
        embed_dim, num_heads, depth, patch_size = _DEIT3_SIZES[size]
        name = f"deit3_{size}_patch{patch_size}_{image_size}"
        config = MappingProxyType(
            dict(
                embed_dim=embed_dim,
                num_heads=num_heads,
                depth=depth,
                patch_size=patch_size,
                image_size=image_size,
                distilled=False,
                # The official models_v2.py's (timm's port: 1e-6, rising drop-path rates).
                layer_scale_init=1e-4,
                no_embed_class=True,
                uniform_drop_path=True,
            )
        )
        # timm's eval crops: 0.9 for the in1k weights at 224, 1.0 otherwise.
        crop_1k = 1.0 if image_size == 384 else 0.9
        stem = f"deit_3_{size}_{image_size}"
        presets[name] = Variant(
            "deit3",
            config,
            Preprocessing(crop_pct=crop_1k),
            PublishedWeights(f"{stem}_1k.pth", f"timm/{name}.fb_in1k", top1_1k),
        )
        suffix = "_21k_v1" if size == "huge" else "_21k"
        presets[f"{name}.{IN22K_TAG}"] = Variant(
            "deit3",
            config,
            Preprocessing(crop_pct=1.0),
            PublishedWeights(f"{stem}{suffix}.pth", f"timm/{name}.{IN22K_TAG}", top1_22k),
        )
    return presets


# CaiT (timm's cait.py, official cait_models.py): name -> (embed_dim, depth, heads,
# LayerScale init, release file stem, top-1 of README_cait.md or None where it gives none).
_CAIT = {
    "cait_xxs24_224": (192, 24, 4, 1e-5, "XXS24_224", None),
    "cait_xxs24_384": (192, 24, 4, 1e-5, "XXS24_384", None),
    "cait_xxs36_224": (192, 36, 4, 1e-5, "XXS36_224", None),
    "cait_xxs36_384": (192, 36, 4, 1e-5, "XXS36_384", None),
    "cait_xs24_384": (288, 24, 6, 1e-5, "XS24_384", 84.1),
    "cait_s24_224": (384, 24, 8, 1e-5, "S24_224", 83.5),
    "cait_s24_384": (384, 24, 8, 1e-5, "S24_384", 85.1),
    "cait_s36_384": (384, 36, 8, 1e-6, "S36_384", 85.4),
    "cait_m36_384": (768, 36, 16, 1e-6, "M36_384", 86.1),
    "cait_m48_448": (768, 48, 16, 1e-6, "M48_448", 86.5),
}


def _cait_presets() -> dict:
    presets = {}
    for name, (embed_dim, depth, num_heads, init, stem, top1) in _CAIT.items():
        image_size = int(name.rsplit("_", 1)[1])
        presets[name] = Variant(
            "cait",
            MappingProxyType(
                dict(
                    embed_dim=embed_dim,
                    depth=depth,
                    num_heads=num_heads,
                    layer_scale_init=init,
                    patch_size=16,
                    image_size=image_size,
                )
            ),
            Preprocessing(crop_pct=1.0),  # timm's eval config of every CaiT
            PublishedWeights(f"{stem}.pth", f"timm/{name}.fb_dist_in1k", top1),
        )
    return presets


PRESETS = {**_deit_presets(), **_deit3_presets(), **_cait_presets()}

ALIASES = dict(
    {
        "deit_t": "deit_tiny_patch16_224",
        "deit_s": "deit_small_patch16_224",
        "deit_b": "deit_base_patch16_224",
        "deit_t_distilled": "deit_tiny_distilled_patch16_224",
        "deit_s_distilled": "deit_small_distilled_patch16_224",
        "deit_b_distilled": "deit_base_distilled_patch16_224",
    },
    # timm's default tags name the plain presets too.
    **{f"{name}.fb_in1k": name for name in PRESETS if name.startswith("deit") and "." not in name},
    **{f"{name}.fb_dist_in1k": name for name in PRESETS if name.startswith("cait_")},
)
