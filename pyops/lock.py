"""One lock per repository, kept in the repository itself, so two runs never write or
prune the same tree at once, whichever configs (and state dirs) they come from."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pyops.errors import LockBusy
from pyops.fsutil import make_private_dir


@contextlib.contextmanager
def repository_lock(repo: Path, wait_seconds: float, what: str) -> Iterator[None]:
    """Hold an flock on <repository>/.lock; wait up to `wait_seconds`, then name the holder."""
    make_private_dir(repo)
    path = repo / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise LockBusy(
                        f"another pyops run holds {path} ({holder or 'pid unknown'}); "
                        f"waited {wait_seconds:.0f}s. Let it finish, or check that process"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
