"""End to end, issue 10 rows 3-5: a PostgreSQL backup that cannot be taken fails
within its time, and its message names the cause: the locked table and the pid
holding it, the table the role may not read, the connection limit that leaves no
room for pg_dump. A role's own statement_timeout cancels nothing of pyops'.

The installed `pyops` CLI against the throwaway cluster; locks are held by real
sessions opened here."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from e2e_support import Repo, compression, describe, pg_target
from fixtures.pgcluster import PgCluster
from psycopg import sql

from pyops.tools import pg as pgtools

pytestmark = pytest.mark.postgres

TARGET = "app-db"
WAIT = 2  # lock_wait_seconds in these tests


def body(dsn: str, *, fmt: str = "custom", jobs: int = 1, wait: float = WAIT) -> str:
    return (
        compression("zstd", 1)
        + pg_target(TARGET, dsn, fmt=fmt, jobs=jobs)
        + (f"lock_wait_seconds = {wait:g}\n")
    )


def failed_backup(repo: Repo) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `backup` expecting the one target to fail: (process, its error)."""
    proc = repo.run("backup", "--no-offsite", "--format", "json")
    assert proc.returncode == 1, describe(proc)
    (result,) = json.loads(proc.stdout)["backups"]
    assert result["ok"] is False, result
    error = str(result["error"])
    assert "unexpected error" not in proc.stderr, describe(proc)
    assert "could not import the requested snapshot" not in error, error
    assert repo.manifests() == [], "a failed backup left a manifest"
    assert not [p for p in repo.all_files() if ".pgdump" in p.name], repo.all_files()
    return proc, error


def sessions_gone(pg: PgCluster, where: str, params: tuple[Any, ...] = ()) -> None:
    """Wait (a backend exits a moment after its client closed) until no session of
    pg_stat_activity matches `where`; fail if one stays."""
    query = "SELECT pid, usename, application_name FROM pg_stat_activity WHERE " + where
    deadline = time.monotonic() + 10
    with pg.connect() as conn:
        while rows := conn.execute(query, params).fetchall():  # type: ignore[arg-type]
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)


def no_pyops_sessions(pg: PgCluster) -> None:
    """pyops leaves no session of its own behind (snapshot, diagnosis, pg_dump)."""
    sessions_gone(pg, "application_name LIKE 'pyops%%' OR application_name = 'pg_dump'")


@pytest.fixture
def role_db(pg: PgCluster, pg_role: tuple[str, str], src_db: str) -> Iterator[tuple[str, str]]:
    """(role, database): a non-superuser role owning three tables of a fresh database.
    `pg_role` comes first so the database is dropped before the role."""
    role, _ = pg_role
    pg.psql(
        f"""
        CREATE TABLE accounts (id serial PRIMARY KEY, name text);
        INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 300) g;
        CREATE TABLE big AS SELECT g AS id, md5(g::text) AS payload
            FROM generate_series(1, 300000) g;
        CREATE TABLE audit (id int, what text);
        INSERT INTO audit VALUES (1, 'x'), (2, 'y');
        ALTER TABLE accounts OWNER TO {role};
        ALTER TABLE big OWNER TO {role};
        ALTER TABLE audit OWNER TO {role};
        """,
        dbname=src_db,
    )
    yield role, src_db


def alter_role(pg: PgCluster, role: str, clause: str) -> None:
    pg.execute(sql.SQL("ALTER ROLE {} " + clause).format(sql.Identifier(role)))


# --- row 3: a table held ACCESS EXCLUSIVE ----------------------------------------------


def test_pg_dump_is_told_to_stop_waiting_for_locks() -> None:
    stage = pgtools.pg_dump(None, "dbname=app", "custom", env={}, lock_wait_ms=2000)
    assert "--lock-wait-timeout=2000" in stage.argv
    assert not any(
        a.startswith("--lock-wait-timeout")
        for a in pgtools.pg_dump(None, "dbname=app", "custom", env={}).argv
    )


def test_a_locked_table_fails_the_backup_in_lock_wait_seconds_naming_table_and_pid(
    pg: PgCluster, role_db: tuple[str, str], repo: Repo
) -> None:
    _, db = role_db
    repo.write(body(pg.dsn(db)))
    holder = pg.connect(db, autocommit=False)
    try:
        holder.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
        pid = holder.info.backend_pid
        t0 = time.monotonic()
        _, error = failed_backup(repo)
        elapsed = time.monotonic() - t0
        # pyops gave up; the other session still holds its lock, untouched
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        holder.rollback()
        holder.close()
    assert elapsed < WAIT + 30, elapsed
    assert "table public.audit is locked by another session" in error, error
    assert f"pid {pid} (postgres" in error and "holds an ACCESS EXCLUSIVE lock" in error, error
    assert "LOCK TABLE audit IN ACCESS EXCLUSIVE MODE" in error, error
    assert f"lock_wait_seconds = {WAIT}" in error, error
    assert f"SELECT pg_terminate_backend({pid});" in error, error
    no_pyops_sessions(pg)

    # the lock gone, the same config backs up
    out = repo.json("backup", "--no-offsite")
    assert out["backups"][0]["ok"] is True, out


def test_a_lock_queued_for_access_exclusive_is_named_with_the_session_it_waits_for(
    pg: PgCluster, role_db: tuple[str, str], repo: Repo
) -> None:
    """A migration's ALTER waiting behind a long reader makes every later reader wait
    too: the message names the waiter and the reader it waits for."""
    _, db = role_db
    repo.write(body(pg.dsn(db)))
    reader = pg.connect(db, autocommit=False)
    migration = pg.connect(db, autocommit=False)
    watcher = pg.connect(db)
    migration_pid, reader_pid = migration.info.backend_pid, reader.info.backend_pid
    queued = threading.Thread(
        target=lambda: migration.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"),
        daemon=True,
    )
    try:
        reader.execute("SELECT count(*) FROM accounts")
        queued.start()
        deadline = time.monotonic() + 10
        while watcher.execute(
            "SELECT cardinality(pg_blocking_pids(%s)) > 0", (migration_pid,)
        ).fetchone() != (True,):
            assert time.monotonic() < deadline, "the migration never queued"
            time.sleep(0.05)
        _, error = failed_backup(repo)
    finally:
        reader.rollback()  # the migration gets its lock now
        queued.join(10)
        migration.rollback()
        for conn in (reader, migration, watcher):
            conn.close()
    assert "table public.accounts is locked by another session" in error, error
    assert f"pid {migration_pid} (postgres" in error, error
    assert "waits for an ACCESS EXCLUSIVE lock on public.accounts" in error, error
    assert f"itself waiting for pid {reader_pid}" in error, error
    assert f"SELECT pg_terminate_backend({reader_pid});" in error, error
    no_pyops_sessions(pg)


# --- row 4: the role's own timeouts, a table the role may not read ------------------------


def test_a_role_with_statement_timeout_1ms_is_backed_up_with_exact_counts(
    pg: PgCluster, role_db: tuple[str, str], repo: Repo
) -> None:
    role, db = role_db
    alter_role(pg, role, "SET statement_timeout = '1ms'")
    alter_role(pg, role, "SET idle_in_transaction_session_timeout = '50ms'")
    dsn = pg.dsn(db, user=role)
    with psycopg.connect(dsn) as conn:  # the role's sessions really are limited
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM big a, big b WHERE a.id = b.id")
    repo.write(body(dsn))

    proc = repo.run("backup", "--no-offsite", "--format", "json")
    assert proc.returncode == 0, describe(proc)
    assert "unexpected error" not in proc.stderr
    (manifest,) = repo.manifests()
    assert manifest["content"]["tables"] == {
        "public.accounts": 300,
        "public.audit": 2,
        "public.big": 300000,
    }
    proc = repo.run("verify", "--latest", "--deep")
    assert proc.returncode == 0, describe(proc)


def test_a_table_the_role_may_not_read_is_named_as_the_cause(
    pg: PgCluster, role_db: tuple[str, str], repo: Repo
) -> None:
    role, db = role_db
    pg.psql("CREATE TABLE secrets (k text); INSERT INTO secrets VALUES ('x');", dbname=db)
    repo.write(body(pg.dsn(db, user=role)))

    proc, error = failed_backup(repo)
    assert "permission denied for table public.secrets" in error, error
    assert f"role {role} may not read it" in error, error
    assert f"GRANT SELECT ON public.secrets TO {role}" in error, error
    assert "permission denied for table public.secrets" in proc.stderr
    no_pyops_sessions(pg)

    pg.psql(f"GRANT SELECT ON secrets TO {role}", dbname=db)
    out = repo.json("backup", "--no-offsite")
    assert out["backups"][0]["ok"] is True, out


# --- row 5: CONNECTION LIMIT ------------------------------------------------------------


def test_connection_limit_1_says_a_backup_needs_two_connections(
    pg: PgCluster, role_db: tuple[str, str], repo: Repo
) -> None:
    role, db = role_db
    alter_role(pg, role, "CONNECTION LIMIT 1")
    dsn = pg.dsn(db, user=role)
    repo.write(body(dsn))

    _, error = failed_backup(repo)
    assert f"role {role} has CONNECTION LIMIT 1" in error, error
    assert "a backup needs 2 connections at once for a consistent snapshot" in error, error
    assert "pyops' snapshot session, which holds the snapshot, and pg_dump" in error, error
    assert f"ALTER ROLE {role} CONNECTION LIMIT 2;" in error, error
    no_pyops_sessions(pg)

    # the application holds the only connection: pyops cannot even start, and says why
    app = psycopg.connect(dsn)
    try:
        _, error = failed_backup(repo)
    finally:
        app.close()
    sessions_gone(pg, "usename = %s", (role,))
    assert f"role {role} has reached its CONNECTION LIMIT" in error, error
    assert "a backup needs 2 connections at once for a consistent snapshot" in error, error

    # two are enough for one pg_dump; a parallel directory dump needs its workers too
    alter_role(pg, role, "CONNECTION LIMIT 2")
    repo.write(body(dsn, fmt="directory", jobs=2))
    _, error = failed_backup(repo)
    assert "a backup needs 4 connections at once" in error, error
    assert f"ALTER ROLE {role} CONNECTION LIMIT 4;" in error, error
    repo.write(body(dsn))
    out = repo.json("backup", "--no-offsite")
    assert out["backups"][0]["ok"] is True, out
    no_pyops_sessions(pg)
