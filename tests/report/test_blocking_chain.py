"""Blocking chains of real sessions: one action per chain, aimed at its head (the
session that blocks and waits for nobody); applying it ends the whole chain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import ReportDb, recommendations

pytestmark = pytest.mark.postgres


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 20) -> None:
    """Poll the server's own view until `probe` holds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def state(db: ReportDb, pid: int) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT state, wait_event_type, query, pg_blocking_pids(pid)"
            " FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        ).fetchone()
    if row is None:
        return {"state": None, "wait": None, "query": None, "blockers": []}
    return {"state": row[0], "wait": row[1], "query": row[2], "blockers": sorted(row[3])}


class Session:
    """A real client session; `start` runs a statement in a thread."""

    def __init__(self, db: ReportDb, autocommit: bool = True) -> None:
        self.conn = db.connect(autocommit=autocommit)
        self.pid = self.conn.info.backend_pid
        self.outcome: list[Any] = []
        self.thread: threading.Thread | None = None

    def start(self, query: str) -> None:
        def body() -> None:
            try:
                self.conn.execute(query)
                self.outcome.append("done")
            except psycopg.Error as exc:
                self.outcome.append(exc)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def finish(self) -> list[Any]:
        if self.thread is not None:
            self.thread.join(20)
            assert not self.thread.is_alive(), f"pid {self.pid} still running"
        return self.outcome

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.conn.cancel_safe()
            self.thread.join(20)
        self.conn.close()


@contextmanager
def sessions(db: ReportDb) -> Iterator[Callable[..., Session]]:
    opened: list[Session] = []

    def open_session(autocommit: bool = True) -> Session:
        opened.append(Session(db, autocommit))
        return opened[-1]

    try:
        yield open_session
    finally:
        for s in reversed(opened):
            s.close()


def mentions(sql: str, pid: int) -> bool:
    return f"({pid})" in sql


def test_one_action_per_chain_aimed_at_its_head(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int)",
        "INSERT INTO accounts VALUES (1, 100), (2, 200)",
    )
    with sessions(db) as open_session:
        # chain 1: a transaction left idle holds row 1; three updates queue behind it,
        # the second and third behind the first (its tuple lock): C, D -> B -> A
        a = open_session(autocommit=False)
        a.conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        waiters = []
        for expected_blockers in ([a.pid], None, None):
            w = open_session()
            w.start("UPDATE accounts SET balance = balance - 1 WHERE id = 1")

            def queued(pid: int = w.pid) -> bool:
                return bool(state(db, pid)["wait"] == "Lock")

            wait_for(f"pid {w.pid} to queue", queued)
            if expected_blockers is not None:
                assert state(db, w.pid)["blockers"] == expected_blockers
            waiters.append(w)
        b, c, d = waiters
        wait_for("C and D to wait behind B", lambda: b.pid in state(db, d.pid)["blockers"])
        assert state(db, c.pid)["blockers"] == [b.pid]  # not A: blocking A alone is wrong
        # chain 2: a transaction still running a statement holds row 2: F -> E
        e = open_session(autocommit=False)
        e.conn.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        e.start("SELECT pg_sleep(600)")
        wait_for("E to run", lambda: state(db, e.pid)["query"] == "SELECT pg_sleep(600)")
        f = open_session()
        f.start("UPDATE accounts SET balance = 1 WHERE id = 2")
        wait_for("F to wait for E", lambda: state(db, f.pid)["blockers"] == [e.pid])
        waiting = {b.pid, c.pid, d.pid, f.pid}

        doc = db.report(
            "blocking",
            "long-running",
            "recommendations",
            args=("--long-running-seconds", "0.01"),
        )
        chains = sorted(doc["blocking"]["chains"], key=lambda ch: ch["head"])
        assert [(ch["head"], ch["waiting"]) for ch in chains] == sorted(
            [(str(a.pid), sorted([b.pid, c.pid, d.pid])), (str(e.pid), [f.pid])]
        )
        # one action per chain, at its head: terminate the idle transaction (nothing to
        # cancel), cancel the running statement
        actions = {r["object"]: r["sql"] for r in recommendations(doc, "blocking")}
        assert actions == {
            str(a.pid): f"SELECT pg_terminate_backend({a.pid});",
            str(e.pid): f"SELECT pg_cancel_backend({e.pid});",
        }
        everything = recommendations(doc)
        # never an action on a waiting session, in any section, and each head's once
        for pid in waiting:
            assert not [r for r in everything if mentions(r["sql"], pid)], pid
        for head in (a.pid, e.pid):
            assert len([r for r in everything if mentions(r["sql"], head)]) == 1
        # long-running lists them all (threshold 0.01 s) but leaves them to the chains
        listed = {s["pid"] for s in doc["long-running"]["sessions"]}
        assert waiting | {a.pid, e.pid} <= listed
        assert recommendations(doc, "long-running") == []
        notes = doc["long-running"]["notes"]
        for pid in waiting:
            assert any(n.startswith(f"pid {pid} waits in the blocking chain") for n in notes)

        # the one action for chain 1 frees B, then C and D
        db.sql(actions[str(a.pid)])
        for w in (b, c, d):
            assert w.finish() == ["done"]
        wait_for("A to be gone", lambda: state(db, a.pid)["state"] is None)
        after = db.report("blocking", "recommendations")
        assert [(ch["head"], ch["waiting"]) for ch in after["blocking"]["chains"]] == [
            (str(e.pid), [f.pid])
        ]
        assert [r["object"] for r in recommendations(after, "blocking")] == [str(e.pid)]

        # and the one for chain 2: the cancelled statement aborts E's transaction,
        # which releases row 2
        db.sql(actions[str(e.pid)])
        assert isinstance(e.finish()[0], psycopg.errors.QueryCanceled)
        assert f.finish() == ["done"]
        assert state(db, e.pid)["state"] == "idle in transaction (aborted)"
        gone = db.report("blocking", "recommendations")
        assert gone["blocking"]["pairs"] == [] and gone["blocking"]["chains"] == []
        assert recommendations(gone, "blocking") == []
        with db.connect() as conn:
            # A's change rolled back, then B, C, D each took 1; E's rolled back, F set 1
            rows = conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall()
            assert rows == [(1, 97), (2, 1)]


def test_a_head_blocking_through_two_locks_gets_one_action(db: ReportDb) -> None:
    """A waiter queued behind two holders of one table lock: one chain, two heads, one
    statement that ends both (ending one would leave it waiting)."""
    db.sql("CREATE TABLE ledger (id int PRIMARY KEY)", "INSERT INTO ledger VALUES (1)")
    with sessions(db) as open_session:
        holders = []
        for _ in range(2):
            h = open_session(autocommit=False)
            h.conn.execute("SELECT * FROM ledger FOR SHARE")  # ROW SHARE on the table
            holders.append(h)
        x = open_session(autocommit=False)
        x.start("LOCK TABLE ledger IN EXCLUSIVE MODE")
        pids = sorted(h.pid for h in holders)
        wait_for("the lock to queue behind both", lambda: state(db, x.pid)["blockers"] == pids)

        doc = db.report("blocking", "recommendations")
        (chain,) = doc["blocking"]["chains"]
        assert (chain["head"], chain["waiting"]) == (", ".join(map(str, pids)), [x.pid])
        (action,) = recommendations(doc, "blocking")
        assert action["object"] == ",".join(map(str, pids))
        assert action["sql"] == (
            f"SELECT pg_terminate_backend({pids[0]}), pg_terminate_backend({pids[1]});"
        )
        assert not mentions(action["sql"], x.pid)

        db.sql(action["sql"])
        assert x.finish() == ["done"]
        gone = db.report("blocking", "recommendations")
        assert gone["blocking"]["chains"] == [] and recommendations(gone, "blocking") == []
