"""Patch embedding, class/distillation tokens and learned position embeddings."""

import math

import keras
import numpy as np
from keras import ops

from deit_keras.backend import tf
from deit_keras.errors import UserInputError
from deit_keras.layers.frozen import KeepsFrozen
from deit_keras.layers.initializers import trunc_normal

# The layers take NHWC images whatever `keras.config.image_data_format()` says.
NHWC = "channels_last"


@keras.saving.register_keras_serializable(package="deit_keras")
class PatchEmbedding(KeepsFrozen, keras.layers.Layer):
    """Splits an image into patches and embeds each one linearly.

    A `patch_size` x `patch_size` convolution with the same stride is a
    linear map of each non-overlapping patch, as in ViT.

    Args:
        patch_size: int. Side of a square patch in pixels.
        embed_dim: int. Size of each patch embedding.

    Call arguments:
        images: `[B, H, W, C]` float tensor; H and W multiples of `patch_size`
            (checked when the layer is built or called; sizes known only at
            run time are checked by an assertion in the graph).

    Returns:
        `[B, (H / patch_size) * (W / patch_size), embed_dim]` patch tokens.
    """

    def __init__(self, patch_size, embed_dim, **kwargs):
        if patch_size <= 0 or embed_dim <= 0:
            raise UserInputError(
                "patch_size and embed_dim must be positive. Received: "
                f"patch_size={patch_size}, embed_dim={embed_dim}"
            )
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        # The reference leaves the patch conv at PyTorch's default init,
        # uniform(+-1/sqrt(fan_in)), which is this variance scaling.
        self.projection = keras.layers.Conv2D(
            embed_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="valid",
            data_format="channels_last",  # not the global setting: the layer takes NHWC
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.check_image_shape(input_shape)
        self.projection.build(input_shape)

    def check_image_shape(self, shape):
        """Raises `ValueError` unless `[B, H, W, C]` has H and W multiples of `patch_size`."""
        for side in (shape[1], shape[2]):
            if side is not None and side % self.patch_size:
                raise ValueError(
                    "Image height and width must be multiples of patch_size. "
                    f"Received: image shape={tuple(shape[1:])}, "
                    f"patch_size={self.patch_size}"
                )

    def call(self, images):
        self.check_image_shape(images.shape)
        if None in images.shape[1:3]:
            images = self._whole_patches(images)
        patches = self.projection(images)  # [B, H/p, W/p, D]
        # The token count from the images, not -1 or the conv's shape: on a batch of
        # 0 images TensorFlow's conv returns its input's shape (TF 2.21).
        shape = ops.shape(images)
        tokens = (shape[1] // self.patch_size) * (shape[2] // self.patch_size)
        return ops.reshape(patches, (shape[0], tokens, self.embed_dim))

    def _whole_patches(self, images):
        """`images` of run-time size, checked to hold whole patches.

        The strided conv would silently drop the remainder rows/columns. XLA
        drops assert ops, so the images also go through a reshape to whole
        patches, which fails there when XLA compiles the size.
        """
        shape = tf.shape(images)
        check = tf.debugging.assert_equal(
            shape[1:3] % self.patch_size,
            0,
            message=f"Image height and width must be multiples of patch_size={self.patch_size}",
        )
        with tf.control_dependencies([check]):
            whole = shape[1:3] // self.patch_size * self.patch_size
            return tf.reshape(images, tf.concat([shape[:1], whole, shape[3:]], axis=0))

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        num = None
        if height is not None and width is not None:
            num = (height // self.patch_size) * (width // self.patch_size)
        return (batch, num, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, embed_dim=self.embed_dim)
        return config


@keras.saving.register_keras_serializable(package="deit_keras")
class TokensAndPositionEmbedding(KeepsFrozen, keras.layers.Layer):
    """Prepends the class (and distillation) token and adds position embeddings.

    The DeiT distillation token is a second learned token, like the class
    token, whose output feeds the distillation head. Both prefix tokens get
    their own position embedding, as in the reference implementation.

    With `no_embed_class` (DeiT III, CaiT; timm's `no_embed_class`) the
    position embeddings cover the patch tokens only and are added before the
    prefix tokens are prepended. With `class_token=False` (CaiT, which adds
    its class token after the self-attention blocks) no token is prepended.

    The position embeddings are learned for a square grid of `num_patches`.
    Patch tokens of another grid (as timm's `dynamic_img_size`) get those
    embeddings resampled on the fly with PyTorch's bicubic, as the checkpoint
    importer does (`resample_position_embeddings`); the prefix tokens'
    embeddings are used as they are. The bicubic is official DeiT's
    (`F.interpolate(mode="bicubic", align_corners=False)` in its `--finetune`),
    without the antialiasing timm's `resample_abs_pos_embed` adds (another
    cubic kernel: a random-weight DeiT-Ti⚗ at 384 px gives logits ~2e-4 from timm's).

    Args:
        num_patches: int. Number of patch tokens (grid height x grid width)
            of the grid the position embeddings are learned for; a square
            number unless inputs always come on that grid.
        embed_dim: int. Token size.
        distilled: bool. Whether to add the distillation token.
        class_token: bool. Whether to prepend the class token. Defaults to True.
        no_embed_class: bool. Position embeddings for the patch tokens only.
            Defaults to False.

    Call arguments:
        patch_tokens: `[B, gh * gw, embed_dim]`, row-major over the grid.
        grid: `(gh, gw)` of `patch_tokens`, ints or scalar int tensors (for
            sizes known only at run time). Defaults to the learned grid.

    Returns:
        `[B, num_prefix_tokens + gh * gw, embed_dim]`, the class token
        first, then the distillation token when `distilled`.
    """

    def __init__(
        self,
        num_patches,
        embed_dim,
        distilled=False,
        class_token=True,
        no_embed_class=False,
        **kwargs,
    ):
        if num_patches <= 0 or embed_dim <= 0:
            raise UserInputError(
                "num_patches and embed_dim must be positive. Received: "
                f"num_patches={num_patches}, embed_dim={embed_dim}"
            )
        if distilled and not class_token:
            raise UserInputError(
                "A distillation token needs the class token. "
                f"Received: distilled={distilled}, class_token={class_token}"
            )
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.embed_dim = embed_dim
        self.distilled = distilled
        self.class_token = class_token
        self.no_embed_class = no_embed_class
        self.num_prefix_tokens = int(class_token) + int(distilled)
        # Prefix tokens that have a position embedding of their own.
        self.embedded_prefix_tokens = 0 if no_embed_class else self.num_prefix_tokens
        side = math.isqrt(num_patches)
        # The learned grid; None when not square (then only that grid is served).
        self.grid_shape = (side, side) if side * side == num_patches else None

    def build(self, input_shape):
        self.cls_token = self.dist_token = None
        if self.class_token:
            self.cls_token = self.add_weight(
                shape=(1, 1, self.embed_dim),
                initializer=trunc_normal(),
                name="cls_token",
            )
        if self.distilled:
            self.dist_token = self.add_weight(
                shape=(1, 1, self.embed_dim),
                initializer=trunc_normal(),
                name="dist_token",
            )
        # Not autocast: under mixed precision the resampling runs in float32.
        self.pos_embed = self.add_weight(
            shape=(1, self.embedded_prefix_tokens + self.num_patches, self.embed_dim),
            initializer=trunc_normal(),
            autocast=False,
            name="pos_embed",
        )

    def call(self, patch_tokens, grid=None):
        position = ops.cast(self.position_embeddings(grid), patch_tokens.dtype)
        if self.no_embed_class:
            return self._prepend(patch_tokens + position)
        return self._prepend(patch_tokens) + position

    def _prepend(self, patch_tokens):
        tokens = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if not tokens:
            return patch_tokens
        batch = ops.shape(patch_tokens)[0]
        prefix = [
            ops.broadcast_to(ops.cast(t, patch_tokens.dtype), (batch, 1, self.embed_dim))
            for t in tokens
        ]
        return ops.concatenate(prefix + [patch_tokens], axis=1)

    def position_embeddings(self, grid=None):
        """`[1, embedded_prefix_tokens + gh * gw, embed_dim]` for the patch grid `(gh, gw)`.

        The learned `pos_embed` itself when `grid` is the learned grid (or
        None); otherwise its grid part resampled bicubically, in float32.
        """
        if grid is None or _same_grid(grid, self.grid_shape):
            return self.pos_embed
        if self.grid_shape is None:
            raise ValueError(
                "Position embeddings of a non-square grid cannot be resampled. "
                f"Received: num_patches={self.num_patches}, grid={grid}"
            )
        pos_embed = ops.cast(self.pos_embed, "float32")
        prefix = pos_embed[:, : self.embedded_prefix_tokens]
        learned = ops.reshape(pos_embed[0, self.embedded_prefix_tokens :], (*self.grid_shape, -1))
        resized = resize_bicubic(learned, grid)
        resized = ops.reshape(resized, (1, -1, self.embed_dim))
        return ops.concatenate([prefix, resized], axis=1)

    def compute_output_shape(self, input_shape):
        num = input_shape[1]
        return (
            input_shape[0],
            None if num is None else self.num_prefix_tokens + num,
            self.embed_dim,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_patches=self.num_patches,
            embed_dim=self.embed_dim,
            distilled=self.distilled,
            class_token=self.class_token,
            no_embed_class=self.no_embed_class,
        )
        return config


def _same_grid(grid, learned):
    """True when `grid` is statically known to be `learned` (no resampling needed)."""
    return all(isinstance(side, (int, np.integer)) for side in grid) and tuple(grid) == learned


def torch_bicubic_taps(in_size, out_size, a=-0.75):
    """The 4 source indices and weights of each output of PyTorch's 1-D bicubic resize.

    The keras.ops form of `_torch_bicubic_matrix` (row `i` of that matrix is
    `weights[i]` scattered-added at `indices[i]`): half-pixel centres, Keys'
    cubic with `a=-0.75`, border replication by clamping indices. Computed
    in float32, as PyTorch does for float32 inputs.

    Args:
        in_size: int. Input length.
        out_size: int or scalar int tensor (known only at run time inside a
            `tf.function`; a constant under XLA).
        a: float. The cubic's coefficient. Defaults to -0.75 (PyTorch's).

    Returns:
        `(indices, weights)`: int32 `[out_size, 4]` in `[0, in_size)` and
        float32 `[out_size, 4]`.
    """
    out_index = ops.cast(ops.arange(out_size, dtype="int32"), "float32")
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    source = (out_index + 0.5) * scale - 0.5
    base = ops.floor(source)
    t = source - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = ops.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)
    offsets = ops.convert_to_tensor([-1, 0, 1, 2], dtype="int32")
    indices = ops.cast(base, "int32")[:, None] + offsets
    return ops.clip(indices, 0, in_size - 1), weights


def resize_bicubic(grid, size):
    """Resizes `[H, W, D]` to `[h, w, D]` as PyTorch's bicubic (align_corners=False).

    Separable: 4 taps gathered and weighted along each axis. Elementwise
    rather than matmuls with the dense matrices, so that a resize to the same
    size is exact (weights 0, 1, 0, 0) and no TF32 matmul rounds it on GPUs.

    Args:
        grid: float `[H, W, D]` tensor with static H and W.
        size: `(h, w)`, ints or scalar int tensors.

    Returns:
        `[h, w, D]` tensor of `grid`'s dtype.
    """
    rows, row_weights = torch_bicubic_taps(grid.shape[0], size[0])
    grid = ops.take(grid, rows, axis=0)  # [h, 4, W, D]
    grid = ops.sum(grid * ops.cast(row_weights, grid.dtype)[:, :, None, None], axis=1)
    cols, col_weights = torch_bicubic_taps(grid.shape[1], size[1])
    grid = ops.take(grid, cols, axis=1)  # [h, w, 4, D]
    return ops.sum(grid * ops.cast(col_weights, grid.dtype)[None, :, :, None], axis=2)


def _torch_bicubic_matrix(in_size, out_size, a=-0.75):
    """Matrix M with M @ x == PyTorch's 1-D bicubic resize of x.

    Reproduces `torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False)`: half-pixel centres, Keys' cubic with a=-0.75 and
    border replication. TF's `tf.image.resize(method="bicubic")` uses a=-0.5
    and so gives different position embeddings than the reference.
    """

    def cubic(t):
        t = abs(t)
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        if t < 2:
            return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return 0.0

    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        source = (out_index + 0.5) * scale - 0.5
        base = int(np.floor(source))
        frac = source - base
        for offset in range(-1, 3):
            weight = cubic(offset - frac)
            matrix[out_index, min(max(base + offset, 0), in_size - 1)] += weight
    return matrix


def _grid(grid) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)


def resample_position_embeddings(
    pos_embed,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int,
    old_grid: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Resizes the grid part of position embeddings bicubically, as official DeiT's
    `--finetune` (PyTorch bicubic, `align_corners=False`, no antialiasing).

    Args:
        pos_embed: array `[1, num_prefix_tokens + gh * gw, D]`.
        new_grid: `(new_gh, new_gw)` patch grid of the target image size, or one
            int for a square grid.
        num_prefix_tokens: prefix tokens with a position embedding of their
            own: 1 (class token), 2 (class + distillation) or 0 (DeiT III,
            CaiT).
        old_grid: `(gh, gw)` or one int (square); inferred as square when omitted.

    Returns:
        float32 array `[1, num_prefix_tokens + new_gh * new_gw, D]`. The prefix
        tokens' embeddings are kept as they are.
    """
    pos_embed = np.asarray(pos_embed, dtype=np.float64)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(np.sqrt(grid.shape[0])))
        if side * side != grid.shape[0]:
            raise ValueError(
                "Cannot infer a square grid from "
                f"{grid.shape[0]} position embeddings; pass old_grid."
            )
        old_grid = (side, side)
    old_grid, new_grid = _grid(old_grid), _grid(new_grid)
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(f"old_grid={old_grid} does not match {grid.shape[0]} grid embeddings.")
    if old_grid == new_grid:
        return pos_embed.astype(np.float32)
    grid = grid.reshape(old_grid[0], old_grid[1], -1)
    rows = _torch_bicubic_matrix(old_grid[0], new_grid[0])
    cols = _torch_bicubic_matrix(old_grid[1], new_grid[1])
    grid = np.einsum("ih,hwd,jw->ijd", rows, grid, cols)
    grid = grid.reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix, grid], axis=1).astype(np.float32)
