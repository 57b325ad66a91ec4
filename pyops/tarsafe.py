"""Checking and restoring the tar streams of file backups.

The stream arrives through a pipe. pyops reads every header itself (pyops.tarstream,
in large buffers, the way GNU tar reads them) and checks every member against the
rules below before any of its bytes go on; a restore hands the checked bytes, exactly
as read, to a real GNU tar extracting into a private directory beside each
destination (pyops.tarextract), and moves the result into place only once the whole
archive has passed and every tar succeeded. On the first refused member the tars are
stopped and their directories removed: a member pyops has not checked never reaches
tar. tarfile's `extract` and its `filter='data'` are not used: the filter has had
bypasses (CVE-2025-4517), and a restore must refuse more than it does anyway.

Refused: absolute names and `..`; anything outside the configured roots; symlinks
leading out of their root; hard links to anything but an earlier regular file of the
same root; anything written through an earlier symlink, file or hard link, or
replacing an earlier member (a directory listed twice included); device nodes, FIFOs
and unknown types; and headers tar could read differently (see pyops.tarstream).

`scan` applies exactly the same checks without writing, so an archive can be proven
restorable before anything on disk is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops import tarextract
from pyops.tarstream import (
    DIR as _DIR,
)
from pyops.tarstream import (
    FILE as _FILE,
)
from pyops.tarstream import (
    HARDLINK as _HARDLINK,
)
from pyops.tarstream import (
    SYMLINK as _SYMLINK,
)
from pyops.tarstream import (
    Readable,
    Sink,
    TarStream,
    UnsafeArchive,
)

__all__ = ["CHUNK", "Readable", "Tally", "UnsafeArchive", "extract", "scan"]

CHUNK = 1 << 20


@dataclass
class Tally:
    """What an archive holds, to compare with the manifest and with what was written."""

    files: int = 0  # regular files (hard links not counted)
    bytes: int = 0  # sum of regular file sizes (a sparse file's real size)
    # what could not be restored as archived (an extended attribute or ACL the file
    # system or this user cannot set): said in the result, never silent
    warnings: list[str] = field(default_factory=list)


def scan(fileobj: Readable, roots: Sequence[str]) -> Tally:
    """Read the whole archive, validating every member exactly as extract would, writing nothing."""
    return _run(fileobj, _Model(roots), None)


def extract(fileobj: Readable, roots: Sequence[str], route: Callable[[str], Path]) -> Tally:
    """Restore the archive's members under `route(root)`.

    `roots` are the backed-up paths in archive coordinates (`srv/app/media`); member
    `root/rest` lands at `route(root)/rest` and the member `root` itself is
    `route(root)`, which must not exist yet or be an empty directory (its parents are
    created, and followed). Raises UnsafeArchive for a refused member or an unreadable
    archive (nothing is moved into place then), FileExistsError naming what is in the
    way, StageFailed when tar fails (the disk refused something).
    """
    model = _Model(roots)
    with tarextract.Staging(route) as staging:
        tally = _run(fileobj, model, staging.sink)
        staging.commit()
    tally.warnings = staging.warnings
    return tally


def _run(fileobj: Readable, model: _Model, sink: Callable[[str], Sink] | None) -> Tally:
    """The one pass shared by scan and extract: every header checked before its bytes
    go on to `sink(root)`."""
    stream = TarStream(fileobj)
    files = size = 0
    while (member := stream.next()) is not None:
        root = model.check(member.name, member.kind, member.linkname)
        if sink is not None:
            stream.sink = sink(root)
        if member.kind == _FILE:
            files += 1
            size += member.size
    stream.finish()
    stream.drain()
    return Tally(files, size)


def _parts(member: str, path: str, what: str) -> tuple[str, ...]:
    """The components of a member name (or hard link target); refuses anything that is
    not a plain relative path."""
    plain = path.split("/")
    if "" not in plain and "." not in plain and ".." not in plain and "\x00" not in path:
        return tuple(plain)  # the usual name: nothing to drop, nothing to refuse
    if not path:
        raise UnsafeArchive(member, f"empty {what}")
    if "\x00" in path:
        raise UnsafeArchive(member, f"NUL byte in {what}")
    if path.startswith("/"):
        raise UnsafeArchive(member, f"absolute {what} {path!r}")
    parts = tuple(p for p in plain if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(member, f"'..' in {what} {path!r}")
    inner = plain[next((i for i, p in enumerate(plain) if p not in ("", ".")), len(plain)) :]
    if "." in inner:  # `x/.` is `x` to pyops, but tar makes a directory of it and fails
        raise UnsafeArchive(member, f"'.' inside {what} {path!r}")
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


_NOT_NAMES = ("", ".", "..")


class _Model:
    """What the archive has put where so far, so a member that would land under a
    symlink or a file, replace an earlier member, or hard-link to anything but an
    earlier regular file of its root is refused, by scan as by extract.

    A tree with one small entry per path (no data): `"{parent id}/{name}"` maps to
    `id << 2 | kind`, so checking a member costs one lookup per component however
    deep or long its name is; members of the directory of the one before cost one.
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
        # the directory of the last member, when it is at or below its root: its id
        self._dir: tuple[str, int, str] | None = None

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

    def admit(self, member: Any) -> str:
        """`check` for a tarfile.TarInfo-like member."""
        return self.check(member.name, self._kind(member), member.linkname)

    def check(self, name: str, kind: str, linkname: str) -> str:
        """Check one member against the roots and everything before it; raise
        UnsafeArchive, or record it and return its root as the caller spelled it."""
        cached = self._dir
        if cached is not None and kind in (_FILE, _DIR):
            parent, _, leaf = name.rpartition("/")
            if parent == cached[0] and leaf not in _NOT_NAMES and "\x00" not in leaf:
                # in the directory of the member before (a known directory below its
                # root, spelled plainly): only the new name itself is looked up
                key = f"{cached[1]}/{leaf}"
                entry = self._tree.get(key)
                if entry is not None:
                    earlier = self._KINDS[entry & 3]
                    why = f"would replace the {earlier} {name!r} earlier in the archive"
                    raise UnsafeArchive(name, why)
                self._ids += 1
                self._tree[key] = self._ids << 2 | (0 if kind == _DIR else 1)
                return cached[2]

        parts = _parts(name, name, "name")
        root_or_none = next((r for r in self.roots if parts[: len(r)] == r), None)
        if root_or_none is None:
            listed = ", ".join(repr(r) for r in self.roots.values())
            raise UnsafeArchive(name, f"outside the roots being restored ({listed})")
        root = root_or_none
        if len(parts) == len(root) and kind not in (_DIR, _FILE):
            raise UnsafeArchive(name, f"a root must be a directory or a regular file, not a {kind}")

        found, node, seen = self._find(parts)
        if found < len(parts) and seen is not None and seen != _DIR:
            above = "/".join(parts[:found])
            raise UnsafeArchive(
                name, f"{above!r} is a {seen} earlier in the archive; not writing through it"
            )
        if found == len(parts):
            # a directory listed twice, or after its contents, would leave tar to decide
            # which mode wins: GNU tar never writes that
            raise UnsafeArchive(name, f"would replace the {seen} {name!r} earlier in the archive")
        self._links(name, parts, kind, linkname, root)
        for comp in parts[found:-1]:  # directories the member implies
            node = self._add(node, comp, _DIR)
        self._add(node, parts[-1], kind)
        if len(parts) > len(root):
            self._dir = ("/".join(parts[:-1]), node, self.roots[root])
        return self.roots[root]

    def _links(
        self, name: str, parts: tuple[str, ...], kind: str, linkname: str, root: tuple[str, ...]
    ) -> None:
        if kind == _SYMLINK:
            problem = _symlink_problem(parts, linkname, root)
            if problem is not None:
                raise UnsafeArchive(name, problem)
        elif kind == _HARDLINK:
            target = _parts(name, linkname, "hard link target")
            if target[: len(root)] != root:
                raise UnsafeArchive(
                    name,
                    f"hard link target {linkname!r} is outside its root {self.roots[root]!r}",
                )
            got, _, target_kind = self._find(target)
            if got < len(target) or target_kind != _FILE or len(target) == len(root):
                raise UnsafeArchive(
                    name,
                    f"hard link target {linkname!r} is not an earlier regular file in the archive",
                )

    @staticmethod
    def _kind(member: Any) -> str:
        if member.isdir():
            return _DIR
        if member.isreg():
            return _FILE
        if member.issym():
            return _SYMLINK
        if member.islnk():
            return _HARDLINK
        raise UnsafeArchive(member.name, f"is of unsupported type {member.type!r}")
