"""Issue 15 row 9 and the first addition: a redundant unique index that a foreign
key depends on (the dependency is seen, and the advice drops what can be dropped),
and foreign keys whose referencing columns lead no index."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ReportDb, advice_for, flush, recommendations

pytestmark = pytest.mark.postgres


def statements(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("--")]


def comments(text: str) -> str:
    """The comment lines of advice SQL as one text."""
    return " ".join(line[3:] for line in text.splitlines() if line.startswith("-- "))


def _foreign_key_index(db: ReportDb, constraint: str) -> str:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT conindid::regclass::text FROM pg_constraint WHERE conname = %s",
            (constraint,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_duplicate_a_foreign_key_uses_is_kept(db: ReportDb) -> None:
    """A plain unique index the foreign key uses, and a unique constraint added later
    on the same column: the constraint goes, not the index the key depends on."""
    db.sql(
        "CREATE TABLE products (id int PRIMARY KEY, sku text NOT NULL)",
        "CREATE UNIQUE INDEX products_sku_idx ON products (sku)",
        "CREATE TABLE lines (id int PRIMARY KEY, sku text REFERENCES products (sku))",
        "ALTER TABLE products ADD CONSTRAINT products_sku_key UNIQUE (sku)",
        "CREATE INDEX ON lines (sku)",
    )
    assert _foreign_key_index(db, "lines_sku_fkey") == "products_sku_idx"
    doc = db.report("duplicate-indexes", "recommendations")
    assert [(d["index"], d["duplicate_of"]) for d in doc["duplicate-indexes"]["indexes"]] == [
        ("public.products_sku_key", "public.products_sku_idx")
    ]
    advice = advice_for(doc, "duplicate-indexes", "public.products_sku_key")
    assert statements(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        'ALTER TABLE "public"."products" DROP CONSTRAINT "products_sku_key";',
    ]
    assert "ACCESS EXCLUSIVE on public.products, briefly" in comments(advice["sql"])

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("duplicate-indexes", "recommendations")
    assert after["duplicate-indexes"]["indexes"] == []
    assert recommendations(after, "duplicate-indexes") == []
    assert _foreign_key_index(db, "lines_sku_fkey") == "products_sku_idx"


def test_foreign_key_repointed_before_its_unique_constraint_goes(db: ReportDb) -> None:
    """The primary key came after the unique constraint the foreign key uses: the
    constraint duplicates the key, and only re-pointing the foreign key frees it."""
    db.sql(
        "CREATE TABLE customers (id int NOT NULL, CONSTRAINT customers_id_key UNIQUE (id))",
        "CREATE TABLE invoices (id int PRIMARY KEY, customer_id int,"
        " CONSTRAINT invoices_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)"
        " ON DELETE CASCADE)",
        "CREATE INDEX ON invoices (customer_id)",
        "ALTER TABLE customers ADD PRIMARY KEY (id)",
        "INSERT INTO customers VALUES (1), (2)",
        "INSERT INTO invoices VALUES (10, 1), (11, 2)",
    )
    assert _foreign_key_index(db, "invoices_customer_fk") == "customers_id_key"
    doc = db.report("duplicate-indexes", "recommendations")
    assert [(d["index"], d["duplicate_of"]) for d in doc["duplicate-indexes"]["indexes"]] == [
        ("public.customers_id_key", "public.customers_pkey")
    ]
    advice = advice_for(doc, "duplicate-indexes", "public.customers_id_key")
    assert (
        "foreign key public.invoices.invoices_customer_fk references it, so it cannot be "
        "dropped as it is: re-point the foreign key to public.customers_pkey first"
    ) in advice["finding"]
    assert statements(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        "BEGIN;",
        'ALTER TABLE "public"."invoices" DROP CONSTRAINT "invoices_customer_fk";',
        'ALTER TABLE "public"."customers" DROP CONSTRAINT "customers_id_key";',
        'ALTER TABLE "public"."invoices" ADD CONSTRAINT "invoices_customer_fk" FOREIGN KEY '
        "(customer_id) REFERENCES customers(id) ON DELETE CASCADE NOT VALID;",
        "COMMIT;",
        'ALTER TABLE "public"."invoices" VALIDATE CONSTRAINT "invoices_customer_fk";',
    ]
    # dropping the duplicate alone, as the report used to say, fails
    with db.connect() as conn, pytest.raises(Exception, match="depend"):
        conn.execute('ALTER TABLE "public"."customers" DROP CONSTRAINT "customers_id_key"')

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("duplicate-indexes", "integrity", "recommendations")
    assert after["duplicate-indexes"]["indexes"] == []
    assert recommendations(after, "duplicate-indexes") == []
    assert after["integrity"]["not_valid_constraints"] == []
    assert _foreign_key_index(db, "invoices_customer_fk") == "customers_pkey"
    db.sql("DELETE FROM customers WHERE id = 1")  # the key still cascades
    with db.connect() as conn:
        assert conn.execute("SELECT id FROM invoices").fetchall() == [(11,)]


def _unindexed(doc: dict[str, Any]) -> list[str]:
    return [f"{f['table']}.{f['constraint']}" for f in doc["missing-indexes"]["foreign_keys"]]


def test_foreign_key_without_index_then_indexed(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, region int, code int, UNIQUE (region, code))",
        "INSERT INTO accounts SELECT g, g % 10, g FROM generate_series(1, 100) g",
        "CREATE TABLE payments (id int PRIMARY KEY, account_id int REFERENCES accounts,"
        " region int, code int, FOREIGN KEY (region, code) REFERENCES accounts (region, code))",
        "INSERT INTO payments SELECT g, 1 + g % 50, (1 + g % 50) % 10, 1 + g % 50"
        " FROM generate_series(1, 20000) g",
        # both columns lead this one, in the other order: the composite key is served
        "CREATE INDEX payments_code_region ON payments (code, region)",
        "ANALYZE payments",
        # indexes that serve account_id only in part (partial), or not leading
        "CREATE TABLE refunds (id int PRIMARY KEY, account_id int REFERENCES accounts, region int)",
        "CREATE INDEX refunds_account_partial ON refunds (account_id) WHERE id > 100",
        "CREATE INDEX refunds_region_account ON refunds (region, account_id)",
    )
    with db.connect() as app:  # the parent deletes that scan the child for references
        for account in range(60, 80):
            app.execute("DELETE FROM accounts WHERE id = %s", (account,))
        # and look-ups by the key column: a missing index on the same column
        for account in range(1, 51):
            app.execute("SELECT count(*) FROM payments WHERE account_id = %s", (account,))
        flush(app)

    doc = db.report("missing-indexes", "recommendations")
    # one index serves the look-ups and the key: advised once, for the key
    assert [t["table"] for t in doc["missing-indexes"]["tables"]] == ["public.payments"]
    assert doc["missing-indexes"]["tables"][0]["column"] == "account_id"
    assert any("serves both" in n for n in doc["missing-indexes"]["notes"])
    assert [r["object"] for r in recommendations(doc, "missing-indexes")] == [
        "public.payments.payments_account_id_fkey",
        "public.refunds.refunds_account_id_fkey",
    ]
    assert _unindexed(doc) == [
        "public.payments.payments_account_id_fkey",
        "public.refunds.refunds_account_id_fkey",
    ]
    row = doc["missing-indexes"]["foreign_keys"][0]
    assert row["columns"] == ["account_id"] and row["references"] == "public.accounts"
    assert row["seq_scan"] >= 70 and row["parent_deletes"] == 20
    assert row["statement_calls"] == 20
    assert "DELETE FROM accounts WHERE id = $1" in row["statements"]
    advice = advice_for(doc, "missing-indexes", "public.payments.payments_account_id_fkey")
    assert advice["severity"] == "warning"  # 20,000 rows scanned for each delete
    assert f"{row['seq_scan']} sequential scans of public.payments (~" in advice["finding"]
    assert "20 rows deleted from" in advice["finding"]
    assert "20 calls of statements" in advice["finding"]
    assert statements(advice["sql"]) == [
        "SET lock_timeout = '5s';",
        'CREATE INDEX CONCURRENTLY "payments_account_id_idx" ON "public"."payments" '
        '("account_id");',
    ]
    assert "leaves the INVALID index public.payments_account_id_idx" in comments(advice["sql"])

    db.pg.psql(advice["sql"], dbname=db.name)

    after = db.report("missing-indexes", "unused-indexes", "recommendations")
    assert _unindexed(after) == ["public.refunds.refunds_account_id_fkey"]
    assert [r["object"] for r in recommendations(after, "missing-indexes")] == [
        "public.refunds.refunds_account_id_fkey"
    ]
    # never scanned yet, and the only index for the key: not called unused
    unused = [r["index"] for r in after["unused-indexes"]["indexes"]]
    assert "public.payments_account_id_idx" not in unused
    assert "public.refunds_account_partial" in unused
    assert any(
        "public.payments_account_id_idx" in n and "payments_account_id_fkey" in n
        for n in after["unused-indexes"]["notes"]
    )


def test_foreign_key_without_index_and_without_statistics(bare_db: ReportDb) -> None:
    """A small table, and pg_stat_statements absent: info, and the evidence says so."""
    bare_db.sql(
        "CREATE TABLE teams (id int PRIMARY KEY)",
        "CREATE TABLE members (id int PRIMARY KEY, team_id int REFERENCES teams)",
    )
    doc = bare_db.report("missing-indexes", "recommendations")
    advice = advice_for(doc, "missing-indexes", "public.members.members_team_id_fkey")
    assert advice["severity"] == "info"
    assert "pg_stat_statements is not available" in advice["finding"]
    bare_db.pg.psql(advice["sql"], dbname=bare_db.name)
    assert _unindexed(bare_db.report("missing-indexes")) == []
