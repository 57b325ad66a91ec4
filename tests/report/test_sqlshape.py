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


def test_single_row_lookup() -> None:
    q = "SELECT * FROM orders WHERE customer_id = $1"
    assert sqlshape.single_row_lookup(q) == (None, "orders", "customer_id")
    q2 = 'SELECT o.id FROM shop."Orders" o WHERE o.customer_id = $1 AND o.paid = $2'
    assert sqlshape.single_row_lookup(q2) == ("shop", "Orders", "customer_id")
    # already batched, not a SELECT, a catalog look-up: not an N+1 shape
    assert sqlshape.single_row_lookup("SELECT * FROM t WHERE a = $1 OR b IN ($2, $3)") is None
    assert sqlshape.single_row_lookup("DELETE FROM t WHERE a = $1") is None
    assert sqlshape.single_row_lookup("SELECT * FROM pg_type WHERE oid = $1") is None


def _forms(query: str, aggregates: frozenset[str] = frozenset()) -> list[list[tuple[str, str]]]:
    return [
        [(r.form, r.sql) for r in sqlshape.rewrites(query, c, "integer", aggregates)]
        for c in sqlshape.candidates(query)
    ]


def test_lexer_skips_strings_comments_and_nested_clauses() -> None:
    toks = sqlshape.tokens(
        "SELECT 'a WHERE b = $9', $$ $1 $$, $q$x$q$ /* x /* y */ = $2 */ FROM t -- = $3"
    )
    kinds = ["word", "string", "punct", "dollar", "punct", "dollar", "word", "word"]
    assert [t.kind for t in toks] == kinds
    assert sqlshape.candidates("SELECT 'a WHERE b = $9' FROM t /* WHERE c = $1 */") == []
    q = (
        "SELECT (SELECT max(x) FROM u WHERE u.a = t.a) AS m FROM t"
        " WHERE t.b IS DISTINCT FROM $2 AND t.c = $1 ORDER BY 1"
    )
    shape = sqlshape.shape(q)
    assert {k: shape.tokens[i].start for k, i in shape.clauses.items()} == {
        "select": 0,
        "from": q.index("FROM t "),
        "where": q.index("WHERE t.b"),
        "order": q.index("ORDER"),
    }
    (c,) = sqlshape.candidates(q)
    assert (c.column, c.written, c.param, c.conjunct) == ("c", "t.c", 1, True)


def test_casts_are_read_whole_and_move_into_the_array() -> None:
    q = (
        "SELECT * FROM t WHERE a = $1::varchar(3) AND b = $2::timestamp(3) with time zone"
        ' AND c = $3::public."Mood" AND d = $4::double precision'
    )
    assert [c.cast for c in sqlshape.candidates(q)] == [
        "varchar(3)",
        "timestamp(3) with time zone",
        'public."Mood"',
        "double precision",
    ]
    form, batched = _forms(q)[0][0]
    assert form == "any"
    assert batched == (
        "SELECT * FROM t WHERE a = ANY($1::varchar(3)[]) AND b = $2::timestamp(3) with time zone"
        ' AND c = $3::public."Mood" AND d = $4::double precision'
    )
    assert "ANY($1)::" not in batched
    # run once per key, the cast stays where it was
    assert "a = keys.a::varchar(3) AND" in _forms(q)[0][1][1]


def test_rewrite_forms_follow_what_acts_per_call() -> None:
    plain = "SELECT id, name FROM users WHERE team_id = $1 ORDER BY name"
    assert _forms(plain)[0][0] == (
        "any",
        "SELECT team_id, id, name FROM users WHERE team_id = ANY($1::integer[]) ORDER BY name",
    )
    counted = "SELECT count(*), max(at) AS last FROM logins WHERE user_id = $1"
    assert [f for f, _ in _forms(counted, frozenset({"count", "max"}))[0]] == ["grouped", "lateral"]
    assert _forms(counted, frozenset({"count", "max"}))[0][0][1] == (
        "SELECT user_id, count(*), max(at) AS last FROM logins"
        " WHERE user_id = ANY($1::integer[]) GROUP BY user_id"
    )
    # unknown to the catalog as an aggregate: treated as a plain function
    assert _forms(counted)[0][0][0] == "any"
    for per_call in (
        "SELECT * FROM t WHERE k = $1 LIMIT $2",
        "SELECT DISTINCT a FROM t WHERE k = $1",
        "SELECT a, rank() OVER (ORDER BY b) FROM t WHERE k = $1",
        "SELECT a FROM t WHERE k = $1 GROUP BY a",
        "SELECT a FROM t WHERE k = $1 OR b",
        "SELECT a FROM t WHERE NOT k = $1",
        "SELECT a FROM t WHERE (k = $1)",
        "SELECT a FROM t WHERE k = $1 UNION SELECT a FROM u",
        "SELECT a FROM t WHERE k = $1 AND j <> $1",
        "SELECT a FROM t WHERE k = $1::text || 'x'",
    ):
        forms = _forms(per_call)[0]
        assert [f for f, _ in forms] == ["lateral"], per_call
        assert forms[0][1] == (
            "SELECT keys.k, batched.* FROM unnest($1::integer[]) AS keys(k) CROSS JOIN LATERAL ("
            + per_call.replace("$1", "keys.k")
            + ") AS batched"
        )
    # the key alias never collides with a name the statement uses
    assert "AS batch_keys(k)" in _forms("SELECT * FROM keys WHERE k = $1 LIMIT 1")[0][0][1]
    # a trailing comment stays outside the parenthesis
    assert _forms("SELECT * FROM t WHERE k = $1 LIMIT 1 -- orm")[0][0][1].endswith(
        "LIMIT 1) AS batched"
    )
    assert (
        sqlshape.rewrites(
            "SELECT 1 WHERE k = $1", sqlshape.candidates("SELECT 1 WHERE k = $1")[0], "integer", ()
        )
        == []
    )


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
