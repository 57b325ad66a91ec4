"""The backup's snapshot session (pyops.sources.pgsnapshot) against the real cluster
and a real pg_dump, for what the CLI cannot time: a migration's ACCESS EXCLUSIVE
request arriving between pyops' table locks and pg_dump's, and a row count
canceled under pyops' feet. Each failure is explained by its cause, never by
pg_dump's "could not import the requested snapshot"."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from fixtures.pgcluster import PgCluster

from pyops import config
from pyops.config import PostgresTarget
from pyops.errors import StageFailed
from pyops.pgfacts import server
from pyops.sources import pgsnapshot

pytestmark = pytest.mark.postgres


def target(pg: PgCluster, db: str, wait: float = 1) -> PostgresTarget:
    cfg = config.parse(
        {
            "targets": [
                {"name": "app", "type": "postgres", "dsn": pg.dsn(db), "lock_wait_seconds": wait}
            ]
        }
    )
    t = cfg.targets[0]
    assert isinstance(t, PostgresTarget)
    return t


@pytest.fixture
def snap(pg: PgCluster, pg_db: str) -> Iterator[pgsnapshot.Snapshot]:
    pg.psql(
        "CREATE TABLE orders (id int PRIMARY KEY);"
        "INSERT INTO orders SELECT generate_series(1, 1000);"
        "CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), 8) AS payload"
        " FROM generate_series(1, 400000) g;",
        dbname=pg_db,
    )
    opened = pgsnapshot.open_snapshot(target(pg, pg_db), lambda conn: None)
    try:
        yield opened
    finally:
        opened.close()


def test_a_migration_queued_between_our_locks_and_pg_dumps_is_named(
    pg: PgCluster, pg_db: str, snap: pgsnapshot.Snapshot
) -> None:
    migration = pg.connect(pg_db, autocommit=False)
    migration_pid = migration.info.backend_pid
    queued = threading.Thread(
        target=lambda: migration.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"),
        daemon=True,
    )
    queued.start()
    try:
        with pg.connect(pg_db) as watcher:
            deadline = time.monotonic() + 10
            while watcher.execute(
                "SELECT cardinality(pg_blocking_pids(%s)) > 0", (migration_pid,)
            ).fetchone() != (True,):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc = subprocess.run(
            [
                str(pg.bindir / "pg_dump"),
                "--no-password",
                "--format=c",
                f"--snapshot={snap.id}",
                "--lock-wait-timeout=1000",
                f"--dbname={pg.dsn(pg_db)}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode != 0, "pg_dump should have given up on the queued lock"
        failure = StageFailed("pg_dump", proc.returncode, proc.stderr.strip())
        explained = snap.explain(failure)
    finally:
        snap.close()  # our locks go: the migration gets its lock
        queued.join(10)
        migration.rollback()
        migration.close()
    assert isinstance(explained, pgsnapshot.SnapshotFailed), explained
    text = str(explained)
    assert "table public.orders is locked by another session" in text, text
    assert f"pid {migration_pid} (postgres" in text, text
    assert "waits for an ACCESS EXCLUSIVE lock on public.orders" in text, text
    assert "itself waiting for this backup's own session" in text, text
    assert f"end the queued statement: SELECT pg_terminate_backend({migration_pid});" in text
    assert "could not import" not in text


def test_a_count_canceled_by_another_session_is_the_cause_naming_the_table(
    pg: PgCluster, snap: pgsnapshot.Snapshot
) -> None:
    pid = snap.conn.info.backend_pid
    with pg.connect() as admin:
        for _ in range(5):  # a count that ends before the cancel lands is counted again
            snap.start_counting()
            deadline = time.monotonic() + 10
            while snap._thread is not None and snap._thread.is_alive():
                admin.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                    "WHERE pid = %s AND state = 'active' AND query LIKE 'SELECT count(*)%%'",
                    (pid,),
                )
                assert time.monotonic() < deadline, "the count never ended"
            if snap._error is not None:
                break
    assert snap._error is not None, "the count was never canceled"
    with pytest.raises(pgsnapshot.SnapshotFailed) as caught:
        snap.counts()
    text = str(caught.value)
    assert "pyops' snapshot session was canceled while reading table public." in text, text
    assert "pg_cancel_backend" in text
    # and pg_dump's echo of it is not what the backup reports
    echo = StageFailed("pg_dump", 1, "pg_dump: error: could not import the requested snapshot")
    assert snap.explain(echo) is not echo
    assert "canceled while reading table" in str(snap.explain(echo))


def test_a_session_terminated_under_pg_dump_is_reported_as_such(
    pg: PgCluster, snap: pgsnapshot.Snapshot
) -> None:
    with pg.connect() as admin:
        pid = snap.conn.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 30  # terminate returns before the backend is gone
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the snapshot session did not end"
            time.sleep(0.02)
    echo = StageFailed(
        "pg_dump",
        1,
        "pg_dump: error: query failed: ERROR:  could not import the requested snapshot",
    )
    explained = snap.explain(echo)
    assert isinstance(explained, pgsnapshot.SnapshotFailed), explained
    assert "pyops' snapshot session was disconnected" in str(explained), explained


def test_a_role_level_statement_timeout_does_not_reach_the_session(
    pg: PgCluster, pg_db: str
) -> None:
    pg.execute(f"ALTER DATABASE {pg_db} SET statement_timeout = '1ms'")
    pg.execute(f"ALTER DATABASE {pg_db} SET idle_in_transaction_session_timeout = '1ms'")
    snap = pgsnapshot.open_snapshot(target(pg, pg_db), lambda conn: None)
    try:
        settings = dict(
            snap.conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('statement_timeout', 'idle_in_transaction_session_timeout', 'lock_timeout')"
            ).fetchall()
        )
        assert settings == {
            "statement_timeout": "0",
            "idle_in_transaction_session_timeout": "0",
            "lock_timeout": "1000",
        }
        time.sleep(0.1)  # idle in its transaction, holding the snapshot: still alive
        assert snap.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        snap.close()
    # the database's own settings are untouched (read from the catalog: a session of
    # that database would have 1 ms for this very statement, a race on a loaded machine)
    with pg.connect() as admin:
        (config,) = admin.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
            (pg_db,),
        ).fetchone() or (None,)
    assert sorted(config) == ["idle_in_transaction_session_timeout=1ms", "statement_timeout=1ms"]


def test_the_backups_count_reads_a_vacuumed_table_through_its_index_and_stays_exact(
    pg: PgCluster, pg_db: str
) -> None:
    pg.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, body text);"
        "INSERT INTO events SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g;"
        "CREATE TABLE heap_only AS SELECT g AS id FROM generate_series(1, 60000) g;"
        "CREATE TABLE fresh (id int PRIMARY KEY);"  # never vacuumed: no visibility map
        "INSERT INTO fresh SELECT generate_series(1, 60000);"
        "ANALYZE fresh;",
        dbname=pg_db,
    )
    # the test cluster commits asynchronously: VACUUM marks a page all-visible only once
    # the WAL writer has flushed the inserting commit, so vacuum until it has
    deadline = time.monotonic() + 30
    while True:
        pg.psql("VACUUM ANALYZE events; VACUUM ANALYZE heap_only", dbname=pg_db)
        done = pg.psql(
            "SELECT bool_and(relallvisible = relpages) FROM pg_class"
            " WHERE relname IN ('events', 'heap_only')",
            dbname=pg_db,
        )
        if done.strip() == "t":
            break
        assert time.monotonic() < deadline, "VACUUM never marked the tables all-visible"
        time.sleep(0.1)
    # rows deleted after the VACUUM: the statistics still say all-visible, the count
    # must not believe them
    pg.psql("DELETE FROM events WHERE id % 7 = 0", dbname=pg_db)
    with pg.connect(pg_db, autocommit=False) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        names = [("public", "events"), ("public", "heap_only"), ("public", "fresh")]
        counts = server.count_rows(conn, names, cheap=True)
        scans = {
            name: (seq, idx)
            for name, seq, idx in conn.execute(
                "SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables"
            ).fetchall()
        }
        assert conn.execute("SHOW enable_seqscan").fetchone() == ("on",)  # put back
    assert counts == {
        "public.events": 60000 - 60000 // 7,
        "public.heap_only": 60000,
        "public.fresh": 60000,
    }
    assert scans["events"] == (0, 1)  # its primary key, not the heap
    assert scans["heap_only"][0] == 1  # no index: the heap
    assert scans["fresh"][0] == 1  # no visibility map: an index scan would visit the heap
