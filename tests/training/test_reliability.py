"""Crash safety: SIGKILL + resume, atomic writes, NaN stops, teacher/student mismatches."""

import json
import os
import signal
import subprocess
import time

import keras
import numpy as np
import pytest

from deit_keras.io import atomic as io_utils
from deit_keras.testing import prepare_digits, saved_weights, tiny_model, train_command
from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib


def test_sigkill_mid_run_then_rerun_resumes_to_the_uninterrupted_weights(tmp_path):
    prepare_digits(tmp_path)
    epochs = ["--epochs=3", "--deterministic"]
    reference = subprocess.Popen(
        train_command(tmp_path, "a", *epochs),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    command = train_command(tmp_path, "b", *epochs)
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "b" / "backup" / "latest.json"
    deadline = time.time() + 240
    try:
        while not pointer.exists() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert killed.poll() is None, "the run ended before it could be killed"
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        saved = json.loads(pointer.read_text())
        assert 1 <= saved["epoch"] < 3 and saved["step"] == 22 * saved["epoch"]
        assert (
            not (tmp_path / "b.keras").exists() and not (tmp_path / "b" / "results.json").exists()
        )
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        # --deterministic trains without XLA by itself (Keras warned it turned XLA off).
        assert "jit_compile" not in resumed.stderr, resumed.stderr[-3000:]
        assert reference.wait(240) == 0, reference.stderr.read()[-3000:]
    finally:
        for process in (reference, killed):
            if process.poll() is None:
                process.kill()
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["epochs"] == 3 and results["resumed_at_epoch"] == saved["epoch"]
    final = keras.saving.load_model(tmp_path / "b" / "checkpoints" / "last.keras")
    assert int(final.optimizer.iterations.numpy()) == 3 * 22  # optimizer state came back
    got, want = saved_weights(tmp_path / "b.keras"), saved_weights(tmp_path / "a.keras")
    difference = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    assert difference <= 1e-6, difference  # --deterministic: same batches after the restart


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    io_utils.write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), io_utils.atomic_output(path) as temporary:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_failed_checkpoint_save_keeps_last_keras(tmp_path, monkeypatch):
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    callbacks_lib.save_epoch_checkpoint(model, str(tmp_path), 0, {"loss": 1.0})
    before = (tmp_path / "last.keras").read_bytes()

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 truncated")
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        callbacks_lib.save_epoch_checkpoint(model, str(tmp_path), 1, {"loss": 0.5})
    assert (tmp_path / "last.keras").read_bytes() == before
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.json", "last.keras"]


def test_backup_save_is_atomic_and_skips_nan_epochs(tmp_path, monkeypatch):
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    backup = backup_lib.AtomicBackupAndRestore(str(tmp_path))
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 1.0})
    assert backup.restored_epoch() == 1
    backup.on_epoch_end(1, {"loss": float("nan")})  # not saved
    assert backup.restored_epoch() == 1

    def broken(path, *args, **kwargs):
        open(path, "wb").close()
        raise OSError("killed")

    monkeypatch.setattr(model, "save_weights", broken)
    with pytest.raises(OSError):
        backup.on_epoch_end(2, {"loss": 0.5})
    assert backup.restored_epoch() == 1
    assert sorted(os.listdir(tmp_path)) == ["epoch-00001", "latest.json"]


def test_a_run_killed_right_after_an_epochs_backup_keeps_that_epochs_record(tmp_path, monkeypatch):
    """The backup is the last thing an epoch writes: killed just after it, the resumed run
    starts at the next epoch with the epoch's history record already there (it was written
    after the backup, so lost for good)."""
    from deit_keras.training.runner import run_training

    class Killed(Exception):
        pass

    save = backup_lib.Backup.save

    def save_then_die(self, model, epoch, batch=0):
        save(self, model, epoch, batch)
        if (epoch, batch) == (1, 0):
            raise Killed

    config = _one_block_config(tmp_path, epochs=2, train_fraction=0.1, checkpoint_interval_s=0)
    monkeypatch.setattr(backup_lib.Backup, "save", save_then_die)
    with pytest.raises(Killed):
        run_training(config)
    monkeypatch.setattr(backup_lib.Backup, "save", save)
    results = run_training(config)
    assert results["resumed_at_epoch"] == 1
    history = callbacks_lib.read_history(config.model_dir)
    assert [record["epoch"] for record in history] == [0, 1]
    assert all(np.isfinite(record["loss"]) for record in history)


def _one_block_config(tmp_path, **changes):
    """A one-block digits run without a teacher."""
    from deit_keras.testing import digits_config

    return digits_config(
        tmp_path,
        distillation_type="none",
        teacher=None,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        **changes,
    )


def _run_to_nan(tmp_path, **changes):
    """A one-block digits run without a teacher, expected to stop on a NaN loss."""
    from deit_keras.training.runner import run_training

    config = _one_block_config(tmp_path, **changes)
    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step \d+") as raised:
        run_training(config)
    return str(raised.value)


def test_nan_loss_in_the_first_epoch_stops_with_the_step_and_saves_nothing(tmp_path):
    error = _run_to_nan(tmp_path, epochs=3, lr=1e9, warmup_epochs=0)
    assert not (tmp_path / "student.keras").exists()
    assert not (tmp_path / "run" / "results.json").exists()
    # It diverges in the first epoch: no checkpoint to send the user to.
    assert not (tmp_path / "run" / "checkpoints" / "last.keras").exists()
    assert "no checkpoint was saved before it" in error, error
    # history.json stays strict JSON (a NaN loss is null there).
    history = (tmp_path / "run" / "history.json").read_text()
    json.loads(history, parse_constant=lambda name: pytest.fail(f"{name} in history.json"))


def test_nan_loss_in_a_later_epoch_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The first epoch trains and is saved; a weight turned NaN as the second begins
    makes its loss NaN, and the error names the first epoch's checkpoint."""
    from deit_keras.training import callbacks

    def poison_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            weight = self.model.trainable_variables[0]
            weight.assign(np.full(weight.shape, np.nan, weight.dtype))

    monkeypatch.setattr(callbacks.StopOnNaN, "on_epoch_begin", poison_second_epoch, raising=False)
    error = _run_to_nan(tmp_path, epochs=2, train_fraction=0.1)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.keras"
    assert f"the last good checkpoint is {checkpoint}" in error, error
    model = keras.saving.load_model(checkpoint, compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert not (tmp_path / "student.keras").exists()


# ~70 s on 2 cores; fast twins: the next test (the same error, in process) and
# tests/training/test_runner.py::test_a_backup_made_with_other_settings_is_refused_before_any_work
@pytest.mark.large
def test_a_backup_of_a_run_with_another_model_is_one_line_naming_what_differs(tmp_path):
    """A rerun with another --embed_dim: not Keras' 'objects could not be loaded'."""
    from deit_keras.testing import assert_one_line_error, run_cli

    first = run_cli("train", *train_command(tmp_path, "run", "--epochs=1")[3:])
    assert first.returncode == 0, first.stderr[-2000:]
    backup = tmp_path / "run" / "backup"
    assert json.loads((backup / "settings.json").read_text())["embed_dim"] == 16
    again = run_cli("train", *train_command(tmp_path, "run", "--epochs=2", "--embed_dim=32")[3:])
    assert_one_line_error(again, str(backup), "embed_dim 16 there, 32 now", "--model_dir")
    assert "could not be loaded" not in again.stderr


def test_backup_restore_into_a_model_it_does_not_fit_names_the_settings(tmp_path):
    small = tiny_model(num_classes=3)
    small.compile(optimizer="adamw")
    small.optimizer.build(small.trainable_variables)
    backup_lib.Backup(str(tmp_path), {"embed_dim": 32, "epochs": 3}).save(small, 1)
    wide = tiny_model(num_classes=3, embed_dim=48)
    wide.compile(optimizer="adamw")
    restoring = backup_lib.Backup(str(tmp_path), {"embed_dim": 48, "epochs": 3})
    with pytest.raises(backup_lib.BackupMismatchError, match="embed_dim 32 there, 48 now"):
        restoring.restore(wide)
    with pytest.raises(backup_lib.BackupMismatchError) as raised:
        restoring.restore(wide)
    assert "epochs" not in str(raised.value)  # only the settings that differ are named


@pytest.mark.parametrize(
    "pointer", ["garbage", "{}", '{"epoch": "1", "dir": "epoch-00001"}', "[1, 2]"]
)
def test_a_damaged_backup_pointer_is_a_user_error_naming_the_way_out(tmp_path, pointer):
    """Was an internal error (`JSONDecodeError`, `KeyError: 'epoch'`)."""
    (tmp_path / "latest.json").write_text(pointer)
    with pytest.raises(backup_lib.BackupDamagedError, match="latest.json.*--noresume"):
        backup_lib.Backup(str(tmp_path)).position()


@pytest.mark.parametrize("stored", ['["model", "seed"]', "null", "", "{"])
def test_damaged_backup_settings_are_a_user_error_not_a_passed_check(tmp_path, stored):
    """A list or null was an internal error (TypeError); an empty file let a run with
    other settings resume the backup."""
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    backup = backup_lib.Backup(str(tmp_path), {"seed": 0})
    backup.save(model, 1)
    with pytest.raises(backup_lib.BackupMismatchError, match="seed 0 there, 7 now"):
        backup_lib.Backup(str(tmp_path), {"seed": 7}).check_settings({"seed": 7})
    (tmp_path / backup_lib.SETTINGS_FILE).write_text(stored)
    with pytest.raises(backup_lib.BackupDamagedError, match="settings.json.*--noresume"):
        backup_lib.Backup(str(tmp_path), {"seed": 7}).check_settings({"seed": 7})


def test_a_truncated_backup_state_is_a_user_error_naming_the_file(tmp_path):
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    backup = backup_lib.Backup(str(tmp_path / "backup"))
    backup.save(model, 1)
    state = tmp_path / "backup" / "epoch-00001" / "state.weights.h5"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(backup_lib.BackupDamagedError, match="state.weights.h5"):
        backup.restore(model)


def test_clearing_a_backup_leaves_what_is_not_ours(tmp_path):
    """--noresume removed a user's own `backup/` folder with everything in it."""
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    backup = backup_lib.Backup(str(tmp_path / "backup"), {"embed_dim": 16})
    backup.save(model, 1)
    (tmp_path / "backup" / "thesis.txt").write_text("a user's file")
    backup.clear()
    assert os.listdir(tmp_path / "backup") == ["thesis.txt"]
    (tmp_path / "backup" / "thesis.txt").unlink()
    backup.save(model, 2)
    backup.clear()
    assert not (tmp_path / "backup").exists()
