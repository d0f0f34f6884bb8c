"""Callbacks of a DeiT run: atomic per-epoch checkpoints, input images in TensorBoard, NaN stop."""

import glob
import json
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from deit_keras.data.transforms import denormalize
from deit_keras.io_utils import atomic_output, write_text_atomic


def finite_logs(logs):
    """False when the epoch's loss is NaN/Inf: such a state must not overwrite a good checkpoint."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def save_epoch_checkpoint(model, directory, epoch, logs=None):
    """Writes `<directory>/last.keras` and `last.json` (epoch, step, scalar logs), each atomically."""
    os.makedirs(directory, exist_ok=True)
    with atomic_output(os.path.join(directory, "last.keras")) as temporary:
        model.save(temporary)
    state = {"epoch": epoch + 1, "step": int(model.optimizer.iterations.numpy())}
    state.update({k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)})
    write_text_atomic(os.path.join(directory, "last.json"), json.dumps(state, indent=1))


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `<directory>/last.keras` (weights + optimizer) and `last.json` each epoch, atomically.

    An epoch whose loss is NaN/Inf is not saved: the last good checkpoint stays.
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        if finite_logs(logs):
            save_epoch_checkpoint(self.model, self.directory, epoch, logs)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose saves survive a crash at any instant.

    Keras writes `latest.weights.h5` and `training_metadata.json` in place,
    one after the other: a kill in between leaves a torn or mismatched pair.
    Here each save goes to a new directory `epoch-<N>/` (weights with the
    optimizer state, and the metadata), which appears by one rename; then
    `latest.json` is switched to it by another, and only then are older
    states removed. A crash leaves either the old or the new state, whole.
    Epochs with a NaN/Inf loss are not saved.

    Args:
        backup_dir: str. Directory of this run's backups only.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self._pointer = os.path.join(backup_dir, "latest.json")

    def _latest(self):
        if not os.path.exists(self._pointer):
            return None
        with open(self._pointer, encoding="utf-8") as handle:
            return json.load(handle)

    def restored_epoch(self):
        """The epoch a run in this directory resumes at (0: starts afresh)."""
        latest = self._latest()
        return 0 if latest is None else int(latest["epoch"])

    def _load_model(self):
        latest = self._latest()
        if latest is None:
            return
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model before fit().")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, latest["dir"], "state.weights.h5"))
        self.model._initial_epoch = int(latest["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        if finite_logs(logs):
            self._save_model()

    def _save_model(self):
        name = f"epoch-{self._current_epoch:05d}"
        with atomic_output(os.path.join(self.backup_dir, name)) as temporary:
            os.makedirs(temporary)
            self.model.save_weights(os.path.join(temporary, "state.weights.h5"))
        state = {"epoch": self._current_epoch, "dir": name,
                 "step": int(self.model.optimizer.iterations.numpy())}
        write_text_atomic(self._pointer, json.dumps(state))
        for old in glob.glob(os.path.join(self.backup_dir, "epoch-*")):
            if os.path.basename(old) != name:
                shutil.rmtree(old, ignore_errors=True)


class StopOnNaN(keras.callbacks.Callback):
    """Stops at the first non-finite loss, naming the step; earlier checkpoints stay as they were."""

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

    def __init__(self, log_dir, images, max_images=8):
        super().__init__()
        self.log_dir = log_dir
        self.images = images[:max_images]

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        pixels = tf.clip_by_value(denormalize(self.images) / 255.0, 0.0, 1.0)
        with writer.as_default():
            tf.summary.image("augmented_inputs", pixels, step=0, max_outputs=len(self.images))
        writer.close()
