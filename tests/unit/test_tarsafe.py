"""pyops.tarsafe against archives made by the real GNU tar, and malicious ones made with tarfile."""

# the fixture tree needs group/other bits, read-only and setgid directories
# ruff: noqa: S103

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyops.tarsafe import CHUNK, Tally, UnsafeArchive, _Model, extract, scan

ROOTS = ["srv/app/media", "etc/nginx"]
T0 = 1_600_000_000
IS_ROOT = os.geteuid() == 0

# names that must survive byte for byte
SPACE = b"with space.txt"
NEWLINE = b"new\nline.txt"
LATIN1 = b"caf\xe9.txt"  # not UTF-8


# --------------------------------------------------------------------------- helpers


def _gnu_tar(top: Path, *paths: str) -> bytes:
    """What pyops's backup runs, with `top` standing for /."""
    return subprocess.run(
        [
            "tar",
            "--create",
            "--file=-",
            "--format=gnu",
            f"--directory={top}",
            "--numeric-owner",
            "--",
            *paths,
        ],
        check=True,
        capture_output=True,
    ).stdout


def _build_tree(top: Path) -> None:
    """Two roots with nested dirs, awkward names, links, modes, owners and mtimes."""
    media = top / "srv/app/media"
    nginx = top / "etc/nginx"
    for d in ("sub/deeper", "ro", "shared"):
        (media / d).mkdir(parents=True)
    for d in ("sites-available", "sites-enabled"):
        (nginx / d).mkdir(parents=True)

    (media / "a.jpg").write_bytes(b"\xff\xd8jpeg" * 1000)
    # bigger than one copy chunk, not a multiple of it
    (media / "sub/deeper/big.bin").write_bytes(os.urandom(2 * CHUNK + 12345))
    bmedia = os.fsencode(media)
    for raw in (SPACE, NEWLINE, LATIN1):
        with open(os.path.join(bmedia, raw), "wb") as f:
            f.write(b"awkward name " + raw)
    (media / "empty").write_bytes(b"")
    (media / "ro/inside.txt").write_bytes(b"in a read-only dir")
    (media / "script.sh").write_bytes(b"#!/bin/sh\n")
    # longer than a tar header holds: GNU tar writes ././@LongLink records
    long_dir = media / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 150)).write_bytes(b"long")
    os.symlink(f"{'d' * 120}/{'e' * 120}/{'f' * 150}", media / "long-link")
    os.link(media / "a.jpg", media / "sub/hard.jpg")
    os.symlink("deeper/big.bin", media / "sub/rel-link")
    os.symlink("/srv/app/media/a.jpg", media / "abs-link")
    os.symlink(".", media / "self")

    (nginx / "nginx.conf").write_text("events {}\n")
    (nginx / "sites-available/default").write_text("server {}\n")
    os.symlink("../sites-available/default", nginx / "sites-enabled/default")
    os.symlink("/etc/nginx/sites-available/default", nginx / "sites-enabled/abs")

    os.chmod(media / "a.jpg", 0o640)
    os.chmod(media / "script.sh", 0o750)
    os.chmod(media / "empty", 0o600)
    if IS_ROOT:
        os.chown(media / "a.jpg", 1234, 5678)
        os.lchown(media / "abs-link", 4321, 8765)
        os.chown(media / "shared", 33, 33)

    # mtimes last, files before their directories, deepest directories first
    for n, (dirpath, dirnames, filenames) in enumerate(os.walk(os.fsencode(top))):
        for i, leaf in enumerate(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        ):
            os.utime(os.path.join(dirpath, leaf), (T0 + n * 100 + i,) * 2, follow_symlinks=False)
    os.chmod(media / "shared", 0o2775)
    os.chmod(media / "ro", 0o555)
    dirs = [Path(os.fsdecode(dirpath)) for dirpath, _, _ in os.walk(os.fsencode(top))]
    for n, path in enumerate(sorted(dirs, key=lambda p: len(p.parts), reverse=True)):
        os.utime(path, (T0 - 1000 - n,) * 2)


def _snapshot(top: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything below `top` that a restore must reproduce, keyed by relative bytes path."""
    out: dict[bytes, tuple[object, ...]] = {}
    btop = os.fsencode(top)
    for dirpath, dirnames, filenames in os.walk(btop):
        for leaf in dirnames + filenames:
            full = os.path.join(dirpath, leaf)
            st = os.lstat(full)
            rel = os.path.relpath(full, btop)
            facts: tuple[object, ...] = (stat.S_IFMT(st.st_mode), int(st.st_mtime))
            if not stat.S_ISLNK(st.st_mode):
                facts += (stat.S_IMODE(st.st_mode),)
            if IS_ROOT:
                facts += (st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    facts += (hashlib.sha256(f.read()).hexdigest(), st.st_nlink)
            elif stat.S_ISLNK(st.st_mode):
                facts += (os.readlink(full),)
            out[rel] = facts
    return out


def _walk_tally(top: Path) -> Tally:
    """Regular files as tar stores them: one per inode, the other names are hard links."""
    seen: set[tuple[int, int]] = set()
    tally = Tally()
    for dirpath, _, filenames in os.walk(os.fsencode(top)):
        for leaf in filenames:
            st = os.lstat(os.path.join(dirpath, leaf))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                tally.files += 1
                tally.bytes += st.st_size
    return tally


def _into(dest: Path) -> Callable[[str], Path]:
    return lambda root: dest / root


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bytes]]:
    top = tmp_path_factory.mktemp("src")
    _build_tree(top)
    yield top, _gnu_tar(top, *ROOTS)
    os.chmod(top / "srv/app/media/ro", 0o755)  # let pytest clean up as non-root


def _make_writable(top: Path) -> None:
    for dirpath, _, _ in os.walk(top):
        os.chmod(dirpath, 0o755)


# --------------------------------------------------------------------------- round trip


def test_round_trip_reproduces_the_tree(source: tuple[Path, bytes], tmp_path: Path) -> None:
    top, archive = source
    dest = tmp_path / "dest"
    tally = extract(io.BytesIO(archive), ROOTS, _into(dest))
    try:
        for root in ROOTS:  # their parents are not in the archive
            assert _snapshot(dest / root) == _snapshot(top / root)
            assert _snapshot(dest / root)  # not vacuous
            st, orig = (dest / root).stat(), (top / root).stat()
            assert (st.st_mode, int(st.st_mtime)) == (orig.st_mode, int(orig.st_mtime))
        media = os.fsencode(dest / "srv/app/media")
        for raw in (SPACE, NEWLINE, LATIN1):
            with open(os.path.join(media, raw), "rb") as f:
                assert f.read() == b"awkward name " + raw
        hard = dest / "srv/app/media/sub/hard.jpg"
        assert hard.stat().st_ino == (dest / "srv/app/media/a.jpg").stat().st_ino
        assert os.readlink(dest / "etc/nginx/sites-enabled/default") == "../sites-available/default"
        assert (dest / "etc/nginx/sites-enabled/default").read_text() == "server {}\n"
        assert stat.S_IMODE((dest / "srv/app/media/ro").stat().st_mode) == 0o555
        assert stat.S_IMODE((dest / "srv/app/media/shared").stat().st_mode) == 0o2775
        assert (dest / "srv/app/media/empty").stat().st_size == 0
        if IS_ROOT:
            assert (dest / "srv/app/media/a.jpg").stat().st_uid == 1234
            assert os.lstat(dest / "srv/app/media/abs-link").st_gid == 8765
    finally:
        _make_writable(dest)
    assert tally == scan(io.BytesIO(archive), ROOTS) == _walk_tally(top)
    assert tally.files == 11


def test_streams_from_a_pipe_in_small_reads(source: tuple[Path, bytes], tmp_path: Path) -> None:
    """A real tar process on the other end of a pipe, read a few bytes at a time."""
    top, _ = source
    proc = subprocess.Popen(
        ["tar", "--create", "--file=-", "--format=gnu", f"--directory={top}", "--", *ROOTS],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None

    class Trickle:
        def read(self, size: int, /) -> bytes:
            assert proc.stdout is not None
            return proc.stdout.read(min(size, 4093))

    try:
        tally = extract(Trickle(), ROOTS, _into(tmp_path / "dest"))
    finally:
        proc.stdout.close()
        assert proc.wait() == 0  # drained to the end: tar was not cut off
    _make_writable(tmp_path / "dest")
    assert tally == _walk_tally(top)
    assert (tmp_path / "dest/srv/app/media/sub/deeper/big.bin").read_bytes() == (
        top / "srv/app/media/sub/deeper/big.bin"
    ).read_bytes()


def test_staged_routes_and_existing_empty_route(source: tuple[Path, bytes], tmp_path: Path) -> None:
    """In-place restores stage each root beside the live one; the stage may already exist."""
    top, archive = source
    stages = {"srv/app/media": tmp_path / "srv/app/.media.restore", "etc/nginx": tmp_path / "nx"}
    stages["etc/nginx"].mkdir()
    extract(io.BytesIO(archive), ROOTS, stages.__getitem__)
    _make_writable(tmp_path / "srv")
    assert (stages["srv/app/media"] / "a.jpg").read_bytes() == (
        top / "srv/app/media/a.jpg"
    ).read_bytes()
    assert int(stages["etc/nginx"].stat().st_mtime) == int((top / "etc/nginx").stat().st_mtime)


def test_a_root_may_be_a_single_file(source: tuple[Path, bytes], tmp_path: Path) -> None:
    top, _ = source
    archive = _gnu_tar(top, "etc/nginx/nginx.conf")
    dest = tmp_path / "out/nginx.conf"
    tally = extract(io.BytesIO(archive), ["etc/nginx/nginx.conf"], lambda _: dest)
    assert dest.read_text() == "events {}\n"
    assert tally == Tally(files=1, bytes=len("events {}\n"))


def test_only_the_members_of_listed_roots_are_accepted(
    source: tuple[Path, bytes], tmp_path: Path
) -> None:
    _, archive = source
    with pytest.raises(UnsafeArchive, match="outside the roots"):
        scan(io.BytesIO(archive), ["srv/app/media"])


def test_roots_must_be_plain_and_must_not_nest() -> None:
    for bad in (["srv/app", "srv/app/media"], ["srv/../etc"], [""], []):
        with pytest.raises(ValueError):
            scan(io.BytesIO(b""), bad)


def test_existing_files_are_never_overwritten(source: tuple[Path, bytes], tmp_path: Path) -> None:
    _, archive = source
    dest = tmp_path / "dest"
    (dest / "etc/nginx").mkdir(parents=True)
    (dest / "etc/nginx/nginx.conf").write_text("live\n")
    with pytest.raises(FileExistsError, match=r"nginx\.conf"):
        extract(io.BytesIO(archive), ROOTS, _into(dest))
    assert (dest / "etc/nginx/nginx.conf").read_text() == "live\n"


# --------------------------------------------------------------------------- refusals


def _member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    link: str = "",
    mode: int = 0o644,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.mtime = T0
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _evil(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _listing(top: Path, skip: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    out.discard(str(skip))
    return out


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(destination, sentinel): a refused archive must leave everything but the
    destination as it was, and the sentinel empty."""
    dest = tmp_path / "dest"
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    before = _listing(tmp_path, dest)
    yield dest, sentinel
    assert list(sentinel.iterdir()) == []
    assert _listing(tmp_path, dest) == before


MEDIA = ("srv/app/media", tarfile.DIRTYPE)
REFUSALS: dict[str, tuple[Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]], str]] = {
    "dotdot": (lambda s: [_member("../evil", data=b"x")], r"'\.\.' in name"),
    "dotdot-inside": (
        lambda s: [_member(*MEDIA), _member("srv/app/media/../../etc/x", data=b"x")],
        r"'\.\.' in name",
    ),
    "dotdot-to-sentinel": (
        # from dest/srv/app/media up to the sentinel beside dest
        lambda s: [_member(*MEDIA), _member("srv/app/media/../../../../sentinel/x", data=b"x")],
        r"'\.\.' in name",
    ),
    "absolute": (lambda s: [_member("/abs", data=b"x")], "absolute name"),
    "absolute-sentinel": (lambda s: [_member(str(s / "x"), data=b"x")], "absolute name"),
    "outside-roots": (lambda s: [_member("var/lib/x", data=b"x")], "outside the roots"),
    "root-prefix-is-not-a-root": (
        lambda s: [_member("srv/app/media-other/x", data=b"x")],
        "outside the roots",
    ),
    "symlink-relative-escape": (
        lambda s: [
            _member(*MEDIA),
            _member("srv/app/media/up", tarfile.SYMTYPE, link="../../../etc/shadow"),
        ],
        "outside its root",
    ),
    "symlink-absolute-escape": (
        lambda s: [_member("etc/nginx/x", tarfile.SYMTYPE, link="/etc/passwd")],
        "outside its root",
    ),
    "symlink-to-other-root": (
        lambda s: [_member("etc/nginx/x", tarfile.SYMTYPE, link="/srv/app/media")],
        "outside its root",
    ),
    "symlink-to-parent-of-root": (
        lambda s: [_member("etc/nginx/x", tarfile.SYMTYPE, link="..")],
        "outside its root",
    ),
    "symlink-dir-then-write-through": (
        lambda s: [
            _member(*MEDIA),
            _member("srv/app/media/link", tarfile.SYMTYPE, link=str(s)),
            _member("srv/app/media/link/file", data=b"owned"),
        ],
        "outside its root",
    ),
    "symlink-inside-then-write-through": (
        lambda s: [
            _member(*MEDIA),
            _member("srv/app/media/d", tarfile.DIRTYPE),
            _member("srv/app/media/link", tarfile.SYMTYPE, link="d"),
            _member("srv/app/media/link/file", data=b"via link"),
        ],
        "symlink earlier in the archive",
    ),
    "symlink-chain": (
        # lexically etc/nginx/x, but a -> . makes a/.. the parent of the root
        lambda s: [
            _member("etc/nginx/a", tarfile.SYMTYPE, link="."),
            _member("etc/nginx/b", tarfile.SYMTYPE, link="a/../x"),
        ],
        "after a name",
    ),
    "symlink-as-root": (
        lambda s: [_member("etc/nginx", tarfile.SYMTYPE, link="nginx")],
        "a root must be",
    ),
    "hardlink-absolute": (
        lambda s: [_member("etc/nginx/p", tarfile.LNKTYPE, link="/etc/passwd")],
        "absolute hard link target",
    ),
    "hardlink-outside": (
        lambda s: [_member("etc/nginx/p", tarfile.LNKTYPE, link="etc/passwd")],
        "outside its root",
    ),
    "hardlink-dotdot": (
        lambda s: [_member("etc/nginx/p", tarfile.LNKTYPE, link="etc/nginx/../passwd")],
        r"'\.\.' in hard link target",
    ),
    "hardlink-not-earlier": (
        lambda s: [_member("etc/nginx/p", tarfile.LNKTYPE, link="etc/nginx/nginx.conf")],
        "not an earlier regular file",
    ),
    "hardlink-other-root": (
        lambda s: [
            _member("etc/nginx/nginx.conf", data=b"x"),
            _member("srv/app/media/p", tarfile.LNKTYPE, link="etc/nginx/nginx.conf"),
        ],
        "outside its root",
    ),
    "hardlink-to-symlink": (
        lambda s: [
            _member("etc/nginx/s", tarfile.SYMTYPE, link="nginx.conf"),
            _member("etc/nginx/p", tarfile.LNKTYPE, link="etc/nginx/s"),
        ],
        "not an earlier regular file",
    ),
    "hardlink-to-dir": (
        lambda s: [
            _member("etc/nginx/d", tarfile.DIRTYPE),
            _member("etc/nginx/p", tarfile.LNKTYPE, link="etc/nginx/d"),
        ],
        "not an earlier regular file",
    ),
    "dir-over-file": (
        lambda s: [
            _member("etc/nginx/a", data=b"x"),
            _member("etc/nginx/a", tarfile.DIRTYPE),
        ],
        "would replace the regular file",
    ),
    "fifo": (lambda s: [_member(*MEDIA), _member("srv/app/media/fifo", tarfile.FIFOTYPE)], "FIFO"),
    "char-device": (
        lambda s: [_member("etc/nginx/null", tarfile.CHRTYPE)],
        "device node",
    ),
    "duplicate-file": (
        lambda s: [
            _member("etc/nginx/a.conf", data=b"first"),
            _member("etc/nginx/a.conf", data=b"second"),
        ],
        "would replace",
    ),
    "file-under-file": (
        lambda s: [
            _member("etc/nginx/a.conf", data=b"first"),
            _member("etc/nginx/a.conf/x", data=b"second"),
        ],
        "regular file earlier",
    ),
    "empty-name": (lambda s: [_member("./", tarfile.DIRTYPE)], "empty name"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case: str, box: tuple[Path, Path]) -> None:
    dest, sentinel = box
    build, why = REFUSALS[case]
    members = build(sentinel)
    archive = _evil(*members)
    with pytest.raises(UnsafeArchive, match=why):
        scan(io.BytesIO(archive), ROOTS)
    with pytest.raises(UnsafeArchive, match=why) as refused:
        extract(io.BytesIO(archive), ROOTS, _into(dest))
    # the refused member was not written
    assert refused.value.member is not None
    bad = refused.value.member
    if [m.name for m, _ in members].count(bad) == 1 and not bad.startswith("/"):
        assert not os.path.lexists(dest / bad)


def test_nul_byte_in_name_is_refused() -> None:
    # tarfile cannot write one in a header; check the rule itself
    with pytest.raises(UnsafeArchive, match="NUL"):
        _Model(ROOTS).admit(tarfile.TarInfo("etc/nginx/a\x00b"))


def test_symlink_already_on_disk_is_not_followed(box: tuple[Path, Path]) -> None:
    dest, sentinel = box
    (dest / "srv/app/media").mkdir(parents=True)
    os.symlink(sentinel, dest / "srv/app/media/sub")
    archive = _evil(_member(*MEDIA), _member("srv/app/media/sub/x", data=b"owned"))
    assert scan(io.BytesIO(archive), ROOTS) == Tally(files=1, bytes=5)  # scan sees no disk
    with pytest.raises(UnsafeArchive, match="on disk is a symlink"):
        extract(io.BytesIO(archive), ROOTS, _into(dest))


def test_route_that_is_a_symlink_is_not_followed(box: tuple[Path, Path]) -> None:
    dest, sentinel = box
    (dest / "srv/app").mkdir(parents=True)
    os.symlink(sentinel, dest / "srv/app/media")
    archive = _evil(_member(*MEDIA), _member("srv/app/media/x", data=b"owned"))
    with pytest.raises(UnsafeArchive, match="on disk is a symlink"):
        extract(io.BytesIO(archive), ROOTS, _into(dest))


def test_links_inside_the_root_are_allowed(tmp_path: Path) -> None:
    archive = _evil(
        _member("etc/nginx", tarfile.DIRTYPE, mode=0o755),
        _member("etc/nginx/sites-available/default", data=b"server {}"),
        _member("etc/nginx/en", tarfile.SYMTYPE, link="/etc/nginx/sites-available/default"),
        _member(
            "etc/nginx/sites-enabled/default", tarfile.SYMTYPE, link="../sites-available/default"
        ),
        _member("etc/nginx/self", tarfile.SYMTYPE, link="."),
        _member("etc/nginx/hard", tarfile.LNKTYPE, link="etc/nginx/sites-available/default"),
    )
    assert scan(io.BytesIO(archive), ROOTS) == Tally(files=1, bytes=9)
    extract(io.BytesIO(archive), ROOTS, _into(tmp_path))
    assert os.readlink(tmp_path / "etc/nginx/en") == "/etc/nginx/sites-available/default"
    assert (tmp_path / "etc/nginx/hard").read_bytes() == b"server {}"


# --------------------------------------------------------------------------- damaged archives


def test_truncated_archives_are_refused(source: tuple[Path, bytes]) -> None:
    _, archive = source
    # cut at a header boundary (tarfile alone would end quietly there) and inside data
    headers = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        headers = [m.offset for m in tar.getmembers()]
    for cut in (headers[len(headers) // 2], headers[-1] + 700, len(archive) - 10240 + 10):
        with pytest.raises(UnsafeArchive, match=r"truncated|unreadable"):
            scan(io.BytesIO(archive[:cut]), ROOTS)
    with pytest.raises(UnsafeArchive, match="unreadable"):
        scan(io.BytesIO(b""), ROOTS)


def test_garbage_header_is_refused(source: tuple[Path, bytes]) -> None:
    _, archive = source
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        offset = tar.getmembers()[3].offset
    damaged = archive[:offset] + b"garbage!" * 64 + archive[offset + 512 :]
    with pytest.raises(UnsafeArchive, match="unreadable header"):
        scan(io.BytesIO(damaged), ROOTS)


def test_empty_archive_is_fine() -> None:
    assert scan(io.BytesIO(b"\0" * 10240), ROOTS) == Tally()
