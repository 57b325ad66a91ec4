"""Headers pyops and GNU tar could read differently are refused; the rest is read as GNU
tar reads it. Archives crafted byte by byte (tests/fixtures/tarcraft.py); every refusal is
checked by scan (verify --deep) and by extract (restore, a real tar -x behind it), with
nothing written outside the destination."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.tarcraft import OLDGNU, archive, header, long_name, member, pax, record

from pyops import tarextract
from pyops.tarsafe import Tally, UnsafeArchive, extract, scan

ROOT = "srv/app/media"
R = ROOT.encode()
ROOTS = [ROOT]


def _dir(name: bytes) -> bytes:
    return member(name, typeflag=b"5", mode=0o755)


START = _dir(R) + member(R + b"/ok.txt", b"fine\n")


def _sparse(name: bytes, entries: list[tuple[int, int]], real: int, stored: int) -> bytes:
    """A GNU sparse 1.0 member whose map lists `entries` and whose data is `stored` bytes."""
    lines = [str(len(entries)).encode()] + [str(n).encode() for pair in entries for n in pair]
    sparse_map = b"\n".join(lines) + b"\n"
    sparse_map += bytes(-len(sparse_map) % 512)
    data = sparse_map + b"x" * stored
    return pax(
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", name),
        (b"GNU.sparse.realsize", str(real).encode()),
    ) + member(b"GNUSparseFile.1/" + name.rsplit(b"/", 1)[-1], data)


def _escape_in_data() -> bytes:
    """A header for a member outside, as the data of the member before it."""
    return header(b"../../evil", b"0", 5) + b"owned".ljust(512, b"\0")


CASES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    # --- headers tar would read differently, or skip and resynchronise on
    "bad-checksum": (
        lambda s: archive(START, member(R + b"/x", b"x", chksum=b"0000000\0")),
        "bad checksum",
    ),
    "size-not-octal": (
        lambda s: archive(START, header(R + b"/x", size_field=b"0000000009\0\0")),
        "size field",
    ),
    "size-base256-negative": (
        lambda s: archive(START, header(R + b"/x", size_field=b"\xff" * 12)),
        "size field",
    ),
    "extension-without-member": (
        lambda s: archive(START, pax((b"path", R + b"/x"))),
        "without a member",
    ),
    # --- pax records
    "pax-twice": (
        lambda s: archive(
            START, pax((b"path", R + b"/a")), pax((b"path", b"../evil")), member(b"x")
        ),
        "two pax headers",
    ),
    "pax-unknown-keyword": (
        lambda s: archive(START, pax((b"LIBARCHIVE.xattr.user.x", b"eA==")), member(R + b"/x")),
        "not one pyops knows",
    ),
    "pax-keyword-with-nul": (
        # tar compares keywords as C strings: to tar this is `path`
        lambda s: archive(START, pax((b"path\0x", b"../evil")), member(R + b"/x", b"x")),
        "not one pyops knows",
    ),
    "pax-keyword-twice": (
        lambda s: archive(
            START, pax((b"path", R + b"/a"), (b"path", b"../evil")), member(R + b"/x", b"x")
        ),
        "twice",
    ),
    "pax-bad-length": (
        lambda s: archive(START, pax(raw=b"99 path=../evil\n"), member(R + b"/x", b"x")),
        "does not fit",
    ),
    "pax-leading-blank": (
        lambda s: archive(START, pax(raw=b" " + record(b"path", b"../evil")), member(R + b"/x")),
        "without its length",
    ),
    "pax-trailing-garbage": (
        lambda s: archive(START, pax(raw=record(b"uid", b"0") + b"junk"), member(R + b"/x", b"x")),
        "without its length",
    ),
    "pax-size-not-decimal": (
        lambda s: archive(START, pax((b"size", b"+0")), member(R + b"/x", b"x")),
        "not a plain decimal",
    ),
    "pax-path-escapes": (
        lambda s: archive(START, pax((b"path", b"../../evil")), member(R + b"/fine", b"x")),
        r"'\.\.' in name",
    ),
    "pax-path-absolute": (
        lambda s: archive(START, pax((b"path", os.fsencode(s / "x"))), member(R + b"/fine", b"x")),
        "absolute name",
    ),
    "pax-path-nul": (
        # tar would stop at the NUL and write srv/app/media/ok2
        lambda s: archive(START, pax((b"path", R + b"/ok2\0/../../x")), member(R + b"/f", b"x")),
        "NUL byte in name",
    ),
    "pax-linkpath-escapes": (
        lambda s: archive(
            START,
            pax((b"linkpath", os.fsencode(s))),
            member(R + b"/esc", typeflag=b"2", linkname=b"ok.txt"),
            member(R + b"/esc/pwned", b"x"),
        ),
        "outside its root",
    ),
    # the pax size is what tar uses: the "data" of this member is the next header,
    # which must be checked like any other
    "pax-size-hides-a-member": (
        lambda s: archive(START, pax((b"size", b"0")), member(R + b"/f", _escape_in_data())),
        r"'\.\.' in name",
    ),
    # --- GNU long names
    "long-name-escapes": (
        lambda s: archive(START, long_name(b"../" * 40 + b"evil"), member(R + b"/x", b"x")),
        r"'\.\.' in name",
    ),
    "long-name-and-pax-path": (
        lambda s: archive(START, long_name(R + b"/a"), pax((b"path", R + b"/b")), member(b"x")),
        "both a GNU long name and a pax path",
    ),
    "long-name-twice": (
        lambda s: archive(START, long_name(R + b"/a"), long_name(b"../evil"), member(b"x")),
        "two long names",
    ),
    "long-link-escapes": (
        lambda s: archive(START, long_name(b"/etc/passwd", b"K"), member(R + b"/p", typeflag=b"1")),
        "absolute hard link target",
    ),
    "long-link-and-linkpath": (
        lambda s: archive(
            START,
            long_name(R + b"/ok.txt", b"K"),
            pax((b"linkpath", b"/etc/passwd")),
            member(R + b"/p", typeflag=b"1"),
        ),
        "both a GNU long link name and a pax linkpath",
    ),
    # --- members that carry data they should not (tar and tarfile skip it differently)
    "symlink-with-data": (
        lambda s: archive(
            START, member(R + b"/l", _escape_in_data(), typeflag=b"2", linkname=b"ok.txt")
        ),
        "symlink with data",
    ),
    "hardlink-with-data": (
        lambda s: archive(
            START, member(R + b"/h", _escape_in_data(), typeflag=b"1", linkname=R + b"/ok.txt")
        ),
        "hard link with data",
    ),
    "directory-with-data": (
        lambda s: archive(START, member(R + b"/d", _escape_in_data(), typeflag=b"5")),
        "directory with data",
    ),
    "file-named-like-a-directory": (
        lambda s: archive(START, member(R + b"/d/", _escape_in_data())),
        "named like a directory",
    ),
    # --- types pyops never writes
    "global-pax-header": (lambda s: archive(START, member(b"g", b"", typeflag=b"g")), "type 'g'"),
    "old-gnu-sparse": (lambda s: archive(START, member(R + b"/s", typeflag=b"S")), "type 'S'"),
    "gnu-dumpdir": (lambda s: archive(START, member(R + b"/d", b"Yx\0\0", b"D")), "type 'D'"),
    "volume-label": (lambda s: archive(START, member(b"label", typeflag=b"V")), "type 'V'"),
    "solaris-extended": (lambda s: archive(START, member(b"x", typeflag=b"X")), "type 'X'"),
    # --- sparse files
    "sparse-map-claims-too-much": (
        lambda s: archive(START, _sparse(R + b"/s", [(0, 4096)], 4096, 10)),
        "claims more data",
    ),
    "sparse-map-out-of-order": (
        lambda s: archive(START, _sparse(R + b"/s", [(600, 10), (0, 10)], 700, 20)),
        "out of order",
    ),
    "sparse-map-malformed": (
        lambda s: archive(
            START,
            pax(
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.realsize", b"10"),
            ),
            member(R + b"/s", b"1\n0x\n10\n".ljust(512, b"\0") + b"x" * 10),
        ),
        "not a plain decimal",
    ),
    "sparse-name-escapes": (
        lambda s: archive(START, _sparse(b"../../evil", [(0, 10)], 10, 10)),
        r"'\.\.' in name",
    ),
    "sparse-version-0.1": (
        lambda s: archive(
            START,
            pax((b"GNU.sparse.major", b"0"), (b"GNU.sparse.minor", b"1")),
            member(R + b"/s", b"x"),
        ),
        "other than 1.0",
    ),
    "sparse-directory": (
        lambda s: archive(START, _sparse(R + b"/d", [(0, 0)], 0, 0)[:-1024] + _dir(R + b"/d")),
        "other than|with data|type",
    ),
    # --- directories tar would treat differently from pyops' model
    "directory-twice": (
        lambda s: archive(START, _dir(R + b"/d"), member(R + b"/d/f", b"x"), _dir(R + b"/d")),
        "would replace the directory",
    ),
    "directory-after-its-contents": (
        lambda s: archive(START, member(R + b"/d/f", b"x"), _dir(R + b"/d")),
        "would replace the directory",
    ),
    # --- the ustar prefix is joined as tar joins it
    "prefix-escapes": (
        lambda s: archive(START, member(b"evil", b"x", prefix=R + b"/../../..")),
        r"'\.\.' in name",
    ),
}


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
    """(destination, sentinel): a refused archive leaves everything outside the
    destination as it was, the sentinel empty, and nothing in the destination either."""
    dest = tmp_path / "dest"
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    before = _listing(tmp_path, dest)
    yield dest, sentinel
    assert list(sentinel.iterdir()) == []
    assert _listing(tmp_path, dest) == before
    assert not (tmp_path.parent / "evil").exists()


def _into(dest: Path) -> Callable[[str], Path]:
    return lambda root: dest / root


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_by_scan_and_by_extract(case: str, box: tuple[Path, Path]) -> None:
    dest, sentinel = box
    build, why = CASES[case]
    data = build(sentinel)
    with pytest.raises(UnsafeArchive, match=why):
        scan(io.BytesIO(data), ROOTS)
    with pytest.raises(UnsafeArchive, match=why):
        extract(io.BytesIO(data), ROOTS, _into(dest))
    # nothing was moved into place, and tar's private directory is gone
    assert not (dest / ROOT).exists()
    leftovers = list((dest / ROOT).parent.iterdir()) if (dest / ROOT).parent.exists() else []
    assert leftovers == []


# --------------------------------------------------------------------------- agreement


def _tar_t(data: bytes) -> list[str]:
    """What GNU tar itself lists."""
    out = subprocess.run(
        ["tar", "-t", "--quoting-style=literal", "-f", "-"], input=data, capture_output=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().splitlines()


def test_the_ustar_prefix_is_joined_only_for_the_posix_magic(tmp_path: Path) -> None:
    posix = archive(_dir(R), member(b"p.txt", b"posix\n", prefix=R))
    # OLDGNU keeps times where the prefix would be: tar does not join it, nor does pyops
    oldgnu = archive(
        member(R, typeflag=b"5", mode=0o755, magic=OLDGNU),
        member(R + b"/g.txt", b"gnu\n", magic=OLDGNU, prefix=b"junk"),
    )
    assert _tar_t(posix)[-1] == f"{ROOT}/p.txt"
    assert _tar_t(oldgnu)[-1] == f"{ROOT}/g.txt"
    for data, name, body in ((posix, "p.txt", b"posix\n"), (oldgnu, "g.txt", b"gnu\n")):
        dest = tmp_path / name
        assert scan(io.BytesIO(data), ROOTS) == Tally(1, len(body))
        extract(io.BytesIO(data), ROOTS, _into(dest))
        assert (dest / ROOT / name).read_bytes() == body


def test_base256_sizes_and_signed_checksums_are_read_as_tar_reads_them(tmp_path: Path) -> None:
    body = b"\xe9t\xe9\n" * 100
    size = b"\x80" + len(body).to_bytes(11, "big")
    data = archive(
        _dir(R),
        header(R + b"/big", size=len(body), size_field=size) + body.ljust(512, b"\0"),
        member(R + b"/caf\xe9", b"old tar\n", signed=True),
    )
    assert scan(io.BytesIO(data), ROOTS) == Tally(2, len(body) + 8)
    extract(io.BytesIO(data), ROOTS, _into(tmp_path))
    assert (tmp_path / ROOT / "big").read_bytes() == body
    assert (os.fsencode(tmp_path / ROOT) + b"/caf\xe9") in {
        os.fsencode(p) for p in (tmp_path / ROOT).iterdir()
    }


def test_a_pax_size_and_path_are_what_tar_uses(tmp_path: Path) -> None:
    data = archive(
        _dir(R),
        pax((b"path", R + b"/" + b"n" * 150), (b"size", b"3")),
        header(R + b"/short", size=0) + b"abc".ljust(512, b"\0"),
    )
    assert _tar_t(data)[-1] == f"{ROOT}/{'n' * 150}"
    assert scan(io.BytesIO(data), ROOTS) == Tally(1, 3)
    extract(io.BytesIO(data), ROOTS, _into(tmp_path))
    assert (tmp_path / ROOT / ("n" * 150)).read_bytes() == b"abc"


def test_a_sparse_file_from_gnu_tar_is_read_to_its_real_size(tmp_path: Path) -> None:
    src = tmp_path / "src" / ROOT
    src.mkdir(parents=True)
    with open(src / "disk.img", "wb") as f:
        for at in (0, 3 << 20, 9 << 20):
            f.seek(at)
            f.write(b"data" * 300)
        f.truncate(12 << 20)
    data = subprocess.run(
        ["tar", "-c", "--format=posix", "--sparse", "-f", "-", "-C", tmp_path / "src", ROOT],
        capture_output=True,
        check=True,
    ).stdout
    assert scan(io.BytesIO(data), ROOTS) == Tally(1, 12 << 20)
    extract(io.BytesIO(data), ROOTS, _into(tmp_path / "out"))
    out = tmp_path / "out" / ROOT / "disk.img"
    assert out.read_bytes() == (src / "disk.img").read_bytes()
    assert out.stat().st_blocks * 512 < 1 << 20


def test_a_member_split_across_reads_is_handed_on_whole(tmp_path: Path) -> None:
    """Data larger than the read buffer, after many small members, through a trickle."""
    big = os.urandom((1 << 20) * 2 + 777)
    data = archive(
        _dir(R),
        *(member(R + b"/f%04d" % i, b"%d" % i) for i in range(3000)),
        # extension headers too, which the reader keeps while the buffer moves
        *(
            pax((b"path", R + b"/" + b"p" * 120 + b"%04d" % i)) + member(R + b"/x", b"%d" % i)
            for i in range(500)
        ),
        member(R + b"/big", big),
        member(R + b"/after", b"after"),
    )

    class Trickle:
        def __init__(self) -> None:
            self.f = io.BytesIO(data)

        def read(self, size: int, /) -> bytes:
            return self.f.read(min(size, 100_003))

    tally = extract(Trickle(), ROOTS, _into(tmp_path))
    assert tally.files == 3502
    assert (tmp_path / ROOT / "big").read_bytes() == big
    assert (tmp_path / ROOT / "after").read_bytes() == b"after"
    assert (tmp_path / ROOT / "f2999").read_bytes() == b"2999"
    assert (tmp_path / ROOT / ("p" * 120 + "0499")).read_bytes() == b"499"


def _sparse_carrier(name: bytes, hidden: bytes, magic: bytes, real: int = 512) -> bytes:
    """A GNU sparse 1.0 member whose stored data holds `hidden` (headers, to tar)."""
    smap = (b"1\n0\n%d\n" % real).ljust(512, b"\0")
    data = smap + hidden.ljust(-(-max(len(hidden), real) // 512) * 512, b"\0")
    return (
        pax(
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", name),
            (b"GNU.sparse.realsize", str(real).encode()),
        )
        + header(b"GNUSparseFile.0/x", b"0", len(data), magic=magic)
        + data
    )


@pytest.mark.parametrize("magic", [b"\0" * 8, OLDGNU], ids=["no-magic", "gnu-magic"])
def test_a_sparse_member_of_another_format_cannot_hide_headers_from_the_check(
    tmp_path: Path, magic: bytes
) -> None:
    """tar skips such a member's data by its real size, and reads the rest as headers:
    a symlink out replacing the root, here, that the check never saw."""
    outside = tmp_path / "outside"
    outside.mkdir()
    hidden = header(R, b"2", 0, linkname=os.fsencode(outside))
    data = archive(_dir(R), _sparse_carrier(R + b"/carrier", hidden, magic))
    dest = tmp_path / "dest"
    for run in (
        lambda: scan(io.BytesIO(data), ROOTS),
        lambda: extract(io.BytesIO(data), ROOTS, _into(dest)),
    ):
        with pytest.raises(UnsafeArchive, match=r"another tar format|neither a POSIX nor a GNU"):
            run()
    # at most the parents of the destination, made for tar's private directory
    assert [p for p in dest.rglob("*") if not p.is_dir() or p.is_symlink()] == []
    assert not (dest / ROOT).exists()
    assert list(outside.iterdir()) == []


def test_one_format_per_archive_and_numeric_fields_tar_can_read(tmp_path: Path) -> None:
    gnu_pax = archive(
        member(R, typeflag=b"5", mode=0o755, magic=OLDGNU),
        pax((b"path", R + b"/p.txt")),
        member(R + b"/x.txt", b"x\n", magic=OLDGNU),
    )
    with pytest.raises(UnsafeArchive, match="another tar format"):
        scan(io.BytesIO(gnu_pax), ROOTS)
    bad = bytearray(member(R + b"/m.txt", b"abc"))
    bad[100:108] = b"0x00644\0"
    bad[148:156] = b" " * 8
    bad[148:156] = b"%06o\0 " % sum(bad[:512])
    with pytest.raises(UnsafeArchive, match="mode field"):
        scan(io.BytesIO(archive(_dir(R), bytes(bad))), ROOTS)
    with pytest.raises(UnsafeArchive, match=r"'\.' inside"):
        scan(io.BytesIO(archive(_dir(R), member(R + b"/x/.", typeflag=b"5"))), ROOTS)


def test_what_tar_made_is_checked_before_it_moves_into_place(tmp_path: Path) -> None:
    """Defence in depth, should the two readings of a header ever differ again: a root
    tar made as a symlink, or (as root) a FIFO inside it, never moves into place."""
    made = tmp_path / "made"
    made.mkdir()
    tarextract._made_as_checked(made, "srv/app")  # a plain directory passes
    os.mkfifo(made / "fifo")
    if os.geteuid() == 0:
        with pytest.raises(UnsafeArchive, match="special file the check never saw"):
            tarextract._made_as_checked(made, "srv/app")
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(UnsafeArchive, match="other than the directory or file checked"):
        tarextract._made_as_checked(link, "srv/app")


def _resum(block: bytes) -> bytes:
    b = bytearray(block)
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b[:512])
    return bytes(b)


def test_a_posix_header_tar_reads_as_star_format_is_refused(tmp_path: Path) -> None:
    """tar takes a POSIX header with star's atime/ctime pattern for star's format and
    then skips a GNU sparse member's data by its real size: a header hid in the rest."""
    outside = tmp_path / "outside"
    outside.mkdir()
    hidden = header(R + b"/evil", b"2", 0, linkname=os.fsencode(outside))
    data = b"1\n0\n512\n".ljust(512, b"\0") + hidden
    star = bytearray(header(b"GNUSparseFile.0/sp", b"0", len(data)))
    star[476:488] = b"00000000000 "
    star[488:500] = b"00000000000 "
    sparse = pax(
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", R + b"/sp"),
        (b"GNU.sparse.realsize", b"512"),
    )
    arc = archive(_dir(R), sparse + _resum(bytes(star)) + data, member(R + b"/after", b"x\n"))
    dest = tmp_path / "dest"
    for run in (
        lambda: scan(io.BytesIO(arc), ROOTS),
        lambda: extract(io.BytesIO(arc), ROOTS, _into(dest)),
    ):
        with pytest.raises(UnsafeArchive, match="star format"):
            run()
    assert not (dest / ROOT).exists()


def test_a_long_name_is_read_to_its_first_nul_as_tar_reads_it(tmp_path: Path) -> None:
    """tar reads an L/K name up to the first NUL of its padded blocks, past the size
    the header gives: a name running on into the padding is refused."""

    def longx(typeflag: bytes, declared: bytes, tail: bytes) -> bytes:
        data = (declared + tail).ljust(512, b"\0")
        return header(b"././@LongLink", typeflag, len(declared), magic=OLDGNU) + data

    def gnu(name: bytes, *args: bytes, **kw: object) -> bytes:
        return member(name, *args, magic=OLDGNU, **kw)  # type: ignore[arg-type]

    outside = archive(
        gnu(R, typeflag=b"5"),
        longx(b"K", b"sub", b"/../../../etc/passwd")
        + gnu(R + b"/link", typeflag=b"2", linkname=b"x"),
    )
    with pytest.raises(UnsafeArchive, match="running on into its padding"):
        scan(io.BytesIO(outside), ROOTS)
    # a NUL inside the declared size ends the name there, for tar and for pyops
    fine = archive(
        gnu(R, typeflag=b"5"),
        longx(b"L", R + b"/f\0", b"") + gnu(b"ignored", b"data\n"),
    )
    assert scan(io.BytesIO(fine), ROOTS) == Tally(1, 5)
    extract(io.BytesIO(fine), ROOTS, _into(tmp_path / "d"))
    assert (tmp_path / "d" / ROOT / "f").read_bytes() == b"data\n"
