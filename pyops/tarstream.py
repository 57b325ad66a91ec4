"""A tar stream's members, read from its headers in large buffers, the way GNU tar reads them.

Restores hand the bytes of each member, exactly as read, to a real GNU tar: Python and
tar must then agree on every header, or a member Python took for file data could be a
header to tar. So every header is parsed as GNU tar 1.34 parses it (list.c
`read_header`, `tar_checksum`, `from_header`; xheader.c `decode_record`; sparse.c
`pax_decode_header`), and whatever the two could read differently is refused instead:

- a header is accepted only if tar would accept it: a checksum tar's way (unsigned or
  signed byte sum), sizes in plain octal or base-256, nothing tar would skip or resync on;
- the extensions pyops' own backups (GNU tar --format=posix --xattrs --acls --sparse)
  and tarfile write: pax `x` headers, GNU long names and links (`L`, `K`), GNU sparse
  1.0; never two of a kind for one member, never a long name beside a pax path, never a
  pax record tar would read another way, never a keyword outside a known list;
- a member that is not a regular file carries no data (tar skips data for some types
  and tarfile for none); a name ending in '/' is a directory's;
- a sparse file's map is read, and refused if tar would read past the member's data.

Nothing here decides what is safe to extract (tarsafe does); this module only makes sure
the members it reports are the members tar would see.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

from pyops.errors import PyopsError

BLOCK = 512
READ = 1 << 20
RECORD = 20 * BLOCK  # GNU tar's default record: archives are padded to it
MAX_EXTENSION = 16 << 20  # one pax header or long name; xattrs included
MAX_SPARSE_ENTRIES = 1 << 20
_ZEROS = bytes(BLOCK)
_HIGH = bytes(range(128, 256))
_CHKSUM = slice(148, 156)

# member kinds; the words are used in messages
DIR = "directory"
FILE = "regular file"
SYMLINK = "symlink"
HARDLINK = "hard link"
_KINDS = {ord("0"): FILE, 0: FILE, ord("7"): FILE, ord("5"): DIR, ord("2"): SYMLINK}
_KINDS[ord("1")] = HARDLINK
_LINKS = (SYMLINK, HARDLINK)
_LINK_TYPES = (ord("1"), ord("2"))
_WHY_NOT = {
    ord("3"): "a device node (a backup of application files never holds one)",
    ord("4"): "a device node (a backup of application files never holds one)",
    ord("6"): "a FIFO (a backup of application files never holds one)",
}
_PAX, _LONGNAME, _LONGLINK = ord("x"), ord("L"), ord("K")
# the two formats GNU tar writes (--format=posix, pyops' since it keeps xattrs; gnu, its
# default, which older pyops wrote); tar reads some fields by the magic (a sparse
# member's data under another magic is skipped by its real size: headers hidden in it)
POSIX_MAGIC, GNU_MAGIC = b"ustar\x0000", b"ustar  \x00"
_MAGIC = slice(257, 265)
# numeric fields tar parses for every member (mode, uid, gid, mtime): one it cannot
# read fails the extraction after the check passed
_NUMERIC = ((slice(100, 108), "mode"), (slice(108, 116), "uid"), (slice(116, 124), "gid"))
_MTIME = slice(136, 148)

# pax keywords pyops' backups and tarfile write; anything else is refused
_KEYWORDS = frozenset(
    (
        b"path",
        b"linkpath",
        b"size",
        b"uid",
        b"gid",
        b"uname",
        b"gname",
        b"mtime",
        b"atime",
        b"ctime",
        b"hdrcharset",
        b"SCHILY.acl.access",
        b"SCHILY.acl.default",
        b"SCHILY.acl.ace",
    )
)
_XATTR = b"SCHILY.xattr."
_SPARSE = (b"GNU.sparse.major", b"GNU.sparse.minor", b"GNU.sparse.name", b"GNU.sparse.realsize")


class UnsafeArchive(PyopsError):
    """An archive member was refused, or the archive cannot be read to its end.

    Raised before anything of that member reaches an extractor; what earlier members
    wrote stays, which is why callers extract into a staging directory.
    """

    def __init__(self, member: str | None, reason: str) -> None:
        # repr: names may hold newlines or undecodable bytes, and this goes to logs
        where = "archive" if member is None else f"archive member {member!r}"
        super().__init__(f"refused {where}: {reason}")
        self.member = member
        self.reason = reason


class Readable(Protocol):
    """The stream: a pipe, a decoder's stdout, any binary file object."""

    def read(self, size: int, /) -> bytes: ...


Sink = Callable[[memoryview], None]


class Header(NamedTuple):
    """One member as GNU tar would see it."""

    name: str  # undecodable bytes kept as surrogates: one name, one string
    kind: str
    linkname: str
    size: int  # a regular file's size (a sparse file's real size); 0 for the others


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _octal(field: bytes) -> int | None:
    """A numeric header field in the form both GNU tar and pyops read alike: leading
    spaces, octal digits, then only NULs or spaces (tar's `from_header` reads more)."""
    digits = field.lstrip(b" ").rstrip(b" \0")
    if not digits.isdigit():  # ASCII digits only, and at least one
        return None
    try:
        return int(digits, 8)
    except ValueError:  # an 8 or a 9
        return None


def _field(block: bytes, start: int, end: int) -> bytes:
    """A string field: up to its first NUL, as tar reads it."""
    nul = block.find(b"\0", start, end)
    return block[start : end if nul < 0 else nul]


def _size(field: bytes) -> int | None:
    if field[0] == 0x80:  # base-256, positive: what tar writes for 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return _octal(field)


def _looks_star(block: bytes) -> bool:
    """tar 1.34's test for star's format (list.c decode_header): prefix[130] NUL, then
    atime and ctime fields of octal digits ending in a space. tar reads such a member's
    sparse keys star's way, skipping less of its data than pyops. GNU tar never writes it."""
    octal = b"01234567"
    return (
        block[475] == 0
        and block[476] in octal
        and block[487] == 0x20
        and block[488] in octal
        and block[499] == 0x20
    )


def _checksum_ok(block: bytes) -> bool:
    recorded = _octal(block[_CHKSUM])
    if recorded is None:
        return False
    # the byte sum of 512 bytes in C: adler32's low half is 1 + the sum of its input
    # modulo 65521, exact for 256 bytes (at most 65280)
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    field = block[_CHKSUM]
    unsigned = total - sum(field) + 8 * 32  # the checksum field counts as spaces
    if unsigned == recorded:
        return True
    high = len(block) - len(block.translate(None, _HIGH))
    high -= len(field) - len(field.translate(None, _HIGH))
    return unsigned - 256 * high == recorded  # old tars summed signed chars


def _pax(data: bytes) -> dict[bytes, bytes]:
    """pax records `<len> <keyword>=<value>\\n`, exactly filling the data; anything
    GNU tar's decode_record would stop at or read differently is refused."""
    out: dict[bytes, bytes] = {}
    pos, size = 0, len(data)
    while pos < size:
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space]
        if space <= pos or not length.isdigit():
            raise ValueError("a pax record without its length")
        end = pos + int(length)
        if end > size or end <= space + 1 or data[end - 1] != 0x0A:
            raise ValueError("a pax record whose length does not fit")
        equals = data.find(b"=", space + 1, end - 1)
        if equals <= space + 1:
            raise ValueError("a pax record without a keyword")
        key = data[space + 1 : equals]
        if key in out:
            raise ValueError(f"pax keyword {key!r} twice")
        out[key] = data[equals + 1 : end - 1]
        pos = end
    return out


def _decimal(value: bytes | None, what: str) -> int:
    """A decimal the way tar's decode_num reads it, or ValueError."""
    if value is None or not value.isdigit() or len(value) > 18:
        raise ValueError(f"{what} is not a plain decimal number: {value!r}")
    return int(value)


class TarStream:
    """The members of a tar stream, one `next()` at a time.

    After each member, the caller may set `sink` to a function taking bytes: the
    member's bytes, its extension headers and its data with padding, go there as they
    are read, exactly as they came (writes coalesced, about one per MiB). A member the
    caller refuses (raises instead of calling `next()` again) is never handed on.
    """

    def __init__(self, fileobj: Readable) -> None:
        self._f = fileobj
        self._buf = b""
        self._base = 0  # stream offset of _buf[0]
        self._start = 0  # the first header of the member being read (or the next one)
        self._end: int | None = None  # where the last member returned ends
        self._pending: list[object] | None = None  # [sink, start, end]: not yet written
        self.sink: Sink | None = None
        self.last: str | None = None  # the last member returned, for messages
        self.read_any = False
        self._magic: bytes | None = None  # the archive's format, from its first header

    # --- buffer -------------------------------------------------------------------

    def _flush(self) -> None:
        if self._pending is not None:
            sink, start, end = self._pending
            self._pending = None
            base = self._base
            sink(memoryview(self._buf)[start - base : end - base])  # type: ignore[operator, operator]

    def _need(self, upto: int) -> bool:
        """Make stream bytes [_start, upto) available in the buffer."""
        while self._base + len(self._buf) < upto:
            chunk = self._f.read(READ)
            if not chunk:
                return False
            self.read_any = True
            self._flush()
            self._buf = self._buf[self._start - self._base :] + chunk
            self._base = self._start
        return True

    def _settle(self) -> None:
        """Move past the last member returned, handing its bytes to `sink`."""
        end, sink, start = self._end, self.sink, self._start
        if end is None:
            return
        self._end = None
        self.sink = None
        have = self._base + len(self._buf)
        if end <= have:
            if sink is not None:
                pending = self._pending
                if pending is not None and pending[0] is sink and pending[2] == start:
                    pending[2] = end
                else:
                    self._flush()
                    self._pending = [sink, start, end]
            self._start = end
            return
        # the data runs past the buffer: stream it through
        self._flush()
        if sink is not None:
            sink(memoryview(self._buf)[start - self._base :])
        left, rest = end - have, b""
        while left > 0:
            chunk = self._f.read(READ)
            if not chunk:
                raise UnsafeArchive(
                    None,
                    f"the archive is truncated at byte {end - left} inside member "
                    f"{self.last!r} (no end-of-archive marker)",
                )
            if len(chunk) <= left:
                if sink is not None:
                    sink(memoryview(chunk))
                left -= len(chunk)
            else:
                if sink is not None:
                    sink(memoryview(chunk)[:left])
                rest, left = chunk[left:], 0
        self._buf, self._base, self._start = rest, end, end

    def finish(self) -> None:
        """Hand on what is still held back (call once `next()` returned None)."""
        self._flush()

    def drain(self) -> None:
        """Read the padding after the end marker, so the writer of the pipe can finish."""
        while self._f.read(READ):
            pass

    # --- headers ------------------------------------------------------------------

    def _unreadable(self, pos: int, why: str) -> UnsafeArchive:
        after = "" if self.last is None else f" after member {self.last!r}"
        return UnsafeArchive(None, f"unreadable header at byte {pos}{after}: {why}")

    def _truncated(self, pos: int) -> UnsafeArchive:
        if not self.read_any:
            return UnsafeArchive(None, "the archive is unreadable: the stream is empty")
        after = "" if self.last is None else f" after member {self.last!r}"
        return UnsafeArchive(
            None, f"the archive is truncated at byte {pos}{after} (no end-of-archive marker)"
        )

    def _check_format(self, pos: int, block: bytes) -> None:
        """One format for the whole archive, POSIX or GNU, and numeric fields tar reads."""
        magic = block[_MAGIC]
        if self._magic is None:
            if magic not in (POSIX_MAGIC, GNU_MAGIC):
                raise self._unreadable(pos, f"neither a POSIX nor a GNU tar header ({magic!r})")
            self._magic = magic
        elif magic != self._magic:
            raise self._unreadable(pos, f"a header of another tar format ({magic!r})")
        if magic == POSIX_MAGIC and _looks_star(block):
            raise self._unreadable(pos, "a POSIX header tar would read as star format")
        for field, what in _NUMERIC:
            if _size(block[field]) is None:
                raise self._unreadable(pos, f"{what} field {block[field]!r}")
        if _size(block[_MTIME]) is None and block[_MTIME][0] != 0xFF:  # 0xFF: negative
            raise self._unreadable(pos, f"mtime field {block[_MTIME]!r}")

    def next(self) -> Header | None:
        """The next member, or None at the end-of-archive block (GNU tar stops at the
        first zero block too). Raises UnsafeArchive for a header that cannot be read."""
        if self._end is not None:
            self._settle()
        pos = self._start
        longname: bytes | None = None
        longlink: bytes | None = None
        pax: dict[bytes, bytes] | None = None
        while True:
            off = pos - self._base
            if off + BLOCK > len(self._buf):
                if not self._need(pos + BLOCK):
                    raise self._truncated(pos)
                off = pos - self._base
            block = self._buf[off : off + BLOCK]
            if block == _ZEROS:
                if pos != self._start:
                    raise self._unreadable(self._start, "extension headers without a member")
                return None
            if not _checksum_ok(block):
                raise self._unreadable(pos, "bad checksum")
            self._check_format(pos, block)
            size = _size(block[124:136])
            if size is None:
                raise self._unreadable(pos, f"size field {block[124:136]!r}")
            typeflag = block[156]
            if typeflag == _PAX and self._magic != POSIX_MAGIC:
                raise self._unreadable(pos, "a pax header in a GNU-format archive")
            if typeflag not in (_PAX, _LONGNAME, _LONGLINK):
                break
            if size > MAX_EXTENSION:
                raise self._unreadable(pos, f"an extension header of {size} bytes")
            if not self._need(pos + BLOCK + _padded(size)):
                raise self._truncated(pos)
            off = pos - self._base  # (the buffer may have moved)
            data = self._buf[off + BLOCK : off + BLOCK + size]
            if typeflag == _PAX:
                if pax is not None:
                    raise self._unreadable(pos, "two pax headers for one member")
                try:
                    pax = _pax(data)
                except ValueError as exc:
                    raise self._unreadable(pos, str(exc)) from None
            else:
                # tar reads a long name up to the first NUL of its whole padded blocks
                padded = self._buf[off + BLOCK : off + BLOCK + _padded(size)]
                long = padded.split(b"\0", 1)[0]
                if len(long) > size:
                    raise self._unreadable(pos, "a long name running on into its padding")
                if typeflag == _LONGNAME:
                    if longname is not None:
                        raise self._unreadable(pos, "two long names for one member")
                    longname = long
                else:
                    if longlink is not None:
                        raise self._unreadable(pos, "two long link names for one member")
                    longlink = long
            pos += BLOCK + _padded(size)
        return self._member(pos, block, size, longname, longlink, pax)

    def _member(
        self,
        pos: int,
        block: bytes,
        size: int,
        longname: bytes | None,
        longlink: bytes | None,
        pax: dict[bytes, bytes] | None,
    ) -> Header:
        if longname is not None:
            raw = longname
        else:
            raw = _field(block, 0, 100)
            # tar joins the ustar prefix only for the POSIX magic ("ustar\0")
            if block[345] and block[257:263] == b"ustar\0":
                raw = _field(block, 345, 500) + b"/" + raw
        link = longlink
        if link is None:
            link = _field(block, 157, 257) if block[156] in _LINK_TYPES else b""
        real = size
        if pax:
            try:
                raw, link, size, real = self._apply_pax(pax, raw, link, size, longname, longlink)
            except ValueError as exc:
                shown = raw.decode("utf-8", "surrogateescape")
                raise UnsafeArchive(shown, f"pax header: {exc}") from None
        name = raw.decode("utf-8", "surrogateescape")
        typeflag = block[156]
        kind = _KINDS.get(typeflag)
        if kind is None:
            why = _WHY_NOT.get(typeflag, f"of unsupported type {chr(typeflag)!r}")
            raise UnsafeArchive(name, f"is {why}")
        if kind != FILE:
            if size or real < 0:
                raise UnsafeArchive(name, f"a {kind} with data ({size} bytes)")
        elif raw.endswith(b"/"):
            raise UnsafeArchive(name, "a regular file named like a directory (ending in '/')")
        elif real < 0:  # sparse: the map must agree with the size
            real = -real - 1
            self._sparse_map(pos, size, real, name)
        linkname = link.decode("utf-8", "surrogateescape") if kind in _LINKS else ""
        self._end = pos + BLOCK + _padded(size)
        self.last = name
        return Header(name, kind, linkname, real)

    @staticmethod
    def _apply_pax(
        pax: dict[bytes, bytes],
        raw: bytes,
        link: bytes,
        size: int,
        longname: bytes | None,
        longlink: bytes | None,
    ) -> tuple[bytes, bytes, int, int]:
        for key in pax:
            if key not in _KEYWORDS and not key.startswith(_XATTR) and key not in _SPARSE:
                raise ValueError(f"keyword {key!r} is not one pyops knows")
        if b"path" in pax:
            if longname is not None:
                raise ValueError("both a GNU long name and a pax path")
            raw = pax[b"path"]
        if b"linkpath" in pax:
            if longlink is not None:
                raise ValueError("both a GNU long link name and a pax linkpath")
            link = pax[b"linkpath"]
        if b"size" in pax:
            size = _decimal(pax[b"size"], "size")
        real = size
        if any(key in pax for key in _SPARSE):
            if pax.get(b"GNU.sparse.major") != b"1" or pax.get(b"GNU.sparse.minor") != b"0":
                raise ValueError("a GNU sparse format other than 1.0")
            real = _decimal(pax.get(b"GNU.sparse.realsize"), "GNU.sparse.realsize")
            if b"GNU.sparse.name" in pax:  # tar takes it over any path
                if longname is not None:
                    raise ValueError("both a GNU long name and a sparse name")
                raw = pax[b"GNU.sparse.name"]
            real = -real - 1  # negative: sparse (its map is read next)
        return raw, link, size, real

    def _sparse_map(self, pos: int, size: int, real: int, name: str) -> None:
        """GNU sparse 1.0: the map opens the data (decimal lines: the count, then offset
        and length pairs). tar reads the map's blocks and then each region in whole
        blocks; refuse a map that would make it read past the member's data."""
        data = pos + BLOCK
        at, numbers = data, list[int]()
        want = 1
        while len(numbers) < want:
            if not self._need(at + 21):  # a number, its newline: data and end blocks follow
                raise self._truncated(at)
            nl = self._buf.find(b"\n", at - self._base, at - self._base + 21)
            if nl < 0:
                raise UnsafeArchive(name, "sparse map with a malformed number")
            try:
                value = _decimal(self._buf[at - self._base : nl], "a sparse map entry")
            except ValueError as exc:
                raise UnsafeArchive(name, str(exc)) from None
            numbers.append(value)
            if len(numbers) == 1:
                if value > MAX_SPARSE_ENTRIES:
                    raise UnsafeArchive(name, f"sparse map of {value} entries")
                want = 1 + 2 * value
            at = self._base + nl + 1
        blocks = _padded(at - data) // BLOCK
        end = 0
        for offset, length in zip(numbers[1::2], numbers[2::2], strict=True):
            if offset < end or offset + length > real:
                raise UnsafeArchive(name, "sparse map regions out of order or past the file's end")
            end = offset + length
            blocks += _padded(length) // BLOCK
        if blocks * BLOCK > _padded(size):
            raise UnsafeArchive(name, "sparse map claims more data than the member holds")
