"""Crash-safe file output: write to a temporary name, then rename.

A write that fails for want of space or rights (ENOSPC, EDQUOT, EROFS,
EACCES, ...) raises `WriteError`: one line naming the path, with the file
that was there before left unchanged.
"""

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator

from deit_keras.errors import UserEnvironmentError, UserInputError
from deit_keras.io import leftovers
from deit_keras.io.paths import (
    PROBE_PREFIX,
    not_a_regular_file,
    probe_file_creation,
    replaceable_dir_problem,
)

_DISK_ERRNOS = frozenset(
    (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
)
# Libraries that wrap the OSError (h5py, TensorFlow) keep its text.
_DISK_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "File too large",
)


class WriteError(UserEnvironmentError):
    """An output could not be written (disk full, read-only, no rights); the message names it."""


def disk_error_reason(error: BaseException) -> str | None:
    """The reason (e.g. "No space left on device") when `error` is a full/read-only disk."""
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return os.strerror(error.errno)  # h5py's strerror is a paragraph
    text = str(error)
    return next((message for message in _DISK_MESSAGES if message in text), None)


def _on_our_file(error: BaseException, ours: str) -> bool:
    """Whether `error` is an OSError about a file of ours (a temporary or a probe), whose
    path begins with `ours`: its name means nothing to the user, the path they gave does."""
    filename = getattr(error, "filename", None)
    if not isinstance(error, OSError) or not error.errno or not isinstance(filename, str):
        return False
    return os.path.abspath(filename).startswith(ours)


def _write_error(path: str, error: BaseException, ours: str | None = None) -> WriteError | None:
    """A `WriteError` naming `path` when `error` is a full/read-only disk, or any OSError
    on our file whose path begins with `ours`; None otherwise (the error stands as it is)."""
    if isinstance(error, WriteError):
        return None
    reason = disk_error_reason(error)
    if reason is None and ours is not None and _on_our_file(error, ours):
        reason = os.strerror(error.errno)
    if reason is None:
        return None
    advice = "Free space or give write access there, or write elsewhere"
    if getattr(error, "errno", None) == errno.ENAMETOOLONG:  # its temporary's longer name
        advice = "Give a shorter file name"
    failure = WriteError(
        f"Could not write {path}: {reason}. {advice}; the file that was there before (if "
        "any) is unchanged."
    )
    failure.errno = getattr(error, "errno", None)
    return failure


def check_writable(directory: str) -> None:
    """Raises `WriteError` unless a file can be created in `directory` (made if missing)."""
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        probe_file_creation(directory)
    except OSError as error:
        failure = _write_error(directory, error, os.path.join(directory, PROBE_PREFIX))
        if failure is None:
            raise
        raise failure from error


def check_free_space(path: str, needed: int) -> None:
    """Raises `WriteError` when the disk that would hold `path` has under `needed` bytes free.

    For writers that a full disk takes down: HDF5 (Keras' `.weights.h5`) prints a
    traceback for each object it fails to flush, then crashes the process at exit.
    """
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    disk = os.statvfs(directory)
    if disk.f_flag & os.ST_RDONLY:
        return  # the write reports that, in its words
    free = disk.f_bavail * disk.f_frsize
    if free < needed:
        raise WriteError(
            f"Could not write {path}: No space left on device ({needed / 1e6:.1f} MB needed, "
            f"{free / 1e6:.1f} MB free). Free space there, or write elsewhere; the file that "
            "was there before (if any) is unchanged."
        )


def _stem_and_extension(path: str) -> tuple[str, str]:
    """`path`'s file name split at its extension; a name such as `.keras` is all extension
    (`os.path.splitext` calls it a stem: its temporary then lacked `.keras`, and Keras
    refused to save to it)."""
    name = os.path.basename(path)
    stem, extension = os.path.splitext(name)
    if not extension and name.startswith(".") and "." not in name[1:]:
        return "", name
    return stem, extension


def temporary_prefix(path: str) -> str:
    """How the name of `atomic_output`'s temporary for `path` begins."""
    return f".{_stem_and_extension(path)[0]}.tmp-"


@contextlib.contextmanager
def atomic_output(path: str, *, directory_marker: str | None = None) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The temporary's name carries its owner (`leftovers.owner()`): what a killed
    process left for `path` is removed by the next write of `path`.

    Works for files and directories (e.g. a SavedModel). On any exception
    the temporary output is removed and `path` is left as it was, so a
    crash never leaves a half-written file where a good one was. A full,
    read-only or forbidden disk raises `WriteError` naming `path`.

    A file never replaces a directory, nor a directory a file
    (`UserInputError`, `path` unchanged). With `directory_marker` (a
    directory output), an existing directory is replaced only when it holds
    a file of that name, an earlier output of the same kind (e.g. a
    SavedModel's saved_model.pb); anything else at `path` raises
    `UserInputError` before the body runs.

    A symbolic link, device, pipe or socket at `path` raises `UserInputError`
    before the body runs (`paths.not_a_regular_file`).
    """
    if directory_marker is not None:
        problem = replaceable_dir_problem("output", path, directory_marker)
        if problem:
            raise UserInputError(problem)
    elif os.path.islink(path) or not os.path.isdir(path):  # a directory: `_rename`'s rule
        problem = not_a_regular_file("output", path)
        if problem:
            raise UserInputError(problem)
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    extension = _stem_and_extension(path)[1]
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        leftovers.remove_stale(directory, temporary_prefix(path), extension)  # killed writes'
        # Keep the extension: keras.saving checks that a path ends in ".keras".
        handle, temporary = tempfile.mkstemp(
            prefix=f"{temporary_prefix(path)}{leftovers.owner()}-", suffix=extension, dir=directory
        )
        os.close(handle)
        os.remove(temporary)
        yield temporary
        _rename(temporary, path)
    except Exception as error:
        failure = _write_error(path, error, os.path.join(directory, temporary_prefix(path)))
        if failure is None:
            raise
        raise failure from error
    finally:
        if temporary is not None and os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_NO_EXCHANGE_ERRNOS = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV))


def _exchange(first: str, second: str) -> bool:
    """Swaps two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system or filesystem cannot, the paths untouched."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not glibc >= 2.28 (macOS, musl, Windows)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    names = (os.fsencode(first), os.fsencode(second))
    if renameat2(_AT_FDCWD, names[0], _AT_FDCWD, names[1], _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE_ERRNOS:
        return False
    raise OSError(code, os.strerror(code), first)


def _rename(temporary: str, path: str) -> None:
    """`temporary` becomes `path`; a directory there is replaced only by a directory.

    A directory is swapped in one step where the system can (a kill leaves the old
    one or the new one at `path`, never neither); elsewhere by two renames.
    """
    new_is_dir = os.path.isdir(temporary)
    if os.path.isdir(path) and not os.path.islink(path):
        if not new_is_dir:
            raise UserInputError(f"{path} is an existing directory, not replaced by a file")
        if _exchange(temporary, path):
            shutil.rmtree(temporary, ignore_errors=True)  # now the old directory
            return
        backup = temporary + ".old"
        os.rename(path, backup)
        os.rename(temporary, path)
        shutil.rmtree(backup, ignore_errors=True)
    elif new_is_dir and os.path.lexists(path):
        raise UserInputError(f"{path} is an existing file, not replaced by a directory")
    else:
        os.replace(temporary, path)


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through `atomic_output`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` through `atomic_output`."""
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
