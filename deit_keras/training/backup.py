"""Crash-safe backups of a run's training state (weights, optimizer, position), and resume.

One format for both loops: `fit` through `AtomicBackupAndRestore`, the
multi-worker loop and the preemption watcher through `Backup` itself.
"""

import contextlib
import glob
import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from deit_keras.errors import UserInputError
from deit_keras.io.atomic import (
    atomic_output,
    check_free_space,
    temporary_prefix,
    write_text_atomic,
)
from deit_keras.training.callbacks import SaveInterval, finite_logs
from deit_keras.training.preemption import Preempted

SETTINGS_FILE = "settings.json"
ADAPTERS_FILE = "adapters.weights.h5"
SEEDS_FILE = "seeds.npy"


def seed_states(model) -> list:
    """The model's random-number generator states (the `SeedGenerator`s of its DropPath
    and dropout layers), in a fixed order; `save_weights` leaves them out, and a resumed
    run that starts them afresh draws other stochastic-depth masks."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


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
            self._restore_seeds(model, os.path.join(self.directory, latest["dir"], SEEDS_FILE))
            if adapters is not None:
                adapters.load_weights(adapters_file)
        except ValueError as error:  # Keras: shapes or variables that do not match
            raise BackupMismatchError(self._mismatch(error)) from error
        except OSError as error:  # h5py: a truncated or overwritten file
            raise self._damaged(state_file, " ".join(str(error).split())[:200]) from error
        return int(latest["epoch"])

    def _restore_seeds(self, model, path):
        if not os.path.exists(path):
            return  # a backup of a model without generators, or from before they were saved
        values, seeds = np.load(path), seed_states(model)
        if len(values) != len(seeds):
            raise BackupMismatchError(self._mismatch(f"{len(values)} seed states, {len(seeds)}"))
        for seed, value in zip(seeds, values, strict=True):
            seed.assign(value)

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
                settings = json.load(handle)
        except FileNotFoundError:
            return {}  # a backup written before settings were recorded
        except OSError as error:
            raise self._damaged(path, f"unreadable: {error}") from error
        except ValueError as error:
            raise self._damaged(path, f"not JSON: {error}") from error
        if not isinstance(settings, dict):
            raise self._damaged(path, f"not a run's settings: {str(settings)[:80]}")
        return settings

    def save(self, model, epoch: int, batch: int = 0) -> None:
        """Saves `model` as the state after `epoch` epochs and `batch` batches of the next."""
        name = f"epoch-{epoch:05d}" + (f"-batch-{batch:07d}" if batch else "")
        check_free_space(os.path.join(self.directory, name), _state_bytes(model))
        with atomic_output(os.path.join(self.directory, name)) as temporary:
            os.makedirs(temporary)
            model.save_weights(os.path.join(temporary, "state.weights.h5"))
            seeds = seed_states(model)
            if seeds:
                np.save(os.path.join(temporary, SEEDS_FILE), np.stack([s.numpy() for s in seeds]))
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
        epoch_end_callbacks: callbacks whose `on_epoch_end` a preemption at an
            epoch's last step, or during its validation, runs (with the epoch's
            training logs) before backing up the finished epoch: the resumed run
            starts after it, so the run's history record and checkpoint of that
            epoch are written now or never.
    """

    def __init__(
        self,
        backup_dir,
        every_steps=0,
        steps_per_epoch=None,
        preemption=None,
        min_interval_s=0.0,
        settings=None,
        epoch_end_callbacks=(),
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
        self.epoch_end_callbacks = tuple(epoch_end_callbacks)
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
                self._save_finished_epoch(logs)
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
                self._save_finished_epoch(self._train_logs)
            epoch, batch = self.backup.position()
            raise Preempted(epoch, batch, self.backup_dir)

    def _save_finished_epoch(self, logs):
        """A preempted run's finished epoch: its end without validation, then its backup."""
        for callback in self.epoch_end_callbacks:
            callback.on_epoch_end(self._current_epoch, dict(logs or {}))
        self.backup.save(self.model, self._current_epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if finite_logs(logs) and self.interval.due(epoch, (self.params or {}).get("epochs")):
            self.backup.save(self.model, epoch + 1)
            self.interval.saved()
