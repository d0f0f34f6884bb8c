"""Callbacks of a DeiT run: atomic per-epoch checkpoints, input images in TensorBoard, NaN stop."""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from deit_keras.data.transforms import denormalize
from deit_keras.io_utils import atomic_output, write_text_atomic


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `<directory>/last.keras` (weights + optimizer) and `last.json` each epoch, atomically."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        with atomic_output(os.path.join(self.directory, "last.keras")) as temporary:
            self.model.save(temporary)
        state = {"epoch": epoch + 1, "step": int(self.model.optimizer.iterations.numpy())}
        state.update({k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)})
        write_text_atomic(os.path.join(self.directory, "last.json"), json.dumps(state, indent=1))


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
