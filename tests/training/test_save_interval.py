"""Epoch-end checkpoints at most every `min_interval_s` (`callbacks.SaveInterval`)."""

import math

import pytest

from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib


def _saved_epochs(monkeypatch, min_interval_s, epochs, run_epochs=None, losses=None):
    saved = []
    monkeypatch.setattr(
        callbacks_lib, "save_epoch_checkpoint", lambda model, d, epoch, logs: saved.append(epoch)
    )
    checkpoint = callbacks_lib.EpochCheckpoint("unused", min_interval_s)
    checkpoint.set_params({"epochs": epochs})
    for epoch in range(run_epochs or epochs):
        loss = (losses or {}).get(epoch, 1.0)
        checkpoint.on_epoch_end(epoch, {"loss": loss})
    checkpoint.on_train_end()
    return saved


def test_every_epoch_without_interval(monkeypatch):
    assert _saved_epochs(monkeypatch, 0.0, 4) == [0, 1, 2, 3]


def test_interval_keeps_first_and_last(monkeypatch):
    assert _saved_epochs(monkeypatch, 3600.0, 5) == [0, 4]


def test_early_stop_saves_the_last_good_epoch(monkeypatch):
    # Stopped after epoch 2 of 10 (e.g. NaN at epoch 3, which is never saved).
    saved = _saved_epochs(monkeypatch, 3600.0, 10, run_epochs=4, losses={3: math.nan})
    assert saved == [0, 2]


def test_interval_elapsed_saves_again(monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 100.0, 110.0])
    monkeypatch.setattr(callbacks_lib.time, "monotonic", lambda: next(clock))
    # saves at epoch 0 (t=0), skips epochs 1-2 (t=10, 20 < 50), saves epoch 3 (t=100).
    assert _saved_epochs(monkeypatch, 50.0, 6, run_epochs=4) == [0, 3]


def test_negative_interval_refused():
    with pytest.raises(ValueError, match="min_interval_s"):
        callbacks_lib.SaveInterval(-1.0)


def test_backup_epoch_ends_follow_the_interval(monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(
        backup_lib.Backup, "save", lambda self, model, epoch, batch=0: saved.append(epoch)
    )
    backup = backup_lib.AtomicBackupAndRestore(str(tmp_path), min_interval_s=3600.0)
    backup.set_params({"epochs": 5})
    for epoch in range(5):
        backup.on_epoch_end(epoch, {"loss": 1.0})
    assert saved == [1, 5]  # states after the first and the last epoch
    every = backup_lib.AtomicBackupAndRestore(str(tmp_path))
    every.set_params({"epochs": 3})
    saved.clear()
    for epoch in range(3):
        every.on_epoch_end(epoch, {"loss": 1.0})
    assert saved == [1, 2, 3]
