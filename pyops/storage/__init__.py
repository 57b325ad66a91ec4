"""One small storage interface with three implementations: local disk, S3, memory.

Keys are relative to the store's root (`<target>/<tier>/<file>`, `repository.json`)
and checked by `check_key` before any implementation turns them into a path or an
object name. Every put is all-or-nothing and confirms what was stored (size and
sha256) before it returns; a reader never sees half an object. The conformance
suite in `tests/storage/` runs against every implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pyops.errors import PyopsError

if TYPE_CHECKING:
    from pyops.growing import GrowingFile

Progress = Callable[[int], None] | None
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


class StoreError(PyopsError):
    """The store could not be reached, refused an operation, or stored something else."""


class NotFound(StoreError):
    """No object under that key."""


class ChecksumMismatch(StoreError):
    """The bytes offered do not have the sha256 they should: nothing was stored."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # what the store recorded beside the object, if it keeps that
    retain_until: datetime | None = None  # object lock, where the store has one
    storage_class: str | None = None  # where the store has classes


def check_key(key: str) -> str:
    """A key is `/`-separated plain names: no empty, `.`/`..` or hidden segment, no
    absolute path. Whatever a manifest or a listing said, nothing else reaches a store."""
    parts = key.split("/")
    if not key or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise StoreError(f"refusing unsafe storage key {key!r}")
    return key


class Store(Protocol):
    def describe(self) -> str:
        """Where this store is, for messages."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (size only; `stat` tells the rest)."""

    def children(self, prefix: str = "") -> Iterator[str]:
        """The names one level below `prefix` ("" or ending in "/") that hold objects,
        sorted, each once: the hosts under a bucket prefix, in one delimiter listing
        instead of a listing of every object."""

    def stat(self, key: str) -> ObjectInfo | None:
        """The object under `key`, or None."""

    def put_file(self, key: str, path: Path, sha256: str, progress: Progress = None) -> None:
        """Store a finished file; refuses (and stores nothing) unless its bytes have
        `sha256`."""

    def put_stream(
        self, key: str, chunks: Iterable[bytes], sha256: str, progress: Progress = None
    ) -> None:
        """Store a stream; refuses (and stores nothing) unless its bytes have `sha256`."""

    def put_growing(self, key: str, source: GrowingFile, progress: Progress = None) -> None:
        """Store a file while it is still being written, reading it as it grows; the
        object is completed only once the writer has finished, and refused (nothing
        stored) unless the bytes read have the sha256 the writer computed
        (ChecksumMismatch) or when the writer failed (pyops.growing.WriterFailed)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """A small object (a manifest), in one atomic write."""

    def open_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes a chunk at a time; NotFound when absent."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from `start` (fewer at the end)."""

    def delete(self, key: str) -> None:
        """Remove the object; an absent one is not an error."""


def read_small(store: Store, key: str, limit: int = 1 << 20) -> bytes:
    """A small object whole (a manifest, the identity); a huge one is refused, not read."""
    data = store.read_range(key, 0, limit + 1)
    if len(data) > limit:
        raise StoreError(f"{store.describe()}: {key} is larger than {limit} bytes: not a manifest")
    return data
