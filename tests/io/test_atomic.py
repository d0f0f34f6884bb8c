"""atomic_output never deletes what it was not asked to replace."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deit_keras.errors import UserInputError
from deit_keras.io import atomic, leftovers, paths


def _users_folder(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("notes")
    return folder


def test_a_file_never_replaces_a_directory(tmp_path):
    folder = _users_folder(tmp_path)
    with pytest.raises(UserInputError, match="existing directory, not replaced by a file"):
        atomic.write_bytes_atomic(str(folder), b"model")
    assert (folder / "sub" / "notes.txt").read_text() == "notes"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_directory_output_replaces_only_an_earlier_one(tmp_path):
    folder = _users_folder(tmp_path)
    ran = []
    with pytest.raises(UserInputError, match="without saved_model.pb") as caught:
        with atomic.atomic_output(str(folder), directory_marker="saved_model.pb"):
            ran.append(True)
    assert not ran and str(folder) in str(caught.value)
    assert (folder / "sub" / "notes.txt").read_text() == "notes"

    (folder / "saved_model.pb").write_bytes(b"earlier export")
    with atomic.atomic_output(str(folder), directory_marker="saved_model.pb") as temporary:
        os.makedirs(temporary)
        with open(os.path.join(temporary, "saved_model.pb"), "wb") as handle:
            handle.write(b"new export")
    assert sorted(os.listdir(folder)) == ["saved_model.pb"]
    assert (folder / "saved_model.pb").read_bytes() == b"new export"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_directory_never_replaces_a_file(tmp_path):
    path = tmp_path / "existing"
    path.write_text("keep")
    with pytest.raises(UserInputError, match="existing file, expected a directory") as caught:
        with atomic.atomic_output(str(path), directory_marker="saved_model.pb"):
            pass
    assert str(path) in str(caught.value)
    # Without a marker the body runs; the rename still refuses, naming `path`, not the temporary.
    refused = "existing file, not replaced by a directory"
    with pytest.raises(UserInputError, match=refused) as caught:
        with atomic.atomic_output(str(path)) as temporary:
            os.makedirs(temporary)
    assert ".tmp-" not in str(caught.value)
    assert path.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["existing"]


def test_an_empty_directory_is_replaced_and_a_link_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert paths.replaceable_dir_problem("output", str(empty), "saved_model.pb") is None
    with atomic.atomic_output(str(empty), directory_marker="saved_model.pb") as temporary:
        os.makedirs(temporary)
        (Path(temporary) / "saved_model.pb").write_bytes(b"export")
    assert os.listdir(empty) == ["saved_model.pb"]
    link = tmp_path / "link"
    link.symlink_to(empty)  # an earlier export, through a link
    problem = paths.replaceable_dir_problem("output", str(link), "saved_model.pb")
    assert problem is not None and "symbolic link" in problem


def test_an_output_the_filesystem_refuses_is_named_not_its_temporary(tmp_path, monkeypatch):
    """A filesystem that refuses new files where access() said yes (root on /proc): the
    one line names the user's path, not `.name.tmp-XXXX` (nor the probe's name)."""
    import tempfile

    def refuse(prefix="", suffix="", dir=None):
        raise FileNotFoundError(2, "No such file or directory", f"{dir}/{prefix}abc{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = str(tmp_path / "model.tflite")
    with pytest.raises(atomic.WriteError) as raised:
        with atomic.atomic_output(target):
            pass
    assert str(raised.value).startswith(f"Could not write {target}: No such file or directory.")
    assert ".tmp-" not in str(raised.value)
    with pytest.raises(atomic.WriteError, match=f"Could not write {tmp_path}: No such file"):
        atomic.check_writable(str(tmp_path))
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):  # the body's own errors stand as they are
        with atomic.atomic_output(target):
            open(tmp_path / "missing" / "other.txt")


def test_a_folder_the_filesystem_refuses_is_an_argument_problem(tmp_path, monkeypatch):
    """access() says writable, the filesystem refuses new files (root on /proc, NFS root
    squashing): the flag check names the argument before any work, leaving no probe."""
    import tempfile

    real_mkstemp = tempfile.mkstemp
    refused = str(tmp_path / "refused")
    os.makedirs(refused)

    def refuse_there(prefix="", suffix="", dir=None):
        if os.path.abspath(dir) == refused:
            raise PermissionError(13, "Permission denied", f"{dir}/{prefix}abc{suffix}")
        return real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_there)
    for problem in (
        paths.output_file_problem("output", f"{refused}/model.onnx"),
        paths.output_path_problem("output", f"{refused}/export"),
        paths.output_dir_problem("model_dir", f"{refused}/run/sub"),
    ):
        assert problem is not None and "refuses new files (Permission denied)" in problem
    assert "model_dir refuses new files" in paths.output_dir_problem("model_dir", refused)
    assert paths.output_file_problem("output", str(tmp_path / "fine.onnx")) is None
    assert os.listdir(tmp_path) == ["refused"]  # the probe removed itself


@pytest.mark.skipif(
    not os.access("/proc", os.W_OK), reason="access() says /proc is writable only for root"
)
def test_an_export_to_proc_is_refused_before_any_work(tmp_path):
    from deit_keras.testing import assert_one_line_error, run_cli

    process = run_cli(
        "export", f"--model_path={tmp_path / 'never_read.keras'}", "--output=/proc/deit.onnx"
    )
    assert_one_line_error(process, "/proc", "refuses new files")


def test_a_folder_that_keeps_new_files_is_a_problem_and_the_check_raises_nothing(
    tmp_path, monkeypatch
):
    """Append-only or write-once folders: the probe is made but cannot be removed; the flag
    check says so instead of raising the OSError."""

    def refuse(path, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(os, "remove", refuse)
    problem = paths.output_file_problem("output", str(tmp_path / "model.onnx"))
    assert problem is not None and "a new file there cannot be removed" in problem


def _replace_earlier_export(folder, content):
    with atomic.atomic_output(str(folder), directory_marker="saved_model.pb") as temporary:
        os.makedirs(temporary)
        Path(temporary, "saved_model.pb").write_bytes(content)


@pytest.mark.parametrize("exchange", [True, False], ids=["one_step", "two_renames"])
def test_a_directory_is_replaced_in_one_step_where_the_system_can(tmp_path, monkeypatch, exchange):
    """Two renames (old aside, new in) left no directory at the path when killed between."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"earlier export")
    renames = []
    rename = os.rename
    monkeypatch.setattr(os, "rename", lambda *a: (renames.append(a), rename(*a)))
    if not exchange:  # the system cannot swap (macOS, another filesystem): two renames
        monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    _replace_earlier_export(folder, b"new export")
    assert (folder / "saved_model.pb").read_bytes() == b"new export"
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert len(renames) == (0 if exchange else 2)


def test_a_link_or_a_device_at_the_output_is_refused_and_kept(tmp_path):
    """The rename replaced a link with a file (its target unchanged) and, as root, a
    device such as /dev/null; following the link wrote into what it points to (a
    content-addressed cache) under a name without `.keras`."""
    target, pipe = tmp_path / "blobs" / "3f9a1c", tmp_path / "pipe.json"
    target.parent.mkdir()
    target.write_text("old")
    os.mkfifo(pipe)
    (tmp_path / "link.keras").symlink_to(target)
    (tmp_path / "to_pipe.json").symlink_to(pipe)
    cases = {
        "link.keras": "is a symbolic link",
        "to_pipe.json": "is a symbolic link",
        "pipe.json": "is not a regular file (a device, pipe or socket)",
    }
    for name, problem in cases.items():
        path = str(tmp_path / name)
        assert paths.output_file_problem("output", path).startswith(f"output {problem}")
        with pytest.raises(UserInputError, match=re.escape(problem)):
            atomic.write_text_atomic(path, "{}")
    assert (tmp_path / "link.keras").is_symlink() and target.read_text() == "old"
    assert pipe.is_fifo() and (tmp_path / "to_pipe.json").is_symlink()
    assert paths.output_file_problem("output", os.devnull).startswith("output is not a regular")
    assert sorted(os.listdir(tmp_path)) == ["blobs", "link.keras", "pipe.json", "to_pipe.json"]


def test_a_link_to_a_folder_at_the_output_is_refused_before_the_body_runs(tmp_path):
    """A file output at a link: refused whether the link points to a file or a folder."""
    folder = tmp_path / "folder"
    folder.mkdir()
    link = tmp_path / "model.keras"
    link.symlink_to(folder)
    ran = []
    with pytest.raises(UserInputError, match="is a symbolic link"):
        with atomic.atomic_output(str(link)) as temporary:
            ran.append(temporary)
            Path(temporary).write_text("model")
    assert not ran and link.is_symlink() and os.listdir(folder) == []


KILLED_WRITE = """
import os, signal, sys
from deit_keras.io import atomic
with atomic.atomic_output(sys.argv[1]) as temporary:
    if sys.argv[2] == "dir":
        os.makedirs(os.path.join(temporary, "variables"))
    else:
        open(temporary, "w").write("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_what_a_killed_write_left_goes_with_the_next_write_and_no_one_elses(tmp_path, kind):
    """A SIGKILLed export left `.model.tmp-*` beside the output for good (a SavedModel's
    is hundreds of MB); a live writer's, another host's and a name not ours must stay."""
    output = tmp_path / "model.keras"
    process = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(output), kind])
    assert process.returncode == -signal.SIGKILL
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".model.tmp-") and (tmp_path / left).exists()
    others = [
        f".model.tmp-{os.getpid()}@{leftovers.host()}-live.keras",
        ".model.tmp-12@another_host-busy.keras",
        ".model.tmp-abc123.keras",
        ".other.tmp-999999999@x-y.keras",
    ]
    for name in others:
        (tmp_path / name).write_text("")
    atomic.write_text_atomic(str(output), "whole")
    assert output.read_text() == "whole"
    assert sorted(os.listdir(tmp_path)) == sorted(["model.keras", *others])


def test_a_name_whose_temporary_is_too_long_says_to_shorten_it(tmp_path):
    """The temporary's name is the output's and more: near the 255-byte limit the write
    failed with "File name too long. Free space or give write access there"."""
    output = tmp_path / ("m" * 240 + ".keras")
    with pytest.raises(atomic.WriteError, match=r"File name too long\. Give a shorter file name"):
        atomic.write_text_atomic(str(output), "x")
    assert os.listdir(tmp_path) == []


def test_a_file_named_only_by_its_extension_is_written(tmp_path):
    """`--output .keras`: the temporary lacked `.keras` (Keras refused it: exit 70)."""
    target = tmp_path / ".keras"
    with atomic.atomic_output(str(target)) as temporary:
        assert temporary.endswith(".keras")
        with open(temporary, "w") as handle:
            handle.write("model")
    assert target.read_text() == "model"
    assert sorted(os.listdir(tmp_path)) == [".keras"]
