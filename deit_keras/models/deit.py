"""The DeiT model: a ViT with a class token and, when distilled, a distillation token.

Touvron et al., "Training data-efficient image transformers & distillation
through attention", ICML 2021 (arXiv:2012.12877); the architecture is ViT
(Dosovitskiy et al., arXiv:2010.11929) with a second token and head.
"""

import keras
import numpy as np

from deit_keras.layers.basic import layer_norm
from deit_keras.layers.embedding import PatchEmbedding, TokensAndPositionEmbedding
from deit_keras.layers.encoder import TransformerBlock
from deit_keras.models.classifier import TokenClassifier


@keras.saving.register_keras_serializable(package="deit_keras")
class DeiT(TokenClassifier):
    """DeiT image classifier.

    Inputs are NHWC float images normalised with the ImageNet mean and std
    (the timm / Hugging Face convention, so published weights port as is).

    Args:
        image_size: int. Side of the square input image. Defaults to 224.
        patch_size: int. Side of a square patch. Defaults to 16.
        embed_dim: int. Token size. Defaults to 192 (DeiT-Ti).
        depth: int. Number of transformer blocks. Defaults to 12.
        num_heads: int. Attention heads. Defaults to 3.
        mlp_ratio: float. MLP hidden size over `embed_dim`. Defaults to 4.
        num_classes: int. Classes of the heads; 0 returns the pooled
            features instead of logits. Defaults to 1000.
        distilled: bool. Add the distillation token and head. Defaults to False.
        drop_path_rate: float. Stochastic depth rate of the last block; it
            rises linearly from 0 over the blocks (DeiT), or is every block's
            with `uniform_drop_path`. Defaults to 0.
        in_channels: int. Image channels. Defaults to 3.
        preprocessing: `deit_keras.data.Preprocessing` or its config dict:
            the mean, std, eval crop_pct and interpolation that turn images
            into this model's input. Saved with the model. Defaults to the
            ImageNet mean/std, crop_pct 0.875, bicubic.
        layer_scale_init: float or None. LayerScale on every residual branch
            with this initial value (DeiT III: 1e-4, the official
            `models_v2.py`'s; timm's port starts at 1e-6); None for none (DeiT).
        no_embed_class: bool. Position embeddings for the patch tokens only,
            added before the class token is prepended (DeiT III; timm's
            `no_embed_class`). Defaults to False.
        uniform_drop_path: bool. Every block drops its residual branches
            with `drop_path_rate` (DeiT III: the official `dpr_constant`),
            instead of rates rising from 0. Defaults to False.

    DeiT III (Touvron et al., "DeiT III: Revenge of the ViT", ECCV 2022) is
    this model with `layer_scale_init=1e-4, no_embed_class=True,
    uniform_drop_path=True` and no distillation token: the `deit3_*` presets.

    Any image size (timm's `dynamic_img_size`, always on): images of any
    height and width that are multiples of `patch_size` are accepted, also
    when the size is known only at run time (a `tf.function` with `None`
    dimensions) and under XLA. Off the `image_size` grid the position
    embeddings are resampled on the fly with PyTorch's bicubic, the same as
    `resample_position_embeddings` applies to the weights of a model built
    at that size; at `image_size` nothing is resampled.

    Call arguments:
        images: `[B, H, W, in_channels]`, H and W multiples of `patch_size`
            (`image_size` for the learned position embeddings as they are).
        training: bool. With `training=True` a distilled model called
            directly returns the tuple `(cls_logits, dist_logits)`; otherwise
            (and inside another Keras model, built for one output) the mean
            of the two.

    Example:
    >>> model = deit_keras.create_model("deit_tiny_distilled_patch16_224")
    >>> logits = model(images)  # [B, 1000], mean of both heads
    """

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4.0,
        num_classes=1000,
        distilled=False,
        drop_path_rate=0.0,
        in_channels=3,
        preprocessing=None,
        layer_scale_init=None,
        no_embed_class=False,
        uniform_drop_path=False,
        **kwargs,
    ):
        super().__init__(
            image_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
            num_classes,
            distilled,
            drop_path_rate,
            in_channels,
            preprocessing,
            **kwargs,
        )
        self.layer_scale_init = layer_scale_init
        self.no_embed_class = no_embed_class
        self.uniform_drop_path = uniform_drop_path

        policy = self.dtype_policy
        # === Layers ===
        self.patch_embed = PatchEmbedding(patch_size, embed_dim, dtype=policy, name="patch_embed")
        self.tokens = TokensAndPositionEmbedding(
            self.grid_size**2,
            embed_dim,
            distilled=distilled,
            no_embed_class=no_embed_class,
            dtype=policy,
            name="tokens",
        )
        start = drop_path_rate if uniform_drop_path else 0.0
        block_rates = np.linspace(start, drop_path_rate, depth)
        self.blocks = [
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                float(rate),
                layer_scale_init=layer_scale_init,
                dtype=policy,
                name=f"block_{index}",
            )
            for index, rate in enumerate(block_rates)
        ]
        self.norm = layer_norm("norm", policy)
        self._make_heads()
        self.build((None, image_size, image_size, in_channels))

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        token_shape = (input_shape[0], self.grid_size**2, self.embed_dim)
        self.tokens.build(token_shape)
        sequence = (input_shape[0], self.num_prefix_tokens + self.grid_size**2, self.embed_dim)
        for layer in self.blocks + [self.norm]:
            layer.build(sequence)
        self._build_heads(input_shape[0])
        self.built = True

    def _forward_features(self, images, training, return_attention_scores, blocks):
        """Normalised tokens `[B, T, D]` (and each block's attention, or `blocks`' maps)."""
        grid = self.patch_grid(images)
        x = self.tokens(self.patch_embed(images), grid=grid)
        x, attentions, maps = self.run_blocks(
            x, grid, self.num_prefix_tokens, training, return_attention_scores, blocks
        )
        return self.features_output(self.norm(x), attentions, maps, return_attention_scores, blocks)

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(
            distilled=self.distilled,
            layer_scale_init=self.layer_scale_init,
            no_embed_class=self.no_embed_class,
            uniform_drop_path=self.uniform_drop_path,
        )
        return config
