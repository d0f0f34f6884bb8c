"""Checks of file and folder arguments before any work: one line naming the argument.

Each `*_problem(name, path)` returns None when `path` can serve as that kind
of argument, else a line such as `model_path not found, got runs/x.keras`;
an empty or None `path` (not given) is no problem. What a file holds (a
.keras archive, an image) is checked by the code that reads it.
"""

import os
import tempfile
import zipfile

# A file made and removed at once where access() says a folder is writable: some
# filesystems refuse new files all the same (root on /proc, NFS with root squashing).
PROBE_PREFIX = ".write-test-"


def input_file_problem(name: str, path: str | None) -> str | None:
    """Whether `path` is an existing, readable, non-empty file."""
    if not path:
        return None
    if not os.path.exists(path):
        return f"{name} not found, got {path}"
    if os.path.isdir(path):
        return f"{name} is a directory, expected a file, got {path}"
    if not os.access(path, os.R_OK):
        return f"{name} is not readable (permission denied), got {path}"
    if os.path.getsize(path) == 0:
        return f"{name} is an empty file (0 bytes), got {path}"
    return None


def output_file_problem(name: str, path: str | None) -> str | None:
    """Whether a file can be written at `path` (not a directory, link, device or pipe; its
    folder writable)."""
    if not path:
        return None
    if os.path.isdir(path):
        return f"{name} is an existing directory, expected a file name, got {path}"
    return not_a_regular_file(name, path) or _folder_problem(name, path)


def not_a_regular_file(name: str, path: str) -> str | None:
    """The line refusing an output at a symbolic link, device, pipe or socket, or None.

    The rename that ends an atomic write replaces what is at `path`: a link would
    become a file (its target left as it was, its sidecars beside the link), a
    device a file (as root, `/dev/null` itself). Following the link instead would
    write into what it points to (a content-addressed cache, DVC's or git-annex's),
    under a name without the link's extension.
    """
    if os.path.islink(path):
        return f"{name} is a symbolic link: give the file it points to, got {path}"
    if os.path.exists(path) and not os.path.isfile(path):
        return (
            f"{name} is not a regular file (a device, pipe or socket), which a written file "
            f"would replace: give a file name, got {path}"
        )
    return None


def output_path_problem(name: str, path: str | None) -> str | None:
    """Whether a file or a directory can be written at `path` (its folder writable).

    What may already be there depends on what is written: `output_file_problem`,
    `replaceable_dir_problem`.
    """
    return _folder_problem(name, path) if path else None


def replaceable_dir_problem(name: str, path: str | None, marker: str) -> str | None:
    """Whether a directory can be written at `path`, replacing only an earlier one.

    `path` may be missing, an empty directory, or an earlier output of the
    same kind: a directory holding a file `marker` (e.g. a SavedModel's
    saved_model.pb), which is replaced. Any other directory is the user's, and
    a file is not a directory.
    """
    if not path:
        return None
    if os.path.islink(path):  # the rename would replace the link, not what it points to
        return f"{name} is a symbolic link: give the directory it points to, got {path}"
    if os.path.isdir(path):
        if os.listdir(path) and not os.path.isfile(os.path.join(path, marker)):
            return (
                f"{name} is an existing directory without {marker}; only an earlier export "
                f"(which has one) is replaced: choose a new path, got {path}"
            )
    elif os.path.lexists(path):
        return f"{name} is an existing file, expected a directory, got {path}"
    return _folder_problem(name, path)


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def output_dir_problem(name: str, path: str | None) -> str | None:
    """Whether `path` can be (or already is) a directory this program writes into."""
    if not path:
        return None
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{name} is not writable (permission denied), got {path}"
        refusal = _file_creation_refusal(path)
        return f"{name} refuses new files ({refusal}), got {path}" if refusal else None
    if os.path.exists(path):
        return f"{name} is an existing file, expected a directory, got {path}"
    return _folder_problem(name, path)


def directory_problem(name: str, path: str | None) -> str | None:
    """Whether `path` is a directory or not there yet (e.g. a data folder made on demand)."""
    if not path:
        return None
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        where = "" if folder == os.path.abspath(path) else f" ({folder})"
        return f"{name} is an existing file{where}, expected a directory, got {path}"
    return None


def _folder_problem(name: str, path: str) -> str | None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{name} lies under {folder}, which is a file, got {path}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{name} lies under {folder}, which is not writable, got {path}"
    refusal = _file_creation_refusal(folder)
    if refusal:
        return f"{name} lies under {folder}, which refuses new files ({refusal}), got {path}"
    return None


class ProbeRemovalError(OSError):
    """A probe file was created but cannot be removed (an append-only or write-once
    directory): outputs that replace by rename cannot be written there either."""


def probe_file_creation(folder: str) -> None:
    """Creates, then removes, a file in the existing directory `folder`.

    Raises:
        OSError: the file cannot be created (`ProbeRemovalError`: nor removed).
    """
    handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    os.close(handle)
    try:
        os.remove(probe)
    except OSError as error:
        raise ProbeRemovalError(error.errno, error.strerror, probe) from error


def _file_creation_refusal(folder: str) -> str | None:
    """Why a file cannot be created in the existing directory `folder`, or None."""
    try:
        probe_file_creation(folder)
    except ProbeRemovalError as error:
        return f"a new file there cannot be removed: {os.strerror(error.errno)}"
    except OSError as error:
        return os.strerror(error.errno) if error.errno else str(error)
    return None


def keras_file_problem(path: str) -> str | None:
    """Why `path` is not a `.keras` archive Keras can open (missing, a directory, empty,
    truncated or another format), or None."""
    if not os.path.exists(path):
        return f"Model file not found: {path}"
    if os.path.isdir(path):
        return f"{path} is a directory, expected a .keras file."
    if os.path.getsize(path) == 0:
        return f"Model file {path} is empty."
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        return f"{path} is not a .keras model file (a zip archive ending in .keras)."
    return None
