"""The command-line entry points: each module parses flags and calls library code.

    deit-train / python -m deit_keras.train          training.runner.run_training
    deit-convert / python -m deit_keras.convert      deploy.checkpoints.convert_checkpoint
    deit-export / python -m deit_keras.export        deploy.saved_model.export_saved_model
    deit-evaluate / python -m deit_keras.evaluate    inference.evaluate.evaluate_file
    deit-predict / python -m deit_keras.predict      inference.predict.predict_files
    deit-visualize / python -m deit_keras.visualize  analysis.drawing.visualize_file
    deit-ablate / python -m deit_keras.ablate        training.ablation.run_ablation

What they share lives here: one-line errors with exit status 2, quiet logs.
"""

import os
import sys

from absl import app, flags, logging

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print full Python tracebacks instead of one-line errors."
)


class UsageError(ValueError):
    """A problem with the user's input (flags, files, names): reported in one line."""


# Every error a user can fix: missing or corrupt files, unknown names, values
# out of range (ValueError, which CheckpointError and UsageError extend), I/O
# failures, and a training run whose loss diverged.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def check_no_arguments(argv: list[str]) -> None:
    """Raises `UsageError` when positional arguments follow the program name."""
    if len(argv) > 1:
        raise UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")


def _quiet_logging():
    """TensorFlow's INFO log lines drown a command's output unless --verbosity asks for them."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def run(main) -> None:
    """`absl.app.run(main)`, turning user errors into one line on stderr and exit 2.

    absl already reports bad flags in a short message with exit 1; every other
    error the user can fix ends as `error: <message>` with exit status 2.
    `--verbose` shows the traceback instead.
    """
    # A command (not the library) may quiet TensorFlow's C++ start-up chatter;
    # a value the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def guarded(argv):
        _quiet_logging()
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except USER_ERRORS as error:
            if _VERBOSE.value:
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
