"""Issue 15 rows 6 and 10: a table another session holds (or waits for) in ACCESS
EXCLUSIVE mode costs the report only what it would have to wait for, and names the
table; every statement the report suggests sets a lock_timeout and says what it
locks."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import ReportDb, flush, recommendations
from fixtures.pgcluster import PgClusterError

pytestmark = pytest.mark.postgres

INT_MAX = 2**31 - 1
# the sections whose advice is DDL
DDL_SECTIONS = ("integrity", "duplicate-indexes", "unused-indexes", "missing-indexes", "bloat")
DDL = re.compile(r"^(ALTER|CREATE|DROP|VACUUM|REINDEX)\b")


def _wait_for(what: str, probe: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_waiting(db: ReportDb, pid: int, table: str) -> bool:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_locks WHERE pid = %s AND relation = %s::regclass"
            " AND mode = 'AccessExclusiveLock' AND NOT granted",
            (pid, table),
        ).fetchone()
    return row is not None


@pytest.fixture
def held(db: ReportDb) -> Iterator[Callable[[], None]]:
    """public.locked held in ACCESS EXCLUSIVE mode, and public.queued waited for in
    that mode (behind a reader): the call releases both."""
    db.sql(
        "CREATE TABLE locked (id int PRIMARY KEY, v int, note text)"
        " WITH (autovacuum_enabled = off)",
        "INSERT INTO locked SELECT g, g, 'n' FROM generate_series(1, 3000) g",
        "DELETE FROM locked WHERE id > 1000",
        "CREATE INDEX locked_v ON locked (v)",
        "CREATE INDEX locked_v_again ON locked (v)",  # plain columns: still compared
        "CREATE INDEX locked_expr ON locked ((v + 1)) WHERE v > 0",
        "ALTER TABLE locked ADD CONSTRAINT locked_v_positive CHECK (v > 0) NOT VALID",
        "CREATE TABLE queued (id int PRIMARY KEY, v int)",
        "CREATE INDEX queued_v ON queued ((v * 2))",
    )
    holder = db.connect(autocommit=False)
    reader = db.connect(autocommit=False)
    waiter = db.connect(autocommit=False)
    holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
    reader.execute("SELECT * FROM queued").fetchall()
    outcome: list[Any] = []

    def wait() -> None:
        try:
            waiter.execute("LOCK TABLE queued IN ACCESS EXCLUSIVE MODE")
            outcome.append("granted")
        except psycopg.Error as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    _wait_for(
        "the queued ACCESS EXCLUSIVE request",
        lambda: _lock_waiting(db, waiter.info.backend_pid, "queued"),
    )
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        holder.rollback()
        reader.rollback()
        thread.join(timeout=15)
        assert outcome == ["granted"]
        waiter.rollback()

    try:
        yield release
    finally:
        release()
        for conn in (holder, reader, waiter):
            conn.close()


def test_locked_tables_cost_only_what_waits(db: ReportDb, held: Callable[[], None]) -> None:
    db.sql(
        "CREATE SEQUENCE free_ids",  # bigint, not owned, feeding an integer column
        "CREATE TABLE free (id integer DEFAULT nextval('free_ids'), a int, b int)",
        f"SELECT setval('free_ids', {int(INT_MAX * 0.97)})",
        "CREATE INDEX free_a ON free (a)",
        "CREATE INDEX free_a_again ON free (a)",
        "CREATE INDEX free_expr ON free ((a + b))",
        "CREATE INDEX free_expr_again ON free ((a + b))",
    )
    sections = (
        "size",
        "indexes",
        "unused-indexes",
        "duplicate-indexes",
        "missing-indexes",
        "bloat",
        "integrity",
        "recommendations",
    )
    started = time.monotonic()
    doc = db.report(*sections)  # exit 0: no section failed
    assert time.monotonic() - started < 3  # no lock_timeout (3 s) ran out
    assert all("error" not in doc[s] for s in sections)

    def named(section: str) -> bool:
        return any(
            "public.locked, public.queued" in n and "ACCESS EXCLUSIVE" in n
            for n in doc[section]["notes"]
        )

    # the size and definition of a locked table's indexes are left out, nothing else
    shown = {r["index"]: r for r in doc["indexes"]["indexes"]}
    for name in ("public.locked_v", "public.locked_expr", "public.queued_v"):
        assert shown[name]["definition"] is None and shown[name]["bytes"] is None
    assert shown["public.free_expr"]["definition"] == (
        "CREATE INDEX free_expr ON public.free USING btree (((a + b)))"
    )
    assert shown["public.free_a"]["bytes"] == 8192
    assert named("indexes")
    sizes = {t["table"]: t["total_bytes"] for t in doc["size"]["tables"]}
    assert sizes["public.locked"] is None and sizes["public.queued"] is None
    assert sizes["public.free"] is not None

    # duplicates of plain columns are still found on the locked table; expressions
    # are compared only where they could be read
    pairs = [(d["index"], d["duplicate_of"]) for d in doc["duplicate-indexes"]["indexes"]]
    assert pairs == [
        ("public.free_a_again", "public.free_a"),
        ("public.free_expr_again", "public.free_expr"),
        ("public.locked_v_again", "public.locked_v"),
    ]
    assert named("duplicate-indexes")

    # integrity keeps its critical sequence finding, and still lists what is locked
    integrity = doc["integrity"]
    assert [s["sequence"] for s in integrity["sequences"]] == ["public.free_ids"]
    critical = [r for r in recommendations(doc) if r["severity"] == "critical"]
    assert [r["object"] for r in critical] == ["public.free_ids"]
    assert [
        (c["constraint_name"], c["definition"]) for c in integrity["not_valid_constraints"]
    ] == [("locked_v_positive", None)]
    assert any("public.locked" in n for n in integrity["notes"])
    assert any("public.locked" in n for n in doc["bloat"]["notes"])

    held()
    after = db.report("indexes", "duplicate-indexes", "integrity", "bloat")
    shown = {r["index"]: r for r in after["indexes"]["indexes"]}
    assert shown["public.locked_expr"]["definition"] == (
        "CREATE INDEX locked_expr ON public.locked USING btree (((v + 1))) WHERE (v > 0)"
    )
    assert after["indexes"]["notes"] == [] and after["duplicate-indexes"]["notes"] == []
    assert after["integrity"]["not_valid_constraints"][0]["definition"] == (
        "CHECK ((v > 0)) NOT VALID"
    )
    assert [r["table"] for r in after["bloat"]["tables"]] == ["public.locked"]


def test_strong_lock_gives_up_after_the_printed_lock_timeout(db: ReportDb) -> None:
    """ADD PRIMARY KEY USING INDEX queued behind an idle transaction stops after the
    lock_timeout it sets, instead of blocking every reader of the table behind it."""
    db.sql(
        "CREATE TABLE keyless (code text NOT NULL, body text)",
        "CREATE UNIQUE INDEX keyless_code ON keyless (code)",
        "INSERT INTO keyless VALUES ('a', 'x')",
    )
    doc = db.report("integrity", "recommendations")
    (advice,) = [r for r in recommendations(doc, "integrity") if r["object"] == "public.keyless"]
    assert advice["sql"].splitlines()[0] == "SET lock_timeout = '5s';"
    assert 'ADD PRIMARY KEY USING INDEX "keyless_code";' in advice["sql"]
    idle = db.connect(autocommit=False)
    try:
        idle.execute("SELECT * FROM keyless").fetchall()  # then idle in transaction
        started = time.monotonic()
        with pytest.raises(PgClusterError, match="lock timeout"):
            db.pg.psql(advice["sql"], dbname=db.name)
        waited = time.monotonic() - started
        assert 5 <= waited < 30
    finally:
        idle.close()
    db.pg.psql(advice["sql"], dbname=db.name)
    after = db.report("integrity", "recommendations")
    assert "public.keyless" not in [r["object"] for r in recommendations(after, "integrity")]
    assert after["integrity"]["tables_without_primary_key"] == []


def _plant_everything(db: ReportDb) -> None:
    db.sql(
        # integrity
        "CREATE TABLE parents (id int PRIMARY KEY)",
        "CREATE TABLE children (id int PRIMARY KEY, parent_id int, qty int)",
        "INSERT INTO parents VALUES (1)",
        "INSERT INTO children VALUES (1, 1, 5)",
        "ALTER TABLE children ADD CONSTRAINT children_qty CHECK (qty > 0) NOT VALID",
        "ALTER TABLE children ADD CONSTRAINT children_fk FOREIGN KEY (parent_id)"
        " REFERENCES parents NOT VALID",
        "CREATE TABLE audit (id int NOT NULL, message text)",
        "CREATE TABLE tags (name text NOT NULL)",
        "CREATE UNIQUE INDEX tags_name ON tags (name)",
        "CREATE TABLE notes (body text)",
        "CREATE TABLE tickets (id smallserial PRIMARY KEY, title text)",
        "SELECT setval('tickets_id_seq', 32000)",
        "CREATE TABLE broken (id int PRIMARY KEY, v int)",
        "INSERT INTO broken VALUES (1, 0)",
        # indexes: duplicate, prefix, unused, a duplicate a foreign key uses
        "CREATE TABLE items (id int PRIMARY KEY, a int, b int, c int)",
        "CREATE INDEX items_a ON items (a)",
        "CREATE INDEX items_b ON items (b)",
        "CREATE INDEX items_b_c ON items (b, c)",
        "CREATE INDEX items_c ON items (c)",
        "CREATE TABLE owners (id int NOT NULL, CONSTRAINT owners_id_key UNIQUE (id))",
        "CREATE TABLE pets (id int PRIMARY KEY, owner_id int REFERENCES owners (id))",
        "CREATE INDEX pets_owner ON pets (owner_id)",
        "ALTER TABLE owners ADD PRIMARY KEY (id)",
        # bloat
        "CREATE TABLE sessions (id int PRIMARY KEY, data text) WITH (autovacuum_enabled = off)",
        "INSERT INTO sessions SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g",
        "DELETE FROM sessions WHERE id > 1000",
    )
    with db.connect() as conn, pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("CREATE INDEX CONCURRENTLY broken_inv ON broken ((1 / v))")
    db.sql("UPDATE broken SET v = 1")
    with db.connect() as conn:  # scanned, so only the copies and the prefix are dropped
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT * FROM items WHERE a = 1").fetchall()
        conn.execute("SELECT * FROM items WHERE b = 1 AND c = 1").fetchall()
        flush(conn)
    db.sql("CREATE INDEX items_a_again ON items (a)")  # after the scans: the copy


def test_every_suggested_ddl_sets_a_lock_timeout_and_applies(db: ReportDb) -> None:
    _plant_everything(db)
    doc = db.report(*DDL_SECTIONS, "recommendations")
    advice = [r for r in recommendations(doc) if r["section"] in DDL_SECTIONS and r["sql"]]
    assert {(r["section"], r["object"]) for r in advice} == {
        ("integrity", "public.broken_inv"),
        ("integrity", "public.children.children_qty"),
        ("integrity", "public.children.children_fk"),
        ("integrity", "public.audit"),
        ("integrity", "public.tags"),
        ("integrity", "public.notes"),
        ("integrity", "public.tickets_id_seq"),
        ("duplicate-indexes", "public.items_a_again"),
        ("duplicate-indexes", "public.items_b"),
        ("duplicate-indexes", "public.owners_id_key"),
        ("unused-indexes", "public.items_c"),
        ("missing-indexes", "public.children.children_fk"),
        ("bloat", "public.sessions"),
    }
    for r in advice:
        lines = r["sql"].splitlines()
        ddl = [i for i, line in enumerate(lines) if DDL.match(line)]
        assert ddl, r
        # lock_timeout is set before the first statement that takes a lock ...
        assert "SET lock_timeout = '5s';" in lines[: ddl[0]], r["sql"]
        for i in ddl:
            # ... and each says what it locks, in the comment just before it
            start = i
            while start > 0 and lines[start - 1].startswith("-- "):
                start -= 1
            assert start < i and lines[start].startswith("-- locks: "), r["sql"]
            assert re.search(
                r"(ACCESS EXCLUSIVE|SHARE UPDATE EXCLUSIVE|SHARE ROW EXCLUSIVE)",
                " ".join(lines[start:i]),
            ), r["sql"]

    # pasted in the order listed, every one of them runs, and its finding is gone
    for r in advice:
        db.pg.psql(r["sql"], dbname=db.name)
    after = db.report(*DDL_SECTIONS, "recommendations")
    left = [(r["section"], r["object"]) for r in recommendations(after)]
    # the rebuilt index is valid now, and has not been scanned since: unused, as it is
    assert [r for r in left if r[0] in DDL_SECTIONS] == [("unused-indexes", "public.broken_inv")]
