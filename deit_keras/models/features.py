"""`ForwardFeatures`: a model's `forward_features` as a layer, for functional models.

`model.forward_features(keras.Input(...), blocks=...)` returns this layer's output:
Keras traces the model's own `forward_features` in a graph (any image size the
`Input` leaves open), and the functional model built on it saves and loads with the
backbone inside (timm's `forward_features` / `forward_intermediates`, as keras-hub's
backbones give feature maps to a detection or segmentation head).
`keras.models.clone_model` (fresh weights) gives each of these layers a copy of its own:
one layer per request and one model for them all would need Keras to take nodes of one
layer with different numbers of outputs (its connectivity check counts the first's).
"""

import keras


@keras.saving.register_keras_serializable(package="deit_keras")
class ForwardFeatures(keras.layers.Layer):
    """`model.forward_features(images, return_attention_scores=..., blocks=...)`.

    Args:
        model: a `TokenClassifier` (`DeiT`, `CaiT`), or its serialized config.
        return_attention_scores: bool. Also each block's attention.
        blocks: list of block indices whose patch maps are also returned.

    Returns (when called):
        what `model.forward_features` returns: the normalised tokens, or
        `(tokens, attentions)`, or `(tokens, maps)`.
    """

    def __init__(self, model, return_attention_scores=False, blocks=(), **kwargs):
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        kwargs.setdefault("dtype", model.dtype_policy)
        super().__init__(**kwargs)
        self.model = model
        self.return_attention_scores = bool(return_attention_scores)
        self.blocks = [int(index) for index in blocks]

    def build(self, input_shape):
        self.built = True  # the model is built already

    def call(self, images, training=None):
        return self.model.forward_features(
            images,
            training=training,
            return_attention_scores=self.return_attention_scores,
            blocks=self.blocks,
        )

    def compute_output_spec(self, images, training=None):
        # Traced at two sizes the model takes: the sides that differ between them are
        # left open. Keras' own trace on JAX and PyTorch fills open sides with 83 and 89
        # pixels, which no patch grid takes.
        side = self.model.patch_size
        first = self._traced(images, training, batch=2, side=2 * side)
        second = self._traced(images, training, batch=3, side=3 * side)
        return keras.tree.map_structure(_open_where_they_differ, first, second)

    def _traced(self, images, training, batch, side):
        *sides, channels = [side if length is None else length for length in images.shape]
        if images.shape[0] is None:
            sides[0] = batch
        if images.shape[-1] is None:
            channels = self.model.in_channels
        concrete = keras.KerasTensor((*sides, channels), dtype=images.dtype)
        return super().compute_output_spec(concrete, training=training)

    def get_config(self):
        config = super().get_config()
        model = keras.saving.serialize_keras_object(self.model)
        # Keras marks an object serialized twice as shared in the first config too, but
        # that one was copied by then (it is inside this layer's config): without the
        # mark here, a model with two of these layers loaded as two models, one of them
        # without weights. Outside `model.save`/`load_model` the mark is not read.
        model["shared_object_id"] = id(self.model)
        config.update(
            model=model,
            return_attention_scores=self.return_attention_scores,
            blocks=self.blocks,
        )
        return config


def _open_where_they_differ(first, second):
    shape = tuple(a if a == b else None for a, b in zip(first.shape, second.shape, strict=True))
    return keras.KerasTensor(shape, dtype=first.dtype)
