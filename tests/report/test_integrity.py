"""Integrity findings and bloat, each gone once its recommended SQL ran."""

from __future__ import annotations

import psycopg
import pytest
from conftest import ReportDb, advice_for, recommendations

pytestmark = pytest.mark.postgres


def statements(text: str) -> list[str]:
    """Advice SQL without its comments (what each statement locks)."""
    return [line for line in text.splitlines() if not line.startswith("--")]


def _setup_integrity(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE parents (id int PRIMARY KEY)",
        "CREATE TABLE children (id int PRIMARY KEY, parent_id int, qty int)",
        "INSERT INTO parents VALUES (1)",
        "INSERT INTO children VALUES (1, 1, 5)",
        "ALTER TABLE children ADD CONSTRAINT children_qty_positive CHECK (qty > 0) NOT VALID",
        "ALTER TABLE children ADD CONSTRAINT children_parent_fk FOREIGN KEY (parent_id)"
        " REFERENCES parents NOT VALID",
        "CREATE TABLE audit_log (id int NOT NULL, message text)",  # no key, has an id
        "CREATE TABLE tags (name text NOT NULL)",  # no key, a unique index
        "CREATE UNIQUE INDEX tags_name_idx ON tags (name)",
        "CREATE TABLE notes (body text)",  # no key at all
        "CREATE TABLE tickets (id smallserial PRIMARY KEY, title text)",
        "SELECT setval('tickets_id_seq', 29500)",  # 90% of smallint
        "CREATE SEQUENCE counter AS smallint",
        "SELECT setval('counter', 29500)",
        "CREATE SEQUENCE roomy AS smallint",
        "SELECT setval('roomy', 100)",
        "CREATE TABLE dupes (id int PRIMARY KEY, v int)",
        "INSERT INTO dupes VALUES (1, 1), (2, 1)",
    )
    with db.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_v ON dupes (v)")  # left INVALID


def test_integrity_findings_then_fixed(db: ReportDb) -> None:
    _setup_integrity(db)
    doc = db.report("integrity", "recommendations")
    section = doc["integrity"]
    assert [r["index_name"] for r in section["invalid_indexes"]] == ["dupes_v"]
    assert [
        (r["table"], r["constraint_name"], r["kind"]) for r in section["not_valid_constraints"]
    ] == [
        ("public.children", "children_parent_fk", "foreign key"),
        ("public.children", "children_qty_positive", "check"),
    ]
    assert [r["table"] for r in section["tables_without_primary_key"]] == [
        "public.audit_log",
        "public.notes",
        "public.tags",
    ]
    sequences = {s["sequence"]: s for s in section["sequences"]}
    assert set(sequences) == {"public.counter", "public.tickets_id_seq"}  # not roomy
    assert sequences["public.counter"]["used_percent"] == pytest.approx(90.03, abs=0.01)
    assert sequences["public.tickets_id_seq"]["column"] == "public.tickets.id"

    lock = "SET lock_timeout = '5s';"
    expected = {
        "public.children.children_qty_positive": [
            lock,
            'ALTER TABLE "public"."children" VALIDATE CONSTRAINT "children_qty_positive";',
        ],
        "public.children.children_parent_fk": [
            lock,
            'ALTER TABLE "public"."children" VALIDATE CONSTRAINT "children_parent_fk";',
        ],
        # a unique index built without blocking writes, then made the key
        "public.audit_log": [
            lock,
            'CREATE UNIQUE INDEX CONCURRENTLY "audit_log_pkey" ON "public"."audit_log" ("id");',
            'ALTER TABLE "public"."audit_log" ADD PRIMARY KEY USING INDEX "audit_log_pkey";',
        ],
        "public.tags": [
            lock,
            'ALTER TABLE "public"."tags" ADD PRIMARY KEY USING INDEX "tags_name_idx";',
        ],
        "public.notes": [
            lock,
            'ALTER TABLE "public"."notes" ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY '
            "PRIMARY KEY;",
        ],
        "public.counter": [lock, 'ALTER SEQUENCE "public"."counter" AS bigint;'],
        # the column runs out as soon as the sequence does: widen both
        "public.tickets_id_seq": [
            lock,
            'ALTER TABLE "public"."tickets" ALTER COLUMN "id" TYPE bigint;',
            'ALTER SEQUENCE "public"."tickets_id_seq" AS bigint;',
        ],
    }
    advice = {r["object"]: r for r in recommendations(doc, "integrity")}
    rebuild = advice.pop("public.dupes_v")
    assert {k: statements(v["sql"]) for k, v in advice.items()} == expected
    assert {v["severity"] for v in advice.values()} == {"warning"}
    # each statement says what it locks, in a comment just before it
    for v in advice.values():
        lines = v["sql"].splitlines()
        for i, line in enumerate(lines[1:], 1):
            if not line.startswith("--"):
                assert lines[i - 1].startswith("-- "), v["sql"]
    assert "ACCESS EXCLUSIVE on public.tags, briefly" in advice["public.tags"]["sql"]
    assert (
        "SHARE UPDATE EXCLUSIVE on public.children, and ROW SHARE on public.parents"
        in (advice["public.children.children_parent_fk"]["sql"])
    )
    assert (
        "ACCESS EXCLUSIVE on public.tickets for the whole table rewrite"
        in (advice["public.tickets_id_seq"]["sql"])
    )
    # the invalid unique index is dropped and built again, never REINDEXed
    assert statements(rebuild["sql"])[-3:] == [
        lock,
        'DROP INDEX CONCURRENTLY "public"."dupes_v";',
        "CREATE UNIQUE INDEX CONCURRENTLY dupes_v ON public.dupes USING btree (v);",
    ]

    # the invalid index failed on duplicate values: fix the data, then rebuild it
    db.sql("DELETE FROM dupes WHERE id = 2")
    for r in (rebuild, *advice.values()):
        db.pg.psql(r["sql"], dbname=db.name)

    after = db.report("integrity", "recommendations")
    facts = after["integrity"]["facts"]
    assert facts["invalid_indexes"] == 0
    assert facts["not_valid_constraints"] == 0
    assert facts["tables_without_primary_key"] == 0
    assert facts["sequences_near_limit"] == 0
    assert recommendations(after, "integrity") == []
    with db.connect() as conn:
        assert conn.execute("SELECT nextval('tickets_id_seq')").fetchone() == (29501,)
        conn.execute("SELECT setval('tickets_id_seq', 40000)")
        conn.execute("INSERT INTO tickets (title) VALUES ('past smallint')")


def test_bloat_estimate_then_vacuumed(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE sessions (id int PRIMARY KEY, data text) WITH (autovacuum_enabled = off)",
        "INSERT INTO sessions SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
        "DELETE FROM sessions WHERE id > 1000",
    )
    doc = db.report("bloat", "recommendations")
    (row,) = [r for r in doc["bloat"]["tables"] if r["table"] == "public.sessions"]
    assert (row["n_live_tup"], row["n_dead_tup"], row["dead_ratio"]) == (1000, 4000, 0.8)
    assert 0.7 * row["table_bytes"] < row["wasted_bytes_estimate"] <= 0.8 * row["table_bytes"]
    assert any(n.startswith("an estimate") for n in doc["bloat"]["notes"])
    advice = advice_for(doc, "bloat", "public.sessions")
    assert advice["severity"] == "warning"
    assert statements(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        'VACUUM (ANALYZE) "public"."sessions";',
    ]
    assert "-- locks: SHARE UPDATE EXCLUSIVE on public.sessions" in advice["sql"]

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("bloat", "recommendations")
    assert [r for r in after["bloat"]["tables"] if r["table"] == "public.sessions"] == []
    assert recommendations(after, "bloat") == []
