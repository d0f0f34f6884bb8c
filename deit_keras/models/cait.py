"""CaiT: deeper image transformers with LayerScale and class attention.

Touvron et al., "Going deeper with Image Transformers", ICCV 2021
(arXiv:2103.17239); official code `cait_models.py` of facebookresearch/deit,
timm's `cait.py`. Self-attention blocks (talking heads, LayerScale) process
the patch tokens only; the class token joins afterwards, in a few
class-attention blocks where it alone is updated.
"""

import keras
from keras import ops

from deit_keras.layers.basic import layer_norm
from deit_keras.layers.class_attention import ClassAttentionBlock
from deit_keras.layers.embedding import PatchEmbedding, TokensAndPositionEmbedding
from deit_keras.layers.encoder import TransformerBlock
from deit_keras.layers.initializers import trunc_normal
from deit_keras.models.classifier import TokenClassifier, call_block


@keras.saving.register_keras_serializable(package="deit_keras")
class CaiT(TokenClassifier):
    """CaiT image classifier (one class-token head; no distillation token).

    Inputs are NHWC float images normalised with the ImageNet mean and std.
    Any input size whose sides are multiples of `patch_size` is accepted, as
    for `DeiT` (position embeddings resampled bicubically off the grid).

    Args:
        image_size: int. Side of the square input image. Defaults to 224.
        patch_size: int. Side of a square patch. Defaults to 16.
        embed_dim: int. Token size. Defaults to 192 (XXS).
        depth: int. Self-attention blocks. Defaults to 24.
        num_heads: int. Attention heads. Defaults to 4.
        mlp_ratio: float. MLP hidden size over `embed_dim`. Defaults to 4.
        num_classes: int. Classes of the head; 0 returns the class token's
            features. Defaults to 1000.
        drop_path_rate: float. Stochastic depth rate of every self-attention
            block (constant over depth, as in CaiT). Defaults to 0.
        in_channels: int. Image channels. Defaults to 3.
        preprocessing: `deit_keras.data.Preprocessing` or its config dict.
        layer_scale_init: float. Initial LayerScale value (1e-5 for XXS-S24,
            1e-6 for the deeper models). Defaults to 1e-5.
        depth_token_only: int. Class-attention blocks. Defaults to 2.
        mlp_ratio_token_only: float. MLP ratio of the class-attention
            blocks. Defaults to 4.

    Call arguments:
        images: `[B, H, W, in_channels]`, H and W multiples of `patch_size`.
        training: bool.

    Example:
    >>> model = deit_keras.create_model("cait_xxs24_224")
    >>> logits = model(images)  # [B, 1000]
    """

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        embed_dim=192,
        depth=24,
        num_heads=4,
        mlp_ratio=4.0,
        num_classes=1000,
        drop_path_rate=0.0,
        in_channels=3,
        preprocessing=None,
        layer_scale_init=1e-5,
        depth_token_only=2,
        mlp_ratio_token_only=4.0,
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
            False,
            drop_path_rate,
            in_channels,
            preprocessing,
            **kwargs,
        )
        self.layer_scale_init = layer_scale_init
        self.depth_token_only = depth_token_only
        self.mlp_ratio_token_only = mlp_ratio_token_only

        policy = self.dtype_policy
        # === Layers ===
        self.patch_embed = PatchEmbedding(patch_size, embed_dim, dtype=policy, name="patch_embed")
        self.tokens = TokensAndPositionEmbedding(
            self.grid_size**2,
            embed_dim,
            class_token=False,
            no_embed_class=True,
            dtype=policy,
            name="tokens",
        )
        self.blocks = [
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                drop_path_rate,
                layer_scale_init=layer_scale_init,
                talking_heads=True,
                dtype=policy,
                name=f"block_{index}",
            )
            for index in range(depth)
        ]
        self.blocks_token_only = [
            ClassAttentionBlock(
                embed_dim,
                num_heads,
                mlp_ratio_token_only,
                layer_scale_init,
                dtype=policy,
                name=f"class_block_{index}",
            )
            for index in range(depth_token_only)
        ]
        self.norm = layer_norm("norm", policy)
        self._make_heads()
        self.build((None, image_size, image_size, in_channels))

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        patches = (input_shape[0], self.grid_size**2, self.embed_dim)
        self.tokens.build(patches)
        self.cls_token = self.add_weight(
            shape=(1, 1, self.embed_dim), initializer=trunc_normal(), name="cls_token"
        )
        for block in self.blocks:
            block.build(patches)
        for block in self.blocks_token_only:
            block.build(patches)
        self.norm.build((input_shape[0], 1 + self.grid_size**2, self.embed_dim))
        self._build_heads(input_shape[0])
        self.built = True

    def _forward_features(self, images, training, return_attention_scores, blocks):
        """Normalised `[class token, patch tokens]` `[B, 1 + T, D]`.

        With `return_attention_scores`, also the list of each block's
        attention: the self-attention blocks' `[B, N, T, T]`, then the
        class-attention blocks' `[B, N, 1, 1 + T]`. With `blocks`, also those
        self-attention blocks' patch maps `[B, gh, gw, D]`: `(tokens, maps)`.
        """
        grid = self.patch_grid(images)
        x = self.tokens(self.patch_embed(images), grid=grid)
        # The self-attention blocks see the patch tokens only (no prefix).
        x, attentions, maps = self.run_blocks(x, grid, 0, training, return_attention_scores, blocks)
        batch = ops.shape(x)[0]
        cls_token = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (batch, 1, self.embed_dim))
        for block in self.blocks_token_only:
            cls_token = call_block(
                block, attentions, x, cls_token, training=training, scores=return_attention_scores
            )
        x = self.norm(ops.concatenate([cls_token, x], axis=1))
        return self.features_output(x, attentions, maps, return_attention_scores, blocks)

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(
            layer_scale_init=self.layer_scale_init,
            depth_token_only=self.depth_token_only,
            mlp_ratio_token_only=self.mlp_ratio_token_only,
        )
        return config
