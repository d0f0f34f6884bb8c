"""Random draws apart on each `tf.distribute` replica, and `ReplicaDropout` built on them.

A layer's `SeedGenerator` state is one mirrored variable under a strategy, so Keras'
own random ops draw the same numbers on every replica: `keras.layers.Dropout` then
zeroes the same positions of every replica's samples. Official DeiT seeds each rank
apart; here each replica takes its own row of one draw for all replicas.
"""

import keras
from keras import ops

from deit_keras.backend import replica_position
from deit_keras.errors import UserInputError


def replica_uniform(shape, seed_generator):
    """Uniform [0, 1) numbers of `shape`, drawn apart on each replica (one device: as
    `keras.random.uniform`).

    Args:
        shape: tuple. The shape of this replica's draw.
        seed_generator: `keras.random.SeedGenerator`. The layer's generator.

    Returns:
        A float32 tensor of `shape`.
    """
    replicas, replica = replica_position()
    if replicas == 1:
        return keras.random.uniform(shape, seed=seed_generator)
    draws = keras.random.uniform((replicas, *shape), seed=seed_generator)
    return ops.take(draws, replica, axis=0)


@keras.saving.register_keras_serializable(package="deit_keras")
class ReplicaDropout(keras.layers.Layer):
    """`keras.layers.Dropout` whose masks differ between `tf.distribute` replicas.

    In training each element is zeroed with probability `rate` and the rest are
    scaled by `1 / (1 - rate)`; at inference it is the identity.

    Args:
        rate: float in [0, 1). Probability of dropping an element.
        seed: int or None. Seed of the layer's `SeedGenerator`.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        if not 0.0 <= rate < 1.0:
            raise UserInputError(
                f"{type(self).__name__} rate must be in [0, 1). Received: rate={rate}"
            )
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = replica_uniform(self.mask_shape(x), self.seed_generator) < keep
        return x * ops.cast(mask, x.dtype) / ops.cast(keep, x.dtype)

    def mask_shape(self, x) -> tuple:
        """The shape of the draw: one number per element (`DropPath`: per sample)."""
        return tuple(ops.shape(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config
