"""A frozen layer stays frozen through `get_config` / `from_config` (`load_model`,
`clone_model`).

`from_config` calls `cls(**config)`: `Layer.__init__` sets `trainable=False` on the layer
alone, and the sublayers our `__init__` makes after it start trainable, so a frozen DeiT
backbone inside a user's model came back with every weight trainable (and fine-tuning
went on to train it). Keras' own composite layers share the flaw; ours set the flag again.
"""

import keras


def frozen_throughout(layer: keras.layers.Layer) -> keras.layers.Layer:
    """`layer`, its `trainable=False` (if so) set again on the sublayers it made since."""
    if not layer.trainable:
        # The setter walks the sublayers and their variables; called as a function, since
        # on TensorFlow `layer.trainable = False` returns early when the value is the one
        # already set (`KerasAutoTrackable.__setattr__`'s `is` short cut).
        type(layer).trainable.fset(layer, False)
    return layer


class KeepsFrozen:
    """Mixin, before `keras.layers.Layer` in the bases: `from_config` keeps a frozen layer
    frozen throughout."""

    @classmethod
    def from_config(cls, config):
        return frozen_throughout(super().from_config(config))
