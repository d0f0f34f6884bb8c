"""`deit-ablate --parallel_seeds=N`: the ablation's seeds side by side, one process each.

For runs long enough that steady-state epochs outweigh compiling on fewer cores (on a
2 vCPU box a 12-epoch ablation was slower side by side, a digits epoch 1.35x faster:
docs/training.md). Each seed is the same command with
`--seed=<s> --seeds=1`, in its own process pinned (Linux) to its share of the cores;
its output goes to `<output_dir>/seed_<s>.log`. The caller then runs the whole
ablation once more in-process: every run is finished, so that pass only writes the
table over all seeds.
"""

import os
import subprocess
import sys

from absl import logging

from deit_keras import cli
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import write_text_atomic

CHILD_FLAGS = "parallel_seeds.flags"


def core_groups(count: int) -> list[list[int]]:
    """This process's cores split into `count` groups (as even as they go), one per seed."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < count:
        return [cores] * count  # fewer cores than seeds: they share all of them
    size, extra = divmod(len(cores), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (index < extra)
        groups.append(cores[start:end])
        start = end
    return groups


def _last_error_line(log_path: str) -> str:
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "internal error:")):
            return line
    return lines[-1] if lines else "no output"


# The child pins itself before anything else runs in it (TensorFlow sizes its thread pools
# by its cores). Popen's preexec_fn could do it, but it runs Python between fork and exec of
# a process with threads, where a lock another thread held at the fork deadlocks the child.
_PINNED_MAIN = (
    "import os, runpy, sys\n"
    "cores = [int(core) for core in sys.argv.pop(1).split(',') if core]\n"
    "module = sys.argv.pop(1)\n"
    "if cores and hasattr(os, 'sched_setaffinity'):\n"
    "    os.sched_setaffinity(0, cores)\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def child_argv(module: str, flagfile: str, seed: int, cores: list[int]) -> list[str]:
    """The command of one seed's process: `module` pinned to `cores`, this seed's flags."""
    argv = [sys.executable, "-c", _PINNED_MAIN, ",".join(map(str, cores)), module]
    seed_flags = [f"--seed={seed}", "--seeds=1", "--parallel_seeds=1", "--noreport"]
    return argv + [f"--flagfile={flagfile}", *seed_flags]


def _start(module: str, flagfile: str, seed: int, cores: list[int], log_path: str):
    with open(log_path, "w", encoding="utf-8") as log:
        argv = child_argv(module, flagfile, seed, cores)
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def run_seeds(module: str, output_dir: str, seeds: list[int], parallel: int) -> None:
    """Trains each of `seeds` in its own `module` process, `parallel` at a time.

    The processes read this process's flags (written to `<output_dir>/parallel_seeds.flags`)
    with `--seed`, `--seeds=1` and `--noreport` on top: they train, the caller reports.
    A seed that fails stops the others (and the earlier report stays as it was).

    Raises:
        UserInputError: a seed's process exited with the status of a user error
            (its one line and its log named).
        RuntimeError: it failed otherwise.
    """
    flagfile = os.path.join(output_dir, CHILD_FLAGS)
    write_text_atomic(flagfile, cli.command_flags_text())
    free_cores = core_groups(parallel)
    pending, running = list(seeds), []
    try:
        while pending or running:
            while pending and free_cores:
                seed, cores = pending.pop(0), free_cores.pop(0)
                log_path = os.path.join(output_dir, f"seed_{seed}.log")
                logging.warning("Ablation: seed %d in its own process on cores %s", seed, cores)
                process = _start(module, flagfile, seed, cores, log_path)
                running.append((seed, cores, log_path, process))
            finished = _wait_any(running)
            running.remove(finished)
            seed, cores, log_path, process = finished
            free_cores.append(cores)
            if process.returncode != 0:
                _raise_failure(seed, process.returncode, log_path)
    finally:
        for *_, process in running:
            process.terminate()  # a SIGTERM: each run backs up its step and stops
        for *_, process in running:
            process.wait()


def _wait_any(running: list):
    while True:
        for entry in running:
            try:
                entry[3].wait(timeout=0.5)
                return entry
            except subprocess.TimeoutExpired:
                continue


def _raise_failure(seed: int, returncode: int, log_path: str):
    line = _last_error_line(log_path).removeprefix("error: ")
    message = f"seed {seed} failed (exit {returncode}): {line} (log: {log_path})"
    if returncode == 2:
        raise UserInputError(message)
    raise RuntimeError(message)
