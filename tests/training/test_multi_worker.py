"""Two real MultiWorkerMirroredStrategy workers on 127.0.0.1 train like one process.

Each worker process runs (1) `run_training(strategy="multi_worker")` on digits
for a few steps, then (2) `fit_distributed` on a fixed in-memory global batch
of which each worker reads its half. The test checks that both workers end
with identical weights, that only the chief wrote files, and that the loss
and weights of (2) match a single-process run on the whole global batch.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf

from deit_keras.testing import fixed_batch_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent("""
    import numpy as np
    from deit_keras.data.augment import AugmentConfig
    from deit_keras.testing import fixed_batch_training
    from deit_keras.training import custom_loop, runner

    captured = {{}}
    fit_multi_worker = custom_loop.fit_multi_worker

    def capture(config, model, strategy, *args):
        captured.update(model=model, strategy=strategy)
        return fit_multi_worker(config, model, strategy, *args)

    custom_loop.fit_multi_worker = capture
    config = runner.TrainConfig(
        dataset="digits", data_dir={tfds!r}, image_size=16, drop_path=0.0,
        patch_size=8, embed_dim=16, depth=1, num_heads=2, crop_pct=1.0,
        batch_size=32, epochs=2, steps_per_epoch=2, warmup_epochs=1, repeated_aug=1,
        augment=AugmentConfig(rand_augment_ops=0, reprob=0.0, hflip=0.0),
        distillation_type="none", teacher=None, strategy="multi_worker", jit_compile=False,
        model_dir={model_dir!r}, output={model_dir!r} + "/final.keras",
        export_savedmodel=False, progress="none",
    )
    results = runner.run_training(config)
    run_weights = captured["model"].get_weights()
    losses, weights = fixed_batch_training(captured["strategy"])
    np.savez({out!r}, losses=np.array(losses), chief=results.get("chief", True),
             epochs=results["epochs"], *run_weights,
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
    # Only the chief wrote: one final model, one backup, checkpoints, results.
    assert os.path.exists(os.path.join(model_dir, "final.keras"))
    assert (
        json.loads(Path(os.path.join(model_dir, "backup", "latest.json")).read_text())["epoch"] == 2
    )
    assert (
        json.loads(Path(os.path.join(model_dir, "checkpoints", "last.json")).read_text())["step"]
        == 4
    )
    assert json.loads(Path(os.path.join(model_dir, "results.json")).read_text())["epochs"] == 2

    losses, weights = fixed_batch_training(tf.distribute.get_strategy())
    for worker in (chief, other):
        np.testing.assert_allclose(worker["losses"], losses, rtol=1e-5)
        for index, expected in enumerate(weights):
            np.testing.assert_allclose(worker[f"fixed_{index}"], expected, atol=1e-5)
