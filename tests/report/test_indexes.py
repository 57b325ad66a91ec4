"""Unused and duplicate indexes, found from real scans, and gone once the
recommended SQL ran."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ReportDb, advice_for, flush, recommendations

pytestmark = pytest.mark.postgres

LOCK_TIMEOUT = "SET lock_timeout = '5s';"


def _statements(advice: dict[str, Any]) -> list[str]:
    """The advice's SQL without its comments (what it locks)."""
    return [line for line in advice["sql"].splitlines() if not line.startswith("--")]


def _indexes(doc: dict[str, Any], section: str) -> list[str]:
    return [r["index"] for r in doc[section]["indexes"]]


def test_unused_and_duplicate_indexes_then_dropped(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE items (id int PRIMARY KEY, a int, b int, code text UNIQUE)",
        "INSERT INTO items SELECT g, g % 1000, g % 7, 'c' || g FROM generate_series(1, 5000) g",
        "CREATE INDEX ix_used ON items (a)",
        "CREATE INDEX ix_unused ON items (b)",
        "ANALYZE items",
    )
    with db.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        for key in range(20):
            conn.execute("SELECT * FROM items WHERE a = %s", (key,)).fetchall()
        flush(conn)
    # created after the scans, so only ix_used has them
    db.sql("CREATE INDEX ix_dup ON items (a)")

    doc = db.report("unused-indexes", "duplicate-indexes", "recommendations")
    unused = _indexes(doc, "unused-indexes")
    assert "public.ix_unused" in unused and "public.ix_dup" in unused
    # used, primary key and unique-constraint indexes are never "unused"
    for kept in ("public.ix_used", "public.items_pkey", "public.items_code_key"):
        assert kept not in unused
    duplicates = doc["duplicate-indexes"]["indexes"]
    assert [(d["index"], d["duplicate_of"]) for d in duplicates] == [
        ("public.ix_dup", "public.ix_used")
    ]
    drop_unused = advice_for(doc, "unused-indexes", "public.ix_unused")
    assert _statements(drop_unused) == [
        LOCK_TIMEOUT,
        'DROP INDEX CONCURRENTLY "public"."ix_unused";',
    ]
    assert "-- locks: SHARE UPDATE EXCLUSIVE on public.items" in drop_unused["sql"]
    assert drop_unused["severity"] == "info"
    drop_dup = advice_for(doc, "duplicate-indexes", "public.ix_dup")
    assert _statements(drop_dup) == [LOCK_TIMEOUT, 'DROP INDEX CONCURRENTLY "public"."ix_dup";']
    assert drop_dup["severity"] == "warning"
    # a duplicate is also unused: it is recommended once, as a duplicate
    unused_advice = [r["object"] for r in recommendations(doc, "unused-indexes")]
    assert unused_advice == ["public.ix_unused"]

    db.pg.psql(drop_unused["sql"] + "\n" + drop_dup["sql"], dbname=db.name)

    after = db.report("unused-indexes", "duplicate-indexes", "indexes", "recommendations")
    assert _indexes(after, "unused-indexes") == []
    assert after["duplicate-indexes"]["indexes"] == []
    assert recommendations(after, "unused-indexes") == []
    assert recommendations(after, "duplicate-indexes") == []
    remaining = {r["index"]: r["idx_scan"] for r in after["indexes"]["indexes"]}
    assert set(remaining) == {"public.items_pkey", "public.items_code_key", "public.ix_used"}
    assert remaining["public.ix_used"] >= 20


def test_indexes_that_only_look_alike_are_not_duplicates(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE t (a int, b int)",
        "CREATE INDEX t_a ON t (a)",
        "CREATE INDEX t_a_hash ON t USING hash (a)",  # another access method
        "CREATE INDEX t_a_partial ON t (a) WHERE b > 0",  # another predicate
        "CREATE INDEX t_a_expr ON t ((a + 1))",  # an expression
        "CREATE INDEX t_ab ON t (a, b)",
        "CREATE INDEX t_a_incl ON t (a) INCLUDE (b)",  # same indkey as t_ab, fewer keys
        "CREATE UNIQUE INDEX t_b_unique ON t (b)",
        "CREATE INDEX t_b ON t (b)",
    )
    doc = db.report("duplicate-indexes", "recommendations")
    assert [(d["index"], d["duplicate_of"]) for d in doc["duplicate-indexes"]["indexes"]] == [
        ("public.t_b", "public.t_b_unique")  # the unique one is kept
    ]
    # of these, only t_a's column leads a longer index (t_a_incl has an INCLUDE)
    assert [(d["index"], d["covered_by"]) for d in doc["duplicate-indexes"]["prefix"]] == [
        ("public.t_a", "public.t_ab")
    ]
    assert _statements(advice_for(doc, "duplicate-indexes", "public.t_b")) == [
        LOCK_TIMEOUT,
        'DROP INDEX CONCURRENTLY "public"."t_b";',
    ]


def test_unused_prefix_of_a_longer_index_then_dropped(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE p (a int, b int, c int, d int, e int, f int, g int, h int)",
        "INSERT INTO p SELECT g, g, g, g, g, g, g, g FROM generate_series(1, 2000) g",
        "CREATE INDEX p_a ON p (a)",  # unused, and (a, b) serves it: flagged
        "CREATE INDEX p_a_b ON p (a, b)",
        "CREATE INDEX p_c ON p (c)",  # scanned below: kept
        "CREATE UNIQUE INDEX p_e ON p (e)",  # enforces uniqueness: kept
        "CREATE INDEX p_e_f ON p (e, f)",
        "CREATE INDEX p_g_desc ON p (g DESC)",  # another sort order
        "CREATE INDEX p_g_h ON p (g, h)",
        "CREATE INDEX p_h ON p (h)",  # h is not the leading column of (g, h)
        "CREATE INDEX p_b_part ON p (b) WHERE b > 10",  # partial
        "CREATE INDEX p_b_a ON p (b, a)",
        "ANALYZE p",
    )
    with db.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SELECT c FROM p WHERE c = 5").fetchall()
        flush(conn)
    db.sql("CREATE INDEX p_c_d ON p (c, d)")
    doc = db.report("duplicate-indexes", "unused-indexes", "recommendations")
    assert doc["duplicate-indexes"]["indexes"] == []
    assert [(d["index"], d["covered_by"]) for d in doc["duplicate-indexes"]["prefix"]] == [
        ("public.p_a", "public.p_a_b")
    ]
    advice = advice_for(doc, "duplicate-indexes", "public.p_a")
    assert advice["severity"] == "info"
    assert "its columns lead public.p_a_b" in advice["finding"]
    assert _statements(advice) == [LOCK_TIMEOUT, 'DROP INDEX CONCURRENTLY "public"."p_a";']
    # unused too, but recommended once, as a prefix of the longer index
    assert "public.p_a" in _indexes(doc, "unused-indexes")
    assert [r["section"] for r in recommendations(doc) if r["object"] == "public.p_a"] == [
        "duplicate-indexes"
    ]

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("duplicate-indexes", "recommendations")
    assert after["duplicate-indexes"]["prefix"] == []
    assert recommendations(after, "duplicate-indexes") == []
