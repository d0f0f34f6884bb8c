"""What every command-line entry point shares: one-line errors, exit code 2."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_bool(
    "verbose", False, "Print full Python tracebacks instead of one-line errors."
)


class UsageError(ValueError):
    """A problem with the user's input (flags, files, names): reported in one line."""


def _user_errors():
    from deit_keras.checkpoints import CheckpointError

    return (UsageError, CheckpointError, ValueError, OSError, FloatingPointError)


def run(main):
    """`absl.app.run(main)`, turning user errors into one line on stderr and exit 2.

    absl already reports bad flags in a short message with exit 1; every other
    error the user can fix (missing or corrupt files, unknown names, values
    out of range) ends as `error: <message>` with exit status 2. `--verbose`
    shows the traceback instead.
    """

    def guarded(argv):
        from absl import logging

        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # TF's INFO lines drown the output
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except _user_errors() as error:
            if flags.FLAGS.is_parsed() and flags.FLAGS.verbose:
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
