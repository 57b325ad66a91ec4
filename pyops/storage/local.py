"""The repository directory as a store.

Keys become paths under the root only through `path`, which refuses unsafe keys and
any directory on the way that is a symlink: a planted link never sends a read, a
write or a delete outside the repository. Files are written under a temp name,
checked, fsynced and renamed.
"""

from __future__ import annotations

import os
import stat as stat_
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyops.artifact import CHUNK, ArtifactWriter, read_chunks
from pyops.fsutil import fsync_dir, make_private_dir, write_atomic
from pyops.storage import ChecksumMismatch, NotFound, ObjectInfo, Progress, StoreError, check_key

if TYPE_CHECKING:
    from pyops.growing import GrowingFile


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str, create_dirs: bool = False) -> Path:
        """The file for `key`; its directories are real directories inside the root."""
        parts = check_key(key).split("/")
        directory = self.root
        for part in parts[:-1]:
            directory = directory / part
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                if not create_dirs:
                    return self.root.joinpath(*parts)
                make_private_dir(directory)
                continue
            if not stat_.S_ISDIR(st.st_mode):
                raise StoreError(
                    f"{directory} is not a directory (a symlink or file where pyops keeps "
                    "backups): refusing to follow it"
                )
        return directory / parts[-1]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._walk(self.root, "", prefix)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # ours (.pyops, .lock) or not ours: never a backup
            key = f"{base}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if key.startswith(prefix) or prefix.startswith(f"{key}/"):
                    yield from self._walk(Path(entry.path), f"{key}/", prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                yield ObjectInfo(key, entry.stat(follow_symlinks=False).st_size)

    def children(self, prefix: str = "") -> Iterator[str]:
        directory = self.path(prefix.rstrip("/")) if prefix else self.root
        try:
            if prefix and not stat_.S_ISDIR(os.lstat(directory).st_mode):
                return
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            if next(self.list(f"{prefix}{entry.name}/"), None) is not None:
                yield entry.name

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.lstat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size)

    def put_file(self, key: str, path: Path, sha256: str, progress: Progress = None) -> None:
        self.put_stream(key, read_chunks(path), sha256, progress)

    def put_stream(
        self, key: str, chunks: Iterable[bytes], sha256: str, progress: Progress = None
    ) -> None:
        self._put(key, chunks, lambda: sha256, progress)

    def put_growing(self, key: str, source: GrowingFile, progress: Progress = None) -> None:
        self._put(key, source.chunks(), lambda: source.sha256, progress)

    def _put(
        self, key: str, chunks: Iterable[bytes], expected: Callable[[], str], progress: Progress
    ) -> None:
        writer = ArtifactWriter(self.path(key, create_dirs=True))
        try:
            for chunk in chunks:
                writer.write(chunk)
                if progress:
                    progress(len(chunk))
            got = writer.hash.hexdigest()
            sha256 = expected()
            if got != sha256:
                raise ChecksumMismatch(
                    f"{key}: the stream has sha256 {got[:16]}..., expected {sha256[:16]}...: "
                    "nothing was stored"
                )
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        write_atomic(self.path(key, create_dirs=True), data)

    def _open(self, path: Path) -> int:
        """A regular file, opened without following a link or waiting on a FIFO."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{path} is missing") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        if not stat_.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"{path} is not a regular file: no object there")
        return fd

    def open_chunks(self, key: str) -> Iterator[bytes]:
        path = self.path(key)
        f = open(self._open(path), "rb", buffering=0)  # noqa: SIM115 - closed by the generator, or when collected

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        path = self.path(key)
        fd = self._open(path)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # absent, or a directory: no object there
        fsync_dir(path.parent)
