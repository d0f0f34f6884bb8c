"""One factory for the tf.distribute strategies DeiT trains under."""

from deit_keras.backend import tf
from deit_keras.errors import UserInputError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "auto", tpu: str | None = None) -> "tf.distribute.Strategy":
    """Builds the strategy `name`.

    "auto" is MirroredStrategy with more than one GPU, OneDeviceStrategy
    with one, and TensorFlow's default strategy without a GPU (one device,
    no distribution: Keras' `fit` then iterates the datasets directly, where
    under OneDeviceStrategy it built two multi-device iterators an epoch,
    ~0.1 s each; the same weights with `--deterministic`). "multi_worker"
    reads the cluster from `TF_CONFIG`; "tpu" connects to `tpu` (a name or
    grpc:// address; "" or None for a local TPU VM).
    """
    if name not in STRATEGIES:
        raise UserInputError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "multi_worker":
        # Collective ops must be configured before anything initialises the
        # devices, so this comes before the device listing below.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto" and not gpus:
        return tf.distribute.get_strategy()
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
