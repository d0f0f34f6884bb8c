"""What a command reports as the user's to fix, and what it reports as a bug.

Errors raised where input is checked are `UserError`s: the commands print their
message in one line and exit 2. Any other exception (a TensorFlow shape error,
a bug of ours) is internal: the commands say so, point to `--verbose` for the
traceback, and exit `INTERNAL_ERROR_EXIT_CODE`.

Each type also extends the built-in a Python caller expects (`ValueError`,
`OSError`, `FloatingPointError`), so `except ValueError` keeps working.
Checks that run inside a traced `call` or `train_step` raise a plain
`ValueError`: autograph re-raises only built-in types as they are and turns
any other into a `StagingError`.
"""

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
