"""Flagfiles as absl reads them, with an include found beside the file that includes it."""

import os

import pytest

from deit_keras import cli
from deit_keras.cli.flagfiles import expand_flagfiles

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_an_experiment_including_another_parses_from_any_directory(tmp_path, monkeypatch):
    """deit_finetune.cfg includes teacher_finetune.cfg: absl looked for it from the cwd."""
    from absl import flags

    from deit_keras.cli import train  # noqa: F401  (defines the train flags)

    monkeypatch.chdir(tmp_path)
    flags.FLAGS.unparse_flags()
    try:
        cli.parse_argv(["train", f"--flagfile={REPO}/experiments/deit_finetune.cfg"])
        assert flags.FLAGS.model == "deit_small_distilled_patch16_224"
        assert flags.FLAGS.teacher_base == "resnet50"  # from the included file
    finally:
        flags.FLAGS.unparse_flags()


def test_absls_line_rules_order_cycles_and_the_working_directory_rule(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.cfg").write_text("--b=2\n// a comment\n--flagfile=outer.cfg\n")
    (tmp_path / "sub" / "outer.cfg").write_text(
        "# a comment\n\n  --a=1  \n--flagfile=inner.cfg\n--c=3\n--flagfile=sub/cwd.cfg\n"
    )
    (tmp_path / "sub" / "cwd.cfg").write_text("--d=4\n")
    monkeypatch.chdir(tmp_path)  # sub/cwd.cfg: absl's rule, from the working directory
    argv = ["prog", "--x=0", "--flagfile=sub/outer.cfg", "--y=5", "--", "--flagfile=z"]
    assert expand_flagfiles(argv) == [
        "prog", "--x=0", "--a=1", "--b=2", "--c=3", "--d=4", "--y=5", "--", "--flagfile=z"
    ]  # fmt: skip


def test_a_missing_or_unreadable_flagfile_is_left_to_absls_one_line(tmp_path):
    (tmp_path / "bad.cfg").write_text("--flagfile=nowhere.cfg\n")
    assert expand_flagfiles(["prog", "--flagfile=missing.cfg"]) == [
        "prog",
        "--flagfile=missing.cfg",
    ]
    assert expand_flagfiles(["prog", f"--flagfile={tmp_path}/bad.cfg"]) == [
        "prog", "--flagfile=nowhere.cfg"
    ]  # fmt: skip
    with pytest.raises(cli.UsageError, match="nowhere.cfg"):
        cli.parse_argv(["prog", f"--flagfile={tmp_path}/bad.cfg"])
    (tmp_path / "binary.cfg").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(cli.UsageError, match="flagfile must be a text file"):
        cli.parse_argv(["prog", f"--flagfile={tmp_path}/binary.cfg"])


def test_a_flagfile_saved_with_a_byte_order_mark_reads_its_first_flag(tmp_path):
    # Windows editors save UTF-8 with a BOM: "Unexpected arguments: \ufeff--epochs=0" before.
    (tmp_path / "bom.cfg").write_bytes("--a=1\n--b=é\n".encode("utf-8-sig"))
    assert expand_flagfiles(["prog", f"--flagfile={tmp_path / 'bom.cfg'}"]) == [
        "prog", "--a=1", "--b=é"
    ]  # fmt: skip


@pytest.mark.parametrize("args", [["--flagfile="], ["-flagfile="], ["--flagfile", ""]])
def test_a_flagfile_flag_without_a_file_is_refused_not_skipped(args):
    """absl skips an empty `--flagfile=`: `--flagfile=$CONFIG` (or `--flagfile "$CONFIG"`)
    with CONFIG unset ran on the defaults."""
    with pytest.raises(cli.UsageError, match="names no file"):
        cli.parse_argv(["prog", *args])
    cli._check_flagfiles_are_named(["prog", "--", *args])  # after "--": arguments


def test_a_typo_in_a_flagfile_names_its_file_and_line(tmp_path):
    """`--epoch=3` or `epochs=3` in a flagfile read as command-line problems, with no file."""
    from absl import flags

    from deit_keras.cli import train  # noqa: F401  (defines the train flags)

    config = tmp_path / "mine.cfg"
    config.write_text("# my run\n--epochs=2\n--epoch=3\n")
    flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(cli.UsageError, match=rf"'epoch'.*\({config} line 3\)$"):
            cli.parse_argv(["train", f"--flagfile={config}"])
        config.write_text("--epochs=2\nepochs=3\n")
        left = cli.parse_argv(["train", f"--flagfile={config}"])
        with pytest.raises(cli.UsageError, match=rf"epochs=3 \({config} line 2: .*dashes"):
            cli.check_no_arguments(left)
        with pytest.raises(cli.UsageError, match=r"Unexpected arguments: stray$"):
            cli.check_no_arguments(cli.parse_argv(["train", "stray"]))
    finally:
        flags.FLAGS.unparse_flags()
