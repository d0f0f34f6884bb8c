"""A `tf.distribute` training loop for `MultiWorkerMirroredStrategy`.

Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy` ("Attempt to
convert a value (PerReplica...)", keras-team/keras#20585), while a plain
`strategy.run` loop over a distributed dataset works. This loop runs the
model's own `train_step` (so the loss, `optimizer.scale_loss`, the per-replica
loss division and the gradient all-reduce are exactly those of `fit`) and
reproduces the effects of the fit callbacks a run relies on:

- `BackupAndRestore`: a crash-safe backup each epoch, restored at start;
- `EpochCheckpoint`: `checkpoints/last.keras` + `last.json` each epoch;
- `StopOnNaN`: a non-finite loss stops the run, naming the step, before
  anything is saved;
- `TensorBoard`: epoch scalars (loss, metrics, learning rate).

Only the chief (task index 0 of the `chief` or `worker` job) writes files.
"""

import math
import os
import types

import keras
import tensorflow as tf

from deit_keras.training.callbacks import Backup, save_epoch_checkpoint


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, logs and the final model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def distribute_train_dataset(strategy: tf.distribute.Strategy, dataset_fn, global_batch_size: int):
    """Per-worker sharded, repeated input: `dataset_fn(input_context, per_replica_batch)`.

    Each input pipeline reads its own shard (`input_context`) and batches
    `global_batch_size / num_replicas_in_sync` examples.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"batch_size {global_batch_size} is not divisible by the {replicas} replicas."
        )

    def per_worker(input_context):
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return dataset_fn(input_context, batch).repeat()

    return strategy.distribute_datasets_from_function(per_worker)


def fit_distributed(
    model, strategy, dataset, *, epochs, steps_per_epoch, model_dir=None, resume=True, verbose=1
):
    """Trains a compiled model with `strategy.run(model.train_step, ...)`.

    Args:
        model: a compiled `keras.Model` (e.g. a `DeiT`), built under
            `strategy.scope()`.
        strategy: the `tf.distribute.Strategy` the model was built under.
        dataset: a distributed, infinite dataset
            (`distribute_train_dataset`).
        epochs: int. Total epochs (resumed epochs included).
        steps_per_epoch: int. Steps per epoch.
        model_dir: str or None. `backup/`, `checkpoints/` and `tensorboard/`
            go here (chief only); None writes nothing.
        resume: bool. Restore `model_dir/backup` when it exists.
        verbose: int or str. 0 shows nothing; otherwise Keras' one line per
            epoch (`keras.utils.Progbar`, as `fit(verbose=2)`).

    Returns:
        A `keras.callbacks.History`-like object: `epoch` (the epoch indices
        run) and `history` (metric name -> per-epoch values).

    Raises:
        FloatingPointError: when the loss becomes NaN/Inf; the backup and
            checkpoint of the last good epoch are kept.
    """
    chief = is_chief(strategy) and model_dir is not None
    backup = Backup(os.path.join(model_dir, "backup")) if model_dir else None
    initial_epoch = backup.restore(model) if (backup and resume) else 0
    writer = None
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard", "train"))

    def replica_step(batch):
        logs = model.train_step(batch)
        # Metric variables are per replica: average the replicas' running
        # means (equal per-replica batches: the global mean), on every worker.
        context = tf.distribute.get_replica_context()
        return {
            name: value if name == "lr" else context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
            for name, value in logs.items()
        }

    @tf.function
    def train_steps(iterator):
        logs = strategy.run(replica_step, args=(next(iterator),))
        return {name: strategy.experimental_local_results(value)[0] for name, value in logs.items()}

    iterator = iter(dataset)
    history = types.SimpleNamespace(epoch=[], history={})
    for epoch in range(initial_epoch, epochs):
        for metric in model.metrics:
            metric.reset_state()
        progress = keras.utils.Progbar(  # logs are running means already
            steps_per_epoch,
            verbose=2 if verbose else 0,
            stateful_metrics=[metric.name for metric in model.metrics] + ["lr"],
        )
        logs = {}
        for step in range(steps_per_epoch):
            logs = train_steps(iterator)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                step = int(model.optimizer.iterations.numpy())
                raise FloatingPointError(
                    f"Loss became NaN/Inf at step {step}; the last good checkpoint is in "
                    f"{os.path.join(model_dir or '.', 'checkpoints')}. "
                    "Lower --lr or check the data."
                )
            progress.update(
                step + 1,
                [(name, float(value)) for name, value in logs.items()],
                finalize=step + 1 == steps_per_epoch,
            )
        logs = {name: float(value) for name, value in logs.items()}
        history.epoch.append(epoch)
        for name, value in logs.items():
            history.history.setdefault(name, []).append(value)
        if chief:
            backup.save(model, epoch + 1)
            save_epoch_checkpoint(model, os.path.join(model_dir, "checkpoints"), epoch, logs)
            with writer.as_default():
                for name, value in logs.items():
                    tf.summary.scalar(f"epoch_{name}", value, step=epoch)
            writer.flush()
    if writer is not None:
        writer.close()
    return history


def fit_multi_worker(config, model, strategy, steps_per_epoch, dataset_fn):
    """`fit_distributed` with a run's settings over `dataset_fn(input_context, batch_size)`."""
    dataset = distribute_train_dataset(strategy, dataset_fn, config.batch_size)
    return fit_distributed(
        model,
        strategy,
        dataset,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        model_dir=config.model_dir,
        resume=config.resume,
        verbose=0 if config.fit_verbose == 0 else 1,
    )


__all__ = ["distribute_train_dataset", "fit_distributed", "fit_multi_worker", "is_chief"]
