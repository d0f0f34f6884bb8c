"""File descriptor 2 silenced while a C/C++ library writes what the caller reports itself.

libjpeg prints a line per corrupt file ("Improper call to JPEG library in state 201"),
LiteRT one when its first run creates the XNNPACK delegate; neither goes through Python,
so only the descriptor can hold them back.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_stderr():
    """Sends file descriptor 2 to /dev/null for the block (nothing when there is no real one)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, captured)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
