"""A `tf.distribute` training loop for `MultiWorkerMirroredStrategy`.

Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy` ("Attempt to
convert a value (PerReplica...)", keras-team/keras#20585), while a plain
`strategy.run` loop over a distributed dataset works. This loop runs the
model's own `train_step` (so the loss, `optimizer.scale_loss`, the per-replica
loss division and the gradient all-reduce are exactly those of `fit`) and
reproduces the effects of the fit callbacks a run relies on:

- `BackupAndRestore`: a crash-safe backup each epoch (and every
  `backup_every_steps` steps), restored at start, resuming in the middle of
  an epoch at the saved step;
- SIGTERM (`preemption.PreemptionWatcher`): the flag is all-reduced with each
  step, so every worker stops after the same step; the chief backs it up and
  all raise `Preempted`;
- `EpochCheckpoint`: `checkpoints/last.keras` + `last.json` each epoch;
- `StopOnNaN`: a non-finite loss stops the run, naming the step, before
  anything is saved;
- `validation_data`: each worker evaluates its shard after each epoch; the
  counts are all-reduced, so every worker gets the same `val_*` values;
- `TensorBoard`: epoch scalars (loss, metrics, learning rate; `val_*` under
  `validation/`).

Only the chief (task index 0 of the `chief` or `worker` job) writes files
and prints progress.
"""

import math
import os
import time
import types

import keras
import numpy as np
import tensorflow as tf

from deit_keras.errors import UserInputError
from deit_keras.inference.evaluate import evaluate_model
from deit_keras.training.backup import Backup
from deit_keras.training.callbacks import (
    CHECKPOINTS,
    TENSORBOARD,
    diverged_error,
    finite_logs,
    record_epochs,
    save_epoch_checkpoint,
)
from deit_keras.training.preemption import Preempted


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


def worker_context(strategy: tf.distribute.Strategy) -> tf.distribute.InputContext:
    """This worker's input pipeline among all workers (the chief first), as the strategy counts."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    tasks = [(job, index) for job in ("chief", "worker") for index in range(len(spec.get(job, [])))]
    if not tasks:
        return tf.distribute.InputContext(1, 0, strategy.num_replicas_in_sync)
    position = tasks.index((resolver.task_type, resolver.task_id))
    return tf.distribute.InputContext(len(tasks), position, strategy.num_replicas_in_sync)


def local_replicas(input_context: tf.distribute.InputContext) -> int:
    """Replicas one input pipeline feeds: each step takes one of its batches for each."""
    return input_context.num_replicas_in_sync // input_context.num_input_pipelines


def wait_for_file(path: str, timeout_s: float, what: str = "the file", poll_s: float = 1.0) -> None:
    """Waits until `path` exists (written whole by an atomic rename) or raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} {path} did not appear within {timeout_s:g} s; is it on storage "
                "every worker shares, and is the chief still running?"
            )
        time.sleep(poll_s)


def all_reduce_sum(strategy: tf.distribute.Strategy, values) -> np.ndarray:
    """The sum over workers of each worker's float `values` (also a barrier: all must call it)."""
    local = len(strategy.extended.worker_devices)  # each local replica adds a share
    values = tf.constant(np.asarray(values, dtype=np.float64) / local)

    def replica_fn():
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

    return strategy.experimental_local_results(strategy.run(replica_fn))[0].numpy()


def _validate(model, strategy, dataset) -> dict:
    """`val_*` of `evaluate_model` over every worker's shard of `dataset`, all-reduced."""
    results = evaluate_model(model, dataset)
    count = results["num_examples"]
    names = sorted(name for name in results if name == "loss" or "top" in name)
    totals = all_reduce_sum(strategy, [count] + [results[name] * count for name in names])
    means = totals[1:] / max(totals[0], 1)
    return {f"val_{name}": float(mean) for name, mean in zip(names, means, strict=True)}


# What a collective op raises when a peer dies (connection reset, health check).
LOST_WORKER = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def _lost_worker(error, epoch: int, step: int, backup) -> ConnectionError:
    """One line for a collective op that failed because another worker is gone."""
    lines = [line.strip() for line in (error.message or "").splitlines() if line.strip()]
    # TensorFlow puts "Graph execution error:" first and the cause further down.
    causes = [line for line in lines if "abort" in line.lower() or "connection" in line.lower()]
    reason = (causes or lines or [type(error).__name__])[0]
    where = "the start (no backup)"
    if backup is not None and backup.latest() is not None:
        saved_epoch, saved_batch = backup.position()
        where = f"the backup at epoch {saved_epoch} step {saved_batch} in {backup.directory}"
    return ConnectionError(
        f"Lost another worker at epoch {epoch} step {step} ({type(error).__name__}: {reason}); "
        f"restart every worker with the same command: they resume from {where}."
    )


def check_global_batch(global_batch_size: int, replicas: int) -> None:
    """Refuses, in one line, a global batch the replicas cannot share equally."""
    if global_batch_size % replicas:
        raise UserInputError(
            f"batch_size (the global batch) must divide evenly among the {replicas} replicas; "
            f"pass a multiple of {replicas}. Received: batch_size={global_batch_size}"
        )


EVAL_BATCH_CAP = 256  # examples per evaluation batch at most (memory; results do not change)


def replicas_share(batch_size: int, replicas: int) -> int:
    """`batch_size` down to a multiple of `replicas`, at least one each (Keras under
    MirroredStrategy fails on a batch the replicas cannot share equally)."""
    return max(batch_size - batch_size % replicas, replicas)


def eval_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The evaluation batch of a run: `batch_size` (the replicas' multiple already, see
    `check_global_batch`) up to `EVAL_BATCH_CAP`, shared equally by the replicas."""
    return replicas_share(min(batch_size, EVAL_BATCH_CAP), strategy.num_replicas_in_sync)


def distribute_train_dataset(strategy: tf.distribute.Strategy, dataset_fn, global_batch_size: int):
    """Per-worker sharded, repeated input: `dataset_fn(input_context, per_replica_batch)`.

    Each input pipeline reads its own shard (`input_context`) and batches
    `global_batch_size / num_replicas_in_sync` examples.
    """
    check_global_batch(global_batch_size, strategy.num_replicas_in_sync)

    def per_worker(input_context):
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return dataset_fn(input_context, batch).repeat()

    return strategy.distribute_datasets_from_function(per_worker)


def fit_distributed(
    model,
    strategy,
    dataset,
    *,
    epochs,
    steps_per_epoch,
    model_dir=None,
    resume=True,
    verbose=1,
    backup_every_steps=0,
    validation_data=None,
    preemption=None,
    settings=None,
    validation_freq=1,
    summaries=(),
):
    """Trains a compiled model with `strategy.run(model.train_step, ...)`.

    Args:
        model: a compiled `keras.Model` (e.g. a `DeiT`), built under
            `strategy.scope()`.
        strategy: the `tf.distribute.Strategy` the model was built under.
        dataset: a distributed, infinite dataset
            (`distribute_train_dataset`), or a function
            `(epoch, skip_batches) -> such a dataset` that starts at the
            position a backup resumes at.
        epochs: int. Total epochs (resumed epochs included).
        steps_per_epoch: int. Steps per epoch.
        model_dir: str or None. `backup/`, `checkpoints/` and `tensorboard/`
            go here (chief only); None writes nothing.
        resume: bool. Restore `model_dir/backup` when it exists.
        verbose: int or str. 0 shows nothing; otherwise Keras' one line per
            epoch (`keras.utils.Progbar`, as `fit(verbose=2)`), on the chief.
        backup_every_steps: int. Also back up every this many steps (counted
            from the start of the run); 0: at epoch ends only.
        validation_data: this worker's shard of the evaluation data (a
            `tf.data.Dataset`), or None: no per-epoch validation.
        preemption: a `PreemptionWatcher` or None.
        validation_freq: int. Validate after every this many epochs (as `fit`).
        settings: dict or None. The run's settings, recorded with its backup
            (`backup.Backup`).
        summaries: Keras callbacks writing TensorBoard views (`runner.summaries`):
            on the chief, their `on_train_begin` after the resume and
            `on_epoch_end` after each epoch's outputs.

    Returns:
        A `keras.callbacks.History`-like object: `epoch` (the epoch indices
        run) and `history` (metric name -> per-epoch values).

    Raises:
        FloatingPointError: when the loss becomes NaN/Inf; the backup and
            checkpoint of the last good epoch are kept.
        Preempted: after a SIGTERM on any worker, once the step every worker
            stopped at is backed up.
    """
    chief = is_chief(strategy) and model_dir is not None
    backup = Backup(os.path.join(model_dir, "backup"), settings) if model_dir else None
    if model.optimizer is not None and not model.optimizer.built:
        # As `fit` does: inside `strategy.run` a worker of several local replicas
        # cannot create the optimizer's variables.
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    initial_epoch, initial_batch = _resume(model, strategy, backup if resume else None)
    if callable(dataset):
        dataset = dataset(initial_epoch, initial_batch)
    writers = _summary_writers(model_dir) if chief else {}
    views = _start_summaries(summaries, model, epochs, steps_per_epoch) if chief else []
    train_steps = _distributed_train_steps(model, strategy)
    iterator = iter(dataset)
    history = types.SimpleNamespace(epoch=[], history={})
    for epoch in range(initial_epoch, epochs):
        progress = keras.utils.Progbar(  # logs are running means already
            steps_per_epoch,
            verbose=2 if (verbose and (chief or model_dir is None)) else 0,
            stateful_metrics=[metric.name for metric in model.metrics] + ["lr"],
        )
        run = _EpochRun(model, backup, chief, epoch, steps_per_epoch, model_dir)
        first = initial_batch if epoch == initial_epoch else 0
        logs = run.train(train_steps, iterator, first, progress, preemption, backup_every_steps)
        validate = validation_data is not None and (epoch + 1) % validation_freq == 0
        if validate and not run.preempted:  # a preempted run has no time to validate
            try:
                logs.update(_validate(model, strategy, validation_data))
            except LOST_WORKER as error:
                raise _lost_worker(error, epoch + 1, 0, backup) from None
        progress.update(steps_per_epoch, list(logs.items()), finalize=True)
        history.epoch.append(epoch)
        for name, value in logs.items():
            history.history.setdefault(name, []).append(value)
        if chief:
            _end_of_epoch_outputs(model, backup, model_dir, writers, epoch, logs)
        if run.preempted:  # at the epoch's last step: its end is written, the rest resumes
            raise Preempted(epoch + 1, 0, backup.directory if backup else None)
        for view in views:
            view.on_epoch_end(epoch, logs)
    if epochs > 0 and model.optimizer is not None:  # as `fit`: also when resumed at the end
        with strategy.scope():  # as `fit` ends: with --model_ema the average becomes the model
            model.optimizer.finalize_variable_values(model.trainable_weights)
    for writer in writers.values():
        writer.close()
    for view in views:
        view.on_train_end()
    return history


def _start_summaries(summaries, model, epochs, steps_per_epoch) -> list:
    """`summaries` set on `model` (as `fit` sets its callbacks) and told training began."""
    for view in summaries:
        view.set_model(model)
        view.set_params({"epochs": epochs, "steps": steps_per_epoch, "verbose": 0})
        view.on_train_begin()
    return list(summaries)


def _resume(model, strategy, backup) -> tuple[int, int]:
    """`(epoch, batch)` the run starts at: the backup's, restored into `model`, or (0, 0)."""
    if backup is None:
        return 0, 0
    position = backup.position()
    with strategy.scope():  # the optimizer's variables are built there
        backup.restore(model)
    return position


def _summary_writers(model_dir) -> dict:
    return {
        name: tf.summary.create_file_writer(os.path.join(model_dir, TENSORBOARD, name))
        for name in ("train", "validation")
    }


def _distributed_train_steps(model, strategy):
    """`(iterator, stop) -> (logs, stop)`: one `train_step` on every replica, logs averaged."""

    def replica_step(batch, stop):
        logs = model.train_step(batch)
        # Metric variables are per replica: average the replicas' running
        # means (equal per-replica batches: the global mean), on every worker.
        context = tf.distribute.get_replica_context()
        logs = {
            name: value if name == "lr" else context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
            for name, value in logs.items()
        }
        # Any worker's SIGTERM stops all of them after this same step.
        # (tf.identity: an input tensor as such has no device to reduce from.)
        return logs, context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(stop))

    @tf.function
    def train_steps(iterator, stop):
        logs, stop = strategy.run(replica_step, args=(next(iterator), stop))
        local = strategy.experimental_local_results
        return {name: local(value)[0] for name, value in logs.items()}, local(stop)[0]

    return train_steps


class _EpochRun:
    """The training steps of one epoch: NaN stop, preemption and step backups (chief)."""

    def __init__(self, model, backup, chief, epoch, steps_per_epoch, model_dir):
        self.model, self.backup, self.chief, self.epoch = model, backup, chief, epoch
        self.steps_per_epoch, self.model_dir = steps_per_epoch, model_dir
        self.preempted = False  # at the epoch's last step: the caller ends the epoch, then stops

    def train(self, train_steps, iterator, first, progress, preemption, backup_every_steps):
        """Runs steps `first..steps_per_epoch - 1`; returns the epoch's last logs as floats."""
        for metric in self.model.metrics:
            metric.reset_state()
        logs = {}
        for step in range(first, self.steps_per_epoch):
            requested = float(preemption is not None and preemption.requested)
            try:
                logs, stop = train_steps(iterator, tf.constant(requested, tf.float32))
            except LOST_WORKER as error:
                raise _lost_worker(error, self.epoch, step, self.backup) from None
            loss = float(logs["loss"])
            self._check_finite(loss)
            done = step + 1
            if float(stop) > 0:
                self._stop_preempted(done, logs)
            run_step = self.epoch * self.steps_per_epoch + done
            periodic = backup_every_steps and run_step % backup_every_steps == 0
            if periodic and done < self.steps_per_epoch:
                self._save(self.epoch, done, {"loss": loss})
            if done < self.steps_per_epoch:
                progress.update(done, [(name, float(value)) for name, value in logs.items()])
        return {name: float(value) for name, value in logs.items()}

    def _check_finite(self, loss):
        if not math.isfinite(loss):
            step = int(self.model.optimizer.iterations.numpy())
            raise diverged_error(step, self.model_dir)

    def _stop_preempted(self, done, logs):
        """Mid-epoch: backs up this step and raises `Preempted` (the same on all workers).
        At the epoch's last step: marks the run preempted; the caller writes the epoch's
        end (history record, checkpoint, backup) and stops."""
        if done == self.steps_per_epoch:
            self.preempted = True
            return
        self._save(self.epoch, done, logs)
        raise Preempted(self.epoch, done, self.backup.directory if self.backup else None)

    def _save(self, epoch, batch, logs):
        if self.chief and finite_logs(logs):
            self.backup.save(self.model, epoch, batch)


def _end_of_epoch_outputs(model, backup, model_dir, writers, epoch, logs):
    """The chief's epoch end: history.json, checkpoint, TensorBoard scalars, then the backup
    (killed before it, the resumed run redoes the epoch and rewrites the others)."""
    record_epochs(model_dir, [epoch], {name: [value] for name, value in logs.items()})
    save_epoch_checkpoint(model, os.path.join(model_dir, CHECKPOINTS), epoch, logs)
    for name, value in logs.items():
        validation = name.startswith("val_")
        tag = "learning_rate" if name == "lr" else name.removeprefix("val_")  # as `fit`'s
        with writers["validation" if validation else "train"].as_default():
            tf.summary.scalar(f"epoch_{tag}", value, step=epoch)
    for writer in writers.values():
        writer.flush()
    backup.save(model, epoch + 1)


def fit_multi_worker(
    config,
    model,
    strategy,
    steps_per_epoch,
    dataset_fn,
    validation_fn=None,
    preemption=None,
    summaries=(),
):
    """`fit_distributed` with a run's settings.

    Args:
        config: the run's `TrainConfig`.
        model, strategy, steps_per_epoch: as `fit_distributed`.
        dataset_fn: `(input_context, batch_size, epoch, skip_batches) ->
            tf.data.Dataset`: this input pipeline's batches from `epoch`,
            without its first `skip_batches` (a resumed backup's position).
        validation_fn: `input_context -> tf.data.Dataset` (this worker's
            shard of the evaluation data) or None.
        preemption: a `PreemptionWatcher` or None.
        summaries: as `fit_distributed`.
    """

    def dataset_from(epoch, skip_batches):
        def pipeline(context, batch):
            return dataset_fn(context, batch, epoch, skip_batches * local_replicas(context))

        return distribute_train_dataset(strategy, pipeline, config.batch_size)

    validation = validation_fn(worker_context(strategy)) if validation_fn else None
    return fit_distributed(
        model,
        strategy,
        dataset_from,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        model_dir=config.model_dir,
        resume=config.resume,
        settings=config.flat_settings(),
        verbose=0 if config.fit_verbose == 0 else 1,
        backup_every_steps=config.backup_every_steps,
        validation_data=validation,
        validation_freq=config.validation_freq,
        preemption=preemption,
        summaries=summaries,
    )


__all__ = [
    "all_reduce_sum",
    "check_global_batch",
    "distribute_train_dataset",
    "fit_distributed",
    "fit_multi_worker",
    "is_chief",
    "local_replicas",
    "wait_for_file",
    "worker_context",
]
