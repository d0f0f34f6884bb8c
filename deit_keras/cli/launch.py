"""The commands' entry points: the command's flags, then a quiet TensorFlow start.

`python -m deit_keras.<command>` (the `deit_keras/<command>.py` stubs) and the
console scripts `deit-<command>` both call `launch(command)`, which runs the
command module; its flags load without TensorFlow, so `--help` and a bad flag
answer at once, and once they are accepted it calls `quiet_tensorflow_start`:

- TensorFlow 2.21 prints a screen of C++ start-up lines (oneDNN, "Could not find
  cuda drivers", "failed call to cuInit", CPU features) whatever
  `TF_CPP_MIN_LOG_LEVEL` says, because they come before its logging is set up.
  They are caught on file descriptor 2 while TensorFlow imports and finds its
  devices, and shown only if that fails; `TF_CPP_MIN_LOG_LEVEL=2` then hides
  the INFO/WARNING lines of the run itself (XLA, tf.data).
- `--verbose` on the command line, or a `TF_CPP_MIN_LOG_LEVEL` the user set,
  leaves all of that as TensorFlow has it.

This is a command's doing, not the library's: `import deit_keras` changes no
environment variable and catches nothing.
"""

import contextlib
import importlib
import os
import sys
import tempfile

COMMANDS = (
    "train",
    "convert",
    "export",
    "evaluate",
    "predict",
    "visualize",
    "ablate",
    "benchmark",
)
_TRUE = ("", "true", "t", "1", "yes", "y")


def asks_verbose(argv: list[str]) -> bool:
    """Whether the command line turns absl's `--verbose` bool flag on (the last one wins)."""
    verbose = False
    for arg in argv:
        if arg == "--":
            break
        name, _, value = arg.partition("=")
        if name in ("--verbose", "-verbose"):
            verbose = value.lower() in _TRUE
        elif name in ("--noverbose", "-noverbose"):
            verbose = False
    return verbose


@contextlib.contextmanager
def _file_descriptor_2_into(file):
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow_start(argv: list[str]) -> None:
    """Imports TensorFlow and finds its devices with its start-up lines held back.

    Does nothing when `argv` asks for `--verbose`, `TF_CPP_MIN_LOG_LEVEL` is
    set, or TensorFlow has loaded. What TensorFlow wrote is replayed on stderr if
    the import fails.
    """
    if asks_verbose(argv) or "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with tempfile.TemporaryFile() as captured:
        try:
            with _file_descriptor_2_into(captured):
                import tensorflow as tf

                tf.config.list_physical_devices()  # where cuInit reports a missing driver
        except BaseException:
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise


def launch(command: str) -> None:
    """Runs `deit_keras.cli.<command>` (its `run()`), which starts TensorFlow itself."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}. Received: command={command!r}")
    module = importlib.import_module(f"deit_keras.cli.{command}")
    main = sys.modules.get("__main__")
    if main is not None:  # absl's --help prints the __main__ module's docstring
        main.__doc__ = module.__doc__
    _list_command_flags_in_help()
    module.run()


def _list_command_flags_in_help() -> None:
    """absl's `--help` lists the flags of the main module (`sys.argv[0]`) only; the
    command's are defined in `cli/`, so they are made key flags of the main module."""
    from absl import flags

    for defining, defined in flags.FLAGS.flags_by_module_dict().items():
        if defining.split(".")[:2] == ["deit_keras", "cli"]:  # this command's cli modules
            for flag in defined:
                flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def train() -> None:
    launch("train")


def convert() -> None:
    launch("convert")


def export() -> None:
    launch("export")


def evaluate() -> None:
    launch("evaluate")


def predict() -> None:
    launch("predict")


def visualize() -> None:
    launch("visualize")


def ablate() -> None:
    launch("ablate")


def benchmark() -> None:
    launch("benchmark")
