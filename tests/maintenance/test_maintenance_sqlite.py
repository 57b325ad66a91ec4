"""`pyops maintenance` on real SQLite files."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

from conftest import MakeConfig, maintain, one, sqlite_target, steps
from fixtures.cli import run_pyops

RULE = """
[[maintenance.cleanup]]
target = "app-sqlite"
table = "django_session"
where = "expire_date < '2026-01-01'"
batch_size = 7

[[maintenance.cleanup]]
target = "app-sqlite"
table = "Event Log"
where = "level = 'debug'"
batch_size = 4
"""


def make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE django_session (session_key TEXT PRIMARY KEY, expire_date TEXT) WITHOUT ROWID;
        CREATE TABLE "Event Log" (level TEXT, message TEXT);
        CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
        CREATE INDEX blobs_data ON blobs (length(data));
        """
    )
    conn.executemany(
        "INSERT INTO django_session VALUES (?, ?)",
        [(f"old{i}", "2025-06-01") for i in range(30)]
        + [(f"new{i}", "2027-01-01") for i in range(9)],
    )
    conn.executemany(
        'INSERT INTO "Event Log" VALUES (?, ?)',
        [("debug", f"m{i}") for i in range(10)] + [("error", f"e{i}") for i in range(3)],
    )
    conn.executemany("INSERT INTO blobs (data) VALUES (?)", [(b"x" * 4000,) for _ in range(300)])
    conn.commit()
    conn.execute("DELETE FROM blobs WHERE id > 20")  # ~1 MiB of free pages
    conn.commit()
    conn.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_operations(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "app.sqlite3"
    make_db(db)
    size_before = db.stat().st_size
    config = make_config(sqlite_target(db) + RULE)
    proc, doc = maintain(config, "--operation", "vacuum,analyze,optimize,integrity,cleanup,stats")
    assert proc.returncode == 0, proc.stderr
    assert doc["summary"]["failed"] == 0 and doc["summary"]["timeout"] == 0

    # integrity runs first, then cleanup, then vacuum reclaims what the deletes freed
    order = list(dict.fromkeys(s["operation"] for s in doc["steps"]))
    assert order == ["integrity", "cleanup", "vacuum", "analyze", "optimize", "stats"]
    assert [s["status"] for s in steps(doc, "integrity")] == ["ok", "ok"]

    sessions = one(doc, "cleanup", "django_session")
    assert sessions["details"]["rows_deleted"] == 30 and sessions["details"]["batches"] == 5
    assert sessions["details"]["key"] == ["session_key"]  # WITHOUT ROWID: the primary key
    events = one(doc, "cleanup", "Event Log")
    assert events["details"]["rows_deleted"] == 10 and events["details"]["batches"] == 3
    assert events["details"]["key"] == ["rowid"]

    vacuum = one(doc, "vacuum", "database")
    assert vacuum["details"]["reclaimed_bytes"] > 500_000
    assert db.stat().st_size < size_before - 500_000
    assert one(doc, "analyze", "database")["sql"] == ["ANALYZE;"]
    assert one(doc, "optimize", "database")["sql"] == ["PRAGMA optimize;"]

    stats = {s["object"]: s["details"] for s in steps(doc, "stats")}
    assert stats["database"]["file_bytes"] == db.stat().st_size
    assert stats["blobs"]["rows"] == 20 and stats["blobs"]["bytes"] > 80_000
    assert stats["django_session"]["rows"] == 9

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM django_session").fetchone()[0] == 9
        assert (
            conn.execute(
                "SELECT count(*) FROM django_session WHERE expire_date < '2026-01-01'"
            ).fetchone()[0]
            == 0
        )
        assert conn.execute('SELECT group_concat(DISTINCT level) FROM "Event Log"').fetchone()[
            0
        ] == ("error")
        # ANALYZE wrote statistics
        assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0
    finally:
        conn.close()


def test_integrity_fails_on_a_corrupted_copy(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "app.sqlite3"
    make_db(db)
    broken = tmp_path / "broken.sqlite3"
    shutil.copy(db, broken)
    with broken.open("r+b") as f:  # scribble over the pages after the schema
        f.seek(4096 * 2)
        f.write(b"\xa5" * 4096 * 3)
    body = sqlite_target(db) + sqlite_target(broken, name="broken")
    config = make_config(body)

    proc, doc = maintain(config, "--operation", "integrity", "--operation", "vacuum")
    assert proc.returncode == 1
    bad = [s for s in steps(doc, "integrity") if s["target"] == "broken"]
    assert bad[0]["status"] == "failed" and bad[0]["details"]["corruption"]
    vacuum = [s for s in steps(doc, "vacuum") if s["target"] == "broken"]
    assert vacuum[0]["status"] == "skipped" and "corruption" in vacuum[0]["details"]["note"]
    good = [s for s in doc["steps"] if s["target"] == "app-sqlite"]
    assert {s["status"] for s in good} == {"ok"}

    proc = run_pyops(config, "maintenance", "--target", "app-sqlite", "--operation", "integrity")
    assert proc.returncode == 0, proc.stderr


def test_checkpoint_truncates_the_wal(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "wal.sqlite3"
    wal = Path(f"{db}-wal")
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("CREATE TABLE t (x BLOB)")
        writer.executemany("INSERT INTO t VALUES (?)", [(b"y" * 1000,) for _ in range(500)])
        writer.commit()
        assert wal.stat().st_size > 400_000  # the writer stays open, so the WAL stays
        proc, doc = maintain(make_config(sqlite_target(db)), "--operation", "checkpoint")
        assert proc.returncode == 0, proc.stderr
        step = one(doc, "checkpoint", "database")
        assert step["status"] == "ok"
        assert step["sql"] == ["PRAGMA wal_checkpoint(TRUNCATE);"]
        assert step["details"]["wal_bytes_before"] > 400_000
        assert step["details"]["wal_bytes_after"] == 0
        assert wal.stat().st_size == 0
        assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 500
    finally:
        writer.close()


def test_checkpoint_skips_a_database_without_wal(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "plain.sqlite3"
    sqlite3.connect(db).close()
    proc, doc = maintain(make_config(sqlite_target(db)), "--operation", "checkpoint")
    assert proc.returncode == 0
    step = one(doc, "checkpoint", "database")
    assert step["status"] == "skipped" and "journal_mode is delete" in step["details"]["note"]


def test_sqlite_dry_run_changes_nothing(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "app.sqlite3"
    make_db(db)
    before = sha256(db)
    config = make_config(sqlite_target(db) + RULE)
    proc = run_pyops(config, "maintenance", "--all", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    statements = [ln for ln in proc.stdout.splitlines() if not ln.startswith("--")]
    assert statements == [
        "PRAGMA busy_timeout = 5000;",
        "PRAGMA integrity_check;",
        "PRAGMA foreign_key_check;",
        'DELETE FROM "django_session" WHERE "session_key" IN (SELECT "session_key" FROM '
        "\"django_session\" WHERE (expire_date < '2026-01-01') LIMIT 7);",
        'DELETE FROM "Event Log" WHERE rowid IN (SELECT rowid FROM "Event Log" WHERE '
        "(level = 'debug') LIMIT 4);",
        "VACUUM;",
        "ANALYZE;",
        "PRAGMA optimize;",
    ]
    assert "-- skipped: app-sqlite checkpoint database: journal_mode is delete" in proc.stdout

    proc, doc = maintain(config, "--all", "--dry-run")
    assert one(doc, "cleanup", "django_session")["details"]["matching_rows"] == 30
    assert doc["sql"][-1] == "PRAGMA optimize;"
    assert sha256(db) == before
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-journal").exists()


def test_a_locked_sqlite_database_times_out(tmp_path: Path, make_config: MakeConfig) -> None:
    db = tmp_path / "busy.sqlite3"
    make_db(db)
    config = make_config(sqlite_target(db) + "\n[maintenance]\nlock_timeout_seconds = 1\n")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        proc, doc = maintain(config, "--operation", "vacuum,analyze")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 0, proc.stderr
    for op in ("vacuum", "analyze"):
        step = one(doc, op, "database")
        assert step["status"] == "timeout", step
        assert step["duration_s"] >= 0.9
    assert "timed out waiting for a lock" in proc.stderr
