"""The statement-reading heuristics, on normalized pg_stat_statements text."""

from __future__ import annotations

from pyops.report import sqlshape
from pyops.report.statements import absent


def test_equality_columns_only_after_where() -> None:
    q = 'UPDATE orders SET total = $1 WHERE o.customer_id = $2 AND "Status" = $3 AND x > $4'
    assert sqlshape.equality_columns(q) == ["customer_id", "Status"]
    assert sqlshape.equality_columns("SELECT * FROM t WHERE a = ANY($1)") == []
    assert sqlshape.equality_columns("SELECT * FROM t") == []
    assert sqlshape.equality_columns("SELECT * FROM t WHERE A = $1 AND a = $2") == ["a"]


def test_mentions_matches_names_not_substrings() -> None:
    assert sqlshape.mentions("SELECT * FROM orders WHERE id = $1", "public", "orders")
    assert sqlshape.mentions('SELECT * FROM public."orders" o', "public", "orders")
    assert sqlshape.mentions("SELECT orders.id FROM x, orders", "public", "orders")
    assert not sqlshape.mentions("SELECT * FROM orders_archive", "public", "orders")
    assert not sqlshape.mentions("SELECT * FROM audit.orders", "public", "orders")
    assert not sqlshape.mentions("SELECT * FROM my_orders", "public", "orders")


def test_single_row_lookup_and_batched_rewrite() -> None:
    q = "SELECT * FROM orders WHERE customer_id = $1"
    assert sqlshape.single_row_lookup(q) == (None, "orders", "customer_id")
    assert sqlshape.batched(q, "customer_id") == "SELECT * FROM orders WHERE customer_id = ANY($1)"
    q2 = 'SELECT o.id FROM shop."Orders" o WHERE o.customer_id = $1 AND o.paid = $2'
    assert sqlshape.single_row_lookup(q2) == ("shop", "Orders", "customer_id")
    assert sqlshape.batched(q2, "customer_id").endswith("o.customer_id = ANY($1) AND o.paid = $2")
    # already batched, not a SELECT, a catalog look-up: not an N+1 shape
    assert sqlshape.single_row_lookup("SELECT * FROM t WHERE a = $1 OR b IN ($2, $3)") is None
    assert sqlshape.single_row_lookup("DELETE FROM t WHERE a = $1") is None
    assert sqlshape.single_row_lookup("SELECT * FROM pg_type WHERE oid = $1") is None


def test_absent_extension_says_how_to_enable_it() -> None:
    preloaded = absent("app", "pg_stat_statements", installed=False)
    assert not preloaded.available
    assert preloaded.message == (
        "pg_stat_statements is not installed in database app (shared_preload_libraries "
        "already loads it): to enable it, run CREATE EXTENSION pg_stat_statements; in "
        "database app"
    )
    assert preloaded.enable_sql == "CREATE EXTENSION pg_stat_statements;"
    cold = absent("app", "auto_explain", installed=False)
    assert "shared_preload_libraries = 'auto_explain, pg_stat_statements'" in cold.message
    assert "restart PostgreSQL, then run CREATE EXTENSION" in cold.message
    assert cold.enable_sql.splitlines() == [
        "ALTER SYSTEM SET shared_preload_libraries = 'auto_explain, pg_stat_statements';"
        "  -- then restart PostgreSQL",
        "CREATE EXTENSION pg_stat_statements;",
    ]
    loaded_late = absent("app", "", installed=True)
    assert loaded_late.message.startswith(
        "pg_stat_statements is installed in database app but not loaded"
    )
    assert loaded_late.enable_sql.startswith(
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';"
    )
