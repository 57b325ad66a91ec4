"""An in-memory store: the same interface, for fast tests of the catalog."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyops.storage import ChecksumMismatch, NotFound, ObjectInfo, Progress, check_key

if TYPE_CHECKING:
    from pyops.growing import GrowingFile


class MemoryStore:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}

    def describe(self) -> str:
        return f"memory:{self.name}"

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]))

    def children(self, prefix: str = "") -> Iterator[str]:
        names = {
            key[len(prefix) :].split("/", 1)[0]
            for key in self.objects
            if key.startswith(prefix) and "/" in key[len(prefix) :]
        }
        yield from sorted(names)

    def stat(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(check_key(key))
        if data is None:
            return None
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path, sha256: str, progress: Progress = None) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, iter(lambda: f.read(1 << 20), b""), sha256, progress)

    def put_stream(
        self, key: str, chunks: Iterable[bytes], sha256: str, progress: Progress = None
    ) -> None:
        self._put(key, chunks, lambda: sha256, progress)

    def put_growing(self, key: str, source: GrowingFile, progress: Progress = None) -> None:
        self._put(key, source.chunks(), lambda: source.sha256, progress)

    def _put(
        self, key: str, chunks: Iterable[bytes], expected: Callable[[], str], progress: Progress
    ) -> None:
        check_key(key)
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if progress:
                progress(len(chunk))
        got = hashlib.sha256(data).hexdigest()
        sha256 = expected()
        if got != sha256:
            raise ChecksumMismatch(
                f"{key}: stream has sha256 {got[:16]}..., expected {sha256[:16]}..."
            )
        self.objects[key] = bytes(data)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[check_key(key)] = bytes(data)

    def open_chunks(self, key: str) -> Iterator[bytes]:
        data = self.objects.get(check_key(key))
        if data is None:
            raise NotFound(f"{self.describe()}: no object {key}")
        return iter([data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)])

    def read_range(self, key: str, start: int, length: int) -> bytes:
        data = self.objects.get(check_key(key))
        if data is None:
            raise NotFound(f"{self.describe()}: no object {key}")
        return data[start : start + length]

    def delete(self, key: str) -> None:
        self.objects.pop(check_key(key), None)
