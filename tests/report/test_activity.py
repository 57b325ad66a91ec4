"""Blocking and long-running sessions: real connections that hold locks, wait for
them and sleep; the recommended cancel/terminate ends them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import ReportDb, advice_for, recommendations

pytestmark = pytest.mark.postgres


def _wait_for(what: str, probe: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _background(conn: psycopg.Connection[Any], query: str) -> tuple[threading.Thread, list[Any]]:
    """Run `query` on `conn` in a thread; the list receives its exception, if any."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            conn.execute(query)  # type: ignore[arg-type]
            outcome.append("done")
        except psycopg.Error as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def _activity(db: ReportDb, pid: int) -> tuple[str | None, str | None, float]:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT state, wait_event_type, extract(epoch FROM now() - query_start)::float8"
            " FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        ).fetchone()
    return (row[0], row[1], float(row[2] or 0)) if row else (None, None, 0.0)


def test_blocking_pair_then_blocker_terminated(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int)",
        "INSERT INTO accounts VALUES (1, 100)",
    )
    holder = db.connect(autocommit=False)
    waiter = db.connect()
    thread: threading.Thread | None = None
    try:
        holder.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        holder_pid, waiter_pid = holder.info.backend_pid, waiter.info.backend_pid
        thread, outcome = _background(
            waiter, "UPDATE accounts SET balance = balance - 1 WHERE id = 1"
        )
        _wait_for("the waiter to queue", lambda: _activity(db, waiter_pid)[1] == "Lock")

        doc = db.report("blocking", "recommendations")
        pairs = [(p["blocked_pid"], p["blocking_pid"]) for p in doc["blocking"]["pairs"]]
        assert pairs == [(waiter_pid, holder_pid)]
        pair = doc["blocking"]["pairs"][0]
        assert pair["blocking_state"] == "idle in transaction"
        assert pair["blocked_query"].startswith("UPDATE accounts SET balance = balance - 1")
        advice = advice_for(doc, "blocking", str(holder_pid))
        assert advice["severity"] == "warning"
        # idle in a transaction: nothing to cancel, the session must end
        assert advice["sql"] == f"SELECT pg_terminate_backend({holder_pid});"

        db.sql(advice["sql"])
        thread.join(15)
        assert outcome == ["done"]
        after = db.report("blocking", "recommendations")
        assert after["blocking"]["pairs"] == []
        assert recommendations(after, "blocking") == []
    finally:
        for conn in (holder, waiter):
            conn.close()
        if thread:
            thread.join(15)


def test_long_running_query_then_cancelled(db: ReportDb) -> None:
    sleeper = db.connect()
    pid = sleeper.info.backend_pid
    thread, outcome = _background(sleeper, "SELECT pg_sleep(30)")
    try:
        _wait_for(
            "pg_sleep to run for a second",
            lambda: _activity(db, pid)[0] == "active" and _activity(db, pid)[2] >= 1.2,
        )
        default = db.report("long-running")
        assert pid not in [s["pid"] for s in default["long-running"]["sessions"]]  # 60 s

        doc = db.report("long-running", "recommendations", args=("--long-running-seconds", "1"))
        (session,) = [s for s in doc["long-running"]["sessions"] if s["pid"] == pid]
        assert session["state"] == "active"
        assert session["query"] == "SELECT pg_sleep(30)"
        assert 1 <= session["running_s"] < 30
        assert doc["long-running"]["facts"]["threshold_seconds"] == 1.0
        advice = advice_for(doc, "long-running", str(pid))
        assert advice["sql"] == f"SELECT pg_cancel_backend({pid});"

        db.sql(advice["sql"])
        thread.join(15)
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
        after = db.report("long-running", args=("--long-running-seconds", "1"))
        assert pid not in [s["pid"] for s in after["long-running"]["sessions"]]
    finally:
        sleeper.cancel_safe()
        thread.join(15)
        sleeper.close()
