"""A file still being written, followed by a reader through its own descriptor.

The writer (pyops.artifact.ArtifactWriter) publishes how many bytes it has written,
then either `finish` (with the size and sha256 of what it wrote) or `fail`. A reader
(an upload running beside the backup) waits on a condition for bytes beyond what it
has read and reads them from disk with `pread`: nothing is queued in memory, so a
reader slower than the writer never holds the writer back and memory stays flat.
The reader's descriptor is opened while the file is still there, so the writer may
rename it into place (or remove it) at any time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pyops.errors import PyopsError

CHUNK = 1 << 20


class WriterFailed(PyopsError):
    """The writer gave up (the backup failed or was aborted): the file is no good."""


class GrowingFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        self._cond = threading.Condition()
        self._written = 0
        self._final: tuple[int, str] | None = None
        self._failed: str | None = None

    # --- the writer's side ----------------------------------------------------------

    def grew(self, written: int) -> None:
        """`written` bytes are in the file (readable through any descriptor)."""
        with self._cond:
            self._written = written
            self._cond.notify_all()

    def finish(self, size: int, sha256: str) -> None:
        """The file is complete: `size` bytes with `sha256`, as the writer hashed them."""
        with self._cond:
            self._written = size
            self._final = (size, sha256)
            self._cond.notify_all()

    def fail(self, why: str, *, even_if_finished: bool = False) -> None:
        """The file will never be complete; a waiting reader gets WriterFailed. No
        effect once finished, unless `even_if_finished` (the run was interrupted: the
        reader must stop too)."""
        with self._cond:
            if (self._final is None or even_if_finished) and self._failed is None:
                self._failed = why
            self._cond.notify_all()

    # --- the reader's side ----------------------------------------------------------

    def wait_for(self, end: int) -> tuple[int, bool]:
        """Block until `end` bytes are written or the file is complete; returns (bytes
        written, complete). WriterFailed when the writer gave up."""
        with self._cond:
            while True:
                if self._failed is not None:
                    raise WriterFailed(self._failed)
                if self._final is not None or self._written >= end:
                    return self._written, self._final is not None
                self._cond.wait()

    @property
    def sha256(self) -> str:
        """The writer's sha256 of the whole file; only once complete."""
        with self._cond:
            if self._failed is not None:
                raise WriterFailed(self._failed)
            if self._final is None:
                raise RuntimeError("the file is not complete yet")
            return self._final[1]

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def ranges(self, sizes: Iterator[int]) -> Iterator[tuple[int, int]]:
        """(offset, length) of consecutive pieces of the file, each yielded as soon as
        it is written whole; the last one (possibly empty, when the file is) once the
        file is complete. `sizes` gives the length wanted for each piece in turn."""
        offset = 0
        for size in sizes:
            written, complete = self.wait_for(offset + size)
            if not complete or written - offset > size:
                yield offset, size
                offset += size
                continue
            if written > offset or offset == 0:
                yield offset, written - offset
            return

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes as they are written, until it is complete."""
        for offset, length in self.ranges(_forever(CHUNK)):
            done = 0
            while done < length:
                data = self.pread(min(CHUNK, length - done), offset + done)
                if not data:
                    raise PyopsError(f"{self.path}: shorter than its writer said")
                done += len(data)
                yield data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _forever(size: int) -> Iterator[int]:
    while True:
        yield size
