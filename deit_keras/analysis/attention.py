"""What the class and distillation tokens look at, and how alike they are.

- `attention_rollout`: Abnar & Zuidema, "Quantifying Attention Flow in
  Transformers" (arXiv:2005.00928): per layer, average the heads (rows
  divided by their sums: CaiT's talking heads mix the heads after the
  softmax), add the identity for the residual path, multiply through the
  layers.
- `token_cosine_similarity`: the DeiT paper (Touvron et al. 2021, Sec. 4)
  reports a cosine similarity of 0.06 between the learned class and
  distillation tokens at the input, rising to 0.93 at the last layer.
- `attention_maps` (`batch_attention_maps`: a batch in one pass): last-layer
  attention of each prefix token over the patches, per head, and the rollout,
  as `[grid, grid]` maps. For CaiT the
  last layer is the last class-attention block, and the rollout runs over
  `[class token, patches]` with the class token held still in the
  self-attention blocks and the patches held still in the class-attention
  blocks (what each block really does).
"""

import numpy as np
from keras import ops

from deit_keras.errors import UserInputError


def attention_rollout(
    attentions: list, num_prefix_tokens: int, residual_weight: float = 0.5
) -> np.ndarray:
    """Attention rollout from the prefix tokens to the patch tokens.

    Args:
        attentions: list (one per block, first block first) of attention
            weights `[B, heads, T, T]` (a softmax's, whose rows sum to 1, or
            heads mixed after it, as CaiT's talking heads: the head-averaged
            rows are then divided by their sums); or CaiT's as its
            `forward_features` returns them, the class-attention blocks'
            `[B, heads, 1, 1 + T]` last (`num_prefix_tokens` 1).
        num_prefix_tokens: int. 1 (class token) or 2 (class, distillation).
        residual_weight: float in [0, 1]. Weight of the identity mixed into
            each layer's head-averaged attention for the residual connection.
            Defaults to 0.5 (the paper's choice).

    Returns:
        float32 numpy `[B, num_prefix_tokens, T - num_prefix_tokens]`: for each
        prefix token, the rolled-out attention over the patch tokens.
    """
    if not 0.0 <= residual_weight <= 1.0:
        raise UserInputError(f"residual_weight must be in [0, 1]. Received: {residual_weight}")
    attentions = [np.asarray(ops.convert_to_numpy(a), dtype=np.float64) for a in attentions]
    if not attentions:
        raise UserInputError("attention_rollout needs at least one layer's attention.")
    first_class_block = _class_attention_from(attentions)
    if first_class_block is not None:
        if num_prefix_tokens != 1:
            raise UserInputError(
                "CaiT's attentions (class-attention blocks last) have one prefix token, "
                f"the class token. Received: num_prefix_tokens={num_prefix_tokens}"
            )
        attentions = _cait_full_sequence(attentions, first_class_block)
    rollout = None
    for layer, attention in enumerate(attentions):
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise UserInputError(
                f"Expected attention [B, heads, T, T]. Received: {attention.shape}"
            )
        tokens = attention.shape[-1]
        if not 0 < num_prefix_tokens < tokens:
            raise UserInputError(
                f"num_prefix_tokens must be in [1, {tokens - 1}]. Received: {num_prefix_tokens}"
            )
        averaged = _rows_summing_to_one(attention.mean(axis=1), layer)
        mixed = (1 - residual_weight) * averaged + residual_weight * np.eye(tokens)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout[:, :num_prefix_tokens, num_prefix_tokens:].astype(np.float32)


def _class_attention_from(attentions):
    """Where CaiT's class-attention blocks start in `attentions` (rows `[.., 1, 1 + T]`
    after self-attention `[.., T, T]`); None when there are none."""
    shapes = [attention.shape for attention in attentions]
    if not shapes[0]:  # not an attention: refused as such by the caller
        return None
    for index, shape in enumerate(shapes[1:], start=1):
        if shape[-2:] == (1, shapes[0][-1] + 1):
            return index
    return None


def _rows_summing_to_one(averaged: np.ndarray, layer: int) -> np.ndarray:
    """The head-averaged attention `[B, T, T]` with each row divided by its sum.

    A softmax's rows sum to 1 already. Talking heads (CaiT) mix the heads after
    the softmax (`proj_w`, with a bias), so each row sums to one number that
    scaling `proj_w` against the value projection changes without changing the
    model: without this division the identity's weight in the rollout would be
    that scale's, not `residual_weight`.
    """
    sums = averaged.sum(axis=-1, keepdims=True)
    # Rows whose sum nearly cancels (against their absolute mass) would blow up.
    if np.any(np.abs(sums) <= 1e-3 * np.abs(averaged).sum(axis=-1, keepdims=True)):
        raise UserInputError(
            f"The head-averaged attention rows of layer {layer} sum to about 0 (heads mixed "
            "after the softmax cancel out): no rollout is defined through that layer."
        )
    return averaged / sums


def _float_images(model, images):
    """`images` as a float32 tensor; pixels (integers) are refused as the model refuses
    them: they went in unnormalised and gave maps of a different input."""
    if not hasattr(images, "dtype"):
        images = np.asarray(images)
    try:
        model.check_float_images(images.dtype)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    return ops.convert_to_tensor(images, dtype="float32")


def _batch_of_images(model, images):
    """`images` refused in one line unless a batch of channels-last images of the model's
    channels (a single image, NCHW, one channel): the forward pass failed deep in the
    patch embedding, naming the wrong axes."""
    try:
        model.check_images_shape(tuple(images.shape))
    except ValueError as error:
        raise UserInputError(str(error)) from None
    return images


def _token_names(model):
    return ["cls", "dist"] if model.distilled else ["cls"]


def attention_maps(model, image) -> dict:
    """Last-layer (per head) and rollout attention maps of the prefix tokens.

    Args:
        model: a `DeiT` or `CaiT`.
        image: one normalised model input, `[H, W, 3]` or `[1, H, W, 3]`,
            any size the model takes (multiples of its patch size).

    Returns:
        dict token name ("cls", and "dist" for distilled models) -> dict with
        `"heads"`: float32 `[num_heads, gh, gw]` and `"rollout"`: float32
        `[gh, gw]`, where `(gh, gw) = model.patch_grid(image)` (the image's
        patch grid: `model.grid_size` squared at the model's own size).
    """
    image = _float_images(model, image)
    if len(image.shape) == 3:
        image = ops.expand_dims(image, 0)
    if len(image.shape) != 4 or image.shape[0] != 1:
        raise UserInputError(f"attention_maps takes one image. Received shape: {image.shape}")
    return batch_attention_maps(model, image)[0]


def batch_attention_maps(model, images) -> list:
    """`attention_maps` of each image of a batch `[B, H, W, 3]`, from one forward pass.

    Returns:
        list of `B` dicts, each as `attention_maps` returns.
    """
    images = _batch_of_images(model, _float_images(model, images))
    _, attentions = model.forward_features(images, training=False, return_attention_scores=True)
    if hasattr(model, "blocks_token_only"):  # CaiT
        attentions = _cait_full_sequence(attentions, model.depth)
    prefix = model.num_prefix_tokens
    grid = tuple(int(side) for side in model.patch_grid(images))
    last = np.asarray(ops.convert_to_numpy(attentions[-1]), dtype=np.float32)
    rollout = attention_rollout(attentions, prefix)
    return [
        {
            name: {
                "heads": last[image, :, index, prefix:].reshape(-1, *grid),
                "rollout": rollout[image, index].reshape(grid),
            }
            for index, name in enumerate(_token_names(model))
        }
        for image in range(len(last))
    ]


def _cait_full_sequence(attentions, depth):
    """CaiT's attentions as `[B, heads, 1 + T, 1 + T]` over `[class token, patches]`.

    A self-attention block leaves the class token (not yet inserted) as it is:
    its row is the identity. A class-attention block updates the class token
    only: its row is the block's attention, the patch rows the identity.
    """
    full = []
    for index, attention in enumerate(attentions):
        attention = np.asarray(ops.convert_to_numpy(attention), dtype=np.float64)
        batch, heads = attention.shape[:2]
        tokens = attention.shape[-1] + (1 if index < depth else 0)
        matrix = np.broadcast_to(np.eye(tokens), (batch, heads, tokens, tokens)).copy()
        if index < depth:
            matrix[:, :, 1:, 1:] = attention
        else:
            matrix[:, :, 0, :] = attention[:, :, 0, :]
        full.append(matrix)
    return full


def _cosine(a, b):
    a = np.asarray(ops.convert_to_numpy(a), dtype=np.float64)
    b = np.asarray(ops.convert_to_numpy(b), dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, 1e-12)


def token_cosine_similarity(model, images) -> np.ndarray:
    """Cosine similarity of the class and distillation tokens, layer by layer.

    Args:
        model: a distilled `DeiT`.
        images: normalised model inputs `[B, H, W, 3]`.

    Returns:
        float64 numpy `[depth + 1]`, averaged over the batch: entry 0 is the
        input tokens (learned tokens plus position embeddings), entry `i` the
        output of block `i` (before the final norm).
    """
    if not model.distilled:
        raise UserInputError("token_cosine_similarity needs a distilled model (with a dist token).")
    images = _batch_of_images(model, _float_images(model, images))
    x = model.tokens(model.patch_embed(images), grid=model.patch_grid(images))
    similarities = [_cosine(x[:, 0], x[:, 1]).mean()]
    for block in model.blocks:
        x = block(x, training=False)
        similarities.append(_cosine(x[:, 0], x[:, 1]).mean())
    return np.asarray(similarities)
