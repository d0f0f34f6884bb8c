"""Does `tf.distribute.experimental.PreemptionCheckpointHandler` work with a Keras 3 DeiT?

A tiny DeiT under `MultiWorkerMirroredStrategy` (one worker, no TF_CONFIG) is
wrapped in a `tf.train.Checkpoint(model=, optimizer=)` and trained with
`handler.run(step)`; after step 5 the process sends itself SIGTERM. Then the
same program runs again from the checkpoint. Printed: the first run's exit
status and last step, the checkpoint files, and the step the rerun resumed at.

    python benchmarks/preemption_checkpoint_handler.py

Measured (TF 2.21, Keras 3.15, CPU): SIGTERM after step 5, exit status 42
after step 6 with `ckpt-1` written; the rerun started at optimizer step 6. It works; deit_keras
still uses its own SIGTERM watcher (`deit_keras.training.preemption`): one
backup format for `fit` and the multi-worker loop (see docs/distributed.md).
"""

import os
import signal
import subprocess
import sys
import tempfile

STEPS = 12


def train(directory, preempt):
    import keras
    import numpy as np
    import tensorflow as tf

    from deit_keras.testing import tiny_model

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tiny_model(drop_path_rate=0.0)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        model.optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, manager
    )
    print(f"start at optimizer step {int(model.optimizer.iterations.numpy())}", flush=True)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[np.arange(8)]

    @tf.function
    def step():
        return strategy.run(model.train_step, args=((images, labels),))

    while int(model.optimizer.iterations.numpy()) < STEPS:
        handler.run(step)
        done = int(model.optimizer.iterations.numpy())
        print(f"step {done}", flush=True)
        if preempt and done == 5:
            os.kill(os.getpid(), signal.SIGTERM)


def main():
    if len(sys.argv) == 3:
        train(sys.argv[1], sys.argv[2] == "preempt")
        return
    directory = tempfile.mkdtemp()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for mode in ("preempt", "resume"):
        process = subprocess.run(
            [sys.executable, __file__, directory, mode], capture_output=True, text=True, env=env
        )
        lines = [line for line in process.stdout.splitlines() if line.startswith(("st", "step"))]
        print(f"{mode}: exit {process.returncode}; {lines[0]}; last {lines[-1]}")
    print("checkpoint files:", sorted(os.listdir(directory)))


if __name__ == "__main__":
    main()
