"""FLOPs from the architecture: the published counts, and the models' own."""

import numpy as np
import pytest

from deit_keras.models.flops import vit_flops
from deit_keras.testing import tiny_model


@pytest.mark.parametrize(
    "embed_dim, image_size, published_gmacs",
    # DeiT paper, Tables 1 and 7 (multiply-adds, "FLOPs" there).
    [(192, 224, 1.3), (384, 224, 4.6), (768, 224, 17.6), (768, 384, 55.5)],
)
def test_vit_flops_match_the_papers_counts(embed_dim, image_size, published_gmacs):
    flops = vit_flops(
        image_size=image_size,
        patch_size=16,
        in_channels=3,
        embed_dim=embed_dim,
        depth=12,
        mlp_ratio=4,
        prefix_tokens=1,
        num_classes=1000,
    )
    assert flops / 2e9 == pytest.approx(published_gmacs, rel=0.04)


def test_flops_per_image_counts_the_distillation_token_and_head():
    distilled, plain = tiny_model(distilled=True), tiny_model(distilled=False)
    extra = distilled.flops_per_image() - plain.flops_per_image()
    tokens, width, depth = distilled.grid_size**2 + 2, distilled.embed_dim, distilled.depth
    hidden = int(distilled.mlp_ratio * width)
    # One more token through every block's products, and a second head.
    per_token = 4 * width**2 + 2 * width * hidden + 2 * (2 * tokens - 1) * width
    assert extra == 2 * (depth * per_token + width * distilled.num_classes)


def test_flops_per_image_at_another_size_counts_its_patches():
    model = tiny_model()  # 32 px, patches of 8: 16 patches
    at_64 = model.flops_per_image(np.int64(64))
    assert at_64 == model.flops_per_image((64, 64)) > model.flops_per_image()
    assert model.flops_per_image((32, 64)) == vit_flops(
        image_size=(64, 32), patch_size=8, in_channels=3, embed_dim=model.embed_dim,
        depth=model.depth, mlp_ratio=model.mlp_ratio, prefix_tokens=2, num_classes=10,
    ) < at_64  # fmt: skip
