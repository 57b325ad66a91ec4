"""pyops.fsutil: atomic writes, private directories, and the temp-name shape that tells
a dead run's file from a live one. Real files, real processes."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_support import dead_pid, live_pid_fixture  # noqa: F401 - the live_pid fixture

from pyops.fsutil import (
    TEMP_MARK,
    fsync_dir,
    make_private_dir,
    temp_name,
    temp_owner_alive,
    write_atomic,
)


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- temp names


def test_temp_name_is_the_name_plus_our_pid(tmp_path: Path) -> None:
    path = tmp_path / "a.manifest.json"
    assert temp_name(path) == tmp_path / f"a.manifest.json{TEMP_MARK}{os.getpid()}"
    assert TEMP_MARK == ".tmp-"


def test_our_own_temp_files_are_alive(tmp_path: Path) -> None:
    assert temp_owner_alive(temp_name(tmp_path / "x.tar").name)
    assert temp_owner_alive(f"x.tar.tmp-{os.getpid()}")


def test_a_running_process_owns_its_temp_files(live_pid: int) -> None:
    assert temp_owner_alive(f"app.daily.20261123T020000Z.tar.zst.tmp-{live_pid}")
    assert temp_owner_alive("x.tmp-1")  # init: always running


def test_a_dead_process_owns_nothing() -> None:
    pid = dead_pid()
    assert not temp_owner_alive(f"app.daily.20261123T020000Z.tar.zst.tmp-{pid}")


@pytest.mark.parametrize("name", ["x.tar", "x.tmp-", "x.tmp-abc", "x.tmp-12.tar", "tmp-12"])
def test_names_that_are_not_temp_names_have_an_unknown_owner(name: str) -> None:
    # unknown owner: alive, i.e. the sweep leaves them alone
    assert temp_owner_alive(name)


def test_a_pid_no_process_can_have_is_dead() -> None:
    # A name anyone can make (a planted or damaged file): it must not crash the
    # leftover sweep, which every backup runs first. No process has a pid that does
    # not even fit the kernel's pid type.
    assert temp_owner_alive("x.tar.tmp-99999999999999999999") is False


# --------------------------------------------------------------------------- write_atomic


def test_write_atomic_leaves_a_0600_file_and_no_temp(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / "x.manifest.json"
    write_atomic(path, b'{"a": 1}\n')
    assert path.read_bytes() == b'{"a": 1}\n'
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == [path.name]


def test_write_atomic_replaces_the_old_file(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"old and longer than the new content")
    os.chmod(path, 0o644)
    old_inode = path.stat().st_ino
    write_atomic(path, b"new")
    assert path.stat().st_ino != old_inode  # renamed over, never rewritten in place
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["m.json"]


def test_write_atomic_of_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    write_atomic(path, b"")
    assert path.read_bytes() == b""


def test_a_reader_holding_the_old_file_keeps_the_old_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_atomic(path, b"first")
    with open(path, "rb") as reader:
        write_atomic(path, b"second")
        assert reader.read() == b"first"
    assert path.read_bytes() == b"second"


def test_write_atomic_replaces_a_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "m.json"
    path.symlink_to(victim)
    write_atomic(path, b"new")
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink()
    assert path.read_bytes() == b"new"


def test_write_atomic_does_not_follow_a_link_planted_at_its_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "m.json"
    temp_name(path).symlink_to(victim)
    with pytest.raises(OSError):
        write_atomic(path, b"evil")
    assert victim.read_bytes() == b"precious"
    assert not path.exists()


def test_write_atomic_into_a_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nowhere" / "m.json", b"x")
    assert os.listdir(tmp_path) == []


def test_fsync_dir_of_a_real_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


# --------------------------------------------------------------------------- make_private_dir


def test_make_private_dir_is_0700_at_every_level(tmp_path: Path, umask022: None) -> None:
    deep = make_private_dir(tmp_path / "a" / "b" / "c")
    assert deep == tmp_path / "a" / "b" / "c"
    for path in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert path.is_dir()
        assert mode(path) == 0o700, path
    assert make_private_dir(deep) == deep  # idempotent
    assert mode(deep) == 0o700


def test_make_private_dir_is_0700_even_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        deep = make_private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o700
    assert mode(deep) == 0o700


def test_make_private_dir_leaves_existing_directories_alone(tmp_path: Path, umask022: None) -> None:
    existing = tmp_path / "shared"
    existing.mkdir()
    os.chmod(existing, 0o755)  # noqa: S103 - a directory not ours
    make_private_dir(existing / "mine")
    assert mode(existing) == 0o755
    assert mode(existing / "mine") == 0o700


def test_make_private_dir_through_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OSError):
        make_private_dir(tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_bytes() == b"x"


def test_make_private_dir_over_a_dangling_symlink_fails(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        make_private_dir(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


def test_make_private_dir_over_an_existing_file_fails(tmp_path: Path) -> None:
    # `mkdir -p FILE` fails ("File exists"), and so does Path.mkdir(exist_ok=True):
    # a caller handed back a regular file as its private directory learns it later,
    # and less clearly.
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OSError):
        make_private_dir(tmp_path / "file")


def test_concurrent_creation_by_threads_is_not_an_error(tmp_path: Path, umask022: None) -> None:
    for round_ in range(30):
        deep = tmp_path / f"r{round_}" / "a" / "b" / "c" / "d"
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def make(
            deep: Path = deep,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                make_private_dir(deep)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        path = deep
        while path != tmp_path:
            assert path.is_dir()
            assert mode(path) == 0o700, path
            path = path.parent


def _make_in_child(deep: str, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    make_private_dir(Path(deep))


def test_concurrent_creation_by_processes_is_not_an_error(tmp_path: Path, umask022: None) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        deep = tmp_path / f"r{round_}" / "a" / "b" / "c"
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_make_in_child, args=(str(deep), start)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * 6
        assert deep.is_dir()
        assert mode(deep) == 0o700
