"""Preemption: SIGTERM mid-epoch backs up the step; a rerun resumes there, bit for bit."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from deit_keras.data.pipeline import make_dataset
from deit_keras.testing import (
    digits_config,
    prepare_digits,
    saved_weights,
    tiny_model,
    train_command,
    user_stderr,
)
from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib
from deit_keras.training.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatcher

STEPS = 22  # digits: 1437 training images // batch 64
EPOCHS = 2
# Without XLA: its compile was ~5 s of each of this module's six ~25 s runs (one core), and
# the backup and resume logic is the same either way; a resume under XLA, the default, is
# test_reliability.py::test_sigkill_mid_run_then_rerun_resumes_to_the_uninterrupted_weights.
RUN = [f"--epochs={EPOCHS}", "--deterministic", "--backup_every_steps=5", "--nojit_compile"]


def _max_difference(got, want):
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted deterministic run: the weights every resumed run must end with."""
    tmp_path = tmp_path_factory.mktemp("reference")
    prepare_digits(tmp_path)
    process = subprocess.run(
        train_command(tmp_path, "a", *RUN), capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return saved_weights(tmp_path / "a.keras")


def _rerun_and_compare(tmp_path, command, reference, saved):
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = keras.saving.load_model(tmp_path / "b" / "checkpoints" / "last.keras")
    assert int(final.optimizer.iterations.numpy()) == EPOCHS * STEPS
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["epochs"] == EPOCHS and results["resumed_at_epoch"] == saved["epoch"]
    difference = _max_difference(saved_weights(tmp_path / "b.keras"), reference)
    assert difference <= 1e-6, difference


def test_steps_per_execution_trains_the_same_steps_and_weights(tmp_path, reference):
    """Several steps per tf.function call: the same batches, steps and weights.

    11 divides the 22 steps of an epoch; 8 is cut to gcd(8, 22) = 2 (8 steps per
    call would train 24 steps an epoch on the repeated, non-deterministic stream).
    """
    prepare_digits(tmp_path)
    run = [*RUN, "--steps_per_execution=11", "--backup_every_steps=11"]
    process = subprocess.run(train_command(tmp_path, "b", *run), capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-3000:]
    difference = _max_difference(saved_weights(tmp_path / "b.keras"), reference)
    assert difference <= 1e-6, difference
    run = [f"--epochs={EPOCHS}", "--steps_per_execution=8", "--nojit_compile"]
    process = subprocess.run(train_command(tmp_path, "c", *run), capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-3000:]
    final = keras.saving.load_model(tmp_path / "c" / "checkpoints" / "last.keras")
    assert int(final.optimizer.iterations.numpy()) == EPOCHS * STEPS


# A SIGTERM sent by the run itself right after global step 31 (epoch 1, batch 9).
SELF_TERM = textwrap.dedent("""
    import os, signal, sys
    from deit_keras.cli import train
    from deit_keras.training import callbacks

    class TermAt(callbacks.StopOnNaN):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if int(self.model.optimizer.iterations.numpy()) == 31:
                os.kill(os.getpid(), signal.SIGTERM)

    callbacks.StopOnNaN = TermAt
    sys.argv = ["deit-train"] + sys.argv[1:]
    train.run()
""")


def test_validating_less_often_trains_the_same_weights(tmp_path, reference):
    """--validation_freq skips validation passes only: the same weights (to 1e-6)."""
    prepare_digits(tmp_path)
    run = [*RUN, f"--validation_freq={EPOCHS + 1}"]  # no validation pass at all
    process = subprocess.run(train_command(tmp_path, "b", *run), capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-3000:]
    history = json.loads((tmp_path / "b" / "history.json").read_text())["epochs"]
    assert not any("val_top1" in record for record in history)
    difference = _max_difference(saved_weights(tmp_path / "b.keras"), reference)
    assert difference <= 1e-6, difference


def test_sigterm_mid_epoch_backs_up_that_step_and_rerun_matches(tmp_path, reference):
    prepare_digits(tmp_path)
    command = train_command(tmp_path, "b", *RUN)
    preempted = subprocess.run(
        [sys.executable, "-c", SELF_TERM, *command[3:]], capture_output=True, text=True, timeout=300
    )
    assert preempted.returncode == PREEMPTED_EXIT_CODE, preempted.stderr[-3000:]
    lines = user_stderr(preempted)
    assert lines[-1].startswith("preempted (SIGTERM): backed up at epoch 1 step 9"), lines
    assert "Traceback" not in preempted.stderr
    saved = json.loads((tmp_path / "b" / "backup" / "latest.json").read_text())
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 9, STEPS + 9)
    assert not (tmp_path / "b" / "results.json").exists()
    _rerun_and_compare(tmp_path, command, reference, saved)


@pytest.mark.large
def test_sigterm_from_outside_exits_143_quickly_and_rerun_matches(tmp_path, reference):
    """A real external SIGTERM at whatever step the run is at (CI: the self-sent one above)."""
    prepare_digits(tmp_path)
    command = train_command(tmp_path, "b", *RUN)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    pointer = tmp_path / "b" / "backup" / "latest.json"
    deadline = time.time() + 240
    try:
        while not pointer.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be preempted"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=60)[1]
        seconds = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    saved = json.loads(pointer.read_text())
    # A step, a backup and the exit, within the default grace period (GCE, Kubernetes).
    assert seconds < 30, seconds
    print(f"SIGTERM -> exit {PREEMPTED_EXIT_CODE} in {seconds:.1f} s; backup {saved}")
    assert saved["step"] == STEPS * saved["epoch"] + saved["batch"] and saved["step"] >= 5
    _rerun_and_compare(tmp_path, command, reference, saved)


def test_skip_batches_drops_the_batches_already_drawn(tmp_path):
    options = dict(image_size=16, batch_size=32, training=True, seed=3, epoch=1, deterministic=True)
    options["data_dir"] = str(tmp_path / "tfds")
    whole = [x.numpy() for x, _ in make_dataset("digits", "train", **options)]
    rest = [x.numpy() for x, _ in make_dataset("digits", "train", skip_batches=5, **options)]
    assert len(rest) == len(whole) - 5
    for got, want in zip(rest, whole[5:], strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="skip_batches"):
        make_dataset("digits", "eval", image_size=16, batch_size=8, training=False, skip_batches=1)


def test_periodic_backups_count_run_steps_and_resume_mid_epoch(tmp_path):
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    backup = backup_lib.AtomicBackupAndRestore(str(tmp_path), every_steps=4, steps_per_epoch=6)
    backup.set_model(model)
    positions = []
    for epoch in range(2):
        backup.on_epoch_begin(epoch)
        for batch in range(6):
            backup.on_train_batch_end(batch, {"loss": 1.0})
            positions.append(backup.backup.position())
        backup.on_epoch_end(epoch, {"loss": 1.0})
    # Run steps 4 and 8 (= epoch 1, batch 2) back up mid-epoch; 12 is an epoch end.
    assert positions[3] == (0, 4) and positions[7] == (1, 2) and positions[11] == (1, 2)
    assert backup.backup.position() == (2, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00002", "latest.json"]
    backup.backup.save(model, 1, 1)
    resumed = backup_lib.AtomicBackupAndRestore(str(tmp_path), every_steps=4, steps_per_epoch=6)
    resumed.set_model(model)
    assert resumed.resume() == (1, 1)  # fit(initial_epoch=1), skipping 1 batch
    resumed.on_epoch_begin(1)
    resumed.on_train_batch_end(0, {"loss": float("nan")})  # run step 8, NaN: not saved
    assert resumed.backup.position() == (1, 1)
    resumed.on_epoch_begin(1)
    resumed.on_train_batch_end(0, {"loss": 1.0})  # the fit's first batch is batch 2 of epoch 1
    assert resumed.backup.position() == (1, 2)
    resumed.on_epoch_begin(2)  # the next epoch starts at its batch 0, not the resumed one's 1
    for batch in range(3):  # run steps 13-15
        resumed.on_train_batch_end(batch, {"loss": 1.0})
    assert resumed.backup.position() == (1, 2)
    resumed.on_train_batch_end(3, {"loss": 1.0})  # run step 16
    assert resumed.backup.position() == (2, 4)


# A real SIGTERM in a process of its own: raised in a pytest-xdist worker, it twice ended the
# worker (CI on f2e6480, and a local run on 2026-12-05), with the handler asserted installed;
# the cause was not found (no library imported by the tests replaces the C-level handler).
WATCH_A_SIGTERM = textwrap.dedent("""
    import json, signal
    from deit_keras.training.preemption import PreemptionWatcher

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        report = {"requested_before": watcher.requested,
                  "installed": signal.getsignal(signal.SIGTERM) == watcher._handle}
        signal.raise_signal(signal.SIGTERM)
        report["requested"] = watcher.requested
    report["restored"] = signal.getsignal(signal.SIGTERM) is before
    print(json.dumps(report))
""")


def test_watcher_turns_sigterm_into_a_flag_and_restores_the_handler():
    process = subprocess.run(
        [sys.executable, "-c", WATCH_A_SIGTERM], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report == {
        "requested_before": False,
        "installed": True,
        "requested": True,
        "restored": True,
    }
    assert "epoch 2 step 7" in str(Preempted(2, 7, "/runs/x/backup"))


def test_sigterm_during_validation_backs_up_the_finished_epoch(tmp_path):
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    watcher = PreemptionWatcher()
    backup = backup_lib.AtomicBackupAndRestore(str(tmp_path), steps_per_epoch=6, preemption=watcher)
    backup.set_model(model)
    backup.on_epoch_begin(2)
    for batch in range(6):
        backup.on_train_batch_end(batch, {"loss": 1.0})
    backup.on_test_batch_end(0)  # validation, no signal: nothing happens
    assert backup.backup.latest() is None
    watcher.requested = True  # the SIGTERM arrives while validating
    with pytest.raises(Preempted, match="epoch 3 step 0"):
        backup.on_test_batch_end(1)
    assert backup.backup.position() == (3, 0)


def _epoch_records(model, model_dir):
    """The run's epoch-end records (history file, checkpoint, TensorBoard), as `fit` sets
    them up."""
    from deit_keras.training import runner

    records = runner.epoch_records(digits_config(model_dir, model_dir=str(model_dir)))
    for callback in records:
        callback.set_model(model)
        callback.set_params({"epochs": 5})
        callback.on_train_begin()
    return records


@pytest.mark.parametrize("during", ["the last step", "validation"])
def test_a_preempted_epoch_end_writes_its_record_and_checkpoint_before_its_backup(tmp_path, during):
    """The resumed run starts after the backed-up epoch: its end is written now or never."""
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    watcher = PreemptionWatcher()
    backup = backup_lib.AtomicBackupAndRestore(
        str(tmp_path / "backup"),
        steps_per_epoch=3,
        preemption=watcher,
        epoch_end_callbacks=_epoch_records(model, tmp_path),
    )
    backup.set_model(model)
    backup.on_epoch_begin(2)
    for batch in range(3):
        watcher.requested = during == "the last step" and batch == 2
        logs = {"loss": 1.5 - batch / 10, "top1": 0.25}
        if watcher.requested:
            with pytest.raises(Preempted, match="epoch 3 step 0"):
                backup.on_train_batch_end(batch, logs)
        else:
            backup.on_train_batch_end(batch, logs)
    if during == "validation":
        watcher.requested = True
        with pytest.raises(Preempted, match="epoch 3 step 0"):
            backup.on_test_batch_end(0)
    assert backup.backup.position() == (3, 0)
    assert callbacks_lib.read_history(str(tmp_path)) == [{"epoch": 2, "loss": 1.3, "top1": 0.25}]
    checkpoint = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert checkpoint["epoch"] == 3 and checkpoint["loss"] == pytest.approx(1.3)
    import tensorflow as tf  # TensorBoard's curve had a gap there for good

    (events,) = (tmp_path / "tensorboard" / "train").iterdir()
    written = [
        (event.step, float(tf.make_ndarray(value.tensor)))
        for event in tf.compat.v1.train.summary_iterator(str(events))
        for value in event.summary.value
        if value.tag == "epoch_loss"
    ]
    assert written == [(2, pytest.approx(1.3))]


class _PreemptedBefore:
    """A `PreemptionWatcher` whose SIGTERM arrives before the model's step `step` + 1."""

    def __init__(self, model, step):
        self.model, self.step = model, step

    @property
    def requested(self):
        return int(self.model.optimizer.iterations.numpy()) >= self.step


def test_the_custom_loop_preempted_at_an_epochs_last_step_writes_its_end_then_stops(tmp_path):
    import tensorflow as tf

    from deit_keras.training.custom_loop import distribute_train_dataset, fit_distributed

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny_model(num_classes=3)
        model.compile(optimizer="adamw", jit_compile=False)
    examples = tf.data.Dataset.from_tensor_slices(
        (np.random.default_rng(0).normal(size=(4, 32, 32, 3)), tf.one_hot([0, 1, 2, 0], 3))
    )
    train = distribute_train_dataset(
        strategy, lambda context, batch: examples.batch(batch).repeat(), 2
    )
    with pytest.raises(Preempted, match="epoch 2 step 0"):
        fit_distributed(
            model,
            strategy,
            train,
            epochs=3,
            steps_per_epoch=2,
            model_dir=str(tmp_path),
            verbose=0,
            validation_data=examples.batch(2),
            preemption=_PreemptedBefore(model, step=3),  # epoch 1's last step
        )
    history = callbacks_lib.read_history(str(tmp_path))
    assert [record["epoch"] for record in history] == [0, 1]
    assert "val_top1" in history[0] and "val_top1" not in history[1]  # no time to validate
    checkpoint = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 4
    assert backup_lib.Backup(str(tmp_path / "backup")).position() == (2, 0)


def test_a_backup_restores_the_stochastic_depth_generators(tmp_path):
    """`save_weights` leaves the `SeedGenerator` states out: a run resumed with the default
    --drop_path=0.1 drew its masks afresh (weights ~1e-3 off an uninterrupted run)."""
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    targets = np.eye(3, dtype="float32")[[0, 1, 2, 0]]

    def trained(steps, restore_from=None):
        keras.utils.set_random_seed(0)
        model = tiny_model(num_classes=3, drop_path_rate=0.5)
        model.compile(optimizer="adamw", distillation="none", jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        if restore_from is not None:
            restore_from.restore(model)
        for _ in range(steps):
            model.train_on_batch(images, targets)
        return model

    assert backup_lib.seed_states(trained(0))  # the model has generators to restore
    backup = backup_lib.Backup(str(tmp_path))
    backup.save(trained(2), epoch=0, batch=2)
    resumed = trained(2, restore_from=backup)
    uninterrupted = trained(4)
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
