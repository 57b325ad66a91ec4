"""Issue 15 row 5: a unique index whose concurrent build failed on duplicate keys.
The advice lists the duplicates first, then drops the invalid index and builds it
again; it never REINDEXes (which fails again and leaves a second invalid index)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import ReportDb, advice_for, recommendations
from fixtures.pgcluster import PgClusterError

pytestmark = pytest.mark.postgres


def split(text: str) -> list[str]:
    """The statements of advice SQL, comments left out, each ending with ';'."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return [s.strip() + ";" for s in (body + "\n").split(";\n") if s.strip()]


def _invalid(db: ReportDb) -> list[tuple[str, bool]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'users'::regclass AND c.relname <> 'users_pkey'"
            " ORDER BY 1"
        ).fetchall()
    return [(str(r[0]), bool(r[1])) for r in rows]


def _plant(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE users (id int PRIMARY KEY, email text, tenant int, deleted boolean)",
        # two live users share an address (case aside), one more sharing it is deleted,
        # and a NULL address twice collides with nothing
        "INSERT INTO users VALUES (1, 'Ann@x.org', 1, false), (2, 'ann@x.org', 1, false),"
        " (3, 'ANN@x.org', 1, true), (4, 'bob@x.org', 1, false), (5, NULL, 1, false),"
        " (6, NULL, 1, false), (7, 'bob@x.org', 2, false)",
    )
    with db.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (tenant, lower(email))"
            " WHERE NOT deleted"
        )
    assert _invalid(db) == [("users_email", False)]


def test_failed_unique_build_lists_duplicates_then_is_rebuilt(db: ReportDb) -> None:
    _plant(db)
    doc = db.report("integrity", "recommendations")
    advice = advice_for(doc, "integrity", "public.users_email")
    assert advice["severity"] == "warning"
    assert "REINDEX" not in advice["sql"]
    steps = split(advice["sql"])
    assert steps[1:] == [
        "SET lock_timeout = '5s';",
        'DROP INDEX CONCURRENTLY "public"."users_email";',
        "CREATE UNIQUE INDEX CONCURRENTLY users_email ON public.users USING btree "
        "(tenant, lower(email)) WHERE (NOT deleted);",
    ]
    # the first statement lists the rows the index cannot take: the key within the
    # index's predicate, NULLs left out
    listed = steps[0]
    assert listed.startswith("SELECT (tenant), (lower(email)), count(*) AS copies")
    with db.connect() as conn:
        found = conn.execute(listed).fetchall()  # type: ignore[call-overload]
    assert [(r[0], r[1], r[2]) for r in found] == [(1, "ann@x.org", 2)]
    ctids = found[0][3]
    assert len(ctids) == 2

    # pasted as it is, before the duplicates are gone: the build fails again, and leaves
    # one invalid index, not a second one beside it
    with pytest.raises(PgClusterError, match="could not create unique index"):
        db.pg.psql(advice["sql"], dbname=db.name)
    assert _invalid(db) == [("users_email", False)]

    # keep one row of each key, as the comment says; then the same SQL rebuilds it
    db.sql(f"DELETE FROM users WHERE ctid = '{ctids[1]}'")
    with db.connect() as conn:
        assert conn.execute(listed).fetchall() == []  # type: ignore[call-overload]
    db.pg.psql(advice["sql"], dbname=db.name)
    assert _invalid(db) == [("users_email", True)]

    after = db.report("integrity", "recommendations")
    assert after["integrity"]["invalid_indexes"] == []
    assert [
        r for r in recommendations(after, "integrity") if r["object"].startswith("public.u")
    ] == []


def test_invalid_plain_index_is_dropped_and_built_again(db: ReportDb) -> None:
    """Not unique: no duplicates to find; the same drop-and-build, never REINDEX."""
    db.sql(
        "CREATE TABLE m (id int PRIMARY KEY, v int)",
        "INSERT INTO m VALUES (1, 0), (2, 1)",
    )
    with db.connect() as conn, pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("CREATE INDEX CONCURRENTLY m_inv ON m ((1 / v))")
    doc = db.report("integrity", "recommendations")
    advice: dict[str, Any] = advice_for(doc, "integrity", "public.m_inv")
    assert split(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        'DROP INDEX CONCURRENTLY "public"."m_inv";',
        "CREATE INDEX CONCURRENTLY m_inv ON public.m USING btree (((1 / v)));",
    ]
    db.sql("UPDATE m SET v = 2 WHERE v = 0")
    db.pg.psql(advice["sql"], dbname=db.name)
    after = db.report("integrity")
    assert after["integrity"]["invalid_indexes"] == []
