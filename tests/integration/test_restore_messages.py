"""Issue 10 rows 13 and 14: what a failed restore says, through the real CLI.

Row 14: `restore --latest` whose newest backup is damaged refuses, says the checksum
failed and names the newest good backup (checksums of the candidates are checked
before anything is chosen); a restore by id of a damaged backup says the same.

Row 13: a disk that fills during a restore names the path that filled and its file
system (a real 2 MB tmpfs), never "move the repository", never an empty path, and
leaves nothing behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.tmpfs import small_tmpfs
from integration_helpers import (
    Pyops,
    compression,
    files_target,
    make_sample_db,
    output,
    row_counts,
    sqlite_target,
)

TARGET = "app"


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def three_backups(pyops: Pyops) -> tuple[Path, list[str]]:
    """Three backups of one SQLite target (the database grows between them): ids
    oldest first."""
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=300)
    pyops.write(compression("zstd") + sqlite_target(TARGET, db))
    ids = []
    for n in range(3):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO audit(what) VALUES (?)", (f"round {n}",))
        conn.commit()
        conn.close()
        ids.append(pyops.backup(TARGET))
    return db, ids


# --- row 14: a damaged newest backup ------------------------------------------------------


def test_restore_latest_refuses_a_damaged_newest_backup_and_names_the_newest_good_one(
    pyops: Pyops,
) -> None:
    _, (_oldest, middle, newest) = three_backups(pyops)
    flip_byte(pyops.artifact(newest))
    into = pyops.root / "restored.sqlite3"

    proc = pyops.run("restore", "--latest", "--into", str(into), "--yes")

    assert proc.returncode == 1, output(proc)
    err = proc.stderr
    assert f"the newest backup {newest} failed its checksum" in err, output(proc)
    assert "sha256 mismatch" in err, output(proc)
    assert f"The newest good backup of {TARGET} is {middle}" in err, output(proc)
    assert f"pyops restore {middle}" in err, output(proc)
    # refused before the preview, the confirmation and anything written
    assert "destination:" not in err, output(proc)
    assert not into.exists()
    assert not list(into.parent.glob(".restored.sqlite3.pyops-restore-*"))
    assert not (pyops.repo / TARGET / "pre-restore").exists()

    # the advice works as given
    pyops.ok("restore", middle, "--into", str(into), "--yes")
    assert row_counts(into) == pyops.manifest(middle)["content"]["tables"]


def test_restore_latest_skips_every_damaged_candidate(pyops: Pyops) -> None:
    _, (oldest, middle, newest) = three_backups(pyops)
    art = pyops.artifact(newest)
    art.write_bytes(art.read_bytes()[:-100])  # cut short
    flip_byte(pyops.artifact(middle), 0.3)

    proc = pyops.run("restore", "--latest", "--into", str(pyops.root / "x.sqlite3"), "--yes")

    assert proc.returncode == 1, output(proc)
    assert f"the newest backup {newest} failed its checksum" in proc.stderr, output(proc)
    assert "truncated or replaced" in proc.stderr, output(proc)
    assert f"; {middle} failed too: pyops restore {oldest}" in proc.stderr, output(proc)
    assert f"pyops restore {oldest}" in proc.stderr, output(proc)


def test_restore_latest_with_no_good_backup_says_so(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=50)
    pyops.write(compression("zstd") + sqlite_target(TARGET, db))
    only = pyops.backup(TARGET)
    flip_byte(pyops.artifact(only))

    proc = pyops.run("restore", "--latest", "--yes")

    assert proc.returncode == 1, output(proc)
    assert f"the newest backup {only} failed its checksum" in proc.stderr, output(proc)
    assert f"There is no other backup of {TARGET}" in proc.stderr, output(proc)
    assert "pyops list --remote" in proc.stderr, output(proc)


def test_restore_latest_whose_newest_artifact_is_missing_names_the_newest_good(
    pyops: Pyops,
) -> None:
    _, (_oldest, middle, newest) = three_backups(pyops)
    pyops.artifact(newest).unlink()

    proc = pyops.run("restore", "--latest", "--into", str(pyops.root / "x.sqlite3"), "--yes")

    assert proc.returncode == 1, output(proc)
    assert f"the newest backup {newest} cannot be read:" in proc.stderr, output(proc)
    assert "is missing" in proc.stderr, output(proc)
    assert f"pyops restore {middle}" in proc.stderr, output(proc)


def test_restore_by_id_of_a_damaged_backup_says_the_checksum_failed(pyops: Pyops) -> None:
    """Found while streaming: zstd (or the integrity check) fails before the sha256 is
    compared, and the message still says what it is."""
    db, (_oldest, middle, newest) = three_backups(pyops)
    flip_byte(pyops.artifact(middle), 0.4)
    before = db.read_bytes()

    proc = pyops.run("restore", middle, "--yes")

    assert proc.returncode == 1, output(proc)
    assert f"backup {middle} failed its checksum" in proc.stderr, output(proc)
    assert f"The newest good backup of {TARGET} is {newest}" in proc.stderr, output(proc)
    assert db.read_bytes() == before, "the live database must be untouched"
    assert not list(db.parent.glob(".app.sqlite3.pyops-restore-*"))


def test_restore_by_id_of_a_truncated_files_backup(pyops: Pyops, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
    pyops.write(compression("zstd") + files_target(TARGET, [src]))
    good = pyops.backup(TARGET)
    (src / "new.txt").write_text("new")
    cut = pyops.backup(TARGET)
    art = pyops.artifact(cut)
    art.write_bytes(art.read_bytes()[: art.stat().st_size // 2])
    into = tmp_path / "into"

    proc = pyops.run("restore", cut, "--into", str(into), "--yes")

    assert proc.returncode == 1, output(proc)
    assert f"backup {cut} failed its checksum" in proc.stderr, output(proc)
    assert "truncated or replaced" in proc.stderr, output(proc)
    assert f"pyops restore {good}" in proc.stderr, output(proc)
    assert not into.exists(), "a refused restore --into leaves nothing"


# --- row 13: disk full during a restore --------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (root only), unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "2m", "0755") as mnt:
        yield mnt


def big_sqlite(path: Path, megabytes: float) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        rows = int(megabytes * 1024)
        conn.executemany(
            "INSERT INTO blobs(data) VALUES (?)", [(os.urandom(1000),) for _ in range(rows)]
        )
        conn.commit()
    finally:
        conn.close()


def assert_names_the_full_disk(proc: subprocess.CompletedProcess[str], where: Path) -> None:
    err = proc.stderr
    assert proc.returncode == 1, output(proc)
    assert "disk full restoring" in err, output(proc)
    assert f"no room to write {where}" in err, output(proc)
    assert "move the repository" not in err, output(proc)
    assert "::" not in err, output(proc)


def test_disk_full_restoring_sqlite_into_a_small_fs_names_the_path(
    pyops: Pyops, small_fs: Path
) -> None:
    db = pyops.root / "app.sqlite3"
    big_sqlite(db, 4)
    pyops.write(compression("zstd") + sqlite_target(TARGET, db))
    backup = pyops.backup(TARGET)
    into = small_fs / "restored.sqlite3"

    proc = pyops.run("restore", backup, "--into", str(into), "--yes")

    assert_names_the_full_disk(proc, small_fs / ".restored.sqlite3.pyops-restore-")
    assert f"(file system {small_fs})" in proc.stderr, output(proc)
    assert "restore --into a place with room for about 4.0 MiB" in proc.stderr, output(proc)
    assert list(small_fs.iterdir()) == [], "the partial file must be removed"


def test_disk_full_restoring_sqlite_in_place_leaves_the_live_file(
    pyops: Pyops, small_fs: Path
) -> None:
    db = small_fs / "app.sqlite3"
    big_sqlite(db, 1.2)
    pyops.write(compression("zstd") + sqlite_target(TARGET, db))
    backup = pyops.backup(TARGET)
    before = db.read_bytes()

    proc = pyops.run("restore", backup, "--yes", "--no-safety-backup")

    assert_names_the_full_disk(proc, small_fs / ".app.sqlite3.pyops-restore-")
    assert f"(file system {small_fs})" in proc.stderr, output(proc)
    assert db.read_bytes() == before
    assert [p.name for p in small_fs.iterdir()] == ["app.sqlite3"]


def test_disk_full_restoring_files_into_a_small_fs_names_the_path(
    pyops: Pyops, small_fs: Path, tmp_path: Path
) -> None:
    src = tmp_path / "media"
    src.mkdir()
    for i in range(6):
        (src / f"blob{i}.bin").write_bytes(os.urandom(600_000))
    pyops.write(compression("zstd") + files_target(TARGET, [src]))
    backup = pyops.backup(TARGET)
    into = small_fs / "restore"

    proc = pyops.run("restore", backup, "--into", str(into), "--yes")

    assert_names_the_full_disk(proc, into / str(src).lstrip("/"))
    assert f"(file system {small_fs})" in proc.stderr, output(proc)
    assert list(small_fs.iterdir()) == [], "what was restored so far must be removed"
