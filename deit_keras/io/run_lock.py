"""One live run per output directory: an advisory `flock` on `<model_dir>/.lock`.

The kernel drops a `flock` when its holder dies, however it dies (SIGKILL,
OOM, power cut of the process), so a crashed run never leaves a stale lock
behind: the file stays, the lock does not. The holder writes its PID and
host into the file so a refused run can say who holds the directory.
`flock` is per machine on local disks; on NFS (v4) Linux maps it to a
byte-range lock the server enforces.
"""

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator

from deit_keras.errors import UserInputError

LOCK_NAME = ".lock"


class DirectoryInUseError(UserInputError):
    """Another live process holds the run lock of a directory."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 256).decode("utf-8", "replace").split()
    if len(text) >= 2:
        return f"PID {text[0]} on {text[1]}"
    return "another process"


def _take(directory: str) -> int:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _holder(fd)
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise DirectoryInUseError(
            f"model_dir {directory} is in use by {holder} (lock {path}); wait for that run "
            "to end, stop it, or pass another --model_dir."
        ) from None
    return fd


@contextlib.contextmanager
def hold(directory: str) -> Iterator[str]:
    """Holds `directory`'s run lock for the `with` block; yields the lock file's path.

    Raises:
        DirectoryInUseError: another live process holds it (the message
            names the directory and the holder's PID and host).
    """
    directory = os.path.abspath(directory)
    fd = _take(directory)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield os.path.join(directory, LOCK_NAME)
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def check_free(directory: str) -> None:
    """Raises `DirectoryInUseError` when a live process holds `directory`'s lock.

    A probe (take and drop at once), for a caller that writes into the
    directory before the run itself takes the lock.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, LOCK_NAME)):
        os.close(_take(directory))


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Waits for, then holds, an exclusive `flock` on the file `path` for the `with` block.

    For one-time work several processes may start at once (preparing a
    dataset): the first does it, the others wait and then find it done.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


__all__ = ["DirectoryInUseError", "LOCK_NAME", "check_free", "exclusive", "hold"]
