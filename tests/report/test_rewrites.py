"""N+1 loops run for real, then `pyops db report`: every batched rewrite it offers is
PREPAREd here and run once for N keys, and its rows are compared with N single calls
of the statement exactly as pg_stat_statements recorded it."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import ReportDb, advice_for
from psycopg import sql

pytestmark = pytest.mark.postgres

Row = tuple[Any, ...]


def loop(db: ReportDb, query: str, params: Sequence[Sequence[Any]]) -> None:
    """The application's N+1 loop: one call per key, each recorded by pg_stat_statements."""
    with db.connect() as app:
        for p in params:
            app.execute(query, p).fetchall()


def n_plus_one(db: ReportDb) -> dict[str, Any]:
    doc: dict[str, Any] = db.report("n-plus-one", "recommendations")
    assert doc["n-plus-one"].get("error") is None
    return doc


def found(doc: dict[str, Any], query: str) -> dict[str, Any]:
    rows = [r for r in doc["n-plus-one"]["statements"] if r["query"] == query]
    assert len(rows) == 1, (query, [r["query"] for r in doc["n-plus-one"]["statements"]])
    row: dict[str, Any] = rows[0]
    return row


@contextmanager
def prepared(conn: psycopg.Connection[Any], **statements: str) -> Iterator[None]:
    for name, text in statements.items():
        conn.execute(f"PREPARE {name} AS {text}")
    try:
        yield
    finally:
        conn.execute("DEALLOCATE ALL")


def execute(conn: psycopg.Connection[Any], name: str, args: Sequence[Any]) -> list[Row]:
    """EXECUTE a prepared statement with these values (or SQL) as its $1, $2, ..."""
    query = sql.SQL("EXECUTE {}({})").format(
        sql.Identifier(name),
        sql.SQL(", ").join(a if isinstance(a, sql.Composable) else sql.Literal(a) for a in args),
    )
    return [tuple(r) for r in conn.execute(query).fetchall()]


def single_and_batched(
    db: ReportDb,
    original: str,
    rewrite: str,
    key: int,
    keys: Sequence[Any],
    others: dict[int, Any] | None = None,
    array: Callable[[list[Any]], Any] = list,
) -> tuple[dict[Any, list[Row]], list[Row]]:
    """Each key through the recorded statement, then all keys through the rewrite (the
    key's parameter an array, made by `array`; the others as given)."""
    others = others or {}
    count = max(key, *others) if others else key

    def args(value: Any) -> list[Any]:
        return [value if i == key else others[i] for i in range(1, count + 1)]

    with db.connect() as conn, prepared(conn, single=original, batched=rewrite):
        singles = {k: execute(conn, "single", args(k)) for k in keys}
        batched = execute(conn, "batched", args(array(list(keys))))
    return singles, batched


def by_key(rows: list[Row]) -> dict[Any, list[Row]]:
    """Rows that start with their key, grouped by it (in the order they came)."""
    out: dict[Any, list[Row]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r[1:])
    return out


def only_rewrite(row: dict[str, Any]) -> dict[str, Any]:
    assert len(row["rewrites"]) == 1, row
    rewrite: dict[str, Any] = row["rewrites"][0]
    return rewrite


def test_count_per_key_is_grouped_by_the_key(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE events (id serial PRIMARY KEY, user_id int NOT NULL, kind text)",
        # user u has u % 7 events: some none at all
        "INSERT INTO events (user_id, kind) SELECT u, 'login' FROM generate_series(1, 120) u,"
        " generate_series(1, 6) n WHERE n <= u % 7",
    )
    loop(db, "SELECT count(*) FROM events WHERE user_id = %s", [(u,) for u in range(1, 121)])

    doc = n_plus_one(db)
    query = "SELECT count(*) FROM events WHERE user_id = $1"
    row = found(doc, query)
    assert row["calls"] == 120 and row["columns"] == ["user_id"]
    rewrite = only_rewrite(row)
    expected = (
        "SELECT user_id, count(*) FROM events WHERE user_id = ANY($1::integer[]) GROUP BY user_id"
    )
    assert (rewrite["form"], rewrite["sql"], rewrite["type"]) == ("grouped", expected, "integer")
    assert "a key without rows gets no row" in rewrite["note"]
    advice = advice_for(doc, "n-plus-one", str(row["queryid"]))
    assert advice["sql"] == expected
    assert "count 0" in advice["finding"]

    keys = list(range(1, 31))
    singles, batched = single_and_batched(db, query, rewrite["sql"], 1, keys)
    per_key = by_key(batched)
    assert len(batched) == len(per_key)  # one row per key, the key first
    for k in keys:
        # as the note says: a key without rows is left out, where its call counted 0
        assert per_key.get(k, [(0,)]) == singles[k], k
    assert {k for k in keys if singles[k] == [(0,)]} == {k for k in keys if k % 7 == 0}
    assert not any(k in per_key for k in keys if k % 7 == 0)


def test_orm_lookup_keeps_its_limit_per_key(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE events (id serial PRIMARY KEY, user_id int NOT NULL, kind text)",
        "INSERT INTO events (user_id, kind) SELECT u, 'kind ' || n"
        " FROM generate_series(1, 120) u, generate_series(1, 4) n ORDER BY n, u",
    )
    # what an ORM's `.filter(user_id=u).order_by("id").first()` sends
    orm = (
        'SELECT "events"."id", "events"."kind" FROM "events" WHERE "events"."user_id" = %s'
        ' ORDER BY "events"."id" LIMIT 1'
    )
    loop(db, orm, [(u,) for u in range(1, 121)])

    doc = n_plus_one(db)
    query = orm.replace("%s", "$1").replace("LIMIT 1", "LIMIT $2")
    row = found(doc, query)
    rewrite = only_rewrite(row)
    assert rewrite["form"] == "lateral"
    per_key_query = query.replace("= $1", '= keys."user_id"')
    assert rewrite["sql"] == (
        'SELECT keys."user_id", batched.* FROM unnest($1::integer[]) AS keys("user_id")'
        f" CROSS JOIN LATERAL ({per_key_query}) AS batched"
    )
    assert "(LIMIT)" in rewrite["note"]
    assert advice_for(doc, "n-plus-one", str(row["queryid"]))["sql"] == rewrite["sql"]

    keys = [5, 17, 60, 999]  # 999 has no events
    for limit in (1, 3):
        singles, batched = single_and_batched(db, query, rewrite["sql"], 1, keys, {2: limit})
        per_key = by_key(batched)
        assert {k: per_key.get(k, []) for k in keys} == singles
        assert len(batched) == 3 * limit  # up to the limit per key, not in all


def test_distinct_and_window_functions_stay_per_key(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE visits (id serial PRIMARY KEY, user_id int NOT NULL, page text)",
        "INSERT INTO visits (user_id, page) SELECT u, 'home' FROM generate_series(1, 110) u",
    )
    distinct = "SELECT DISTINCT page FROM visits WHERE user_id = %s"
    window = "SELECT id, count(*) OVER () AS visits FROM visits WHERE user_id = %s"
    loop(db, distinct, [(u,) for u in range(1, 111)])
    loop(db, window, [(u,) for u in range(1, 111)])

    doc = n_plus_one(db)
    for text, acting in ((distinct, "DISTINCT"), (window, "window functions")):
        query = text.replace("%s", "$1")
        rewrite = only_rewrite(found(doc, query))
        assert rewrite["form"] == "lateral" and f"({acting})" in rewrite["note"]
        keys = [3, 4, 5, 500]
        singles, batched = single_and_batched(db, query, rewrite["sql"], 1, keys)
        assert {k: by_key(batched).get(k, []) for k in keys} == singles
    # `= ANY` would have made one 'home' of three keys, and counted 3 visits each


def test_cast_moves_into_the_array_and_types_come_from_the_catalog(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE events (id serial PRIMARY KEY, kind text, ref uuid)",
        "INSERT INTO events (kind, ref) SELECT 'kind ' || g,"
        " ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid"
        " FROM generate_series(1, 150) g",
    )
    by_kind = "SELECT id, kind FROM events WHERE kind = %s::text"
    by_ref = "SELECT id FROM events WHERE ref = %s"
    refs = [uuid.UUID(int=g) for g in range(1, 151)]
    loop(db, by_kind, [(f"kind {g}",) for g in range(1, 121)])
    loop(db, by_ref, [(r,) for r in refs[:120]])

    doc = n_plus_one(db)
    kind_query = "SELECT id, kind FROM events WHERE kind = $1::text"
    rewrite = only_rewrite(found(doc, kind_query))
    assert rewrite["sql"] == "SELECT kind, id, kind FROM events WHERE kind = ANY($1::text[])"
    assert rewrite["form"] == "any"
    # no cast: the parameter's type is the column's, as the server resolves it
    ref_query = "SELECT id FROM events WHERE ref = $1"
    ref_rewrite = only_rewrite(found(doc, ref_query))
    assert ref_rewrite["sql"] == "SELECT ref, id FROM events WHERE ref = ANY($1::uuid[])"
    # checked by PREPARE only: the report ran none of its rewrites
    with db.connect() as conn:
        ran = conn.execute(
            "SELECT count(*) FROM pg_stat_statements"
            " WHERE strpos(query, %s) > 0 OR strpos(query, %s) > 0 OR query LIKE '%%pyops_check%%'",
            (rewrite["sql"], ref_rewrite["sql"]),
        ).fetchone()
        assert ran == (0,)
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)

    for query, r, keys in (
        (kind_query, rewrite, ["kind 3", "kind 40", "kind 41", "no such kind"]),
        (ref_query, ref_rewrite, [refs[0], refs[1], refs[149], uuid.UUID(int=10**6)]),
    ):
        singles, batched = single_and_batched(db, query, r["sql"], 1, keys)
        assert Counter(batched) == Counter((k, *row) for k in keys for row in singles[k])


def test_a_rewrite_that_fails_prepare_is_not_shown(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE shapes (id serial PRIMARY KEY, area box NOT NULL)",
        "INSERT INTO shapes (area)"
        " SELECT box(point(g, g), point(0, 0)) FROM generate_series(1, 150) g",
    )
    loop(
        db,
        "SELECT count(*) FROM shapes WHERE area = %s::box",
        [(f"({g},{g}),(0,0)",) for g in range(1, 121)],
    )
    doc = n_plus_one(db)
    query = "SELECT count(*) FROM shapes WHERE area = $1::box"
    row = found(doc, query)
    # GROUP BY needs an equality operator that box has not: the server refused it
    (dropped,) = row["rejected"]
    assert dropped["form"] == "grouped"
    assert dropped["reason"] == (
        "it does not PREPARE: could not identify an equality operator for type box"
    )
    rewrite = only_rewrite(row)
    assert rewrite["form"] == "lateral" and "GROUP BY" not in rewrite["sql"]
    advice = advice_for(doc, "n-plus-one", str(row["queryid"]))
    assert advice["sql"] == rewrite["sql"]
    assert "the grouped form is not offered, it does not PREPARE" in advice["finding"]

    keys = ["(2,2),(0,0)", "(9,9),(0,0)", "(500,500),(0,0)"]

    def boxes(values: list[Any]) -> sql.Composable:  # box arrays are `;`-separated
        return sql.SQL("ARRAY[{}]::box[]").format(sql.SQL(", ").join(map(sql.Literal, values)))

    singles, batched = single_and_batched(db, query, rewrite["sql"], 1, keys, array=boxes)
    assert [(str(r[0]), *r[1:]) for r in batched] == [(k, *singles[k][0]) for k in keys]
    assert [singles[k] for k in keys] == [[(1,)], [(1,)], [(0,)]]


def test_no_rewrite_when_none_keeps_the_meaning_and_the_reason_is_shown(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE posts (id serial PRIMARY KEY, tags text[] NOT NULL)",
        "INSERT INTO posts (tags) SELECT ARRAY['t' || g, 'all'] FROM generate_series(1, 150) g",
    )
    loop(db, "SELECT id FROM posts WHERE tags = %s", [([f"t{g}", "all"],) for g in range(1, 111)])
    with db.connect() as app:  # a table only the application's session sees
        app.execute("CREATE TEMP TABLE cart (id int PRIMARY KEY, item text)")
        app.execute("INSERT INTO cart SELECT g, 'item' FROM generate_series(1, 150) g")
        for g in range(1, 111):
            app.execute("SELECT item FROM cart WHERE id = %s", (g,)).fetchall()

    doc = n_plus_one(db)
    tags = found(doc, "SELECT id FROM posts WHERE tags = $1")
    assert tags["rewrites"] == []
    assert [r["reason"] for r in tags["rejected"]] == [
        "$1 (tags) is an array itself (text[]): an array of such keys would be one "
        "multidimensional array, not one key per element"
    ]
    assert tags["instead"].startswith("none: $1 (tags) is an array itself")
    advice = advice_for(doc, "n-plus-one", str(tags["queryid"]))
    assert advice["sql"] == ""
    assert "no batched rewrite is offered: $1 (tags) is an array itself" in advice["finding"]

    cart = found(doc, "SELECT item FROM cart WHERE id = $1")
    assert cart["rewrites"] == []
    (why,) = cart["rejected"]
    assert why["reason"].startswith(
        "the statement as pg_stat_statements recorded it does not PREPARE here "
        '(relation "cart" does not exist)'
    )
    assert advice_for(doc, "n-plus-one", str(cart["queryid"]))["sql"] == ""


def test_several_parameters_show_every_choice(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE orders (id serial PRIMARY KEY, tenant_id int NOT NULL,"
        " customer_id int NOT NULL, total int)",
        "INSERT INTO orders (tenant_id, customer_id, total)"
        " SELECT t, c, t * 1000 + c FROM generate_series(7, 8) t, generate_series(1, 150) c",
    )
    # one tenant, each of its customers in turn: only $2 varies, which the
    # statistics cannot show
    loop(
        db,
        "SELECT id, total FROM orders WHERE tenant_id = %s AND customer_id = %s",
        [(7, c) for c in range(1, 121)],
    )
    doc = n_plus_one(db)
    query = "SELECT id, total FROM orders WHERE tenant_id = $1 AND customer_id = $2"
    row = found(doc, query)
    by_tenant = (
        "SELECT tenant_id, id, total FROM orders"
        " WHERE tenant_id = ANY($1::integer[]) AND customer_id = $2"
    )
    by_customer = (
        "SELECT customer_id, id, total FROM orders"
        " WHERE tenant_id = $1 AND customer_id = ANY($2::integer[])"
    )
    assert [(r["column"], r["parameter"], r["sql"]) for r in row["rewrites"]] == [
        ("tenant_id", "$1", by_tenant),
        ("customer_id", "$2", by_customer),
    ]
    advice = advice_for(doc, "n-plus-one", str(row["queryid"]))
    assert "does not say which parameter varies between calls" in advice["finding"]
    assert advice["sql"].splitlines()[1::2] == [by_tenant, by_customer]
    assert advice["sql"].splitlines()[0].startswith("-- if tenant_id ($1) varies:")

    # each choice, for what it batches: several customers of tenant 7 ...
    customers = [1, 2, 99, 400]
    singles, batched = single_and_batched(db, query, by_customer, 2, customers, {1: 7})
    assert Counter(batched) == Counter((k, *r) for k in customers for r in singles[k])
    assert len(batched) == 3
    # ... or several tenants of customer 5
    tenants = [7, 8, 9]
    singles, batched = single_and_batched(db, query, by_tenant, 1, tenants, {2: 5})
    assert Counter(batched) == Counter((k, *r) for k in tenants for r in singles[k])
    assert len(batched) == 2


def test_a_locked_table_costs_a_second_and_is_named_as_the_reason(db: ReportDb) -> None:
    db.sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "INSERT INTO items SELECT g, 'item' FROM generate_series(1, 150) g",
    )
    loop(db, "SELECT name FROM items WHERE id = %s", [(g,) for g in range(1, 111)])
    migration = db.connect(autocommit=False)
    try:
        migration.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        doc = db.report("n-plus-one")
        assert time.monotonic() - t0 < 10
    finally:
        migration.close()
    row = found(doc, "SELECT name FROM items WHERE id = $1")
    assert row["rewrites"] == []
    (why,) = row["rejected"]
    assert why["reason"].startswith(
        "it could not be checked: a table it names is locked by another session (canceling "
        "statement due to lock timeout after 1s)"
    )
    # once the lock is gone, the same loop gets its rewrite
    assert only_rewrite(found(n_plus_one(db), "SELECT name FROM items WHERE id = $1"))["sql"] == (
        "SELECT id, name FROM items WHERE id = ANY($1::integer[])"
    )
