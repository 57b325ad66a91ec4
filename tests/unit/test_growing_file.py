"""GrowingFile: a reader following a file its writer is still writing. Threads meet on
Events with generous deadlines; nothing sleeps."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyops.artifact import ArtifactWriter
from pyops.growing import GrowingFile, WriterFailed

DEADLINE = 60


def sizes(n: int) -> Iterator[int]:
    while True:
        yield n


def written(path: Path, data: bytes) -> GrowingFile:
    path.write_bytes(data)
    growing = GrowingFile(path)
    growing.grew(len(data))
    return growing


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, [(0, 0)]),  # an empty file is one empty piece
        (5, [(0, 5)]),
        (10, [(0, 10)]),  # exactly one piece: no empty one after it
        (25, [(0, 10), (10, 10), (20, 5)]),
        (30, [(0, 10), (10, 10), (20, 10)]),
    ],
)
def test_ranges_of_a_complete_file(
    tmp_path: Path, total: int, expected: list[tuple[int, int]]
) -> None:
    growing = written(tmp_path / "f", b"x" * total)
    growing.finish(total, hashlib.sha256(b"x" * total).hexdigest())
    assert list(growing.ranges(sizes(10))) == expected
    growing.close()


def test_a_piece_is_yielded_only_once_written_whole(tmp_path: Path) -> None:
    growing = written(tmp_path / "f", b"a" * 15)
    pieces = growing.ranges(sizes(10))
    assert next(pieces) == (0, 10)  # written whole: at once
    got: list[tuple[int, int]] = []
    waiting = threading.Event()

    def reader() -> None:
        waiting.set()
        got.extend(pieces)

    thread = threading.Thread(target=reader)
    thread.start()
    assert waiting.wait(DEADLINE)
    growing.grew(19)  # the second piece is not whole yet
    assert got == []
    growing.finish(19, "0" * 64)  # complete: the rest is the last piece
    thread.join(DEADLINE)
    assert got == [(10, 9)]
    growing.close()


def test_the_reader_sees_the_writers_bytes_and_sha(tmp_path: Path) -> None:
    writer = ArtifactWriter(tmp_path / "artifact")
    growing = writer.follow()
    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.extend(growing.chunks()))
    thread.start()
    data = bytes(range(256)) * 10_000
    for i in range(0, len(data), 4096):
        writer.write(data[i : i + 4096])
    _size, digest = writer.commit()  # renamed into place: the reader's fd still reads it
    thread.join(DEADLINE)
    assert b"".join(out) == data
    assert growing.sha256 == digest == hashlib.sha256(data).hexdigest()
    growing.close()


def test_a_failed_writer_stops_the_reader(tmp_path: Path) -> None:
    writer = ArtifactWriter(tmp_path / "artifact")
    growing = writer.follow()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in growing.chunks():
                pass
        except WriterFailed as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    writer.write(b"some bytes")
    writer.abort()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert errors and "failed or was aborted" in str(errors[0])
    with pytest.raises(WriterFailed):
        growing.sha256  # noqa: B018 - the property raises
    growing.close()


def test_fail_after_finish_changes_nothing(tmp_path: Path) -> None:
    growing = written(tmp_path / "f", b"abc")
    growing.finish(3, "f" * 64)
    growing.fail("too late")
    assert growing.wait_for(10) == (3, True)
    assert growing.sha256 == "f" * 64
    growing.close()


def test_an_interrupted_run_stops_the_reader_even_after_finish(tmp_path: Path) -> None:
    growing = written(tmp_path / "f", b"abc")
    growing.finish(3, "f" * 64)
    growing.fail("the run was interrupted", even_if_finished=True)
    with pytest.raises(WriterFailed):
        growing.wait_for(10)
    with pytest.raises(WriterFailed):
        growing.sha256  # noqa: B018 - the property raises
    growing.close()
