"""What a command reports as the user's to fix, and what it reports as a bug.

Errors raised where input is checked are `UserError`s: the commands print their
message in one line and exit 2. Any other exception (a TensorFlow shape error,
a bug of ours) is internal: the commands say so, point to `--verbose` for the
traceback, and exit `INTERNAL_ERROR_EXIT_CODE`.

Each type also extends the built-in a Python caller expects (`ValueError`,
`OSError`, `FloatingPointError`, `ImportError`), so `except ValueError` keeps working.
Checks that run inside a traced `call` or `train_step` raise a plain
`ValueError`: autograph re-raises only built-in types as they are and turns
any other into a `StagingError`.
"""

import importlib.util

INTERNAL_ERROR_EXIT_CODE = 70  # sysexits.h EX_SOFTWARE: an internal software error
USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix (input, files, settings), stated in one line."""


class UserInputError(UserError, ValueError):
    """A value, name, file content or combination of settings that cannot be used."""


class UserEnvironmentError(UserError, OSError):
    """A file, disk or network problem on the user's side: missing, full, unreachable."""


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss became NaN/Inf: the settings (learning rate, data) need a change."""


class MissingDependencyError(UserError, ImportError):
    """An optional package a feature needs is not installed; the message says how to install it."""


def check_installed(modules, needed_for: str, install: str) -> None:
    """`MissingDependencyError` naming the first of `modules` not installed.

    Looked up without importing them (`importlib.util.find_spec`), so a command can
    check before any work and before TensorFlow loads.

    Args:
        modules: iterable of str. Top-level module names, e.g. `("tf2onnx", "onnx")`.
        needed_for: str. What needs them, e.g. "The onnx export".
        install: str. The command that installs them.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(f"{needed_for} needs {module}, not installed: {install}.")
