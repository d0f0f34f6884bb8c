"""One factory for the tf.distribute strategies DeiT trains under."""

import json
import os

from deit_keras.backend import tf
from deit_keras.errors import UserEnvironmentError, UserInputError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "auto", tpu: str | None = None) -> "tf.distribute.Strategy":
    """Builds the strategy `name`.

    "auto" is MirroredStrategy with more than one GPU, OneDeviceStrategy
    with one, and TensorFlow's default strategy without a GPU (one device,
    no distribution: Keras' `fit` then iterates the datasets directly, where
    under OneDeviceStrategy it built two multi-device iterators an epoch,
    ~0.1 s each; the same weights with `--deterministic`). "multi_worker"
    reads the cluster from `TF_CONFIG`; "tpu" connects to `tpu` (a name or
    grpc:// address; "local" on a TPU VM, whose chips are its own; "" or None:
    the `TPU_NAME` environment variable's, as TensorFlow's resolver reads it).
    """
    if name not in STRATEGIES:
        raise UserInputError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
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
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        where = f"--tpu={tpu}" if tpu else "a local TPU (no --tpu given)"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserEnvironmentError(
            f"Could not reach {where} ({reason}): give --tpu the TPU's name or grpc:// "
            "address, or --tpu=local on a TPU VM."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def check_tf_config(text: str | None) -> None:
    """One-line `UserInputError` when `text` (the `TF_CONFIG` variable) is not JSON, or
    names a task outside its cluster or of a job this loop does not train with; what
    TensorFlow takes as one worker alone (unset, `{}`, no cluster) passes."""
    if not text:
        return
    try:
        config = json.loads(text)
    except ValueError as error:
        raise UserInputError(f"TF_CONFIG is not valid JSON ({error}). Received: {text!r}") from None
    if not isinstance(config, dict):
        raise UserInputError(f"TF_CONFIG must be a JSON object. Received: {text!r}")
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    if not cluster:
        return  # one worker alone, as TensorFlow takes it
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserInputError(
            'TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
            f'"worker", "index": 0}}}}. Received: {text!r}'
        )
    kind = task.get("type")
    if kind not in ("chief", "worker"):
        raise UserInputError(
            "TF_CONFIG's task type must be chief or worker (the jobs that train here). "
            f"Received: {text!r}"
        )
    try:
        index = int(task.get("index"))  # TensorFlow's reading: int(...), "0" too
    except (TypeError, ValueError):
        index = None
    members = cluster.get(kind)
    if index is None or not isinstance(members, list) or not 0 <= index < len(members):
        raise UserInputError(
            f"TF_CONFIG's task is not in its cluster: {kind} index must be below the "
            f"{kind} job's count. Received: {text!r}"
        )
