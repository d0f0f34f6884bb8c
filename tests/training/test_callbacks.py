"""Resuming through a backup continues epoch, step, learning rate and optimizer state."""

import keras
import numpy as np
import pytest

from deit_keras.testing import batches, compiled, tiny_model
from deit_keras.training import callbacks as callbacks_lib


def test_resume_continues_epoch_step_lr_and_optimizer_state(tmp_path):
    images, labels = batches(count=3)

    def run(epochs, backup=None):
        keras.utils.set_random_seed(0)
        model = compiled(tiny_model(), None, distillation="none")
        callbacks = (
            [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)]
            if backup
            else []
        )
        history = model.fit(
            images,
            labels,
            batch_size=4,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return model, history

    straight, _ = run(3)
    run(2, tmp_path)  # "crashes" after two epochs
    resumed, history = run(3, tmp_path)
    assert len(history.epoch) == 1 and history.epoch == [2]
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 9
    np.testing.assert_allclose(
        float(resumed.optimizer.learning_rate), float(straight.optimizer.learning_rate)
    )
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _summaries(directory):
    """`{tag: [(step, value or image shape), ...]}` from the event files under `directory`."""
    import glob

    import tensorflow as tf

    found = {}
    for path in glob.glob(f"{directory}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    decoded = tf.io.decode_png(tensor[2]).shape
                    found.setdefault(value.tag, []).append((event.step, tuple(decoded)))
                else:
                    found.setdefault(value.tag, []).append((event.step, float(tensor)))
    return {tag: sorted(values) for tag, values in found.items()}  # one file per writer


def test_tensorboard_draws_the_learning_rate_once(tmp_path):
    """The logs' `lr` and Keras' own `learning_rate` were two tags of one curve."""
    images, labels = batches(count=2)
    model = compiled(tiny_model(), None, distillation="none")
    scalars = callbacks_lib.EpochScalars(str(tmp_path))
    history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0, callbacks=[scalars])
    found = _summaries(tmp_path / "train")
    assert "epoch_lr" not in found and "epoch_loss" in found
    written = [value for _, value in found["epoch_learning_rate"]]
    np.testing.assert_allclose(written, history.history["lr"], rtol=1e-6)
    assert history.history["lr"][0] != history.history["lr"][1]


def test_distillation_summaries_write_attention_and_token_similarity(tmp_path):
    from deit_keras.analysis.attention import token_cosine_similarity
    from deit_keras.testing import random_images
    from deit_keras.training.callbacks import DistillationSummaries

    model = tiny_model()
    images = random_images()[:3]
    callback = DistillationSummaries(str(tmp_path), images, every_n_epochs=2, max_images=2)
    callback.set_model(model)
    callback.set_params({"epochs": 4})
    for epoch in range(4):
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    found = _summaries(tmp_path / "distillation")
    # One event file: TensorBoard follows a folder's newest (a writer per epoch made three).
    assert len(list((tmp_path / "distillation").iterdir())) == 1
    expected = token_cosine_similarity(model, images)
    assert len(expected) == model.depth + 1
    for layer, value in enumerate(expected):
        steps = found[f"token_cosine/layer_{layer}"]
        assert [step for step, _ in steps] == [0, 2, 3]  # every 2 epochs, and the last
        np.testing.assert_allclose([v for _, v in steps], value, rtol=1e-5)
    for index in range(2):
        steps = found[f"attention/{index}"]
        assert [step for step, _ in steps] == [0, 2, 3]
        height, width, channels = steps[0][1]
        assert channels == 3 and width > height > 0  # rows cls/dist, columns input/rollout/heads
    assert "attention/2" not in found

    # A resumed run's first `fit` ends with the interrupted epoch (params' epochs = 2):
    # not the run's last, so not written off the every-2 grid.
    resumed = DistillationSummaries(str(tmp_path / "r"), images, every_n_epochs=2, epochs=4)
    resumed.set_model(model)
    resumed.set_params({"epochs": 2})
    resumed.on_epoch_end(1)
    assert not (tmp_path / "r").exists()


def test_augmented_inputs_are_written_once_from_step_0_not_on_each_resume(tmp_path):
    from deit_keras.testing import random_images

    model = compiled(tiny_model(), None, "none")
    model.optimizer.build(model.trainable_variables)
    taken = []

    def take_images():
        taken.append(1)
        return random_images(batch=3)

    callback = callbacks_lib.InputImages(str(tmp_path), take_images, max_images=2)
    callback.set_model(model)
    callback.on_train_begin()
    model.optimizer.iterations.assign(22)  # a resumed run, or the next phase of this one
    callback.on_train_begin()
    steps = _summaries(tmp_path / "inputs")["augmented_inputs"]
    assert [step for step, _ in steps] == [0]
    # A resumed run reads no training batch for them (a shuffle buffer's fill at scale).
    assert len(taken) == 1


def test_history_file_keeps_earlier_epochs_and_replaces_redone_ones(tmp_path):
    directory = str(tmp_path)
    callbacks_lib.record_epochs(directory, [0, 1, 2], {"loss": [3.0, 2.0, 1.5]})
    # Resumed from the backup after epoch 2: epochs 2 and 3 are run again and on.
    history = callbacks_lib.HistoryFile(directory)
    history.on_epoch_end(2, {"loss": 1.4, "val_top1": 0.5})
    history.on_epoch_end(3, {"loss": 1.2, "val_top1": 0.6})
    records = callbacks_lib.read_history(directory)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["loss"] for r in records] == [3.0, 2.0, 1.4, 1.2]
    assert "val_top1" not in records[0] and records[3]["val_top1"] == 0.6


def test_ablation_curves_come_from_the_history_file(tmp_path):
    from deit_keras.errors import UserInputError
    from deit_keras.training.ablation import validation_points

    with pytest.raises(UserInputError, match="history.json"):
        validation_points(str(tmp_path))
    callbacks_lib.record_epochs(str(tmp_path), [0, 1], {"val_top1": [0.25, 0.5], "loss": [2, 1]})
    assert validation_points(str(tmp_path)) == ([1, 2], [0.25, 0.5])


def test_validation_every_n_epochs_gives_curves_at_those_epochs(tmp_path):
    from deit_keras.training.ablation import validation_points

    logs = {"loss": [4, 3, 2, 1], "val_top1": [0.0, 0.3, 0.0, 0.6]}
    for epoch in range(4):  # as fit(validation_freq=2) logs: val_* on epochs 2 and 4 only
        record = {"loss": logs["loss"][epoch]}
        if epoch % 2:
            record["val_top1"] = logs["val_top1"][epoch]
        callbacks_lib.HistoryFile(str(tmp_path)).on_epoch_end(epoch, record)
    assert validation_points(str(tmp_path)) == ([2, 4], [0.3, 0.6])


def test_the_custom_loop_validates_every_n_epochs():
    import tensorflow as tf

    from deit_keras.testing import random_images, tiny_model
    from deit_keras.training.custom_loop import distribute_train_dataset, fit_distributed

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny_model(num_classes=3)
        model.compile(optimizer="adamw", jit_compile=False)
    images = random_images(batch=8)
    targets = tf.one_hot([0, 1, 2, 0, 1, 2, 0, 1], 3)
    examples = tf.data.Dataset.from_tensor_slices((images, targets))
    train = distribute_train_dataset(strategy, lambda context, batch: examples.batch(batch), 4)
    history = fit_distributed(
        model,
        strategy,
        train,
        epochs=4,
        steps_per_epoch=1,
        verbose=0,
        validation_data=examples.batch(4),
        validation_freq=2,
    )
    assert history.epoch == [0, 1, 2, 3] and len(history.history["val_top1"]) == 2


def test_the_progress_bar_counts_epochs_over_the_run_not_the_fit(capsys):
    # A resumed run's first fit trains the rest of one epoch (initial_epoch=1, epochs=2).
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    data = (np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"))
    model.fit(*data, initial_epoch=1, epochs=2, verbose=2, callbacks=[callbacks_lib.RunProgress(4)])
    printed = capsys.readouterr().out
    assert "Epoch 2/4" in printed and "Epoch 2/2" not in printed, printed


def test_the_training_run_counts_its_progress_over_the_run(tmp_path):
    """`RunProgress` itself is tested above; this is that the run's `fit` gets it, with the
    run's epochs (a resumed 4-epoch run showed "Epoch 2/2" without it)."""
    from deit_keras.training import runner
    from deit_keras.training.config import TrainConfig

    config = TrainConfig(model_dir=str(tmp_path / "run"), epochs=4)
    _, _, callbacks = runner._callbacks(config, lambda: None, None, None, 10, None)
    progress = [c for c in callbacks if isinstance(c, keras.callbacks.ProgbarLogger)]
    assert [type(c) for c in progress] == [callbacks_lib.RunProgress]
    assert progress[0].run_epochs == 4


def test_distillation_summaries_go_on_in_a_second_fit(tmp_path):
    """A resumed deit-train run calls `fit` once per phase with the same callbacks: the
    second phase wrote to the writer the first one's `on_train_end` closed."""
    from deit_keras.testing import random_images
    from deit_keras.training.callbacks import DistillationSummaries

    callback = DistillationSummaries(
        str(tmp_path), random_images()[:2], every_n_epochs=1, max_images=1, epochs=2
    )
    callback.set_model(tiny_model())
    for epochs in (1, 2):  # fit(epochs=1), then fit(initial_epoch=1, epochs=2)
        callback.set_params({"epochs": epochs})
        callback.on_epoch_end(epochs - 1)
        callback.on_train_end()
    found = _summaries(tmp_path / "distillation")
    assert [step for step, _ in found["token_cosine/layer_0"]] == [0, 1]
