"""Small file-system primitives every writer shares: atomic writes, private dirs,
and the temp-name shape that lets a later run tell a dead run's file from a live one."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

TEMP_MARK = ".tmp-"
_TEMP_RE = re.compile(re.escape(TEMP_MARK) + r"(\d+)$")


def temp_name(path: Path) -> Path:
    """`<name>.tmp-<pid>`: the pid says whose it is (see `temp_owner_alive`)."""
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")


def temp_owner_alive(name: str) -> bool:
    """True when `name` is a temp file of a process that still runs (or of unknown
    owner): the leftover sweep leaves those alone."""
    match = _TEMP_RE.search(name)
    if not match:
        return True
    pid = int(match[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Temp name, fsync, rename, fsync the directory: a reader sees all or nothing."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> Path:
    """mkdir -p with 0700 on what it creates, whatever the umask. Another process
    creating the same directory at the same moment is not an error."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made by a concurrent run: its mode is its creator's business
        os.chmod(d, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    return path
