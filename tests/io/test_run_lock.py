"""Two runs, one directory: a live holder refuses others; a killed one leaves no stale lock."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from deit_keras.io import run_lock

# The holder loads run_lock.py by path: no TensorFlow import, so it starts in ~50 ms.
HOLDER = textwrap.dedent(
    """
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("run_lock", {module!r})
    run_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_lock)
    with run_lock.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
).format(module=run_lock.__file__)


@pytest.fixture
def holder(tmp_path):
    """Starts a process that holds `tmp_path / "run"`; yields it (killed at the end)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_a_live_holder_refuses_a_second_process_naming_dir_and_pid(tmp_path, holder):
    directory = str(tmp_path / "run")
    with pytest.raises(run_lock.DirectoryInUseError) as caught:
        with run_lock.hold(directory):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert directory in message and f"PID {holder.pid} " in message, message
    with pytest.raises(run_lock.DirectoryInUseError):
        run_lock.check_free(directory)


def test_sigkilled_holder_leaves_no_stale_lock(tmp_path, holder):
    directory = str(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert os.path.exists(os.path.join(directory, run_lock.LOCK_NAME))  # the file stays...
    run_lock.check_free(directory)  # ...the lock does not
    with run_lock.hold(directory) as path:
        assert open(path).read().split()[0] == str(os.getpid())


def test_released_at_the_end_and_not_shared_within_a_process(tmp_path):
    directory = str(tmp_path / "run")
    with run_lock.hold(directory):
        with pytest.raises(run_lock.DirectoryInUseError, match=f"PID {os.getpid()} "):
            with run_lock.hold(directory):
                pass
    with run_lock.hold(directory):  # released: taken again
        pass
    run_lock.check_free(str(tmp_path / "never_used"))
    assert not (tmp_path / "never_used").exists()  # a probe creates nothing


def test_run_training_refuses_a_held_model_dir_before_writing(tmp_path, holder):
    from deit_keras.testing import digits_config
    from deit_keras.training.runner import run_training

    config = digits_config(tmp_path, distillation_type="none", teacher=None, epochs=1)
    assert config.model_dir == str(tmp_path / "run")
    with pytest.raises(run_lock.DirectoryInUseError, match=f"PID {holder.pid} "):
        run_training(config)
    assert sorted(os.listdir(tmp_path / "run")) == [run_lock.LOCK_NAME]


def test_train_cli_on_a_live_runs_model_dir_is_one_line_exit_2(tmp_path, holder):
    from deit_keras.testing import assert_one_line_error, run_cli

    started = time.time()
    process = run_cli(
        "train",
        "--dataset=digits",
        f"--data_dir={tmp_path / 'tfds'}",
        "--epochs=1",
        "--distillation_type=none",
        f"--model_dir={tmp_path / 'run'}",
        f"--output={tmp_path / 'out.keras'}",
        timeout=120,
    )
    assert_one_line_error(process, str(tmp_path / "run"), f"PID {holder.pid} ", "in use")
    assert not (tmp_path / "run" / "flags.txt").exists() and not (tmp_path / "out.keras").exists()
    assert time.time() - started < 60  # refused at once, not after a run


def test_exclusive_makes_a_second_taker_wait_for_the_first(tmp_path):
    path = str(tmp_path / "sub" / "prepare.lock")
    events, inside = [], threading.Event()

    def first():
        with run_lock.exclusive(path):
            inside.set()
            time.sleep(0.3)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(10)
    with run_lock.exclusive(path):  # a second open file: flock makes it wait
        events.append("second in")
    thread.join(10)
    assert events == ["first out", "second in"]
