"""FLOPs of a ViT forward pass from its architecture alone (no TensorFlow: benchmark drivers)."""

import numbers


def vit_flops(
    *, image_size, patch_size, in_channels, embed_dim, depth, mlp_ratio, prefix_tokens, num_classes
):
    """Forward FLOPs per image (2 per multiply-add) of a ViT's matrix products.

    The patch embedding, `depth` pre-norm blocks over the patches and
    `prefix_tokens` (class, distillation) tokens, and one head of
    `num_classes` on each prefix token. DeiT-Ti⚗ at 224 px: 2.52 GFLOP.
    `image_size`: the side of a square image, or `(height, width)`.

    Returns:
        int.
    """
    square = isinstance(image_size, numbers.Integral)
    height, width = (image_size, image_size) if square else image_size
    patches = (height // patch_size) * (width // patch_size)
    tokens = patches + prefix_tokens
    hidden = int(mlp_ratio * embed_dim)
    block = 4 * tokens * embed_dim**2 + 2 * tokens**2 * embed_dim + 2 * tokens * embed_dim * hidden
    macs = patches * in_channels * patch_size**2 * embed_dim + depth * block
    macs += prefix_tokens * embed_dim * num_classes
    return 2 * macs
