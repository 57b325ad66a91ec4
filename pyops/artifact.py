"""Writing an artifact: temp name, sha256 and byte count in the stream, fsync, rename."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from pyops.errors import PyopsError
from pyops.fsutil import fsync_dir, temp_name
from pyops.growing import GrowingFile

CHUNK = 1 << 20
WRITEBACK = 8 << 20  # bytes the kernel is asked to start writing back at a time
SYNC_FILE_RANGE_WRITE = 2


def _writeback() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, None where there is none (not Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


class ArtifactWriter:
    """Receives the encoded stream; `commit` makes it visible, `abort` removes every byte.
    `follow()` hands out the temp file as a GrowingFile that this writer keeps told of
    its progress (an upload reading it while it is written)."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = temp_name(final)
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.hash = hashlib.sha256()
        self.bytes = 0
        self._flushed = 0  # bytes whose writeback has been started
        self._writeback = _writeback()
        self.growing: GrowingFile | None = None

    def follow(self) -> GrowingFile:
        if self.growing is None:
            self.growing = GrowingFile(self.temp)
        return self.growing

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise disk_error(exc, self.final) from None
        self.bytes += len(chunk)
        if self._writeback is not None and self.bytes - self._flushed >= WRITEBACK:
            # the disk writes while the dump goes on, so the fsync of commit finds
            # little left to do (the raw pipeline's `> file` never waits for the disk);
            # asking never waits, and a failure shows in that fsync
            self._writeback(
                self.fd, self._flushed, self.bytes - self._flushed, SYNC_FILE_RANGE_WRITE
            )
            self._flushed = self.bytes
        if self.growing is not None:
            self.growing.grew(self.bytes)

    def commit(self) -> tuple[int, str]:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise disk_error(exc, self.final) from None
        os.close(self.fd)
        self.fd = -1
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)
        sha = self.hash.hexdigest()
        if self.growing is not None:
            self.growing.finish(self.bytes, sha)
        return self.bytes, sha

    def abort(self) -> None:
        if self.growing is not None:
            self.growing.fail(f"the backup into {self.final.name} failed or was aborted")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.temp.unlink(missing_ok=True)


NO_ROOM = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for its file system",
}


def no_room(exc: OSError) -> str | None:
    """What a write refused for lack of room means ("disk full", ...), else None."""
    return NO_ROOM.get(exc.errno or 0)


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path` (or what would hold it)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def disk_error(exc: OSError, path: Path) -> PyopsError:
    """A write into the repository failed: name the file and its file system."""
    full = no_room(exc)
    if full:
        return PyopsError(
            f"{full} writing {path.name} in {path.parent} (file system {mount_point(path)}): "
            "the partial file was removed; free space or move the repository, then run again"
        )
    return PyopsError(f"cannot write {path}: {exc.strerror}")


def read_chunks(path: Path, hasher: hashlib._Hash | None = None) -> Iterator[bytes]:
    """A file a chunk at a time, optionally hashing it on the way. A symlink is not
    followed: in the repository, a link where a file should be is not ours."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            if hasher is not None:
                hasher.update(chunk)
            yield chunk
