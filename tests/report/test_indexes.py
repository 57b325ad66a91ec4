"""Unused and duplicate indexes, found from real scans, and gone once the
recommended SQL ran."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ReportDb, advice_for, flush, recommendations

pytestmark = pytest.mark.postgres


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
    assert drop_unused["sql"] == 'DROP INDEX CONCURRENTLY "public"."ix_unused";'
    assert drop_unused["severity"] == "info"
    drop_dup = advice_for(doc, "duplicate-indexes", "public.ix_dup")
    assert drop_dup["sql"] == 'DROP INDEX CONCURRENTLY "public"."ix_dup";'
    assert drop_dup["severity"] == "warning"
    # a duplicate is also unused: it is recommended once, as a duplicate
    unused_advice = [r["object"] for r in recommendations(doc, "unused-indexes")]
    assert unused_advice == ["public.ix_unused"]

    db.sql(drop_unused["sql"], drop_dup["sql"])

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
    assert advice_for(doc, "duplicate-indexes", "public.t_b")["sql"] == (
        'DROP INDEX CONCURRENTLY "public"."t_b";'
    )
