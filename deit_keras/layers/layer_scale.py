"""LayerScale: a learned per-channel scale of a residual branch (CaiT, DeiT III)."""

import keras

from deit_keras.errors import UserInputError


@keras.saving.register_keras_serializable(package="deit_keras")
class LayerScale(keras.layers.Layer):
    """Multiplies its input by a learned vector `gamma` of size `dim`.

    Touvron et al., "Going deeper with Image Transformers" (arXiv:2103.17239),
    Sec. 2: each residual branch's output is scaled per channel by `gamma`,
    initialised to a small `init_values` (1e-5 or 1e-6 in the papers) so that
    deep models start close to the identity.

    Args:
        dim: int. Channels of the input's last axis.
        init_values: float. Initial value of every entry of `gamma`.

    Call arguments:
        x: `[..., dim]`.

    Returns:
        `x * gamma`, the shape of `x`.
    """

    def __init__(self, dim, init_values=1e-5, **kwargs):
        if dim <= 0 or init_values <= 0:
            raise UserInputError(
                "LayerScale needs a positive dim and init_values. "
                f"Received: dim={dim}, init_values={init_values}"
            )
        super().__init__(**kwargs)
        self.dim = dim
        self.init_values = init_values

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(self.dim,),
            initializer=keras.initializers.Constant(self.init_values),
            name="gamma",
        )

    def call(self, x):
        return x * keras.ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, init_values=self.init_values)
        return config
