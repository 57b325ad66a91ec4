"""The PostgreSQL checks against the throwaway cluster: real sessions that sleep,
block each other and deadlock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from fixtures.pgcluster import PgCluster
from health_support import Env, one, q, refused_port

pytestmark = pytest.mark.postgres


def _target(pg: PgCluster, db: str, name: str = "app") -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "postgres"\ndsn = {q(pg.dsn(db))}\n'


def _wait_for(what: str, probe: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def _in_thread(fn: Callable[[], Any]) -> Iterator[list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(30)


def test_database_ok_and_dead_port_critical(env: Env, pg: PgCluster, pg_db: str) -> None:
    env.write(_target(pg, pg_db))
    code, out, _ = env.pyops("health", "--check", "database")
    assert code == 0, out
    assert out.startswith("OK        database  app: PostgreSQL 15")
    with refused_port() as port:
        dead = f"host=127.0.0.1 port={port} dbname=app user=postgres"
        env.write(
            _target(pg, pg_db) + f'[[targets]]\nname = "gone"\ntype = "postgres"\ndsn = {q(dead)}\n'
        )
        result = one(env.config, "database")
        assert result.status == "critical"
        assert result.message.startswith("target gone: cannot reach PostgreSQL at postgres@127")
        assert "; app: PostgreSQL 15" in result.message
        assert result.metrics["gone.up"] == 0 and result.metrics["app.up"] == 1
        # the other database checks cannot know: unknown for that target, pointing at database
        connections = one(env.config, "connections")
        assert connections.status == "unknown"
        assert connections.message.startswith("gone: cannot connect (see database)")
        code, _, _ = env.pyops("health", "--check", "database")
        assert code == 2


def test_connections_and_wraparound(env: Env, pg: PgCluster, pg_db: str) -> None:
    env.write(_target(pg, pg_db))
    result = one(env.config, "connections")
    assert result.status == "ok" and result.metrics["app.used"] >= 1
    wrap = one(env.config, "wraparound")
    assert wrap.status == "ok" and wrap.metrics["app.xid_age"] > 0
    env.write(
        _target(pg, pg_db) + "[health]\nconnections_warn_percent = 0.5\n"
        "wraparound_warn_percent = 0.00000001\n"
    )
    result = one(env.config, "connections")
    assert result.status == "warning" and "connections in use" in result.message
    wrap = one(env.config, "wraparound")
    assert wrap.status == "warning" and "VACUUM (FREEZE)" in wrap.message


def test_long_running_sees_pg_sleep(env: Env, pg: PgCluster, pg_db: str) -> None:
    env.write(_target(pg, pg_db) + "[health]\nlong_running_seconds = 1\n")
    assert one(env.config, "long_running").status == "ok"
    sleeper = pg.connect(pg_db)
    pid = sleeper.info.backend_pid
    watcher = pg.connect(pg_db)

    def running_for() -> float:
        row = watcher.execute(
            "SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity "
            "WHERE pid = %s AND state = 'active'",
            (pid,),
        ).fetchone()
        return float(row[0]) if row else 0.0

    with _in_thread(lambda: sleeper.execute("SELECT pg_sleep(30)")) as errors:
        try:
            _wait_for("pg_sleep to run 1.2 s", lambda: running_for() > 1.2)
            result = one(env.config, "long_running")
        finally:
            watcher.execute("SELECT pg_cancel_backend(%s)", (pid,))
    assert result.status == "warning", result.message
    assert f"pid {pid}" in result.message and "pg_sleep(30)" in result.message
    assert result.metrics["app.count"] == 1
    assert isinstance(errors[0], psycopg.errors.QueryCanceled)
    sleeper.close()
    watcher.close()


def test_blocking_sees_a_blocked_session(env: Env, pg: PgCluster, pg_db: str) -> None:
    pg.execute("CREATE TABLE jobs (id int PRIMARY KEY, state text)", pg_db)
    pg.execute("INSERT INTO jobs VALUES (1, 'new')", pg_db)
    env.write(_target(pg, pg_db))
    assert one(env.config, "blocking").status == "ok"
    holder = pg.connect(pg_db, autocommit=False)
    holder.execute("UPDATE jobs SET state = 'held' WHERE id = 1")
    waiter = pg.connect(pg_db)
    watcher = pg.connect(pg_db)
    with _in_thread(lambda: waiter.execute("UPDATE jobs SET state = 'waiting' WHERE id = 1")):
        try:
            _wait_for(
                "a blocked session",
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE cardinality(pg_blocking_pids(pid)) > 0"
                    ).fetchone()
                    == (1,)
                ),
            )
            result = one(env.config, "blocking")
        finally:
            holder.rollback()
    assert result.status == "warning", result.message
    assert result.message.startswith(
        f"app: 1 blocked session(s); pid {waiter.info.backend_pid} waits"
    )
    assert f"on pid {holder.info.backend_pid}" in result.message
    assert result.metrics["app.blocked"] == 1
    for conn in (holder, waiter, watcher):
        conn.close()


def test_deadlocks_since_the_last_run(env: Env, pg: PgCluster, pg_db: str) -> None:
    pg.execute("CREATE TABLE acct (id int PRIMARY KEY, n int)", pg_db)
    pg.execute("INSERT INTO acct VALUES (1, 0), (2, 0)", pg_db)
    env.write(_target(pg, pg_db))
    first = one(env.config, "deadlocks")
    assert (first.status, first.message) == ("ok", "app: baseline recorded")
    second = one(env.config, "deadlocks")
    assert (second.status, second.message) == ("ok", "app: no deadlocks since the last run")

    a, b = pg.connect(pg_db, autocommit=False), pg.connect(pg_db, autocommit=False)
    a.execute("UPDATE acct SET n = n + 1 WHERE id = 1")
    b.execute("UPDATE acct SET n = n + 1 WHERE id = 2")
    with _in_thread(lambda: a.execute("UPDATE acct SET n = n + 1 WHERE id = 2")) as errors:
        time.sleep(0.2)
        try:
            b.execute("UPDATE acct SET n = n + 1 WHERE id = 1")
        except psycopg.errors.DeadlockDetected as exc:
            errors.append(exc)
        b.rollback()
    a.rollback()
    assert any(isinstance(e, psycopg.errors.DeadlockDetected) for e in errors)
    watcher = pg.connect(pg_db)

    def counted() -> bool:
        row = watcher.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return bool(row and row[0] >= 1)

    _wait_for("the deadlock to reach pg_stat_database", counted)
    result = one(env.config, "deadlocks")
    assert result.status == "warning", result.message
    assert "1 deadlock(s) and 0 recovery conflict(s) since the last health run" in result.message
    assert result.metrics["app.deadlocks_new"] == 1
    assert one(env.config, "deadlocks").status == "ok"  # reported once
    for conn in (a, b, watcher):
        conn.close()
