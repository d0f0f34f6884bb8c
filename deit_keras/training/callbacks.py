"""Callbacks of a DeiT run: atomic checkpoints, TensorBoard views of a run, NaN stop."""

import json
import math
import os
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
    write_text_atomic,
)


def finite_logs(logs: dict | None) -> bool:
    """False when the epoch's loss is NaN/Inf: such a state must not overwrite a good checkpoint."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


CHECKPOINTS = "checkpoints"  # under model_dir: the epoch checkpoint, last.keras + last.json
TENSORBOARD = "tensorboard"  # under model_dir: train/, validation/, inputs/, distillation/


def last_checkpoint(model_dir: str | None) -> str:
    """Where a run's epoch checkpoint is (`save_epoch_checkpoint` into `model_dir/checkpoints`)."""
    return os.path.join(model_dir or ".", CHECKPOINTS, "last.keras")


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


class EpochScalars(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, the logs' `lr` left out: it writes the optimizer's
    learning rate itself (`epoch_learning_rate`), so the curve is drawn once."""

    def on_epoch_end(self, epoch, logs=None):
        logs = {name: value for name, value in (logs or {}).items() if name != "lr"}
        super().on_epoch_end(epoch, logs)


class HistoryFile(keras.callbacks.Callback):
    """Adds each epoch's logs (training and validation) to `model_dir/history.json`."""

    def __init__(self, model_dir: str):
        super().__init__()
        self.model_dir = model_dir

    def on_epoch_end(self, epoch, logs=None):
        record_epochs(self.model_dir, [epoch], {k: [v] for k, v in (logs or {}).items()})


def diverged_error(step: int, model_dir: str | None) -> TrainingDivergedError:
    """The one line of a run whose loss became NaN/Inf, naming its last checkpoint if any."""
    checkpoint = last_checkpoint(model_dir)
    if os.path.exists(checkpoint):
        saved = f"the last good checkpoint is {checkpoint}"
    else:
        saved = "no checkpoint was saved before it"
    return TrainingDivergedError(
        f"Loss became NaN/Inf at step {step}; {saved}. Lower --lr or check the data."
    )


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, its "Epoch e/N" counted over the whole run.

    A resumed run trains the rest of its backup's epoch in a `fit` of its own
    (`training.inputs.train_phases`), whose epochs Keras would show as "Epoch 2/2"
    in a 4-epoch run.

    Args:
        epochs: the run's epochs (`--epochs`).
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.run_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.run_epochs


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
    """Writes a few augmented training inputs to TensorBoard once, when training starts
    from step 0 (a resumed run, or a later phase of one, adds no second image at step 0).

    Args:
        log_dir: str. The run's TensorBoard directory.
        take_images: a function returning a normalised batch of augmented inputs, called
            only when they are written: a resumed run reads no batch (a training stream's
            first batch fills its shuffle buffer, 10,000 records at ImageNet scale).
        max_images: int. Images written.
        preprocessing: the `Preprocessing` that normalised them.
    """

    def __init__(self, log_dir, take_images, max_images=8, preprocessing=DEFAULT_PREPROCESSING):
        super().__init__()
        self.log_dir = log_dir
        self.take_images = take_images
        self.max_images = max_images
        self.preprocessing = preprocessing

    def on_train_begin(self, logs=None):
        if int(self.model.optimizer.iterations.numpy()) != 0:
            return
        images = self.take_images()[: self.max_images]
        # A folder of its own: TensorBoard follows the newest event file of a folder only,
        # so a second writer beside Keras' in `train` hid the live training curves.
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "inputs"))
        pixels = tf.clip_by_value(denormalize(images, self.preprocessing) / 255.0, 0.0, 1.0)
        with writer.as_default():
            tf.summary.image("augmented_inputs", pixels, step=0, max_outputs=len(images))
        writer.close()


class DistillationSummaries(keras.callbacks.Callback):
    """Shows distillation at work in TensorBoard, every `every_n_epochs` epochs.

    Under `log_dir/distillation` (a folder of its own, as `InputImages`'): for
    each of a few fixed validation images,
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
        epochs: int or None. The run's epochs, whose last is written; None for
            those of the `fit` call (a resumed run's first call ends early).
    """

    def __init__(
        self,
        log_dir,
        images,
        every_n_epochs=5,
        preprocessing=DEFAULT_PREPROCESSING,
        max_images=2,
        epochs=None,
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
        self.epochs = epochs
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == (self.epochs or self.params.get("epochs"))
        if epoch % self.every_n_epochs and not last:
            return
        # One writer per fit, not one per epoch: TensorBoard reads on in a folder's newest
        # event file only. A second fit (a resumed run's) opens its own after `on_train_end`.
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "distillation"))
        with self._writer.as_default():
            self._write_attention(epoch)
            if self.model.distilled:
                similarities = token_cosine_similarity(self.model, self.images)
                for layer, value in enumerate(similarities):
                    tf.summary.scalar(f"token_cosine/layer_{layer}", value, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_attention(self, epoch):
        images = self.images[: self.max_images]
        pixels = denormalize(images, self.preprocessing)
        pixels = np.clip(np.asarray(pixels), 0, 255).astype(np.uint8)
        # One forward pass for all the images: eager passes cost ~0.13 s each (digits).
        for index, maps in enumerate(batch_attention_maps(self.model, images)):
            figure = attention_figure(pixels[index], maps)
            picture = np.asarray(figure, dtype=np.float32)[None] / 255.0
            tf.summary.image(f"attention/{index}", picture, step=epoch)
