"""The command-line entry points: each module parses flags and calls library code.

    deit-train / python -m deit_keras.train          training.runner.run_training
    deit-convert / python -m deit_keras.convert      deploy.checkpoints.convert_checkpoint
    deit-export / python -m deit_keras.export        deploy.export_formats.export_model
    deit-evaluate / python -m deit_keras.evaluate    inference.evaluate.evaluate_on_dataset,
                                                     inference.imagenet_test_sets.evaluate_benchmarks
    deit-predict / python -m deit_keras.predict      inference.predict.predict_images
    deit-visualize / python -m deit_keras.visualize  analysis.drawing.visualize_file
    deit-ablate / python -m deit_keras.ablate        training.ablation.run_ablation
    deit-benchmark / python -m deit_keras.benchmark  inference.benchmark.run_benchmark

What they share lives here: one-line errors with exit status 2 (a bad flag
value too: `check_range` / `check_path` register absl validators), quiet logs.
"""

import difflib
import itertools
import logging as std_logging
import os
import re
import select
import signal
import sys
import tempfile
import threading
import traceback

from absl import app, flags, logging

from deit_keras.cli.flagfiles import expand_flagfiles_with_origins
from deit_keras.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
    UserInputError,
)
from deit_keras.io import paths
from deit_keras.training.preemption import PREEMPTED_EXIT_CODE, Preempted

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print full Python tracebacks instead of one-line errors."
)


class UsageError(UserInputError):
    """A problem with the user's input (flags, files, names): reported in one line."""


# Every error a user can fix: what our checks raise (`errors.UserError`: bad values,
# unknown names, corrupt files, a diverged loss) and what the operating system says
# about the user's files, disks and network (OSError). Anything else is a bug.
USER_ERRORS = (UserError, OSError)


# What a path flag names: `check_path(name, kind)`.
def _model_input_problem(name: str, path: str | None) -> str | None:
    """A model file, or a SavedModel directory (deit-export's default output)."""
    from deit_keras.deploy import export_options

    saved_model = os.path.join(path or "", export_options.SAVED_MODEL_FILE)
    if path and os.path.isfile(saved_model):
        return None
    if path and os.path.isdir(path):
        return (
            f"{name} is a directory but not a SavedModel (no {saved_model}): give a .keras "
            f"file, an export (.tflite, .onnx, .xml) or a SavedModel directory, got {path}"
        )
    return paths.input_file_problem(name, path)


PATH_KINDS = {
    "input_file": paths.input_file_problem,
    "model_input": _model_input_problem,
    "output_file": paths.output_file_problem,
    "output_dir": paths.output_dir_problem,
    "output_path": paths.output_path_problem,
    "directory": paths.directory_problem,
}


def _register(name: str, problem) -> None:
    def validator(value):
        line = problem(name, value)
        if line:
            raise flags.ValidationError(line)
        return True

    flags.register_validator(name, validator)


def check_range(name: str, allowed) -> None:
    """Makes a value of --`name` outside `allowed` (a `schema.Range`) a flag error."""
    _register(name, allowed.problem)


def check_path(name: str, kind: str) -> None:
    """Makes --`name` a flag error unless it can serve as `kind` (a `PATH_KINDS` key)."""
    _register(name, PATH_KINDS[kind])


def model_files(path: str | None) -> list[str]:
    """The files of a saved model at `path`: itself, its class names, OpenVINO's `.bin`."""
    from deit_keras.deploy import export_options

    if not path:
        return []
    export_format = "openvino" if path.endswith(".xml") else "keras"
    return [*export_options.output_files(export_format, path), export_options.classes_path(path)]


def check_outputs_spare_inputs(outputs: dict, inputs: dict) -> None:
    """Raises `UsageError` when an output would replace an input or another output.

    Args:
        outputs: {flag or argument name: path or None}, what the command writes.
        inputs: {name: path, or a list of paths, or None}, what it reads.
    """
    written = [(name, path) for name, path in outputs.items() if path]
    for (name, path), (input_name, read) in itertools.product(written, inputs.items()):
        files = [read] if isinstance(read, str) else read or []
        for input_path in files:
            if paths.is_within(input_path, path):
                given = files[0] if input_name.startswith("--") else input_path  # a flag's value
                what = input_name if input_path == given else f"{input_name}'s {input_path}"
                raise UsageError(
                    f"{name} would replace {what}: write it elsewhere. "
                    f"Received: {name}={path}, {input_name}={given}"
                )
    for (name, path), (other, other_path) in itertools.combinations(written, 2):
        if os.path.realpath(path) == os.path.realpath(other_path):
            raise UsageError(f"{name} and {other} name one file: give two. Received: {path}")


def command_flags_text() -> str:
    """The command's flags as a flagfile (`flags.txt`, the seeds' flagfile): absl's
    `flags_into_string`, over deit_keras's own flags only. Libraries loaded with
    TensorFlow define flags of theirs (`--test_random_seed`), which a command reading the
    file before TensorFlow loads does not know: such a flagfile was refused."""
    lines = []
    for module, module_flags in sorted(flags.FLAGS.flags_by_module_dict().items()):
        if module.split(".")[0] == "deit_keras":
            lines += [f.serialize() for f in sorted(module_flags, key=lambda f: f.name)]
    return "".join(f"{line}\n" for line in lines if line)


def parse_argv(argv: list[str]) -> list[str]:
    """`flags.FLAGS(argv)`: the arguments left; `UsageError` for a bad flag or flagfile.

    Flagfiles are expanded first (`cli.flagfiles`: an include is found beside its file).
    """
    _check_flagfiles_are_named(argv)
    try:
        expanded = expand_flagfiles_with_origins(argv)
        _ORIGINS.clear()
        _ORIGINS.update(expanded)
        return flags.FLAGS([arg for arg, _ in expanded])
    except flags.Error as error:
        message = _shorter_choices(str(error).removeprefix("ERROR:: "))
        unknown = re.match(r"Unknown command line flag '([\w.-]+)'", message)
        where = _origin_of(f"--{unknown[1]}") if unknown else None
        raise UsageError(message + (f" ({where})" if where else "")) from None
    except UnicodeDecodeError as error:  # absl reads flagfiles as UTF-8 text
        given = [arg.split("=", 1)[-1] for arg in argv if arg.startswith("--flagfile")]
        raise UsageError(
            f"flagfile must be a text file of flags ({error.reason}), got {', '.join(given)}"
        ) from None


def value_flag_spans(argv: list[str], names) -> list[tuple[int, int]]:
    """Where the value flags `names` stand in `argv` (no program name): `(start, stop)`
    indices of `--name=v` / `-name=v` (one word) or `--name v` (two). Words after `--`
    are not flags."""
    spans, index = [], 0
    while index < len(argv) and argv[index] != "--":
        arg = argv[index]
        stop = index + 1
        if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0] in names:
            stop += "=" not in arg  # `--name v`: its value is the next word
            spans.append((index, stop))
        index = stop
    return spans


def _check_flagfiles_are_named(argv: list[str]) -> None:
    """absl skips a flagfile flag with no file: `--flagfile=$CONFIG` (or `--flagfile
    "$CONFIG"`) with `CONFIG` unset ran on the defaults as if no file had been meant."""
    flags_part = list(itertools.takewhile(lambda arg: arg != "--", argv[1:]))
    for arg, following in itertools.zip_longest(flags_part, flags_part[1:]):
        empty = arg in ("--flagfile=", "-flagfile=")
        if empty or (arg in ("--flagfile", "-flagfile") and following == ""):
            raise UsageError(
                f"{arg.rstrip('=')} names no file: give the flagfile's path. "
                f"Received: {arg if empty else arg + ' ' + repr(following)}"
            )


# absl's error for a value outside an enum's choices, which it lists in full.
_NOT_A_CHOICE = re.compile(
    r"flag --(?P<flag>[\w.-]+)=(?P<value>.*): value should be one of <(?P<choices>.*)>"
)
_CHOICES_SHOWN = 8


def _shorter_choices(message: str) -> str:
    """absl's message for a value outside a long enum (`--model`: ~1,900 characters of
    names) cut to the nearest choices; short enums keep absl's whole list."""
    match = _NOT_A_CHOICE.fullmatch(message)
    if not match or match["choices"].count("|") < _CHOICES_SHOWN:
        return message
    choices = match["choices"].split("|")
    value = match["value"]
    typed = value.lower()  # the choices are lower case: DEIT_SMALL is still near deit_small
    near = [c for c in choices if c.startswith(typed)] if typed else []
    near = near or difflib.get_close_matches(typed, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near[:3])}?" if near else ""
    return (
        f"flag --{match['flag']}={value}: not one of its {len(choices)} values{hint} "
        "(--helpfull lists them)"
    )


# absl's help flags: each prints and ends the command with status 1.
_HELP_FLAGS = frozenset({"help", "?", "helpshort", "helpfull", "helpxml"})


def _asks_help(argv: list[str]) -> bool:
    for arg in argv[1:]:
        if arg == "--":
            return False
        if arg.startswith("-") and arg.lstrip("-").split("=")[0] in _HELP_FLAGS:
            return True
    return False


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag reported in one line and exit status 2, and
    help printed on request ending with status 0 (absl's is 1: a script's failure)."""
    try:
        return parse_argv(argv)
    except UsageError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except SystemExit as stop:
        # The arguments as parsed, flagfiles expanded (a `--help` line in one too).
        if stop.code == 1 and _asks_help(list(_ORIGINS) or argv):
            sys.exit(0)
        raise


# Each argument of the last parse that came from a flagfile: where it stands there.
_ORIGINS: dict[str, str | None] = {}


def _origin_of(flag: str) -> str | None:
    """Where `flag` (`--name`, or an argument as given) came from: `FILE line N`, or None
    (the command line, or not parsed here)."""
    for arg, origin in _ORIGINS.items():
        if origin and (arg == flag or arg.lstrip("-").split("=")[0] == flag.lstrip("-")):
            return origin
    return None


def check_no_arguments(argv: list[str]) -> None:
    """Raises `UsageError` when positional arguments follow the program name (naming the
    flagfile line of one that came from a flagfile: a flag written without its dashes)."""
    if len(argv) > 1:
        where = next(filter(None, map(_origin_of, argv[1:])), None)
        said = f" ({where}: a flag needs its dashes, --name=value)" if where else ""
        raise UsageError(f"Unexpected arguments: {' '.join(argv[1:])}{said}")


class Terminated(BaseException):
    """SIGTERM outside a training loop (which backs up first: `training.preemption`).

    Raised where the command is, like Ctrl-C's `KeyboardInterrupt`, so that a
    half-written output's temporary is removed on the way out (`io.atomic`).
    """


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _quiet_logging():
    """TensorFlow's INFO log lines drown a command's output unless --verbosity asks for them."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        # absl's glog prefix (`W1207 09:40:01.123456 140234 teacher.py:145] `) is for log
        # files; the warnings a command shows are lines of its output.
        logging.get_absl_handler().setFormatter(std_logging.Formatter("%(message)s"))
    # TensorFlow's Python logger, by name: it may not have loaded yet (`cli.train`).
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


# A shell's status for a command ended by SIGPIPE (128 + 13): `deit-predict ... | head`.
CLOSED_PIPE_EXIT_CODE = 141


def _stdout_is_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (POLLERR on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _main_until_the_reader_leaves(main, argv):
    """`main(argv)`; a reader that stopped reading (`| head`) ends the command quietly,
    as it ends other Unix tools, not as `error: [Errno 32] Broken pipe`."""
    try:
        return main(argv)
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise
        # Python flushes stdout again at exit: point it at /dev/null so that says nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(CLOSED_PIPE_EXIT_CODE)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def internal_error_line(error: BaseException, traceback_file: str | None = None) -> str:
    """What a command prints for an exception that is not the user's to fix: its message
    cut to its start and its last line (an error raised in traced code begins with the
    trace's frames and ends with the exception), and where its traceback was written."""
    message = _one_line(error)
    if len(message) > 300:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = f"{message[:120]} ... {lines[-1][:200]}"
    where = (
        f"its traceback is in {traceback_file}"
        if traceback_file
        else "rerun with --verbose for its traceback"
    )
    return (
        f"internal error: {type(error).__name__}: {message} "
        f"(not a problem with your input: {where}; please report it)"
    )


def _traceback_file(error: BaseException) -> str | None:
    """The traceback of `error` written to a new file in the temporary folder (an
    internal error may not come back on a rerun); None when it cannot be written."""
    try:
        handle, path = tempfile.mkstemp(prefix="deit_keras-traceback-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            traceback.print_exception(error, file=file)
    except OSError:
        return None
    return path


def _exit_verbosely(code: int) -> None:
    """`--verbose`: the traceback, and the exit status the one line would have had."""
    traceback.print_exc()
    sys.exit(code)


def run(main) -> None:
    """`absl.app.run(main)`, turning user errors into one line on stderr and exit 2.

    A bad flag (unknown, unparsable, out of range, a path that cannot serve)
    and every other error the user can fix (`USER_ERRORS`) end as
    `error: <message>` with exit status 2. Any other exception is a bug: one
    `internal error: ...` line and exit status 70 (`errors.INTERNAL_ERROR_EXIT_CODE`).
    `--verbose` shows the traceback instead of either. A training run stopped by SIGTERM
    (`training.preemption.Preempted`) prints its one line and exits 143; SIGTERM
    anywhere else ends the command as Ctrl-C does (its temporary outputs removed),
    also with one line and exit status 143.
    """

    def guarded(argv):
        _quiet_logging()
        _catch_sigterm()
        try:
            return _main_until_the_reader_leaves(main, argv)
        except KeyboardInterrupt as interrupted:  # a command may say how to go on
            said = f" ({interrupted})" if str(interrupted) else ""
            print(f"error: interrupted{said}", file=sys.stderr)
            sys.exit(130)
        except Terminated:
            print("error: terminated (SIGTERM)", file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)
        except Preempted as stop:  # SIGTERM: the step is backed up
            print(stop, file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)
        except USER_ERRORS as error:
            if _VERBOSE.value:
                _exit_verbosely(USER_ERROR_EXIT_CODE)
            print(f"error: {_one_line(error)}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)
        except Exception as error:
            if is_out_of_memory(error):
                if _VERBOSE.value:
                    _exit_verbosely(USER_ERROR_EXIT_CODE)
                print(out_of_memory_line(error), file=sys.stderr)
                sys.exit(USER_ERROR_EXIT_CODE)
            if _VERBOSE.value:
                _exit_verbosely(INTERNAL_ERROR_EXIT_CODE)
            print(internal_error_line(error, _traceback_file(error)), file=sys.stderr)
            sys.exit(INTERNAL_ERROR_EXIT_CODE)

    if sys.stdout is None:  # `>&-`: print() to None writes nothing, and the run "succeeded"
        print(
            "error: standard output is closed: give the command one (e.g. >/dev/null)",
            file=sys.stderr,
        )
        sys.exit(USER_ERROR_EXIT_CODE)
    app.run(guarded, flags_parser=parse_flags)


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError or TensorFlow's ResourceExhaustedError (an allocation that
    failed: the sizes asked for, not a bug), told by name so cli loads no TensorFlow."""
    if isinstance(error, MemoryError):
        return True
    kind = type(error)
    return kind.__name__ == "ResourceExhaustedError" and kind.__module__.startswith("tensorflow")


def out_of_memory_line(error: BaseException) -> str:
    """What a command prints when an allocation failed."""
    return (
        f"error: out of memory ({type(error).__name__}: {_one_line(error)[:200]}); lower "
        "--batch_size or --image_size, or free memory on this machine"
    )
