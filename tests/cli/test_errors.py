"""A user error and a bug look different: `error: ...`, exit 2 against `internal error`, exit 70.

The commands used to turn every `ValueError` into a one-line user error, so an internal
TensorFlow shape error read like a bad flag and hid its traceback from bug reports.
"""

import os
import re
import subprocess
import sys

import pytest

from deit_keras.errors import INTERNAL_ERROR_EXIT_CODE, UserInputError
from deit_keras.testing import assert_one_line_error, tiny_model, user_stderr

TF_SHAPE_BUG = "Dimensions must be equal, but are 16 and 17 for '{{node add}}'"


def _run_main_raising(raised, *args):
    """`cli.run(main)` in a fresh interpreter, with a `main` that raises `raised`."""
    code = (
        "import sys\n"
        "from deit_keras.cli.launch import quiet_tensorflow_start\n"
        "quiet_tensorflow_start(sys.argv[1:])  # as the commands start\n"
        "from deit_keras import cli\n"
        "from deit_keras.errors import UserInputError\n"
        "def main(argv):\n"
        f"    raise {raised}\n"
        "cli.run(main)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_a_user_error_is_one_line_and_exit_2():
    process = _run_main_raising("UserInputError('image_size must be > 0. Received: image_size=0')")
    assert_one_line_error(process, "image_size=0")


@pytest.mark.parametrize(
    "raised", [f"ValueError({TF_SHAPE_BUG!r})", "KeyError('blocks')", "AttributeError('x')"]
)
def test_any_other_exception_is_an_internal_error_with_its_own_exit_code(raised):
    process = _run_main_raising(raised)
    assert process.returncode == INTERNAL_ERROR_EXIT_CODE, process.stderr
    lines = user_stderr(process)
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith(f"internal error: {raised.split('(')[0]}: "), lines[0]
    assert "Traceback" not in process.stderr
    # A failure that does not come back on a rerun still leaves its traceback.
    traceback_file = re.search(r"its traceback is in (\S+);", lines[0])[1]
    with open(traceback_file, encoding="utf-8") as handle:
        assert "Traceback" in handle.read()
    os.remove(traceback_file)


def test_an_internal_error_from_traced_code_keeps_the_exceptions_own_line():
    """A tf.function's error starts with the trace's frames ("in user code: File ..."):
    cut at 300 characters the line lost the exception itself."""
    frames = "".join(f"    File 'x.py', line {n}, in step *\n        call()\n" for n in range(30))
    message = f"in user code:\n\n{frames}\n    AttributeError: no attribute y"
    process = _run_main_raising(f"AttributeError({message!r})")
    line = user_stderr(process)[-1]
    assert line.startswith("internal error: AttributeError: in user code:"), line
    assert "... AttributeError: no attribute y (not a problem with your input" in line
    os.remove(re.search(r"its traceback is in (\S+);", line)[1])


@pytest.mark.parametrize(
    "raised",
    [
        "__import__('tensorflow').errors.ResourceExhaustedError("
        "None, None, 'OOM when allocating tensor with shape[100000,100000,3]')",
        "MemoryError()",
    ],
)
def test_out_of_memory_is_one_line_naming_the_sizes_to_lower(raised):
    """An allocation the sizes asked for failed (a --image_size of 100000 in deit-convert):
    not 'internal error ... not a problem with your input'."""
    process = _run_main_raising(raised)
    assert_one_line_error(process, "out of memory", "--batch_size or --image_size")


def test_ctrl_c_is_one_line_and_exit_130():
    """As a shell reports a command ended by SIGINT (128 + 2)."""
    process = _run_main_raising("KeyboardInterrupt()")
    assert process.returncode == 130, process.stderr
    assert user_stderr(process) == ["error: interrupted"]


def test_sigterm_ends_a_command_in_one_line_and_removes_its_temporary_output(tmp_path):
    """SIGTERM while an output is half written: exit 143, one line, no temporary left."""
    code = (
        "import os, signal, sys, time\n"
        "from deit_keras import cli\n"
        "from deit_keras.io.atomic import atomic_output\n"
        "def main(argv):\n"
        "    with atomic_output(sys.argv[1]) as temporary:\n"
        "        open(temporary, 'w').write('half')\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(60)\n"
        "cli.run(main)\n"
    )
    target = tmp_path / "out.json"
    process = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 143, process.stderr[-2000:]
    assert user_stderr(process)[-1] == "error: terminated (SIGTERM)"
    assert "Traceback" not in process.stderr
    assert os.listdir(tmp_path) == []


def test_verbose_shows_the_traceback_and_keeps_the_exit_status():
    """--verbose turned a user error's exit status 2 into Python's 1."""
    process = _run_main_raising(f"ValueError({TF_SHAPE_BUG!r})", "--verbose")
    assert process.returncode == INTERNAL_ERROR_EXIT_CODE, process.stderr
    assert "Traceback" in process.stderr and "Dimensions must be equal" in process.stderr
    process = _run_main_raising("UserInputError('bad flag')", "--verbose")
    assert process.returncode == 2, process.stderr
    assert "Traceback" in process.stderr and "bad flag" in process.stderr


def test_a_real_command_reports_an_injected_library_bug_as_internal(tmp_path):
    """evaluate, with the library function it calls replaced by one that fails inside."""
    path = tmp_path / "tiny.keras"
    tiny_model().save(path)
    code = (
        "import sys\n"
        "from deit_keras.inference import evaluate\n"
        "def broken(*args, **kwargs):\n"
        f"    raise ValueError({TF_SHAPE_BUG!r})\n"
        "evaluate.evaluate_on_dataset = broken\n"
        "from deit_keras.cli.launch import launch\n"
        "launch('evaluate')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code, f"--model_path={path}", "--dataset=digits"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == INTERNAL_ERROR_EXIT_CODE, process.stderr[-2000:]
    assert user_stderr(process)[-1].startswith("internal error: ValueError: Dimensions")


def test_user_errors_are_still_the_builtin_types_python_callers_catch():
    assert issubclass(UserInputError, ValueError)
    with pytest.raises(ValueError, match="Unknown model"):
        from deit_keras.models.variants import get_variant

        get_variant("deit_enormous")


def test_an_output_replacing_a_models_side_file_names_the_flag_and_the_file(tmp_path):
    """It said `Received: --model_path=m.keras.classes.json` of a model given as m.keras."""
    from deit_keras import cli

    model = str(tmp_path / "m.keras")
    sidecar = model + ".classes.json"
    with pytest.raises(cli.UsageError) as caught:
        cli.check_outputs_spare_inputs(
            {"--output": sidecar}, {"--model_path": cli.model_files(model)}
        )
    assert str(caught.value) == (
        f"--output would replace --model_path's {sidecar}: write it elsewhere. "
        f"Received: --output={sidecar}, --model_path={model}"
    )
    with pytest.raises(
        cli.UsageError, match=f"would replace --model_path: .*--model_path={model}$"
    ):
        cli.check_outputs_spare_inputs(
            {"--output": model}, {"--model_path": cli.model_files(model)}
        )


def test_a_closed_standard_output_is_one_line_not_a_silent_success_or_a_traceback():
    """print() to a closed stdout (`>&-`, sys.stdout None) wrote nothing: deit-predict's
    results went nowhere with exit 0, and `--help` ended in an AttributeError."""
    process = subprocess.run(
        ["bash", "-c", '"$0" -m deit_keras.predict --help >&-', sys.executable],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(process, "standard output is closed")


def test_a_value_outside_a_long_enum_names_the_nearest_choices_not_all():
    """deit-train / deit-convert `--model=bogus` printed absl's list of all 66 names."""
    from deit_keras import cli
    from deit_keras.cli import train  # noqa: F401  (defines the train flags)

    for value, near in [("deit_smal", "did you mean deit_small_"), ("bogus", "not one of")]:
        with pytest.raises(cli.UsageError) as caught:
            cli.parse_argv(["train", f"--model={value}"])
        message = str(caught.value)
        assert near in message and len(message) < 300, message
        assert "cait_m36_384" not in message  # the list's first name, far from both
    short = "flag --format=bogus: value should be one of <saved_model|litert|onnx|openvino>"
    assert cli._shorter_choices(short) == short  # a short list stays whole


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """`deit-evaluate ... | head -5` ended with `error: [Errno 32] Broken pipe`, exit 2, as
    if the input were wrong; other Unix tools end quietly (a shell reports 141)."""
    code = (
        "import sys\n"
        "from deit_keras.cli.launch import quiet_tensorflow_start\n"
        "quiet_tensorflow_start(sys.argv[1:])  # as the commands start\n"
        "from deit_keras import cli\n"
        "def main(argv):\n"
        "    for line in range(200000):\n"
        "        print(line)\n"
        "cli.run(main)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "0\n"
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and not stderr.strip(), stderr


def test_ctrl_c_in_a_training_run_says_how_to_go_on(tmp_path):
    """It said "error: interrupted" alone, though a rerun resumes from the last backup."""
    code = (
        "from deit_keras.training import runner\n"
        "def interrupted(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "runner.run_training = interrupted\n"
        "from deit_keras.cli.launch import launch\n"
        "launch('train')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code, f"--model_dir={tmp_path / 'run'}", "--epochs=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 130, process.stderr[-2000:]
    assert user_stderr(process)[-1] == (
        "error: interrupted (rerun the same command to go on from the last backup in "
        f"{tmp_path / 'run'})"
    )
