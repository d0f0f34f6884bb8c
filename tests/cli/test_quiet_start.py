"""A command starts quietly: no TensorFlow C++ start-up lines, no tfds download messages.

`deit_keras.cli.launch` holds TensorFlow's start-up lines back unless `--verbose`
or `TF_CPP_MIN_LOG_LEVEL` asks for them; the embedded digits builder says in one
line that it prepares the data, and where.
"""

import logging
import os
import subprocess
import sys

import pytest

from deit_keras.cli.launch import asks_verbose
from deit_keras.data import digits
from deit_keras.testing import TF_CPP_LINE, assert_one_line_error, run_cli, user_stderr

TFDS_CHATTER = ("Downloading and preparing", "downloaded and prepared", "Variant folder")
TFDS_CHATTER += ("Generating", "Shuffling", "examples/s")


def _tensorflow_lines(process):
    return [
        line for line in (process.stdout + process.stderr).splitlines() if TF_CPP_LINE.match(line)
    ]


def _console_script(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def test_help_prints_the_command_doc_and_no_tensorflow_lines():
    for process in (
        run_cli("predict", "--help"),
        subprocess.run(
            [_console_script("deit-predict"), "--help"],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        ),
    ):
        assert process.returncode == 0, process.stderr  # absl's exit status 1 made 0
        assert process.stdout.startswith("Top-k predictions of a DeiT for image files."), (
            process.stdout[:200]
        )
        assert not _tensorflow_lines(process), process.stderr
        assert not user_stderr(process), process.stderr
        # The command's own flags, the generated ones and cli's --verbose; not absl's.
        for flag in ("--model_path:", "--top_k:", "--[no]verbose:"):
            assert f"\n  {flag}" in process.stdout, process.stdout[-2000:]
        assert "--flagfile:" not in process.stdout


@pytest.mark.parametrize("help_flag", ["--helpfull", "-?", "--helpshort"])
def test_every_help_flag_ends_with_status_0_and_a_bad_flag_still_2(help_flag, tmp_path):
    assert run_cli("convert", help_flag).returncode == 0
    (tmp_path / "help.cfg").write_text(f"{help_flag}\n")  # in a flagfile too
    assert run_cli("convert", f"--flagfile={tmp_path / 'help.cfg'}").returncode == 0
    process = run_cli("convert", "--no_such_flag")
    assert process.returncode == 2 and "no_such_flag" in process.stderr, process.stderr
    # A `--help` after `--` is an argument, not a request for help: a one-line refusal.
    process = run_cli("convert", "--", "--help")
    assert process.returncode == 2 and not process.stdout, process.stdout[:200]


def test_train_help_lists_the_flags_generated_from_the_config():
    process = run_cli("train", "--help")
    for flag in ("--batch_size:", "--distillation_type:", "--teacher:", "--mixup:"):
        assert f"\n  {flag}" in process.stdout, process.stdout[-2000:]


# `deit-COMMAND ARGS`, reporting at exit which of TensorFlow and Keras had loaded (stderr
# cannot tell: the quiet start holds back everything written while TensorFlow imports).
_COMMAND_REPORTING_IMPORTS = """
import atexit, os, sys
loaded = lambda: " ".join(name for name in ("tensorflow", "keras") if name in sys.modules)
atexit.register(lambda: open(os.environ["LOADED_REPORT"], "w").write(loaded()))
from deit_keras.cli.launch import launch
launch(sys.argv.pop(1))
"""


@pytest.mark.parametrize(
    "argv, error",
    [
        (["train", "--help"], None),
        (["train", "--epochs=-1"], "epochs must be positive"),
        (["train", "--distillation_type=kl"], "--distillation_type=kl"),
        (["train", "--output=student.h5"], "output must end in '.keras'"),
        (["train", "--model_dir="], "model_dir is empty"),  # was a lock file in the cwd
        (["convert", "--help"], None),
        (["convert", "--checkpoint=missing.pth", "--model=deit_tiny_patch16_224"], "checkpoint"),
        (["predict", "--help"], None),
        (["predict", "--top_k=0", "x.jpg"], "top_k must be positive"),
        (["predict", "x.jpg"], "Pass --model_path"),  # was after TensorFlow started (5.5 s)
        (["evaluate", "--dataset=digits", "--model=deit_tiny_patch16_224"], "without --pretrained"),
        (["evaluate", "--help"], None),
        (["evaluate", "--dataset=digits", "--v2_variant=topimages"], "--v2_variant is for"),
        (["visualize", "--help"], None),
        (["visualize", "--tile=5000", "--model_path=m.keras", "x.jpg"], "tile must be in"),
        (["export", "--help"], None),
        (["benchmark", "--help"], None),
        (["benchmark", "--model=m.keras", "--iterations=2", "--time_budget=1"], "not both"),
        (["ablate", "--help"], None),
        (["ablate", "--rows=none,medium"], "rows must be a non-empty list"),
        (["export", "--model_path=nothing.keras", "--output=m.onnx"], "model_path not found"),
        (
            ["export", "--model=deit_tiny_patch16_224", "--format=litert", "--output=m.onnx"],
            "single .tflite",
        ),
        (
            [
                "export",
                "--model=deit_tiny_patch16_224",
                "--output=m.xml",
                "--format=openvino",
                "--calibration_dataset=digits",
            ],
            "--calibration_dataset is for --quantize=int8",
        ),
    ],
)
def test_commands_answer_help_and_bad_flags_before_tensorflow_loads(tmp_path, argv, error):
    report = tmp_path / "loaded.txt"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.run(
        [sys.executable, "-c", _COMMAND_REPORTING_IMPORTS, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env | {"LOADED_REPORT": str(report)},
    )
    assert report.read_text() == "", report.read_text()
    if error is None:
        assert process.returncode == 0 and "\n  --[no]verbose:" in process.stdout, process.stdout
        assert not user_stderr(process), process.stderr
    else:
        assert_one_line_error(process, error)


def test_verbose_or_a_log_level_the_user_set_brings_the_tensorflow_lines_back():
    # TensorFlow 2.21 writes its start-up lines on every CPU (oneDNN, CPU features).
    # A model name the command looks up once TensorFlow has started.
    unknown = "--model=no_such_model"
    assert _tensorflow_lines(run_cli("benchmark", unknown, "--verbose"))
    assert _tensorflow_lines(run_cli("benchmark", unknown, env={"TF_CPP_MIN_LOG_LEVEL": "0"}))
    assert not _tensorflow_lines(run_cli("benchmark", unknown))


@pytest.mark.parametrize(
    "argv, verbose",
    [
        ([], False),
        (["--verbose"], True),
        (["--verbose=false"], False),
        (["--verbose", "--noverbose"], False),
        (["-verbose=1"], True),
        (["--", "--verbose"], False),
        (["--verbosity=1"], False),
    ],
)
def test_asks_verbose_reads_absl_bool_syntax(argv, verbose):
    assert asks_verbose(argv) is verbose


def test_digits_run_prints_only_its_own_lines(tmp_path):
    process = run_cli(
        "train",
        "--flagfile=experiments/digits.cfg",
        "--epochs=1",
        "--steps_per_epoch=11",  # one call of digits.cfg's steps_per_execution
        "--teacher_epochs=1",
        "--depth=1",
        "--embed_dim=16",
        "--num_heads=2",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--teacher={tmp_path / 'teacher.keras'}",
        f"--model_dir={tmp_path / 'run'}",
        f"--output={tmp_path / 'student.keras'}",
    )
    assert process.returncode == 0, process.stderr
    assert not _tensorflow_lines(process), process.stderr
    everything = process.stdout + process.stderr
    assert not [word for word in TFDS_CHATTER if word in everything], everything
    # What is left on stderr is the run's own lines, as sentences (no absl glog prefix):
    # the data prepared, the teacher trained, then its top-1 before the student trains.
    lines = user_stderr(process)
    assert [line.split()[0] for line in lines] == ["Preparing", "Training", "Teacher"], lines
    assert str(tmp_path / "tfds") in lines[0] and "teacher.keras" in lines[1], lines
    assert lines[2].startswith("Teacher teacher.keras: top-1 0.") and "evaluation split" in lines[2]


def test_digits_builder_says_once_that_it_prepares_the_data(tmp_path, caplog, capfd):
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        builder = digits.digits_builder(str(tmp_path))
    assert builder.info.splits["train"].num_examples == 1437
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith("Preparing the embedded digits dataset"), said
    out, err = capfd.readouterr()
    assert not [word for word in TFDS_CHATTER if word in out + err], out + err


def test_a_runs_flags_txt_is_a_flagfile_the_commands_read_before_tensorflow(tmp_path):
    """flags.txt (and --parallel_seeds' flagfile) held the flags of libraries loaded with
    TensorFlow (`--test_random_seed`): read back before TensorFlow loads, it was refused."""
    flags_txt = tmp_path / "flags.txt"
    write = (
        "import sys; from absl import flags; from deit_keras import cli; "
        "from deit_keras.cli import train; import tensorflow, tensorflow_datasets; "
        "flags.FLAGS(['train', '--epochs=7']); "
        f"open({str(flags_txt)!r}, 'w').write(cli.command_flags_text())"
    )
    subprocess.run([sys.executable, "-c", write], check=True, capture_output=True, timeout=300)
    text = flags_txt.read_text()
    assert "--epochs=7\n" in text and "--test_random_seed" not in text
    process = run_cli("train", f"--flagfile={flags_txt}", "--batch_size=0")
    assert_one_line_error(process, "batch_size must be positive")
