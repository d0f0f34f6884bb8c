"""Two real MultiWorkerMirroredStrategy workers on 127.0.0.1 train like one process.

Each worker process runs (1) `run_training(strategy="multi_worker")` on digits
for a few steps, with hard distillation from a small CNN teacher the run
trains first, then (2) `fit_distributed` on a fixed in-memory global batch of
which each worker reads its half. The test checks that both workers end with
identical weights and validation results, that only the chief trained the
teacher and wrote files, and that the loss and weights of (2) match a
single-process run on the whole global batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.testing import fixed_batch_training
from deit_keras.training.preemption import PREEMPTED_EXIT_CODE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent("""
    import numpy as np
    from deit_keras.data.augment_config import AugmentConfig
    from deit_keras.testing import fixed_batch_training
    from deit_keras.training import custom_loop, runner

    captured = {{}}
    fit_multi_worker = custom_loop.fit_multi_worker

    def capture(config, model, strategy, *args, **kwargs):
        captured.update(model=model, strategy=strategy)
        captured["history"] = fit_multi_worker(config, model, strategy, *args, **kwargs)
        return captured["history"]

    custom_loop.fit_multi_worker = capture
    config = runner.TrainConfig(
        dataset="digits", data_dir={tfds!r}, image_size=16, drop_path=0.0,
        patch_size=8, embed_dim=16, depth=1, num_heads=2, crop_pct=1.0,
        batch_size=32, epochs=2, steps_per_epoch=2, warmup_epochs=1, repeated_aug=1,
        augment=AugmentConfig(rand_augment_ops=0, reprob=0.0, hflip=0.0),
        distillation_type="hard", teacher={model_dir!r} + "/teacher.keras", teacher_epochs=1,
        strategy="multi_worker", jit_compile=False,
        model_dir={model_dir!r}, output={model_dir!r} + "/final.keras",
        export_savedmodel=False, progress="none",
    )
    results = runner.run_training(config)
    run_weights = captured["model"].get_weights()
    losses, weights = fixed_batch_training(captured["strategy"])
    history = captured["history"].history
    np.savez({out!r}, losses=np.array(losses), chief=results.get("chief", True),
             epochs=results["epochs"], val_top1=history["val_top1"],
             val_loss=history["val_loss"], *run_weights,
             **{{f"fixed_{{i}}": w for i, w in enumerate(weights)}})
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_match_each_other_and_one_process(tmp_path):
    from deit_keras.data.pipeline import dataset_info

    tfds_dir = str(tmp_path / "tfds")
    dataset_info("digits", tfds_dir)  # prepared once, before the workers read it
    model_dir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes, outputs = [], []
    try:
        for index in range(2):
            out = str(tmp_path / f"worker{index}.npz")
            outputs.append(out)
            script = WORKER.format(tfds=tfds_dir, model_dir=model_dir, out=out)
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                CUDA_VISIBLE_DEVICES="",
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", script],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        logs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-4000:]

    chief, other = (np.load(out) for out in outputs)
    assert bool(chief["chief"]) and not bool(other["chief"])
    assert int(chief["epochs"]) == int(other["epochs"]) == 2
    run_keys = [k for k in chief.files if k.startswith("arr_")]
    assert run_keys
    for key in run_keys:  # the two replicas stayed in sync
        np.testing.assert_array_equal(chief[key], other[key])
    # Validation each epoch over both workers' shards: the same all-reduced values.
    assert len(chief["val_top1"]) == 2 and np.all(chief["val_loss"] > 0)
    np.testing.assert_array_equal(chief["val_top1"], other["val_top1"])
    np.testing.assert_array_equal(chief["val_loss"], other["val_loss"])
    # The teacher was trained once, by the chief; the other worker waited for its file.
    assert "teacher for 1 epochs" in logs[0] and "teacher for 1 epochs" not in logs[1]
    # Only the chief wrote: one final model, one backup, checkpoints, results.
    assert os.path.exists(os.path.join(model_dir, "final.keras"))
    assert (
        json.loads(Path(os.path.join(model_dir, "backup", "latest.json")).read_text())["epoch"] == 2
    )
    assert (
        json.loads(Path(os.path.join(model_dir, "checkpoints", "last.json")).read_text())["step"]
        == 4
    )
    results = json.loads(Path(os.path.join(model_dir, "results.json")).read_text())
    assert results["epochs"] == 2 and "teacher_top1" in results
    for kind in ("train", "validation", "inputs", "distillation"):  # one writer: the chief's
        events = os.listdir(os.path.join(model_dir, "tensorboard", kind))
        assert len(events) == 1, events
    scalars = {
        value.tag
        for path in Path(model_dir, "tensorboard", "train").iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert "epoch_learning_rate" in scalars and "epoch_lr" not in scalars  # as `fit` writes
    # The views beyond the scalars, as `fit` writes them: inputs once, attention and token
    # similarity at epoch 0 and the last (--summary_every 5).
    written = {
        (value.tag, event.step)
        for kind in ("inputs", "distillation")
        for path in Path(model_dir, "tensorboard", kind).iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert {("augmented_inputs", 0), ("attention/0", 0), ("token_cosine/layer_1", 1)} <= written
    checkpoint = json.loads(Path(model_dir, "checkpoints", "last.json").read_text())
    assert checkpoint["val_top1"] == float(chief["val_top1"][-1])
    history = json.loads(Path(model_dir, "history.json").read_text())["epochs"]  # the chief's
    assert [record["epoch"] for record in history] == [0, 1]
    np.testing.assert_allclose([r["val_top1"] for r in history], chief["val_top1"])

    losses, weights = fixed_batch_training(tf.distribute.get_strategy())
    for worker in (chief, other):
        np.testing.assert_allclose(worker["losses"], losses, rtol=1e-5)
        for index, expected in enumerate(weights):
            np.testing.assert_allclose(worker[f"fixed_{index}"], expected, atol=1e-5)


def _start_workers(tmp_path, name):
    """The train CLI as two workers on fresh 127.0.0.1 ports; output in `<name>-<i>.log`."""
    from deit_keras.testing import train_command

    command = train_command(
        tmp_path,
        name,
        "--strategy=multi_worker",
        "--jit_compile=false",
        "--epochs=3",
        "--deterministic",
        "--backup_every_steps=4",
    )
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            CUDA_VISIBLE_DEVICES="",
        )
        with open(tmp_path / f"{name}-{index}.log", "a") as log:
            processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log))
    return processes


def _wait_all(processes, timeout):
    try:
        return [process.wait(timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _last_line(tmp_path, name, index):
    return (tmp_path / f"{name}-{index}.log").read_text().strip().splitlines()[-1]


def _wait_for_backup(processes, pointer, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no backup at step >= {step} while both workers ran")


# Several minutes of two-worker runs; fast twins:
# test_a_lost_worker_is_one_line_naming_the_backup_to_resume and
# tests/training/test_preemption.py::test_sigterm_mid_epoch_backs_up_that_step_and_rerun_matches
@pytest.mark.large
def test_sigterm_and_a_killed_worker_then_restarts_end_as_if_never_stopped(tmp_path):
    """SIGTERM on one worker stops both at one step; SIGKILL of one stops the other in one
    line; each time both restarted resume from the shared backup, ending with the weights of
    an uninterrupted two-worker run."""
    from deit_keras.data.pipeline import dataset_info

    dataset_info("digits", str(tmp_path / "tfds"))
    assert _wait_all(_start_workers(tmp_path, "a"), 600) == [0, 0]
    pointer = tmp_path / "b" / "backup" / "latest.json"

    processes = _start_workers(tmp_path, "b")
    _wait_for_backup(processes, pointer, 4)
    processes[1].send_signal(signal.SIGTERM)  # the non-chief: both must stop
    assert _wait_all(processes, 120) == [PREEMPTED_EXIT_CODE] * 2
    preempted = json.loads(pointer.read_text())
    for index in range(2):
        assert _last_line(tmp_path, "b", index).startswith("preempted (SIGTERM): backed up at")

    processes = _start_workers(tmp_path, "b")
    _wait_for_backup(processes, pointer, preempted["step"] + 4)
    processes[1].kill()
    killed_at = time.monotonic()
    survivor = _wait_all(processes[:1], 300)[0]
    stopped_s = time.monotonic() - killed_at
    _wait_all(processes, 10)
    assert survivor == 2, _last_line(tmp_path, "b", 0)
    assert _last_line(tmp_path, "b", 0).startswith("error: Lost another worker at epoch")
    saved = json.loads(pointer.read_text())
    assert preempted["step"] < saved["step"] < 3 * 22
    assert not (tmp_path / "b" / "results.json").exists()

    assert _wait_all(_start_workers(tmp_path, "b"), 600) == [0, 0]
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["epochs"] == 3 and results["resumed_at_epoch"] == saved["epoch"]
    history = json.loads((tmp_path / "b" / "history.json").read_text())["epochs"]
    assert [record["epoch"] for record in history] == [0, 1, 2]  # whole across the restarts
    got = keras.saving.load_model(tmp_path / "b.keras", compile=False).get_weights()
    want = keras.saving.load_model(tmp_path / "a.keras", compile=False).get_weights()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)
    print(f"SIGTERM at {preempted}; survivor of SIGKILL exit 2 after {stopped_s:.1f} s; {saved}")


def test_waiting_for_the_chiefs_teacher_times_out_in_one_line(tmp_path):
    from deit_keras.training.custom_loop import wait_for_file

    path = tmp_path / "teacher.keras"
    with pytest.raises(TimeoutError, match=r"teacher .*teacher.keras did not appear within 0.2 s"):
        wait_for_file(str(path), 0.2, "the chief's teacher", poll_s=0.05)
    path.write_bytes(b"PK")
    wait_for_file(str(path), 0.2, "the chief's teacher", poll_s=0.05)  # there: returns at once


def test_a_lost_worker_is_one_line_naming_the_backup_to_resume(tmp_path):
    from deit_keras.testing import tiny_model
    from deit_keras.training.backup import Backup
    from deit_keras.training.custom_loop import _lost_worker

    error = tf.errors.UnavailableError(
        None, None, "Graph execution error:\n\nCollective ops is aborted by: Connection reset"
    )
    message = str(_lost_worker(error, 1, 3, None))
    assert "\n" not in message and "resume from the start (no backup)" in message
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw")
    backup = Backup(str(tmp_path / "backup"))
    backup.save(model, 1, 2)
    message = str(_lost_worker(error, 1, 3, backup))
    assert message.startswith("Lost another worker at epoch 1 step 3 (UnavailableError: Collective")
    assert "\n" not in message and f"epoch 1 step 2 in {tmp_path / 'backup'}" in message


LOCAL_REPLICAS = textwrap.dedent("""
    import dataclasses, json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from deit_keras.data.augment_config import AugmentConfig
    from deit_keras.errors import UserInputError
    from deit_keras.training import backup, runner

    # The multi-worker loop on one worker of two local replicas (a machine of two GPUs).
    runner.make_strategy = lambda name, tpu=None: tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"])

    class Killed(Exception):
        pass

    def config(name, **changes):
        return dataclasses.replace(runner.TrainConfig(
            dataset="digits", data_dir={tfds!r}, image_size=16, drop_path=0.0, patch_size=8,
            embed_dim=16, depth=1, num_heads=2, crop_pct=1.0, batch_size=64, epochs=2,
            lr=0.03, warmup_epochs=1, repeated_aug=1, distillation_type="none", teacher=None,
            augment=AugmentConfig(rand_augment_ops=0, reprob=0.0, mixup_prob=0.0, hflip=0.0),
            strategy="multi_worker", jit_compile=False, deterministic=True,
            train_fraction=0.4, backup_every_steps=4, model_dir={root!r} + "/" + name,
            output={root!r} + "/" + name + ".keras", export_savedmodel=False,
            progress="none", checkpoint_interval_s=0), **changes)

    def weights(name):
        return keras.saving.load_model({root!r} + f"/{{name}}.keras", compile=False).get_weights()

    runner.run_training(config("whole"))
    save = backup.Backup.save
    def save_then_die(self, model, epoch, batch=0):
        save(self, model, epoch, batch)
        if (epoch, batch) in ((0, 4), (1, 0)):  # mid-epoch; right after an epoch's backup
            raise Killed(epoch, batch)
    backup.Backup.save = save_then_die
    for _ in range(2):
        try:
            runner.run_training(config("resumed"))
        except Killed:
            pass
    backup.Backup.save = save
    runner.run_training(config("resumed"))
    difference = max(float(np.abs(a - b).max())
                     for a, b in zip(weights("whole"), weights("resumed"), strict=True))
    history = json.load(open({root!r} + "/resumed/history.json"))["epochs"]
    try:
        runner.run_training(config("odd", batch_size=63, strategy="mirrored"))
        odd = "trained"
    except UserInputError as error:
        odd = str(error)
    # Under `mirrored` one pipeline feeds both replicas: it mixes each one's half apart.
    pipelines = []
    def phases_then_stop(config, data_kwargs, steps):
        pipelines.append(data_kwargs)
        raise Killed()
    runner.inputs.train_phases = phases_then_stop
    try:
        runner.run_training(config("mirrored", strategy="mirrored"))
    except Killed:
        pass
    print(json.dumps({{"difference": difference, "epochs": [r["epoch"] for r in history],
                      "odd": odd, "mix_groups": pipelines[0].get("mix_groups")}}))
""")


def test_a_worker_of_two_local_replicas_trains_and_resumes_as_if_never_stopped(tmp_path):
    """The multi-worker loop on a worker of two local replicas (a machine of two GPUs; two
    logical CPUs here). It crashed at its first step (the optimizer's variables were made
    inside `strategy.run`), and a mid-epoch resume skipped one batch per step where each step
    takes one per replica (weights 0.028 off), and a shard holding a batch more than an
    epoch's steps take ran on into the next epoch (0.003 off). A kill right after an epoch's
    backup lost that epoch's history record; an odd global batch under `mirrored` was a raw
    TF error; `mirrored`'s one pipeline mixed both replicas' batches with one draw."""
    from deit_keras.data.pipeline import dataset_info

    dataset_info("digits", str(tmp_path / "tfds"))
    script = LOCAL_REPLICAS.format(tfds=str(tmp_path / "tfds"), root=str(tmp_path))
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["difference"] <= 1e-6, result
    assert result["epochs"] == [0, 1], result
    assert "divide evenly among the 2 replicas" in result["odd"], result
    assert "Received: batch_size=63" in result["odd"], result
    assert result["mix_groups"] == 2, result
