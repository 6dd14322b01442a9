"""Look at a file lock (common.storage.exclusive_lock) from outside, without waiting for it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def held_elsewhere(path: Path | str) -> bool:
    """Whether someone else holds the lock: flock from a descriptor of our own, without waiting
    (a second descriptor conflicts even with a holder in this process)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
