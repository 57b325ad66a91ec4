"""Issue 15 rows 7 and 8: sequences are matched to every column whose DEFAULT calls
nextval() on them, owned or not; a CYCLE sequence is reported as one that repeats
values, not one that runs out."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ReportDb, advice_for, recommendations

pytestmark = pytest.mark.postgres

INT_MAX = 2**31 - 1


def statements(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("--")]


def _sequences(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["sequence"]: s for s in doc["integrity"]["sequences"]}


def test_unowned_bigint_sequence_feeding_an_integer_column(db: ReportDb) -> None:
    db.sql(
        "CREATE SEQUENCE order_ids",  # bigint, owned by nothing
        "CREATE TABLE orders (id integer PRIMARY KEY DEFAULT nextval('order_ids'), item text)",
        # a second column fed by it, through an expression around nextval()
        "CREATE TABLE order_notes (n integer DEFAULT nextval('order_ids') + 0, body text)",
        # a default that names the sequence without taking values from it
        "CREATE TABLE peeks (seen bigint DEFAULT currval('order_ids'))",
        f"SELECT setval('order_ids', {int(INT_MAX * 0.97)})",
    )
    doc = db.report("integrity", "recommendations")
    found = _sequences(doc)["public.order_ids"]
    assert found["used_percent"] == pytest.approx(97.0, abs=0.01)
    assert found["limit"] == INT_MAX
    assert found["data_type"] == "bigint"
    assert [(f["column"], f["how"]) for f in found["feeds"]] == [
        ("public.order_notes.n", "default"),
        ("public.orders.id", "default"),
    ]
    advice = advice_for(doc, "integrity", "public.order_ids")
    assert advice["severity"] == "critical"
    assert "public.orders.id integer, DEFAULT nextval(), not owned" in advice["finding"]
    assert "inserts fail when the column's type runs out" in advice["finding"]
    # the columns are the limit: widen them; the bigint sequence already has room
    assert statements(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        'ALTER TABLE "public"."order_notes" ALTER COLUMN "n" TYPE bigint;',
        'ALTER TABLE "public"."orders" ALTER COLUMN "id" TYPE bigint;',
    ]

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("integrity", "recommendations")
    assert "public.order_ids" not in _sequences(after)
    assert "public.order_ids" not in [r["object"] for r in recommendations(after, "integrity")]
    db.sql(f"SELECT setval('order_ids', {INT_MAX})", "INSERT INTO orders (item) VALUES ('x')")
    with db.connect() as conn:
        assert conn.execute("SELECT max(id) FROM orders").fetchone() == (INT_MAX + 1,)


def test_cycle_sequence_repeats_values(db: ReportDb) -> None:
    db.sql(
        # unique: a repeat is a failed insert where the old row is still there
        "CREATE SEQUENCE ring AS integer CYCLE",
        "CREATE TABLE slots (id integer PRIMARY KEY DEFAULT nextval('ring'))",
        f"SELECT setval('ring', {int(INT_MAX * 0.96)})",
        # not unique: a repeat goes in silently
        "CREATE SEQUENCE tickets AS smallint CYCLE OWNED BY NONE",
        "CREATE TABLE stubs (ticket smallint DEFAULT nextval('tickets'))",
        "SELECT setval('tickets', 32000)",
        # a narrower column fails before a CYCLE sequence wraps: it runs out
        "CREATE SEQUENCE wide CYCLE",
        "CREATE TABLE narrow (v integer DEFAULT nextval('wide'))",
        f"SELECT setval('wide', {int(INT_MAX * 0.9)})",
    )
    doc = db.report("integrity", "recommendations")
    assert {s: v["cycle"] for s, v in _sequences(doc).items()} == {
        "public.ring": True,
        "public.tickets": True,
        "public.wide": True,
    }
    ring = advice_for(doc, "integrity", "public.ring")
    assert ring["severity"] == "critical"
    assert "it is CYCLE, so after 2147483647 it starts again at 1" in ring["finding"]
    assert "public.slots.id is unique (slots_pkey)" in ring["finding"]
    assert "inserts then fail on duplicate keys" in ring["finding"]
    assert "inserts fail when it runs out" not in ring["finding"]
    stubs = advice_for(doc, "integrity", "public.tickets")
    assert stubs["severity"] == "info"
    assert "no unique index holds them, so the repeated values go in silently" in (stubs["finding"])
    wide = advice_for(doc, "integrity", "public.wide")
    assert wide["severity"] == "warning"
    assert "inserts fail when the column's type runs out" in wide["finding"]
    assert "CYCLE" not in wide["finding"]

    # the values repeat indeed: the unique column refuses the wrapped value
    db.sql(f"SELECT setval('ring', {INT_MAX})", "INSERT INTO slots VALUES (1)")
    with db.connect() as conn:
        with pytest.raises(Exception, match="duplicate key"):
            conn.execute("INSERT INTO slots DEFAULT VALUES")
        conn.execute(f"SELECT setval('ring', {int(INT_MAX * 0.96)})")

    # widening the sequence and the column it feeds postpones the wrap for good
    assert statements(ring["sql"]) == [
        "SET lock_timeout = '5s';",
        'ALTER TABLE "public"."slots" ALTER COLUMN "id" TYPE bigint;',
        'ALTER SEQUENCE "public"."ring" AS bigint;',
    ]
    db.pg.psql(ring["sql"], dbname=db.name)
    after = db.report("integrity", "recommendations")
    assert "public.ring" not in _sequences(after)
    db.sql(f"SELECT setval('ring', {INT_MAX})", "INSERT INTO slots DEFAULT VALUES")
    with db.connect() as conn:
        assert conn.execute("SELECT max(id) FROM slots").fetchone() == (INT_MAX + 1,)
