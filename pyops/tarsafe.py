"""Reading and restoring the tar streams of file backups, one member at a time.

The stream arrives through a pipe, so every member is checked and written as it
passes, and file data is copied a chunk at a time. tarfile's `extract` and its
`filter='data'` are not used: the filter has had bypasses (CVE-2025-4517), and a
restore must refuse more than it does anyway (anything outside the configured roots,
symlinks leading out of their root, device nodes). pyops writes every file itself,
relative to directory descriptors opened with O_NOFOLLOW, so nothing is ever written
through a symlink (whether the archive made it or it was already on disk) and no
existing file is ever replaced.

`scan` applies exactly the same checks without writing, so an archive can be proven
restorable before anything on disk is touched.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pyops.errors import PyopsError

CHUNK = 1 << 20

_BLOCK = tarfile.BLOCKSIZE
# how much of the stream is kept (as references to chunks already read) so the block
# where tarfile stopped can be looked at; tarfile reads ahead by one 10 KiB record
_WINDOW = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# member kinds; the words are used in messages
_DIR = "directory"
_FILE = "regular file"
_SYMLINK = "symlink"
_HARDLINK = "hard link"


class UnsafeArchive(PyopsError):
    """An archive member was refused, or the archive cannot be read to its end.

    Raised before anything is written for that member; what earlier members wrote
    stays, which is why callers extract into a staging directory.
    """

    def __init__(self, member: str | None, reason: str) -> None:
        # repr: names may hold newlines or undecodable bytes, and this goes to logs
        where = "archive" if member is None else f"archive member {member!r}"
        super().__init__(f"refused {where}: {reason}")
        self.member = member
        self.reason = reason


@dataclass
class Tally:
    """What an archive holds, to compare with the manifest and with what was written."""

    files: int = 0  # regular files (hard links not counted)
    bytes: int = 0  # sum of regular file sizes
    # what could not be restored as archived (an extended attribute or ACL the file
    # system or this user cannot set): said in the result, never silent
    warnings: list[str] = field(default_factory=list)


class Readable(Protocol):
    """The stream: a pipe, a decoder's stdout, any binary file object."""

    def read(self, size: int, /) -> bytes: ...


def scan(fileobj: Readable, roots: Sequence[str]) -> Tally:
    """Read the whole archive, validating every member exactly as extract would, writing nothing."""
    return _run(fileobj, roots, None)


def extract(fileobj: Readable, roots: Sequence[str], route: Callable[[str], Path]) -> Tally:
    """Write the archive's members under `route(root)` as they arrive.

    `roots` are the backed-up paths in archive coordinates (`srv/app/media`); member
    `root/rest` is written to `route(root)/rest` and the member `root` itself is
    `route(root)`. Directory modes and mtimes are applied once the archive has been
    read to its end, deepest first, so read-only directories can still be filled.
    Raises UnsafeArchive for a refused member or an unreadable archive, and OSError
    (naming the path and the member) when the disk refuses, e.g. a file that exists.
    """
    writer = _Writer(route)
    try:
        tally = _run(fileobj, roots, writer)
        writer.finish()
    finally:
        writer.close()
    tally.warnings = writer.warnings
    return tally


def _run(fileobj: Readable, roots: Sequence[str], writer: _Writer | None) -> Tally:
    """The one pass shared by scan and extract."""
    model = _Model(roots)
    reader = _Reader(fileobj)
    tally = Tally()
    last: str | None = None
    try:
        with tarfile.open(
            fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            while (member := tar.next()) is not None:
                # tarfile keeps every TarInfo it has read; a restore can hold millions
                tar.members.clear()  # type: ignore[attr-defined]
                plan = model.admit(member)
                if writer is not None:
                    writer.put(plan, member, tar)
                if plan.kind == _FILE:
                    tally.files += 1
                    tally.bytes += member.size
                last = member.name
            end = tar.offset
    except tarfile.TarError as exc:
        after = "" if last is None else f" after member {last!r}"
        raise UnsafeArchive(None, f"the archive is unreadable{after}: {exc}") from exc
    reader.check_end(end, last)
    reader.drain()
    return tally


class _Plan(NamedTuple):
    """Where an admitted member goes: `rest` below `route(root)`."""

    root: str  # as the caller spelled it, for route()
    rest: tuple[str, ...]
    kind: str
    link_rest: tuple[str, ...] = ()  # a hard link's target, below the same root


def _parts(member: str, path: str, what: str) -> tuple[str, ...]:
    """The components of a member name (or hard link target); refuses anything that is
    not a plain relative path."""
    if not path:
        raise UnsafeArchive(member, f"empty {what}")
    if "\x00" in path:
        raise UnsafeArchive(member, f"NUL byte in {what}")
    if path.startswith("/"):
        raise UnsafeArchive(member, f"absolute {what} {path!r}")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(member, f"'..' in {what} {path!r}")
    if not parts:
        raise UnsafeArchive(member, f"empty {what} {path!r}")
    return parts


def _root_parts(root: str) -> tuple[str, ...]:
    parts = tuple(p for p in root.split("/") if p)
    if not parts or "\x00" in root or any(p in (".", "..") for p in parts):
        raise ValueError(f"root {root!r} is not a plain path like 'srv/app/media'")
    return parts


def _symlink_problem(parts: tuple[str, ...], target: str, root: tuple[str, ...]) -> str | None:
    """Why a symlink at `parts` pointing to `target` would lead out of its root, if it would.

    Resolved in archive coordinates: absolute targets as they are, relative ones from
    the symlink's directory. `..` is accepted only at the start of a relative target:
    `a/../x` means `x` only if `a` is a real directory, and `a` could be (or later
    become) a symlink, which cannot be known in one pass.
    """
    if not target:
        return "empty symlink target"
    if "\x00" in target:
        return "NUL byte in symlink target"
    tparts = [p for p in target.split("/") if p not in ("", ".")]
    if target.startswith("/"):
        if ".." in tparts:
            return f"absolute symlink target {target!r} contains '..'"
        resolved = tparts
    else:
        up = 0
        while up < len(tparts) and tparts[up] == "..":
            up += 1
        if ".." in tparts[up:]:
            return (
                f"symlink target {target!r} has '..' after a name "
                "(a symlink on the way could lead anywhere)"
            )
        base = list(parts[:-1])
        if up > len(base):
            return f"symlink target {target!r} climbs above the top of the archive"
        resolved = base[: len(base) - up] + tparts[up:]
    if tuple(resolved[: len(root)]) != root:
        return (
            f"symlink target {target!r} resolves to {'/' + '/'.join(resolved)!r}, "
            f"outside its root {'/'.join(root)!r}"
        )
    return None


class _Model:
    """What the archive has put where so far, so a member that would land under a
    symlink or a file, replace an earlier member, or hard-link to anything but an
    earlier regular file of its root is refused, by scan as by extract.

    A tree with one small entry per path (no data): `"{parent id}/{name}"` maps to
    `id << 2 | kind`, so checking a member costs one lookup per component however
    deep or long its name is.
    """

    _KINDS = (_DIR, _FILE, _SYMLINK, _HARDLINK)

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots: dict[tuple[str, ...], str] = {}
        for root in roots:
            self.roots.setdefault(_root_parts(root), root)
        if not self.roots:
            raise ValueError("no roots to restore")
        for a in self.roots:
            for b in self.roots:
                if a != b and a[: len(b)] == b:
                    raise ValueError(
                        f"roots {self.roots[a]!r} and {self.roots[b]!r} nest; "
                        "a member could belong to both"
                    )
        self._tree: dict[str, int] = {}
        self._ids = 0  # 0 is the top of the archive

    def _find(self, parts: tuple[str, ...]) -> tuple[int, int, str | None]:
        """How many leading components exist, the id of the last of them, and its kind."""
        node, found, kind = 0, 0, None
        for comp in parts:
            entry = self._tree.get(f"{node}/{comp}")
            if entry is None:
                break
            node, found, kind = entry >> 2, found + 1, self._KINDS[entry & 3]
            if kind != _DIR and found < len(parts):
                break
        return found, node, kind

    def _add(self, parent: int, comp: str, kind: str) -> int:
        self._ids += 1
        self._tree[f"{parent}/{comp}"] = self._ids << 2 | self._KINDS.index(kind)
        return self._ids

    def admit(self, member: tarfile.TarInfo) -> _Plan:
        """Check one member against the roots and everything before it; raise
        UnsafeArchive or record it."""
        name = member.name
        parts = _parts(name, name, "name")
        kind = self._kind(member)
        root = next((r for r in self.roots if parts[: len(r)] == r), None)
        if root is None:
            listed = ", ".join(repr(r) for r in self.roots.values())
            raise UnsafeArchive(name, f"outside the roots being restored ({listed})")
        rest = parts[len(root) :]
        if not rest and kind not in (_DIR, _FILE):
            raise UnsafeArchive(name, f"a root must be a directory or a regular file, not a {kind}")

        found, node, seen = self._find(parts)
        if found < len(parts) and seen is not None and seen != _DIR:
            above = "/".join(parts[:found])
            raise UnsafeArchive(
                name, f"{above!r} is a {seen} earlier in the archive; not writing through it"
            )
        if found == len(parts) and not (seen == _DIR and kind == _DIR):
            raise UnsafeArchive(name, f"would replace the {seen} {name!r} earlier in the archive")

        link_rest: tuple[str, ...] = ()
        if kind == _SYMLINK:
            problem = _symlink_problem(parts, member.linkname, root)
            if problem is not None:
                raise UnsafeArchive(name, problem)
        elif kind == _HARDLINK:
            target = _parts(name, member.linkname, "hard link target")
            if target[: len(root)] != root:
                raise UnsafeArchive(
                    name,
                    f"hard link target {member.linkname!r} is outside its root "
                    f"{self.roots[root]!r}",
                )
            got, _, target_kind = self._find(target)
            if got < len(target) or target_kind != _FILE or len(target) == len(root):
                raise UnsafeArchive(
                    name,
                    f"hard link target {member.linkname!r} is not an earlier regular file "
                    "in the archive",
                )
            link_rest = target[len(root) :]

        if found < len(parts):
            for comp in parts[found:-1]:  # directories the member implies
                node = self._add(node, comp, _DIR)
            self._add(node, parts[-1], kind)
        return _Plan(self.roots[root], rest, kind, link_rest)

    @staticmethod
    def _kind(member: tarfile.TarInfo) -> str:
        if member.isdir():
            return _DIR
        if member.isreg():
            return _FILE
        if member.issym():
            return _SYMLINK
        if member.islnk():
            return _HARDLINK
        if member.ischr() or member.isblk():
            why = "a device node (a backup of application files never holds one)"
        elif member.isfifo():
            why = "a FIFO (a backup of application files never holds one)"
        else:
            why = f"of unsupported type {member.type!r}"
        raise UnsafeArchive(member.name, f"is {why}")


class _Reader(io.RawIOBase):
    """The stream as tarfile sees it, remembering the last chunks read so the block where
    tarfile stopped can be checked: tarfile ends quietly at a missing or garbled header,
    which would turn a damaged archive into a silently partial restore."""

    def __init__(self, fileobj: Readable) -> None:
        super().__init__()
        self._f = fileobj
        self.pos = 0
        self._window: collections.deque[tuple[int, bytes]] = collections.deque()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._f.read(size)
        if data:
            self._window.append((self.pos, data))
            self.pos += len(data)
            while len(self._window) > 1 and self.pos - self._window[1][0] >= _WINDOW:
                self._window.popleft()
        return data

    def _span(self, offset: int, size: int) -> bytes | None:
        """Bytes [offset, offset+size) of the stream (fewer at its end); None if forgotten."""
        first = self._window[0][0] if self._window else self.pos
        if offset < first:
            return None
        out = bytearray()
        for start, data in self._window:
            if start + len(data) <= offset:
                continue
            lo = max(offset - start, 0)
            out += data[lo : lo + size - len(out)]
            if len(out) >= size:
                break
        return bytes(out)

    def check_end(self, offset: int, last: str | None) -> None:
        """GNU tar ends every archive with zero blocks; anything else where tarfile
        stopped means members were lost."""
        while self.pos < offset + _BLOCK and self.read(CHUNK):
            pass
        block = self._span(offset, _BLOCK)
        if block is None:
            return
        after = "" if last is None else f" after member {last!r}"
        if len(block) < _BLOCK:
            raise UnsafeArchive(
                None, f"the archive is truncated at byte {offset}{after} (no end-of-archive marker)"
            )
        if block.count(0) != _BLOCK:
            raise UnsafeArchive(None, f"unreadable header at byte {offset}{after}")

    def drain(self) -> None:
        """Read the padding after the end marker, so the writer of the pipe can finish."""
        while self.read(CHUNK):
            pass


def _located(exc: OSError, path: Path, member: str) -> OSError:
    """The same error (same subclass) naming the full path and the member: calls relative
    to a directory descriptor only know the last component."""
    return OSError(exc.errno, f"{exc.strerror} (restoring archive member {member!r})", str(path))


def _open_dir(name: str | Path, dir_fd: int | None, shown: Path, member: str) -> int:
    """A descriptor for a real directory; a symlink or a non-directory there is refused."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise UnsafeArchive(
            member, f"{str(shown)!r} on disk is {what}; not writing through it"
        ) from exc


MAX_WARNINGS = 100
_XATTR = "SCHILY.xattr."


def xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """A member's extended attributes as GNU tar --xattrs stores them (pax headers),
    the raw bytes given back as they were read (surrogateescape)."""
    return [
        (key[len(_XATTR) :], value.encode("utf-8", "surrogateescape"))
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR)
    ]


def _write_sparse(fd: int, raw: Any, member: tarfile.TarInfo) -> None:
    """Only the data segments of a sparse member; the holes stay holes (seek, then
    set the length), so a 200 MiB sparse file does not come back as 200 MiB. `raw` is
    tarfile's member reader under its buffer: it seeks forward in a stream."""
    segments: list[tuple[int, int]] = list(member.sparse or ())  # type: ignore[arg-type]
    for offset, size in segments:
        raw.seek(offset)
        os.lseek(fd, offset, os.SEEK_SET)
        left = size
        while left > 0:
            chunk = raw.read(min(CHUNK, left))
            if not chunk:
                raise UnsafeArchive(member.name, "sparse member ends early")
            _write_all(fd, chunk)
            left -= len(chunk)
    os.ftruncate(fd, member.size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Writer:
    """Creates members on disk. Every path is walked from `route(root)` one component at
    a time with O_NOFOLLOW descriptors, so no component can be a symlink, not even one
    swapped in between a check and its use; files are created with O_EXCL."""

    def __init__(self, route: Callable[[str], Path]) -> None:
        self._route = route
        self._paths: dict[str, Path] = {}
        self._bases: dict[str, int] = {}
        # members arrive directory by directory: keep the last parent open
        self._parent_key: tuple[str, tuple[str, ...]] | None = None
        self._parent_fd = -1
        self._dirs: dict[
            tuple[str, tuple[str, ...]], tuple[int, float, int, int, list[tuple[str, bytes]]]
        ] = {}
        self._chown = os.geteuid() == 0
        self.warnings: list[str] = []

    def _set_xattrs(self, fd: int, attrs: list[tuple[str, bytes]], shown: Path) -> None:
        """Extended attributes, POSIX ACLs among them (`system.posix_acl_*`, kept raw
        by GNU tar --xattrs --acls). One that cannot be set is a warning, not a
        failure: the data is there, and the result says what is missing."""
        for name, value in attrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                if len(self.warnings) < MAX_WARNINGS:
                    self.warnings.append(
                        f"{shown}: extended attribute {name} not restored: {exc.strerror}"
                    )

    def _path(self, root: str, rest: tuple[str, ...] = ()) -> Path:
        base = self._paths.get(root)
        if base is None:
            base = self._paths[root] = Path(self._route(root))
        return base.joinpath(*rest)

    def _base(self, root: str, member: str, mode: int = 0o777) -> int:
        """The (borrowed) descriptor of route(root), created if missing. Its parents are
        the caller's business and are followed; route(root) itself must not be a link."""
        fd = self._bases.get(root)
        if fd is None:
            path = self._path(root)
            if not os.path.lexists(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, mode)
            fd = self._bases[root] = _open_dir(path, None, path, member)
        return fd

    def _walk(self, root: str, comps: tuple[str, ...], member: str, create: bool) -> int:
        """An owned descriptor for route(root)/comps (created with mkdir if asked)."""
        cur = os.dup(self._base(root, member))
        path = self._path(root)
        try:
            for comp in comps:
                path = path / comp
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o777, dir_fd=cur)
                nxt = _open_dir(comp, cur, path, member)
                os.close(cur)
                cur = nxt
        except BaseException:
            os.close(cur)
            raise
        return cur

    def _parent(self, root: str, comps: tuple[str, ...], member: str) -> int:
        key = (root, comps)
        if key == self._parent_key:
            return self._parent_fd
        cached = self._parent_key
        if cached is not None and comps and cached == (root, comps[:-1]):
            # one level down from the last parent (a directory's first entry): no re-walk
            path = self._path(root, comps)
            with contextlib.suppress(FileExistsError):
                os.mkdir(comps[-1], 0o777, dir_fd=self._parent_fd)
            fd = _open_dir(comps[-1], self._parent_fd, path, member)
        else:
            fd = self._walk(root, comps, member, create=True)
        self._drop_parent()
        self._parent_fd, self._parent_key = fd, key
        return fd

    def _drop_parent(self) -> None:
        if self._parent_key is not None:
            self._parent_key = None
            os.close(self._parent_fd)

    def put(self, plan: _Plan, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        shown = self._path(plan.root, plan.rest)
        try:
            if plan.kind == _DIR:
                self._put_dir(plan, member, shown)
            elif plan.kind == _FILE:
                self._put_file(plan, member, tar)
            elif plan.kind == _SYMLINK:
                self._put_symlink(plan, member)
            else:
                self._put_hardlink(plan, member)
        except OSError as exc:
            raise _located(exc, shown, member.name) from exc

    def _put_dir(self, plan: _Plan, member: tarfile.TarInfo, shown: Path) -> None:
        if not plan.rest:
            self._base(plan.root, member.name, 0o700)
        else:
            parent = self._parent(plan.root, plan.rest[:-1], member.name)
            try:
                os.mkdir(plan.rest[-1], 0o700, dir_fd=parent)
            except FileExistsError:
                os.close(_open_dir(plan.rest[-1], parent, shown, member.name))
        # applied by finish(): a read-only directory must still take its entries
        self._dirs[(plan.root, plan.rest)] = (
            member.mode & 0o7777,
            member.mtime,
            member.uid,
            member.gid,
            xattrs(member),
        )

    def _put_file(self, plan: _Plan, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if plan.rest:
            parent, leaf = self._parent(plan.root, plan.rest[:-1], member.name), plan.rest[-1]
            fd = os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent)
        else:  # the root is a single file: route(root) is that file
            path = self._path(plan.root)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, _FILE_FLAGS, 0o600)
        try:
            data = tar.extractfile(member)
            if data is None:  # isreg() members always have data; keeps mypy honest
                raise UnsafeArchive(member.name, "no data for a regular file")
            if member.sparse:
                _write_sparse(fd, data.raw, member)  # type: ignore[attr-defined]
            else:
                while chunk := data.read(CHUNK):
                    _write_all(fd, chunk)
            if self._chown:  # before chmod: chown clears setuid/setgid
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(fd, xattrs(member), self._path(plan.root, plan.rest))
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _put_symlink(self, plan: _Plan, member: tarfile.TarInfo) -> None:
        parent, leaf = self._parent(plan.root, plan.rest[:-1], member.name), plan.rest[-1]
        os.symlink(member.linkname, leaf, dir_fd=parent)
        if self._chown:
            os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(leaf, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def _put_hardlink(self, plan: _Plan, member: tarfile.TarInfo) -> None:
        parent, leaf = self._parent(plan.root, plan.rest[:-1], member.name), plan.rest[-1]
        source_dir = self._walk(plan.root, plan.link_rest[:-1], member.name, create=False)
        try:
            source = plan.link_rest[-1]
            if not stat.S_ISREG(os.stat(source, dir_fd=source_dir, follow_symlinks=False).st_mode):
                raise UnsafeArchive(
                    member.name,
                    f"hard link target {str(self._path(plan.root, plan.link_rest))!r} "
                    "on disk is not a regular file",
                )
            os.link(source, leaf, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)

    def finish(self) -> None:
        """Directory owners, modes and mtimes, deepest first: a parent made read-only
        or given its mtime before its children would block or undo their updates."""
        self._drop_parent()
        for (root, rest), (mode, mtime, uid, gid, attrs) in sorted(
            self._dirs.items(), key=lambda item: len(item[0][1]), reverse=True
        ):
            name = "/".join((root, *rest))
            try:
                fd = self._walk(root, rest, name, create=False)
                try:
                    if self._chown:
                        os.fchown(fd, uid, gid)
                    os.fchmod(fd, mode)
                    self._set_xattrs(fd, attrs, self._path(root, rest))
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _located(exc, self._path(root, rest), name) from exc

    def close(self) -> None:
        self._drop_parent()
        for fd in self._bases.values():
            os.close(fd)
        self._bases.clear()
