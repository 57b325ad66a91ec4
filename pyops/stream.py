"""Moving an artifact's bytes through decoders to whatever consumes them.

The artifact is read (and hashed) by pyops a chunk at a time and fed into the
decoder pipeline; the decoded stream goes either straight into a tool (a
stage appended to the pipeline) or back to pyops as a readable file object.
The sha256 is compared once the last byte has passed: callers do that before
anything is swapped into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterable, Iterator
from typing import IO

from pyops.errors import VerifyFailed
from pyops.execute import DEVNULL, PIPE, Stage, in_thread, pipeline, start
from pyops.manifest import Manifest


class IterReader(io.RawIOBase):
    """A read()-able view of an iterator of chunks (for tarfile and friends)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


class Checksum:
    """sha256 of what passes through, compared with the manifest at the end.

    `through` compares as soon as the last chunk has passed, and raises VerifyFailed
    from the stream itself: whoever feeds a tool stops there, so no tool is waited
    for on a stream known to be bad (pg_restore never ends on a cut tar archive).
    `check` says the same again for callers that compare explicitly."""

    def __init__(self, manifest: Manifest, attachment: str | None = None) -> None:
        self.manifest = manifest
        entry = manifest.attachments[attachment] if attachment else manifest.artifact
        self.what = f"attachment {attachment}" if attachment else "artifact"
        self.size, self.sha256 = int(entry["bytes"]), str(entry["sha256"])
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.failed: VerifyFailed | None = None  # the verdict, once it was negative

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.hash.update(chunk)
            self.bytes += len(chunk)
            yield chunk
        self.check()

    def check(self) -> None:
        got = self.hash.hexdigest()
        if self.bytes != self.size:
            self.failed = VerifyFailed(
                f"{self.manifest.id}: {self.what} is {self.bytes} bytes, manifest says "
                f"{self.size} (truncated or replaced)"
            )
        elif got != self.sha256:
            self.failed = VerifyFailed(
                f"{self.manifest.id}: sha256 mismatch ({self.what} {got[:16]}..., manifest "
                f"{self.sha256[:16]}...): the file was altered or damaged"
            )
        if self.failed is not None:
            raise self.failed


def checksum(manifest: Manifest, chunks: Iterable[bytes], attachment: str | None = None) -> None:
    """Read every chunk; VerifyFailed unless size and sha256 match the manifest (the
    artifact's, or those of the named attachment)."""
    for _ in Checksum(manifest, attachment).through(chunks):
        pass


def into_tool(chunks: Iterable[bytes], stages: list[Stage], stdout: int = DEVNULL) -> None:
    """Feed `chunks` through `stages` (decoders plus a consuming tool); raise if any
    stage failed.

    The consuming tool may stop reading before the end of a valid stream (pg_restore
    stops before a tar archive's trailing blocks). Once it has exited successfully,
    what it left is drained: the decoders still decode (and check) everything, and
    every one of `chunks` is still read, so the caller's checksum covers the whole
    artifact. A cut or altered stream therefore still fails, by the decoder's exit
    status or by the checksum; a valid one never dies of SIGPIPE."""
    with pipeline(stages, stdin=PIPE, stdout=stdout, drain=True) as running:
        running.feed(chunks)


@contextlib.contextmanager
def decoded(chunks: Iterable[bytes], decoders: list[Stage]) -> Iterator[IO[bytes]]:
    """The decoded stream as a file object for pyops to read. Stage failures are
    raised when the block ends."""
    if not decoders:
        yield io.BufferedReader(IterReader(chunks), 1 << 20)
        return
    running = start(decoders, stdin=PIPE, stdout=PIPE)
    join = in_thread(lambda: running.feed(chunks))
    assert running.stdout is not None
    reader = io.BufferedReader(running.stdout, 1 << 20)  # type: ignore[type-var]
    try:
        yield reader
        # drain what the consumer left (e.g. tar padding) so decoders can finish
        while reader.read(1 << 20):
            pass
    except BaseException:
        running.kill()
        with contextlib.suppress(Exception):
            join()
        raise
    try:
        join()  # the feed's own verdict first: e.g. the checksum, once the last byte passed
    except BaseException:
        running.kill()
        raise
    running.finish()
