"""Callbacks of a DeiT run: atomic checkpoints, TensorBoard views of a run, NaN stop."""

import contextlib
import glob
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from deit_keras.analysis.attention import batch_attention_maps, token_cosine_similarity
from deit_keras.analysis.drawing import attention_figure
from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING, denormalize
from deit_keras.errors import TrainingDivergedError, UserInputError
from deit_keras.io.atomic import (
    atomic_output,
    check_free_space,
    temporary_prefix,
    write_text_atomic,
)
from deit_keras.training.preemption import Preempted


def finite_logs(logs: dict | None) -> bool:
    """False when the epoch's loss is NaN/Inf: such a state must not overwrite a good checkpoint."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def save_epoch_checkpoint(
    model: keras.Model, directory: str, epoch: int, logs: dict | None = None
) -> None:
    """Writes `<directory>/last.keras` and `last.json` (epoch, step, scalar logs) atomically."""
    os.makedirs(directory, exist_ok=True)
    with atomic_output(os.path.join(directory, "last.keras")) as temporary:
        model.save(temporary)
    state = {"epoch": epoch + 1, "step": int(model.optimizer.iterations.numpy())}
    state.update({k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)})
    write_text_atomic(os.path.join(directory, "last.json"), json.dumps(state, indent=1))


class SaveInterval:
    """Whether an epoch-end save is due: at most one per `min_interval_s` seconds, the last always.

    A save of a small model takes 0.1-0.5 s on 2 CPU cores, as long as a
    whole epoch of digits; with an interval, short epochs share one save and
    a crash loses at most that much training. 0 saves every epoch.
    """

    def __init__(self, min_interval_s: float = 0.0):
        if min_interval_s < 0:
            raise UserInputError(f"min_interval_s must be >= 0. Received: {min_interval_s}")
        self.min_interval_s = min_interval_s
        self._last = None

    def due(self, epoch: int, epochs: int | None) -> bool:
        """True for the first and the last epoch, else once `min_interval_s` have passed."""
        if self._last is None or (epochs is not None and epoch + 1 >= epochs):
            return True
        return time.monotonic() - self._last >= self.min_interval_s

    def saved(self) -> None:
        self._last = time.monotonic()


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `<directory>/last.keras` (weights + optimizer) and `last.json` each epoch, atomically.

    An epoch whose loss is NaN/Inf is not saved: the last good checkpoint stays.
    With `min_interval_s`, an epoch ending sooner than that after the last
    save is skipped (`SaveInterval`); the last epoch, or the last good one
    of a run that stops early, is always saved.
    """

    def __init__(self, directory, min_interval_s=0.0):
        super().__init__()
        self.directory = directory
        self.interval = SaveInterval(min_interval_s)
        self._unsaved = None

    def on_epoch_end(self, epoch, logs=None):
        if not finite_logs(logs):
            return
        self._unsaved = (epoch, logs)
        if self.interval.due(epoch, (self.params or {}).get("epochs")):
            self._save()

    def on_train_end(self, logs=None):
        if self._unsaved is not None:
            self._save()

    def _save(self):
        save_epoch_checkpoint(self.model, self.directory, *self._unsaved)
        self.interval.saved()
        self._unsaved = None


SETTINGS_FILE = "settings.json"
ADAPTERS_FILE = "adapters.weights.h5"


def training_only_state(model):
    """The model's training-only weights outside it (feature-distillation adapters, with
    their optimizer), as a `keras.Model`; None when it has none."""
    step = getattr(model, "distillation_step", None)
    features = getattr(step, "features", None)
    return None if features is None else features.adapters


class BackupMismatchError(UserInputError):
    """A backup in `--model_dir` that does not fit the model of this run's settings."""


class BackupDamagedError(UserInputError):
    """A backup in `--model_dir` that cannot be read (its pointer or state file damaged)."""


# HDF5's own bytes per stored array (headers, names, attributes) and per file.
_H5_BYTES_PER_ARRAY, _H5_BYTES_PER_FILE = 2048, 1 << 16


def _state_bytes(model) -> int:
    """About what a backup of `model` (weights and optimizer state) takes on disk."""
    arrays = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        arrays += list(model.optimizer.variables)
    data = sum(int(np.prod(array.shape)) * tf.as_dtype(array.dtype).size for array in arrays)
    return data + _H5_BYTES_PER_ARRAY * len(arrays) + _H5_BYTES_PER_FILE


class Backup:
    """A crash-safe backup of weights and optimizer state, one directory per save.

    Each save goes to a new directory `epoch-<N>/` (or `epoch-<N>-batch-<B>/`
    in the middle of epoch N + 1; `state.weights.h5`: the weights with the
    optimizer state; `adapters.weights.h5`: with feature distillation, the
    training-only adapters and their optimizer's state), which appears by
    one rename; then `latest.json`
    (`{"epoch", "batch", "dir", "step", "run_s"}`) is switched to it by another, and
    only then are older states removed. A crash at any instant leaves
    either the old or the new state, whole. `AtomicBackupAndRestore` (for
    `fit`) and the multi-worker loop both use this one format.

    Args:
        directory: str. Directory of this run's backups only.
        settings: dict or None. The run's settings (JSON-able), written beside
            the states as `settings.json`: a restore that does not fit the
            model names the settings that differ from the current run's.
    """

    def __init__(self, directory: str, settings: dict | None = None):
        self.directory = directory
        self.pointer = os.path.join(directory, "latest.json")
        self.settings = settings
        self._uncounted_since = time.monotonic()  # this process's time not yet in a save

    def run_seconds(self) -> float:
        """The run's seconds up to its latest save, over every process that trained it
        (each from when it opened its backup, to its last save; a finished run's whole
        wall time, `record_run_seconds`); 0 without a backup."""
        latest = self.latest()
        return float(latest.get("run_s", 0.0)) if latest else 0.0

    def record_run_seconds(self, seconds: float) -> None:
        """Records a finished run's wall time (its teacher, evaluation and export too), from
        which a rerun that extends it (more `--epochs`) counts on."""
        latest = self.latest()
        if latest is not None:
            write_text_atomic(self.pointer, json.dumps(dict(latest, run_s=round(seconds, 1))))

    def clear(self) -> None:
        """Removes the backup's files (states, pointer, settings, leftovers of a crashed
        save); anything else in the directory is not ours and stays."""
        if not os.path.isdir(self.directory):
            return
        ours = (os.path.basename(self.pointer), SETTINGS_FILE)
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.startswith(("epoch-", ".epoch-")) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif name in ours or name.startswith(tuple(map(temporary_prefix, ours))):
                os.remove(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # when nothing else is there

    def _settings_path(self) -> str:
        return os.path.join(self.directory, SETTINGS_FILE)

    def latest(self) -> dict | None:
        """The pointer's `{"epoch", "batch", "dir", "step"}`; None when nothing is backed up.

        Raises:
            BackupDamagedError: the pointer is not one this class writes.
        """
        if not os.path.exists(self.pointer):
            return None
        try:
            with open(self.pointer, encoding="utf-8") as handle:
                latest = json.load(handle)
        except (UnicodeDecodeError, ValueError) as error:
            raise self._damaged(self.pointer, f"not JSON: {error}") from error
        if not (
            isinstance(latest, dict)
            and isinstance(latest.get("epoch"), int)
            and isinstance(latest.get("dir"), str)
            and isinstance(latest.get("batch", 0), int)
        ):
            raise self._damaged(self.pointer, f"not a backup pointer: {str(latest)[:80]}")
        return latest

    def _damaged(self, path: str, reason: str) -> BackupDamagedError:
        return BackupDamagedError(
            f"The backup in {self.directory} is damaged ({path}: {reason}). Delete "
            f"{self.directory} or pass --noresume to start afresh, or use another --model_dir."
        )

    def restored_epoch(self) -> int:
        """The epoch a run in this directory resumes at (0: starts afresh)."""
        return self.position()[0]

    def position(self) -> tuple[int, int]:
        """`(epoch, batch)` a run resumes at: completed epochs, batches done in the next."""
        latest = self.latest()
        if latest is None:
            return 0, 0
        return int(latest["epoch"]), int(latest.get("batch", 0))

    def restore(self, model) -> int:
        """Loads the latest state into `model`; returns its epoch (0 when there is none)."""
        latest = self.latest()
        if latest is None:
            return 0
        if not model.built:
            raise RuntimeError("Restoring a backup needs a built model.")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        adapters = training_only_state(model)
        adapters_file = os.path.join(self.directory, latest["dir"], ADAPTERS_FILE)
        if adapters is not None and not os.path.exists(adapters_file):
            raise BackupMismatchError(
                self._mismatch("the backup has no feature-distillation adapters")
            )
        state_file = os.path.join(self.directory, latest["dir"], "state.weights.h5")
        if not os.path.isfile(state_file):
            raise self._damaged(state_file, "missing")
        try:
            model.load_weights(state_file)
            if adapters is not None:
                adapters.load_weights(adapters_file)
        except ValueError as error:  # Keras: shapes or variables that do not match
            raise BackupMismatchError(self._mismatch(error)) from error
        except OSError as error:  # h5py: a truncated or overwritten file
            raise self._damaged(state_file, " ".join(str(error).split())[:200]) from error
        return int(latest["epoch"])

    def check_settings(self, settings: dict) -> None:
        """Raises `BackupMismatchError` when the backup was made with other `settings`.

        Only keys that both the backup's `settings.json` and `settings` hold are
        compared (a setting added since, or left out by the caller, passes); a
        backup without `settings.json`, or no backup, passes.
        """
        if self.latest() is None:
            return
        differ = self._differences(settings)
        if differ:
            raise BackupMismatchError(
                f"The backup in {self.directory} belongs to a run with other settings "
                f"({'; '.join(differ)}). Use another --model_dir, --noresume to start afresh, "
                f"or the same settings to resume it."
            )

    def _differences(self, settings: dict | None) -> list[str]:
        stored = self._stored_settings()
        return [
            f"{key} {stored.get(key)!r} there, {value!r} now"
            for key, value in sorted((settings or {}).items())
            if key in stored and stored[key] != value
        ]

    def _mismatch(self, error) -> str:
        differ = self._differences(self.settings)
        what = f"settings that differ: {'; '.join(differ)}" if differ else f"Keras: {error}"
        return (
            f"The backup in {self.directory} belongs to a run whose model does not match this "
            f"one ({what}). Use another --model_dir, or delete {self.directory} to start afresh."
        )

    def _stored_settings(self) -> dict:
        path = os.path.join(self.directory, SETTINGS_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}  # a backup written before settings were recorded

    def save(self, model, epoch: int, batch: int = 0) -> None:
        """Saves `model` as the state after `epoch` epochs and `batch` batches of the next."""
        name = f"epoch-{epoch:05d}" + (f"-batch-{batch:07d}" if batch else "")
        check_free_space(os.path.join(self.directory, name), _state_bytes(model))
        with atomic_output(os.path.join(self.directory, name)) as temporary:
            os.makedirs(temporary)
            model.save_weights(os.path.join(temporary, "state.weights.h5"))
            adapters = training_only_state(model)
            if adapters is not None:
                adapters.save_weights(os.path.join(temporary, ADAPTERS_FILE))
        if self.settings is not None and not os.path.exists(self._settings_path()):
            write_text_atomic(self._settings_path(), json.dumps(self.settings, indent=1))
        now = time.monotonic()
        state = {
            "epoch": epoch,
            "batch": batch,
            "dir": name,
            "step": int(model.optimizer.iterations.numpy()),
            "run_s": round(self.run_seconds() + now - self._uncounted_since, 1),
        }
        write_text_atomic(self.pointer, json.dumps(state))
        self._uncounted_since = now
        for old in glob.glob(os.path.join(self.directory, "epoch-*")):
            if os.path.basename(old) != name:
                shutil.rmtree(old, ignore_errors=True)


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Crash-safe backups of a `fit` run, and its resume: public Keras hooks only.

    Keras' own `BackupAndRestore` writes `latest.weights.h5` and
    `training_metadata.json` in place, one after the other (a kill in between
    leaves a torn or mismatched pair), and with `save_freq=N` it records the
    batch but resumes at the start of the epoch, replaying batches. Here saves
    use the `Backup` format, which records the batch. Resuming is the caller's
    explicit step, before `fit`: `resume()` loads the latest state and returns
    `(epoch, batch)`; the caller passes `initial_epoch=epoch` to `fit` and
    skips `batch` batches (`inputs.train_phases`). Epochs or steps with a
    NaN/Inf loss are not saved.

    Args:
        backup_dir: str. Directory of this run's backups only.
        every_steps: int. Also save every this many training steps (counted
            from the start of the run, so the same steps whether resumed or
            not); 0 saves at epoch ends only. Defaults to 0.
        steps_per_epoch: int or None. Steps of a whole epoch; needed with
            `every_steps`.
        preemption: a `PreemptionWatcher` or None. When it fires, the state
            after the current step is saved and `Preempted` raised.
        min_interval_s: float. Epoch-end saves at most this often
            (`SaveInterval`: the first and last epoch always); 0 saves every
            epoch. Defaults to 0.
        settings: dict or None. The run's settings, recorded with the backup
            (see `Backup`).
    """

    def __init__(
        self,
        backup_dir,
        every_steps=0,
        steps_per_epoch=None,
        preemption=None,
        min_interval_s=0.0,
        settings=None,
    ):
        super().__init__()
        if every_steps and not steps_per_epoch:
            raise UserInputError("every_steps needs steps_per_epoch.")
        self.backup_dir = backup_dir
        self.backup = Backup(backup_dir, settings)
        self.interval = SaveInterval(min_interval_s)
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.preemption = preemption
        self._resumed_at = (0, 0)
        self._current_epoch = 0
        self._first_batch = 0
        self._train_logs = None  # of the last training step

    def restored_epoch(self):
        """The epoch a run in this directory resumes at (0: starts afresh)."""
        return self.backup.restored_epoch()

    def resume(self, model=None) -> tuple[int, int]:
        """Loads the latest backup into `model` (default: the callback's); `(epoch, batch)`."""
        model = model if model is not None else self.model
        if self.backup.latest() is not None:
            self.backup.restore(model)
            self._resumed_at = self.backup.position()
        return self._resumed_at

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        resumed_epoch, resumed_batch = self._resumed_at
        self._first_batch = resumed_batch if epoch == resumed_epoch else 0

    def on_train_batch_end(self, batch, logs=None):
        done = self._first_batch + batch + 1  # batches of this epoch done
        preempted = self.preemption is not None and self.preemption.requested
        periodic = bool(self.every_steps) and (
            (self._current_epoch * self.steps_per_epoch + done) % self.every_steps == 0
        )
        if (preempted or periodic) and finite_logs(logs):
            if done != self.steps_per_epoch:
                self.backup.save(self.model, self._current_epoch, done)
            elif preempted:  # the epoch's last step: saved as a whole epoch
                self.backup.save(self.model, self._current_epoch + 1)
        self._train_logs = logs
        if preempted:
            epoch, batch = self.backup.position()
            raise Preempted(epoch, batch, self.backup_dir)

    def on_test_batch_end(self, batch, logs=None):
        # A SIGTERM during the epoch-end validation: the epoch's training is
        # done; back it up now rather than after a validation that may outlast
        # the grace period.
        if self.preemption is not None and self.preemption.requested:
            if finite_logs(self._train_logs):
                self.backup.save(self.model, self._current_epoch + 1)
            epoch, batch = self.backup.position()
            raise Preempted(epoch, batch, self.backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        if finite_logs(logs) and self.interval.due(epoch, (self.params or {}).get("epochs")):
            self.backup.save(self.model, epoch + 1)
            self.interval.saved()


HISTORY_FILE = "history.json"


def read_history(model_dir: str) -> list[dict]:
    """A run's per-epoch records, `[{"epoch": 0, "loss": ..., "val_top1": ...}, ...]`."""
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["epochs"]


def record_epochs(model_dir: str, epochs: list[int], logs: dict[str, list]) -> None:
    """Writes `model_dir/history.json` (atomically) with `logs` of `epochs` added.

    The records of those epochs replace older ones (a resumed run redoes the
    epochs after its backup); earlier epochs are kept, so one file holds the
    whole run however often it was resumed.
    """
    records = {record["epoch"]: record for record in read_history(model_dir)}
    for index, epoch in enumerate(epochs):
        record = {"epoch": int(epoch)}
        for name, values in logs.items():
            if index < len(values) and np.isscalar(values[index]):
                value = float(values[index])
                record[name] = value if math.isfinite(value) else None  # JSON has no NaN
        records[int(epoch)] = record
    keep = [records[epoch] for epoch in sorted(records)]
    text = json.dumps({"epochs": keep}, indent=1)
    write_text_atomic(os.path.join(model_dir, HISTORY_FILE), text)


class HistoryFile(keras.callbacks.Callback):
    """Adds each epoch's logs (training and validation) to `model_dir/history.json`."""

    def __init__(self, model_dir: str):
        super().__init__()
        self.model_dir = model_dir

    def on_epoch_end(self, epoch, logs=None):
        record_epochs(self.model_dir, [epoch], {k: [v] for k, v in (logs or {}).items()})


def diverged_error(step: int, model_dir: str | None) -> TrainingDivergedError:
    """The one line of a run whose loss became NaN/Inf, naming its last checkpoint if any."""
    checkpoint = os.path.join(model_dir or ".", "checkpoints", "last.keras")
    if os.path.exists(checkpoint):
        saved = f"the last good checkpoint is {checkpoint}"
    else:
        saved = "no checkpoint was saved before it"
    return TrainingDivergedError(
        f"Loss became NaN/Inf at step {step}; {saved}. Lower --lr or check the data."
    )


class StopOnNaN(keras.callbacks.Callback):
    """Stops at the first non-finite loss, naming the step; earlier checkpoints stay as they are."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


class InputImages(keras.callbacks.Callback):
    """Writes a few augmented training inputs to TensorBoard once, at the start."""

    def __init__(self, log_dir, images, max_images=8, preprocessing=DEFAULT_PREPROCESSING):
        super().__init__()
        self.log_dir = log_dir
        self.images = images[:max_images]
        self.preprocessing = preprocessing

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        pixels = tf.clip_by_value(denormalize(self.images, self.preprocessing) / 255.0, 0.0, 1.0)
        with writer.as_default():
            tf.summary.image("augmented_inputs", pixels, step=0, max_outputs=len(self.images))
        writer.close()


class DistillationSummaries(keras.callbacks.Callback):
    """Shows distillation at work in TensorBoard, every `every_n_epochs` epochs.

    Under `log_dir/validation`: for each of a few fixed validation images,
    the last layer's attention of the class and distillation tokens (per
    head, and rolled out over all layers) as `attention/<i>`; and the cosine
    similarity of the two tokens after each block as
    `token_cosine/layer_<k>` (layer 0 = the input tokens). The paper reports
    0.06 at the input rising to 0.93 at the last layer of a trained DeiT-B:
    the tokens start apart and converge, without becoming equal.

    Args:
        log_dir: str. The run's TensorBoard directory.
        images: normalised validation images `[N, S, S, 3]`, `S` the model's size.
        every_n_epochs: int. Write at epochs `0, n, 2n, ...` and the last.
        preprocessing: the `Preprocessing` that normalised `images`.
        max_images: int. Attention figures written per epoch.
    """

    def __init__(
        self,
        log_dir,
        images,
        every_n_epochs=5,
        preprocessing=DEFAULT_PREPROCESSING,
        max_images=2,
    ):
        super().__init__()
        if every_n_epochs <= 0:
            raise UserInputError(
                f"every_n_epochs must be positive. Received: every_n_epochs={every_n_epochs}"
            )
        self.log_dir = log_dir
        self.images = images
        self.every_n_epochs = every_n_epochs
        self.preprocessing = preprocessing
        self.max_images = max_images

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if epoch % self.every_n_epochs and not last:
            return
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        with writer.as_default():
            self._write_attention(epoch)
            if self.model.distilled:
                similarities = token_cosine_similarity(self.model, self.images)
                for layer, value in enumerate(similarities):
                    tf.summary.scalar(f"token_cosine/layer_{layer}", value, step=epoch)
        writer.close()

    def _write_attention(self, epoch):
        images = self.images[: self.max_images]
        pixels = denormalize(images, self.preprocessing)
        pixels = np.clip(np.asarray(pixels), 0, 255).astype(np.uint8)
        # One forward pass for all the images: eager passes cost ~0.13 s each (digits).
        for index, maps in enumerate(batch_attention_maps(self.model, images)):
            figure = attention_figure(pixels[index], maps)
            picture = np.asarray(figure, dtype=np.float32)[None] / 255.0
            tf.summary.image(f"attention/{index}", picture, step=epoch)
