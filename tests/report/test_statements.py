"""pg_stat_statements sections: a real N+1 loop, a table read by sequential scans
(and the index that ends it), and the extension's absence."""

from __future__ import annotations

import pytest
from conftest import ReportDb, advice_for, flush, recommendations

pytestmark = pytest.mark.postgres

LOOKUP = "SELECT * FROM orders WHERE customer_id = $1"


def test_n_plus_one_loop_is_found_and_its_batched_rewrite_works(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text)",
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL, total int)",
        "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 200) g",
        "INSERT INTO orders (customer_id, total) SELECT g, g * 10 FROM generate_series(1, 200) g",
    )
    # the application's loop: one query for the customers, then one per customer
    with db.connect() as app:
        customers = app.execute("SELECT id FROM customers ORDER BY id").fetchall()
        for (customer_id,) in customers:
            app.execute("SELECT * FROM orders WHERE customer_id = %s", (customer_id,)).fetchall()
    assert len(customers) == 200

    doc = db.report("n-plus-one", "queries", "recommendations")
    found = doc["n-plus-one"]["statements"]
    assert [(r["query"], r["calls"], r["table"], r["columns"]) for r in found] == [
        (LOOKUP, 200, "orders", ["customer_id"])
    ]
    assert found[0]["rows_per_call"] == 1.0
    most_called = doc["queries"]["most_called"][0]
    assert (most_called["query"], most_called["calls"]) == (LOOKUP, 200)
    # the report's own statements are not the application's
    assert not any("pyops report" in r["query"] for r in doc["queries"]["most_called"])
    advice = advice_for(doc, "n-plus-one", str(found[0]["queryid"]))
    assert advice["severity"] == "warning"
    # the key's type, from the column, carried by the array: PREPAREd by the report
    assert advice["sql"] == "SELECT * FROM orders WHERE customer_id = ANY($1::integer[])"
    assert found[0]["instead"] == advice["sql"]
    # the rewrite is one round trip for all 200 customers, and returns what the loop did
    with db.connect() as app:
        ids = [c[0] for c in customers]
        rows = app.execute(advice["sql"].replace("$1::integer[]", "%s"), (ids,)).fetchall()
        looped = [
            row for i in ids for row in app.execute(LOOKUP.replace("$1", "%s"), (i,)).fetchall()
        ]
    assert sorted(rows) == sorted(looped) and len(rows) == 200
    text = db.run("--section", "n-plus-one")
    assert text.returncode == 0, text.stderr
    assert "customer_id = ANY($1::integer[])" in text.stdout


def test_missing_index_found_then_created(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " account_id int NOT NULL, kind text)",
        "INSERT INTO events (account_id, kind)"
        " SELECT g % 500, 'login' FROM generate_series(1, 20000) g",
        "CREATE TABLE small (id int, account_id int)",  # small: never a candidate
        "INSERT INTO small SELECT g, g FROM generate_series(1, 100) g",
    )

    def workload() -> None:
        with db.connect() as app:
            for account in range(60):
                app.execute("SELECT count(*) FROM events WHERE account_id = %s", (account,))
                app.execute("SELECT * FROM small WHERE account_id = %s", (account,))
            flush(app)

    workload()
    doc = db.report("missing-indexes", "recommendations")
    tables = doc["missing-indexes"]["tables"]
    assert [t["table"] for t in tables] == ["public.events"]
    events = tables[0]
    assert events["seq_scan"] >= 60 and events["idx_scan"] == 0
    assert events["column"] == "account_id"
    assert "SELECT count(*) FROM events WHERE account_id = $1" in events["statements"]
    advice = advice_for(doc, "missing-indexes", "public.events")
    assert advice["severity"] == "warning"
    assert [ln for ln in advice["sql"].splitlines() if not ln.startswith("--")] == [
        "SET lock_timeout = '5s';",
        'CREATE INDEX CONCURRENTLY "events_account_id_idx" ON "public"."events" ("account_id");',
    ]
    db.pg.psql(advice["sql"], dbname=db.name)  # pasted as printed

    after = db.report("missing-indexes", "unused-indexes", "recommendations")
    assert after["missing-indexes"]["tables"] == []
    assert recommendations(after, "missing-indexes") == []
    new_index = "public.events_account_id_idx"
    assert after["missing-indexes"]["indexed"] == [
        {"table": "public.events", "column": "account_id", "index": new_index}
    ]
    assert any(
        "public.events" in n and "now indexed" in n for n in after["missing-indexes"]["notes"]
    )
    # not scanned yet, but just recommended: not advised to be dropped again
    assert new_index in [r["index"] for r in after["unused-indexes"]["indexes"]]
    assert new_index not in [r["object"] for r in recommendations(after)]

    workload()
    used = db.report("tables", "unused-indexes")
    # the same statements use the new index now
    events_stats = next(t for t in used["tables"]["tables"] if t["table"] == "public.events")
    assert events_stats["idx_scan"] >= 60
    assert new_index not in [r["index"] for r in used["unused-indexes"]["indexes"]]


def test_queries_say_when_pg_stat_statements_is_absent(bare_db: ReportDb) -> None:
    doc = bare_db.report("queries", "n-plus-one", "recommendations")
    queries = doc["queries"]
    assert queries["facts"]["pg_stat_statements"] == "absent"
    assert "slowest" not in queries
    (note,) = queries["notes"]
    assert note.startswith(f"pg_stat_statements is not installed in database {bare_db.name}")
    assert "shared_preload_libraries" in note
    assert "CREATE EXTENSION pg_stat_statements;" in note
    text = bare_db.run("--section", "queries")
    assert text.returncode == 0, text.stderr
    assert "not installed in database" in text.stdout
    # said once in the recommendations, with the SQL that enables it
    (advice,) = [r for r in recommendations(doc) if r["object"] == "pg_stat_statements"]
    assert advice["section"] == "queries"
    assert advice["sql"] == "CREATE EXTENSION pg_stat_statements;"

    bare_db.sql(advice["sql"])

    after = bare_db.report("queries", "recommendations")
    assert after["queries"]["facts"]["pg_stat_statements"] != "absent"
    assert "slowest" in after["queries"]
    assert [r for r in recommendations(after) if r["object"] == "pg_stat_statements"] == []
