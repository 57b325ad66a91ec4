"""ArtifactWriter asks the kernel to write back as it goes, so commit's fsync is short:
the ranges asked for are contiguous, cover what was written but the tail, and never
wait (the flag is SYNC_FILE_RANGE_WRITE alone)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pyops import artifact
from pyops.artifact import ArtifactWriter


def test_writeback_ranges_follow_the_writes_and_commit_is_intact(tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    writer = ArtifactWriter(final)
    asked: list[tuple[int, int, int]] = []
    real = writer._writeback
    assert real is not None  # Linux: libc has sync_file_range

    def record(fd: int, start: int, length: int, flags: int) -> int:
        asked.append((start, length, flags))
        return real(fd, start, length, flags)

    writer._writeback = record
    chunk = os.urandom(3 << 20)
    for _ in range(10):
        writer.write(chunk)
    size, sha = writer.commit()
    assert size == 30 << 20
    assert (
        sha
        == hashlib.sha256(chunk * 10).hexdigest()
        == hashlib.sha256(final.read_bytes()).hexdigest()
    )
    assert [flags for _, _, flags in asked] == [artifact.SYNC_FILE_RANGE_WRITE] * len(asked)
    ends = 0
    for start, length, _ in asked:
        assert start == ends and length >= artifact.WRITEBACK
        ends = start + length
    assert size - ends < artifact.WRITEBACK  # only the tail is left to commit's fsync
    assert final.stat().st_mode & 0o777 == 0o600
