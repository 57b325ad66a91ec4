"""SQLite targets end to end: backup, verify, restore --into and in place."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from integration_helpers import (
    CommandFailed,
    Pyops,
    compression,
    integrity,
    make_sample_db,
    output,
    row_counts,
    sqlite_dump,
    sqlite_target,
    two_runs_in_one_second,
)

MAGIC = {
    "zstd": b"\x28\xb5\x2f\xfd",
    "gzip": b"\x1f\x8b",
    "none": b"SQLite format 3\x00",
}


@pytest.mark.parametrize(
    ("algorithm", "ext"),
    [("zstd", "sqlite3.zst"), ("gzip", "sqlite3.gz"), ("none", "sqlite3")],
)
def test_round_trip(pyops: Pyops, algorithm: str, ext: str) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=800)
    pyops.write(compression(algorithm) + sqlite_target("app", db))

    bid = pyops.backup("app")

    artifact = pyops.artifact(bid)
    assert artifact.name == f"{bid}.{ext}"
    assert artifact.read_bytes().startswith(MAGIC[algorithm])
    assert artifact.stat().st_mode & 0o777 == 0o600
    assert pyops.manifest_path(bid).stat().st_mode & 0o777 == 0o600
    manifest = pyops.manifest(bid)
    assert manifest["compression"]["algorithm"] == algorithm
    assert manifest["encryption"]["mode"] == "none"
    assert manifest["content"]["tables"] == row_counts(db)
    assert manifest["artifact"]["bytes"] == artifact.stat().st_size
    assert "(deep)" in pyops.ok("verify", "--deep", bid).stdout

    dest = pyops.root / "restored" / "copy.sqlite3"
    proc = pyops.ok("restore", bid, "--into", str(dest), "--yes")
    assert str(dest) in proc.stdout
    assert integrity(dest) == "ok"
    assert row_counts(dest) == row_counts(db)
    assert sqlite_dump(dest) == sqlite_dump(db)
    # nothing staged is left beside it, no safety backup for a restore into a new path
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.sqlite3"]
    assert not (pyops.repo / "app" / "pre-restore").exists()
    assert list((pyops.repo / ".pyops" / "scratch").iterdir()) == []


def test_wal_backup_while_a_writer_commits(pyops: Pyops) -> None:
    db = pyops.root / "live.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO events(payload) VALUES (?)", [("p" * 200,) for _ in range(20_000)]
    )
    conn.commit()
    conn.close()
    pyops.write(compression("zstd", 1) + sqlite_target("live", db))

    stop = threading.Event()
    guard = threading.Lock()
    committed = [20_000]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            w = sqlite3.connect(db, timeout=30, isolation_level=None)
            try:
                while not stop.is_set():
                    w.execute("BEGIN IMMEDIATE")
                    w.execute("INSERT INTO events(payload) VALUES (?)", ("w" * 200,))
                    w.execute("COMMIT")
                    with guard:
                        committed[0] += 1
            finally:
                w.close()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while committed[0] < 20_200 and time.monotonic() < deadline:
            time.sleep(0.01)
        with guard:
            before = committed[0]
        bid = pyops.backup("live")
        with guard:
            after = committed[0]
    finally:
        stop.set()
        thread.join(30)
    assert not errors, f"the application's writer failed during the backup: {errors!r}"
    assert after > before, "the writer did not commit while the backup ran"

    manifest = pyops.manifest(bid)
    counted = manifest["content"]["tables"]["events"]
    assert before <= counted <= after

    dest = pyops.root / "restored.sqlite3"
    pyops.ok("restore", bid, "--into", str(dest), "--yes")
    assert integrity(dest) == "ok"
    check = sqlite3.connect(dest)
    try:
        total, highest = check.execute("SELECT count(*), max(id) FROM events").fetchone()
        early = check.execute("SELECT count(*) FROM events WHERE id <= ?", (before,)).fetchone()
    finally:
        check.close()
    assert early[0] == before, "rows committed before the backup started are missing"
    assert total == counted == highest, "the snapshot is not one consistent state"
    assert integrity(db) == "ok"


KILL_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("BEGIN")
conn.executemany("INSERT INTO users(name) VALUES (?)", [("after backup",)] * 123)
conn.execute("DELETE FROM audit")
conn.execute("COMMIT")
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_after_writing(db: Path) -> None:
    """An application that committed to the WAL and died: -wal and -shm stay behind."""
    proc = subprocess.run([sys.executable, "-c", KILL_WRITER, str(db)], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{db}-wal").stat().st_size > 0
    assert Path(f"{db}-shm").exists()


def test_in_place_restore_moves_the_live_file_and_its_wal_aside(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=300, wal=True)
    pyops.write(compression("zstd") + sqlite_target("app", db))
    bid = pyops.backup("app")
    backed_up = sqlite_dump(db)

    crash_after_writing(db)
    live_counts = row_counts(db)  # read through the stale WAL
    assert live_counts["users"] == 423 and live_counts["audit"] == 0
    old_main = db.read_bytes()
    old_wal = Path(f"{db}-wal").read_bytes()

    proc = pyops.run("restore", bid, "--yes")
    assert proc.returncode == 0, output(proc)
    assert "previous kept as" in proc.stdout

    # the live WAL of the old database must not be replayed into the restored file
    assert not Path(f"{db}-wal").exists()
    assert not Path(f"{db}-shm").exists()
    assert integrity(db) == "ok"
    assert sqlite_dump(db) == backed_up

    kept = sorted(p.name for p in pyops.root.glob("app.sqlite3.pre-restore-*"))
    assert len(kept) == 3, kept
    main_aside = pyops.root / kept[0]
    assert kept[1:] == [f"{main_aside.name}-shm", f"{main_aside.name}-wal"]
    assert main_aside.read_bytes() == old_main
    assert Path(f"{main_aside}-wal").read_bytes() == old_wal
    assert row_counts(main_aside) == live_counts  # old state complete with its WAL

    safety = pyops.listed("--tier", "pre-restore")
    assert len(safety) == 1 and safety[0]["target"] == "app"
    assert pyops.manifest(safety[0]["id"])["content"]["tables"] == live_counts
    pyops.ok("verify", "--deep", safety[0]["id"])


def test_in_place_restore_of_a_wal_database_leaves_no_staging_files(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=30, wal=True)
    pyops.write(compression("zstd") + sqlite_target("app", db))
    bid = pyops.backup("app")

    pyops.ok("restore", bid, "--yes", "--no-safety-backup")

    staged = sorted(p.name for p in pyops.root.glob(".app.sqlite3.pyops-restore-*"))
    assert staged == []


def test_in_place_restore_keeps_the_live_files_mode_and_owner(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=30)
    pyops.write(compression("zstd") + sqlite_target("app", db))
    bid = pyops.backup("app")
    db.chmod(0o664)
    if os.geteuid() == 0:  # the application's user, as on a real host
        os.chown(db, 4321, 4321)
    before = os.stat(db)

    pyops.ok("restore", bid, "--yes", "--no-safety-backup")

    after = os.stat(db)
    assert after.st_ino != before.st_ino  # really replaced
    assert (oct(after.st_mode & 0o7777), after.st_uid, after.st_gid) == (
        oct(before.st_mode & 0o7777),
        before.st_uid,
        before.st_gid,
    )


def test_restore_into_an_existing_path_is_refused(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=50)
    pyops.write(compression("gzip") + sqlite_target("app", db))
    bid = pyops.backup("app")
    existing = pyops.root / "precious.sqlite3"
    existing.write_bytes(b"not yours to overwrite\n")
    before = os.stat(existing)

    proc = pyops.run("restore", bid, "--into", str(existing), "--yes")

    assert proc.returncode == 1, output(proc)
    assert str(existing) in proc.stderr
    assert existing.read_bytes() == b"not yours to overwrite\n"
    assert os.stat(existing).st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in pyops.root.iterdir()) == [
        "app.sqlite3",
        "precious.sqlite3",
        "pyops.toml",
        "repo",
    ]
    assert not (pyops.repo / "app" / "pre-restore").exists()


def _kept_stamp(proc: subprocess.CompletedProcess[str]) -> str:
    """The stamp in "previous kept as NAME.pre-restore-STAMP[...]"."""
    match = re.search(r"previous kept as \S+\.pre-restore-(\d{8}T\d{6}Z)", proc.stdout)
    if not match:
        raise CommandFailed(output(proc))
    return match.group(1)


def test_two_quick_in_place_restores_keep_both_previous_files(pyops: Pyops) -> None:
    """Two restores within one second (no safety backup, which would otherwise push
    the second one into the next second) must not overwrite the first kept copy."""
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=20)
    pyops.write(compression("none") + sqlite_target("app", db))
    bid = pyops.backup("app")
    for attempt in range(3):
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("INSERT INTO users(name) VALUES (?)", (f"live only {attempt}",))
        conn.close()
        live = db.read_bytes()

        runs = two_runs_in_one_second(pyops, "restore", bid, "--yes", "--no-safety-backup")
        for run in runs:
            if run.returncode != 0:
                raise CommandFailed(output(run))
        if _kept_stamp(runs[0]) == _kept_stamp(runs[1]):
            break
    else:
        pytest.skip("could not get two restores into the same second")

    kept = [p.read_bytes() for p in pyops.root.glob("app.sqlite3.pre-restore-*")]
    assert live in kept, (
        "the live file the first restore moved aside was overwritten by the second "
        f"restore: {output(runs[0])}\n{output(runs[1])}"
    )
