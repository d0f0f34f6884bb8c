"""SIGTERM preemption: finish the current step, back it up, stop with status 143.

Cloud VMs and TPU pods announce preemption with SIGTERM and a grace period
of seconds. `PreemptionWatcher` turns the signal into a flag that the
training loops check after each step (`fit` through `AtomicBackupAndRestore`,
the multi-worker loop by an all-reduce, so every worker stops at the same
step); the loop writes a backup of that step and raises `Preempted`, which
the CLI reports in one line with exit status `PREEMPTED_EXIT_CODE` (143 =
128 + SIGTERM, what a shell reports for a process SIGTERM ended). Rerunning
the same command resumes at the saved step.

`tf.distribute.experimental.PreemptionCheckpointHandler` works with Keras 3
models (measured: it saves a `tf.train.Checkpoint` of the model and
optimizer a step after the signal and exits with status 42), but it
writes its own checkpoint format beside ours and does not cover `Model.fit`;
this watcher keeps one backup format (`backup.Backup`) for both loops.
"""

import signal
import threading

from absl import logging

PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    """Training stopped on SIGTERM after backing up; rerun the same command to resume.

    Args:
        epoch: int. Completed epochs at the backup.
        batch: int. Batches done in the next epoch at the backup.
        directory: str or None. Where the backup is (None: nothing saved).
    """

    def __init__(self, epoch: int, batch: int, directory: str | None):
        self.epoch, self.batch, self.directory = epoch, batch, directory
        where = (
            f"backed up at epoch {epoch} step {batch} in {directory}; "
            "rerun the same command to resume there"
            if directory
            else "nothing was saved (no model_dir)"
        )
        super().__init__(f"preempted (SIGTERM): {where}")


class PreemptionWatcher:
    """Context manager that records SIGTERM instead of dying at once.

    Inside the `with` block a SIGTERM sets `requested`; the previous handler
    comes back on exit. Signal handlers can only be installed from the main
    thread: elsewhere the watcher logs a warning and never fires (SIGTERM then
    ends the process as usual; the last backup stays).
    """

    def __init__(self, signals: tuple = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if not self.requested:
            logging.warning("Signal %d: backing up after the current step, then stopping.", signum)
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not the main thread: SIGTERM will not be caught for a backup.")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "PreemptionWatcher"]
