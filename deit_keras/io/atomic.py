"""Crash-safe file output: write to a temporary name, then rename."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it to `path` on success.

    Works for files and directories (e.g. a SavedModel). On any exception
    the temporary output is removed and `path` is left as it was, so a
    crash never leaves a half-written file where a good one was.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    # Keep the extension: keras.saving checks that a path ends in ".keras".
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=extension, dir=directory)
    os.close(handle)
    os.remove(temporary)
    try:
        yield temporary
        if os.path.isdir(path) and not os.path.islink(path):
            backup = temporary + ".old"
            os.rename(path, backup)
            os.rename(temporary, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through `atomic_output`."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
