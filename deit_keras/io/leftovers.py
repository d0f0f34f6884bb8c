"""What a killed write leaves behind (a partial download in the weights cache, an
output's temporary beside it), told by the owner its name carries (`<pid>@<host>`), and
removed once that owner is gone.

A kill (SIGKILL, the out-of-memory killer, a power cut) runs no clean-up. A later write
of the same file removes the leftovers of dead processes of this host; another host's
(storage shared by the workers of a run) only after a day, since its process cannot be
checked from here. "Host" is one boot of one machine and one PID namespace (a container),
so a pid is only ever checked where it means that process. Removal is best effort: a
leftover that cannot be removed (another user's, in a shared folder) stays, and the
write goes on.
"""

import contextlib
import functools
import glob
import hashlib
import os
import shutil
import socket
import time

# Another host's leftover is removed only when this old.
OTHER_HOST_STALE_S = 24 * 3600


@functools.cache
def host() -> str:
    """Ten hex digits naming this host's name, boot and PID namespace: two machines of one
    name, or two containers of one machine, differ. Short, as it lengthens file names."""
    where = f"{socket.gethostname()}/{_boot()}/{_pid_namespace()}"
    return hashlib.sha256(where.encode()).hexdigest()[:10]


def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:  # not Linux
        return "boot"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "pid"


def owner() -> str:
    """`<pid>@<host>` of this process: what a name made here carries."""
    return f"{os.getpid()}@{host()}"


def remove_stale(directory: str, prefix: str, suffix: str = "") -> None:
    """Removes the files of `directory` named `prefix<owner>-...suffix` whose owner is
    gone; names without an owner tag, and live owners', stay."""
    pattern = os.path.join(glob.escape(directory), f"{glob.escape(prefix)}*{glob.escape(suffix)}")
    for leftover in glob.glob(pattern):
        tag = os.path.basename(leftover)[len(prefix) :].split("-")[0]
        if _gone(tag, leftover):
            _remove(leftover)


def _gone(tag: str, path: str) -> bool:
    pid, at, owner_host = tag.partition("@")
    if not (at and pid.isdigit()):
        return False  # not named by this module
    if owner_host == host():
        try:
            return not _process_alive(int(pid))
        except (OverflowError, OSError):  # not a pid this system has
            return False
    return time.time() - _mtime(path) > OTHER_HOST_STALE_S


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return time.time()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or not ours to remove
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # a directory output's (a SavedModel's)
        else:
            os.remove(path)
