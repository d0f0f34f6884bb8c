"""Full and read-only disks, for real: small tmpfs mounts made by the test (root only).

Every failed save is one line naming the path (`WriteError`, exit 2 from the
CLI), and the last good backup, checkpoint and final model stay loadable.
"""

import contextlib
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from deit_keras.deploy.saving import load_model, save_model
from deit_keras.io.atomic import WriteError, check_writable
from deit_keras.testing import assert_one_line_error, tiny_model, user_stderr
from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib


@contextlib.contextmanager
def tmpfs(path, size="1m"):
    """Mounts a `size` tmpfs on `path` for the block; skips the test when it cannot."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (a real full disk, not a mock)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory):
    """Writes `directory/filler` until the disk is full."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1):  # to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def remount_read_only(path):
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def model():
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)  # its state is saved too
    return model


def test_full_disk_fails_each_save_naming_it_and_keeps_the_last_good(tmp_path, model):
    with tmpfs(tmp_path / "disk", size="4m") as disk:
        backup = backup_lib.Backup(str(disk / "backup"))
        backup.save(model, 1)
        callbacks_lib.save_epoch_checkpoint(model, str(disk / "checkpoints"), 0, {"loss": 1.0})
        save_model(model, str(disk / "final.keras"), class_names=["a", "b", "c"])
        good = model.get_weights()
        model.set_weights([w + 1.0 for w in good])
        fill(disk)
        saves = {
            "backup/epoch-00002": lambda: backup.save(model, 2),
            "checkpoints/last.keras": lambda: callbacks_lib.save_epoch_checkpoint(
                model, str(disk / "checkpoints"), 1, {"loss": 0.5}
            ),
            "final.keras": lambda: save_model(model, str(disk / "final.keras")),
        }
        for name, save in saves.items():
            with pytest.raises(WriteError) as caught:
                save()
            message = str(caught.value)
            assert "\n" not in message and "No space left on device" in message, message
            assert str(disk / name) in message, message
        assert backup.restored_epoch() == 1
        assert sorted(os.listdir(disk / "backup")) == ["epoch-00001", "latest.json"]
        fresh = tiny_model(num_classes=3)
        fresh.compile(optimizer="adamw")
        assert backup.restore(fresh) == 1 and _weights_equal(fresh.get_weights(), good)
        last = keras.saving.load_model(disk / "checkpoints" / "last.keras", compile=False)
        assert _weights_equal(last.get_weights(), good)
        final, names = load_model(str(disk / "final.keras"))
        assert _weights_equal(final.get_weights(), good) and names == ["a", "b", "c"]
        assert not [f for f in os.listdir(disk) if ".tmp-" in f]  # no temporary left over


def test_a_backup_larger_than_the_space_left_is_refused_before_writing(tmp_path):
    """HDF5 meeting a full disk mid-file prints a traceback per object it cannot flush,
    then crashes the process at exit (seen: exit 139): the backup is measured first."""
    script = (
        "import sys\n"
        "from deit_keras.io.atomic import WriteError\n"
        "from deit_keras.testing import tiny_model\n"
        "from deit_keras.training.backup import Backup\n"
        "model = tiny_model(num_classes=3)\n"
        "model.compile(optimizer='adamw')\n"
        "model.optimizer.build(model.trainable_variables)\n"
        "try:\n"
        "    Backup(sys.argv[1]).save(model, 1)\n"
        "except WriteError as error:\n"
        "    sys.exit(f'error: {error}')\n"
    )
    with tmpfs(tmp_path / "disk", size="300k") as disk:  # the backup is ~490 kB
        process = subprocess.run(
            [sys.executable, "-c", script, str(disk / "backup")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = user_stderr(process)
        assert process.returncode == 1 and lines[-1].startswith("error: "), process.stderr[-2000:]
        assert "MB needed" in lines[-1] and "Traceback" not in process.stderr
        assert not os.path.exists(disk / "backup") or not os.listdir(disk / "backup")


def test_read_only_disk_fails_naming_the_path_and_keeps_the_file(tmp_path, model):
    with tmpfs(tmp_path / "disk") as disk:
        save_model(model, str(disk / "final.keras"))
        before = (disk / "final.keras").read_bytes()
        remount_read_only(disk)
        with pytest.raises(WriteError, match="final.keras: Read-only file system"):
            save_model(model, str(disk / "final.keras"))
        with pytest.raises(WriteError, match="backup/epoch-00001: Read-only file system"):
            backup_lib.Backup(str(disk / "backup")).save(model, 1)
        with pytest.raises(WriteError, match=f"{disk}: Read-only file system"):
            check_writable(str(disk))
        assert (disk / "final.keras").read_bytes() == before


def test_directory_without_write_permission(tmp_path, model):
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes; the read-only mount test covers this as root")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            save_model(model, str(locked / "final.keras"))
        with pytest.raises(WriteError, match="Permission denied"):
            check_writable(str(locked))
    finally:
        locked.chmod(0o755)


TINY_RUN = [
    "--dataset=digits",
    "--image_size=16",
    "--patch_size=8",
    "--embed_dim=16",
    "--depth=1",
    "--num_heads=2",
    "--batch_size=64",
    "--warmup_epochs=1",
    "--repeated_aug=1",
    "--rand_augment_ops=0",
    "--reprob=0.0",
    "--mixup_prob=0.0",
    "--distillation_type=none",
    "--export_savedmodel=false",
    "--summary_every=0",
    "--progress=none",
    "--jit_compile=false",  # no XLA compile: seconds, not tens of seconds, on 2 cores
    "--steps_per_epoch=2",
]


def _prepare_digits(tmp_path):
    from deit_keras.data.pipeline import dataset_info

    dataset_info("digits", str(tmp_path / "tfds"))


def test_train_cli_read_only_output_refused_before_training(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        remount_read_only(disk)
        started = time.time()
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "deit_keras.train",
                *TINY_RUN,
                "--epochs=1",
                f"--data_dir={tmp_path / 'tfds'}",
                f"--model_dir={tmp_path / 'run'}",
                f"--output={disk / 'out' / 'student.keras'}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_one_line_error(process, str(disk))  # config validation or check_writable
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
        assert time.time() - started < 60


@pytest.mark.large  # ~25 s on 2 shared cores; fast variant: test_full_disk_fails_each_save...
def test_train_cli_full_disk_at_the_final_save(tmp_path):
    """The output disk is full from the start: training runs, the final save fails."""
    _prepare_digits(tmp_path)
    with tmpfs(tmp_path / "out") as out:
        fill(out)
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "deit_keras.train",
                *TINY_RUN,
                "--epochs=1",
                f"--data_dir={tmp_path / 'tfds'}",
                f"--model_dir={tmp_path / 'run'}",
                f"--output={out / 'a.keras'}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert_one_line_error(process, str(out / "a.keras"), "No space left on device")
        assert os.listdir(out) == ["filler"]
    keras.saving.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.large  # ~25 s on 2 shared cores; fast variant: test_full_disk_fails_each_save...
def test_train_cli_model_dir_fills_mid_run(tmp_path):
    """model_dir fills after the first backup: the next save fails; the backup restores."""
    _prepare_digits(tmp_path)
    with tmpfs(tmp_path / "run", size="8m") as run:
        command = [
            sys.executable,
            "-m",
            "deit_keras.train",
            *TINY_RUN,
            "--epochs=1000",
            f"--data_dir={tmp_path / 'tfds'}",
            f"--model_dir={run}",
            f"--output={tmp_path / 'b.keras'}",
        ]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        pointer = run / "backup" / "latest.json"
        checkpoint = run / "checkpoints" / "last.json"  # written after backup and last.keras
        deadline = time.time() + 150
        try:
            while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            fill(run)
            _, stderr = process.communicate(timeout=150)
        finally:
            if process.poll() is None:
                process.kill()
        process.stderr = stderr.decode()
        assert_one_line_error(process, str(run), "No space left on device")
        assert not (tmp_path / "b.keras").exists()
        saved = json.loads(pointer.read_text())
        assert 1 <= saved["epoch"] < 1000, (saved, user_stderr(process))
        (run / "filler").unlink()  # room for a restore: the saved state must load
        fresh = keras.saving.load_model(run / "checkpoints" / "last.keras")  # same architecture
        assert backup_lib.Backup(str(run / "backup")).restore(fresh) == saved["epoch"]
