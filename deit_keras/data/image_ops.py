"""Image ops on the CPU kernels' fast paths (the same values as the plain ops).

TensorFlow 2.21's CPU kernels have slow paths that a whole-image op can fall into
(measured on one core, a 224x224x3 float32 image, in `tf.function`):
- `tf.where` (SelectV2) costs ~0.8 ms where the same-shape `Select` kernel costs
  ~0.05 ms, also for same-shape arguments;
- an op broadcasting a trailing `[3]` per-channel vector costs ~0.7 ms where
  broadcasting a row of width `W * 3` over the `[H, W * 3]` view costs ~0.1 ms.
The input pipeline runs several of these per image, so these helpers give the same
values through the fast kernels. And a `tf.switch_case` in a loop body (`tf.map_fn`
over a batch's images) is lowered to Switch/Merge nodes, so every branch's nodes are
visited on every iteration; `case` keeps the functional `Case` op, which runs only the
chosen branch (RandAugment on a batch of 32 16x16 images: 5.9 -> 3.0 ms).
"""

import tensorflow as tf

# Private, but in every TF 2 release; setup.py pins tensorflow 2.21.x.
from tensorflow.python.ops import cond_v2


def select(condition, x, y):
    """`tf.where(condition, x, y)` for tensors of one shape, through the `Select` kernel.

    Args:
        condition: bool tensor, broadcastable to the shape of `x`.
        x: tensor.
        y: tensor of the shape and dtype of `x`.

    Returns:
        The elements of `x` where `condition`, else those of `y`.
    """
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y, x.dtype)
    condition = tf.convert_to_tensor(condition)
    if condition.shape.rank != 0 and condition.shape != x.shape:
        condition = tf.broadcast_to(condition, tf.shape(x))
    out = tf.raw_ops.Select(condition=condition, x=x, y=y)
    out.set_shape(x.shape)
    return out


def per_channel(fn, pixels, *values):
    """`fn(pixels, *channel_vectors)` computed on the `[..., H, W * C]` view of `pixels`.

    Each of `values` (one number per channel) is repeated along a row, so the
    elementwise ops in `fn` broadcast a row instead of a trailing `[C]`: the same
    values, several times faster on CPU.

    Args:
        fn: callable of `(rows, *vectors)`, elementwise (broadcasting `vectors`).
        pixels: float tensor `[..., H, W, C]` (rank >= 3; lower ranks are passed as they are).
        *values: `C` floats each (sequences or `[C]` tensors), or tensors `[..., C]`
            whose leading axes are those of `pixels` before `H` (one vector per image).

    Returns:
        `fn`'s result, shaped as `pixels`.
    """
    if pixels.shape.rank is None or pixels.shape.rank < 3:
        return fn(pixels, *(tf.convert_to_tensor(v, pixels.dtype) for v in values))
    shape = tf.shape(pixels)
    rows = tf.reshape(pixels, tf.concat([shape[:-2], [-1]], axis=0))
    width = shape[-2]
    tiled = [_row_of(tf.convert_to_tensor(v, pixels.dtype), width) for v in values]
    out = tf.reshape(fn(rows, *tiled), shape)
    out.set_shape(pixels.shape)
    return out


def _row_of(vector, width):
    """A `[..., C]` vector repeated `width` times along its last axis (then over rows)."""
    if vector.shape.rank == 1:
        return tf.tile(vector, [width])
    multiples = tf.concat([tf.ones([vector.shape.rank - 1], tf.int32), [width]], axis=0)
    return tf.tile(vector, multiples)[..., None, :]


def paste_box(images, patch, top, left):
    """`images` with `patch` written at `(top, left)` (row and column of the `[H, W]` axes).

    Built from slices and concatenations: copies, where a `tf.where` over a box mask
    costs a masked select of the whole image.

    Args:
        images: tensor `[..., H, W, C]`.
        patch: tensor `[..., h, w, C]` (leading axes as `images`), `h <= H - top`,
            `w <= W - left`.
        top: int32 scalar.
        left: int32 scalar.

    Returns:
        A tensor of the shape of `images`.
    """
    height, width = tf.shape(patch)[-3], tf.shape(patch)[-2]
    band = images[..., top : top + height, :, :]
    band = tf.concat([band[..., :left, :], patch, band[..., left + width :, :]], axis=-2)
    out = tf.concat([images[..., :top, :, :], band, images[..., top + height :, :, :]], axis=-3)
    out.set_shape(images.shape)
    return out


def case(branch_index, branch_fns):
    """`tf.switch_case(branch_index, branch_fns)` as a functional `Case` op (not lowered).

    Args:
        branch_index: int32 scalar tensor in `[0, len(branch_fns))`.
        branch_fns: callables of no arguments returning tensors of one dtype and shape.

    Returns:
        The output of `branch_fns[branch_index]()`.
    """
    if tf.executing_eagerly():  # nothing is lowered there
        return tf.switch_case(tf.cast(branch_index, tf.int32), list(branch_fns))
    out = cond_v2.indexed_case(
        tf.cast(branch_index, tf.int32), list(branch_fns), lower_using_switch_merge=False
    )
    return out[0] if isinstance(out, (list, tuple)) else out
