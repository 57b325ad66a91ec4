"""GNU tar extracting checked members into private directories, one per root.

pyops.tarsafe decides which members are safe; this module only runs the tars. For each
root of the archive, on its first member, a directory is made beside the root's
destination (`.<name>.pyops-tar-XXXX`, 0700, same file system) and a `tar -x` started
in it; the checked bytes of that root's members are written to its stdin exactly as
they were read. `commit` ends each archive with zero blocks, waits for every tar,
and only when all succeeded renames each root into its destination. On any failure,
or a refused member, the tars are stopped and the directories removed: nothing is
moved into place.

tar itself refuses what it would refuse anyway (no --absolute-names: no leading '/',
no '..'; symlinks that could lead out are created last, as GNU tar always does), leaves
existing directories' metadata alone (--no-overwrite-dir), and restores owners only as
root (by number, as they were archived).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pyops.errors import StageFailed
from pyops.execute import DEVNULL, PIPE, Running, start
from pyops.tarstream import RECORD, Sink, UnsafeArchive
from pyops.tools import archive


class _Root:
    """One root's tar: where it extracts, and the archive bytes it has been given."""

    def __init__(self, root: str, dest: Path) -> None:
        self.root = root
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pyops-tar-", dir=dest.parent))
        self.running: Running | None = None
        self.written = 0
        try:
            self.running = start(
                [archive.tar_extract(self.work, os.geteuid() == 0)], stdin=PIPE, stdout=DEVNULL
            )
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        assert self.running.stdin is not None
        self._fd = self.running.stdin.fileno()

    def write(self, data: memoryview) -> None:
        """Checked archive bytes, on to tar; a tar that stopped reading is raised (its
        exit status and stderr say why)."""
        self.written += len(data)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except BrokenPipeError:
            assert self.running is not None
            running, self.running = self.running, None
            self._finish(running)
            raise

    def end(self) -> list[str]:
        """The end-of-archive blocks, padded to a whole record; wait for tar; what it
        warned about (an extended attribute it could not set)."""
        self.write(memoryview(bytes(1024 + (-(self.written + 1024) % RECORD))))
        assert self.running is not None
        running, self.running = self.running, None
        self._finish(running)
        return running.warnings

    def _finish(self, running: Running) -> None:
        """Wait for tar; a full disk is said as the OSError it is, naming the
        destination (the caller names its file system), anything else as tar said it."""
        try:
            running.finish()
        except StageFailed as exc:
            for code in (errno.ENOSPC, errno.EDQUOT):
                if os.strerror(code) in str(exc):
                    raise OSError(code, os.strerror(code), str(self.dest)) from exc
            raise

    def kill(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            running.kill()


class Staging:
    """The tars of one extraction; a context manager that cleans up unless committed."""

    def __init__(self, route: Callable[[str], Path]) -> None:
        self._route = route
        self._roots: dict[str, _Root] = {}
        self._sinks: dict[str, Sink] = {}
        self.warnings: list[str] = []

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for r in self._roots.values():
            r.kill()
            shutil.rmtree(r.work, ignore_errors=True)

    def sink(self, root: str) -> Sink:
        """Where the bytes of `root`'s members go: its tar, started on first use."""
        found = self._sinks.get(root)
        if found is None:
            dest = Path(self._route(root))
            _check_destination(dest, root)
            r = self._roots[root] = _Root(root, dest)
            found = self._sinks[root] = r.write
        return found

    def commit(self) -> None:
        """End every archive; once every tar succeeded, move each root into place."""
        for r in self._roots.values():
            self.warnings += [_warning(line, r) for line in r.end()]
        for r in self._roots.values():
            extracted = r.work / r.root
            if not os.path.lexists(extracted):
                raise UnsafeArchive(r.root, "tar extracted nothing for this root")
            _made_as_checked(extracted, r.root)
        for r in self._roots.values():
            os.replace(r.work / r.root, r.dest)  # an empty directory at dest is replaced


def _made_as_checked(extracted: Path, root: str) -> None:
    """What tar made is what the check allowed: the root a directory or a regular file,
    and, where tar can make them (as root), no device node or FIFO anywhere in it. The
    check reads every header as tar does; this catches a difference in how they read
    one before anything moves into place."""
    mode = os.lstat(extracted).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise UnsafeArchive(root, "tar made something other than the directory or file checked")
    if not stat.S_ISDIR(mode) or os.geteuid() != 0:
        return
    pending = [str(extracted)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    inside = root + entry.path[len(str(extracted)) :]
                    raise UnsafeArchive(inside, "tar made a special file the check never saw")


_XATTR_WARNING = re.compile(
    r"Cannot set '(?P<attr>.*)' extended attribute for file '(?P<file>.*)': (?P<why>.*)$"
)


def _warning(line: str, r: _Root) -> str:
    """tar's words for an attribute it could not set, as pyops says it, with the path
    where the file now is (tar names it inside its private directory)."""
    found = _XATTR_WARNING.search(line)
    if found is None:
        return line
    file = found["file"]
    if file == r.root or file.startswith(r.root + "/"):
        file = str(r.dest) + file[len(r.root) :]
    return f"{file}: extended attribute {found['attr']} not restored: {found['why']}"


def _check_destination(dest: Path, root: str) -> None:
    """A root lands where nothing is yet, or in an empty directory: never through a
    symlink, never over anything. What is in the way is named."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeArchive(root, f"{str(dest)!r} on disk is a symlink; not writing through it")
    if not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(errno.EEXIST, "File exists (restoring a new copy)", str(dest))
    with os.scandir(dest) as entries:
        first = next(entries, None)
    if first is None:
        return
    inside = dest / first.name
    if first.is_symlink():
        raise UnsafeArchive(root, f"{str(inside)!r} on disk is a symlink; not writing through it")
    raise FileExistsError(
        errno.EEXIST, "File exists (a restore goes into a new or empty directory)", str(inside)
    )
