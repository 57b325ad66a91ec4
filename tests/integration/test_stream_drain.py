"""Issue 10 row 1, the mechanism: a consuming tool that stops reading before the end of
a valid stream (pg_restore and a tar archive) is not a failure; what it leaves is
drained, every input chunk is still read (so the checksum covers the artifact), and
a real failure is still reported, with nothing left running. Real processes
(cat, head, zstd, sh), run through pyops' own pipeline code."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyops.errors import StageFailed
from pyops.execute import Stage
from pyops.stream import into_tool

MB = 1 << 20


class Counted:
    """Chunks of random bytes, counting how many were taken."""

    def __init__(self, megabytes: int) -> None:
        self.total = megabytes * MB
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        block = os.urandom(MB)
        for _ in range(self.total // MB):
            self.taken += MB
            yield block


def stage(name: str, *argv: str) -> Stage:
    return Stage(name, argv)


HEAD = stage("head", "head", "-c", "1000")


def test_a_consumer_that_stops_early_but_succeeds_is_not_a_failure() -> None:
    chunks = Counted(32)
    for _ in range(5):
        chunks.taken = 0
        into_tool(chunks, [stage("cat", "cat"), HEAD])
        assert chunks.taken == chunks.total, "every chunk must still be read"


def test_without_decoders_every_chunk_is_still_read() -> None:
    chunks = Counted(32)
    into_tool(chunks, [HEAD])
    assert chunks.taken == chunks.total


def test_zstd_is_drained_to_its_end_and_checks_its_frame() -> None:
    raw = os.urandom(8 * MB)
    packed = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    into_tool([packed], [stage("zstd -d", "zstd", "-q", "-d", "-c"), HEAD])
    # cut short: zstd, drained to the end, says so although the consumer succeeded
    with pytest.raises(StageFailed) as caught:
        into_tool([packed[:-100]], [stage("zstd -d", "zstd", "-q", "-d", "-c"), HEAD])
    assert caught.value.stage == "zstd -d"


def test_a_failing_consumer_is_the_reported_cause_and_stops_the_feed() -> None:
    chunks = Counted(256)
    consumer = stage("picky", "sh", "-c", "head -c 1000 >/dev/null; exit 3")
    with pytest.raises(StageFailed) as caught:
        into_tool(chunks, [stage("cat", "cat"), consumer])
    assert caught.value.stage == "picky" and caught.value.returncode == 3
    assert chunks.taken < chunks.total, "no point reading on after a real failure"


def test_a_failed_decoder_stops_a_consumer_that_would_never_end() -> None:
    """pg_restore spins forever on a cut tar archive: a consumer must not be waited
    for once a stage before it has failed."""
    consumer = stage("stuck", "sh", "-c", "cat >/dev/null; exec sleep 600")
    started = time.monotonic()
    with pytest.raises(StageFailed) as caught:
        into_tool([b"this is not zstd" * 1000], [stage("zstd -d", "zstd", "-q", "-d"), consumer])
    assert caught.value.stage == "zstd -d"
    assert time.monotonic() - started < 20
