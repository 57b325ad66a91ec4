"""`pyops maintenance` against a real PostgreSQL: bloat, vacuum, reindex, matviews,
cleanup, dry run, lock timeouts and amcheck."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest
from conftest import MakeConfig, maintain, one, pg_target, steps, value, wait_for
from fixtures.cli import run_pyops
from fixtures.pgcluster import PgCluster

pytestmark = pytest.mark.postgres


def dead_tuples(pg: PgCluster, db: str, table: str) -> int:
    return int(
        value(pg, db, f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{table}'") or 0
    )


def make_bloat(pg: PgCluster, db: str) -> None:
    pg.psql(
        """
        CREATE TABLE bloated (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false);
        INSERT INTO bloated SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
        UPDATE bloated SET payload = repeat('y', 100) WHERE id % 10 <> 0;
        CREATE TABLE tidy (id int PRIMARY KEY);
        INSERT INTO tidy SELECT generate_series(1, 100);
        """,
        dbname=db,
    )
    wait_for(lambda: dead_tuples(pg, db, "bloated") >= 18000, "dead tuples in pg_stat")


def test_bloat_reports_dead_tuples_and_vacuum_removes_them(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    make_bloat(pg, pg_db)
    config = make_config(pg_target(pg, pg_db))
    vacuums_before = value(
        pg, pg_db, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'bloated'"
    )

    proc, doc = maintain(config, "--operation", "bloat")
    assert proc.returncode == 0, proc.stderr
    table = one(doc, "bloat", "public.bloated")["details"]
    assert table["kind"] == "table"
    assert table["dead_tuples"] >= 18000
    assert table["dead_ratio"] > 0.45
    assert table["wasted_bytes_est"] > 0.4 * table["bytes"]
    index = one(doc, "bloat", "public.bloated_pkey")["details"]
    assert index["kind"] == "index" and index["table"] == "public.bloated"
    assert index["dead_ratio"] == table["dead_ratio"]
    assert one(doc, "bloat", "public.tidy")["details"]["dead_ratio"] == 0

    proc, doc = maintain(config, "--operation", "vacuum")
    assert proc.returncode == 0, proc.stderr
    step = one(doc, "vacuum", "public.bloated")
    assert step["status"] == "ok"
    assert step["sql"] == ['VACUUM (ANALYZE) "public"."bloated";']
    assert step["details"]["dead_tuples_before"] >= 18000
    assert step["details"]["dead_tuples_after"] < 100
    assert dead_tuples(pg, pg_db, "bloated") < 100
    assert (
        value(pg, pg_db, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'bloated'")
        == vacuums_before + 1
    )

    proc, doc = maintain(config, "--operation", "bloat")
    assert one(doc, "bloat", "public.bloated")["details"]["dead_ratio"] < 0.01


def test_vacuum_threshold_skips_clean_tables(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    make_bloat(pg, pg_db)
    config = make_config(pg_target(pg, pg_db) + "\n[maintenance]\nvacuum_min_dead_ratio = 0.2\n")
    proc, doc = maintain(config, "--operation", "vacuum")
    assert proc.returncode == 0, proc.stderr
    assert one(doc, "vacuum", "public.bloated")["status"] == "ok"
    tidy = one(doc, "vacuum", "public.tidy")
    assert tidy["status"] == "skipped" and "vacuum_min_dead_ratio" in tidy["details"]["note"]
    assert tidy["sql"] == []


def _make_invalid_index(pg: PgCluster, db: str) -> None:
    with pg.connect(db) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            'CREATE UNIQUE INDEX CONCURRENTLY "Dup Sku" ON "Sales Data"."Order Lines" ("Sku")'
        )


def test_reindex_quotes_names_and_skips_invalid_indexes(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    pg.psql(
        """
        CREATE SCHEMA "Sales Data";
        CREATE TABLE "Sales Data"."Order Lines" (id int PRIMARY KEY, "Sku" text);
        INSERT INTO "Sales Data"."Order Lines"
            SELECT g, 'sku-' || (g % 50) FROM generate_series(1, 2000) g;
        CREATE INDEX "Sku Idx" ON "Sales Data"."Order Lines" ("Sku");
        """,
        dbname=pg_db,
    )
    _make_invalid_index(pg, pg_db)
    filenode = "SELECT relfilenode FROM pg_class WHERE relname = 'Sku Idx'"
    before = value(pg, pg_db, filenode)
    config = make_config(pg_target(pg, pg_db))

    proc, doc = maintain(config, "--operation", "reindex")
    assert proc.returncode == 0, proc.stderr
    step = one(doc, "reindex", "Sales Data.Sku Idx")
    assert step["status"] == "ok", step
    assert step["sql"] == ['REINDEX INDEX CONCURRENTLY "Sales Data"."Sku Idx";']
    assert value(pg, pg_db, filenode) != before
    assert one(doc, "reindex", "Sales Data.Order Lines_pkey")["status"] == "ok"
    invalid = one(doc, "reindex", "Sales Data.Dup Sku")
    assert invalid["status"] == "skipped" and invalid["details"]["invalid"] is True
    assert 'DROP INDEX CONCURRENTLY "Sales Data"."Dup Sku"' in invalid["details"]["note"]
    # the invalid one is reported, not touched; no new leftovers
    invalid_names = value(
        pg,
        pg_db,
        "SELECT string_agg(c.relname, ',') FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid WHERE NOT i.indisvalid",
    )
    assert invalid_names == "Dup Sku"


def test_matviews_refresh_concurrently_where_a_unique_index_allows(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    pg.psql(
        """
        CREATE TABLE sales (id int PRIMARY KEY, region text, amount int);
        INSERT INTO sales SELECT g, 'r' || (g % 5), g FROM generate_series(1, 100) g;
        CREATE MATERIALIZED VIEW by_region AS
            SELECT region, sum(amount) AS total FROM sales GROUP BY region;
        CREATE UNIQUE INDEX ON by_region (region);
        CREATE MATERIALIZED VIEW "Big Sales" AS SELECT id FROM sales WHERE amount > 90;
        INSERT INTO sales VALUES (1000, 'new', 500);
        """,
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db))
    proc, doc = maintain(config, "--operation", "matviews")
    assert proc.returncode == 0, proc.stderr
    concurrent = one(doc, "matviews", "public.by_region")
    assert concurrent["details"]["concurrently"] is True
    assert concurrent["sql"] == ['REFRESH MATERIALIZED VIEW CONCURRENTLY "public"."by_region";']
    plain = one(doc, "matviews", "public.Big Sales")
    assert plain["details"]["concurrently"] is False
    assert plain["sql"] == ['REFRESH MATERIALIZED VIEW "public"."Big Sales";']
    assert value(pg, pg_db, "SELECT total FROM by_region WHERE region = 'new'") == 500
    assert value(pg, pg_db, 'SELECT count(*) FROM "Big Sales"') == 11


SESSION_RULE = """
[[maintenance.cleanup]]
target = "app-db"
table = "django_session"
where = "expire_date < now()"
batch_size = 10
"""
CLEANUP_RULES = (
    SESSION_RULE
    + """
[[maintenance.cleanup]]
target = "app-db"
table = "audit.Old Events"
where = "kind LIKE 'deb%'"  # a literal %: no placeholder parsing
batch_size = 7
"""
)


def test_cleanup_deletes_exactly_the_matching_rows_in_batches(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    pg.psql(
        """
        CREATE TABLE django_session (session_key text PRIMARY KEY, expire_date timestamptz);
        INSERT INTO django_session SELECT 'old' || g, now() - interval '1 day'
            FROM generate_series(1, 95) g;
        INSERT INTO django_session SELECT 'new' || g, now() + interval '1 day'
            FROM generate_series(1, 40) g;
        CREATE SCHEMA audit;
        CREATE TABLE audit."Old Events" (kind text, n int);  -- no primary key: ctid
        INSERT INTO audit."Old Events" SELECT 'debug', g FROM generate_series(1, 30) g;
        INSERT INTO audit."Old Events" SELECT 'error', g FROM generate_series(1, 12) g;
        """,
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db) + CLEANUP_RULES)
    proc, doc = maintain(config, "--operation", "cleanup")
    assert proc.returncode == 0, proc.stderr

    sessions = one(doc, "cleanup", "public.django_session")["details"]
    assert sessions["rows_deleted"] == 95
    assert sessions["batches"] == 10  # nine full batches of 10, then 5
    assert sessions["key"] == ["session_key"]
    assert value(pg, pg_db, "SELECT count(*) FROM django_session") == 40
    assert value(pg, pg_db, "SELECT count(*) FROM django_session WHERE expire_date < now()") == 0

    events = one(doc, "cleanup", "audit.Old Events")["details"]
    assert events["rows_deleted"] == 30 and events["batches"] == 5  # 4 x 7 + 2
    assert events["key"] == ["ctid"]
    assert value(pg, pg_db, "SELECT string_agg(DISTINCT kind, ',') FROM audit.\"Old Events\"") == (
        "error"
    )
    assert value(pg, pg_db, 'SELECT count(*) FROM audit."Old Events"') == 12

    runs = (config.parent / "repo" / ".pyops" / "runs.jsonl").read_text().splitlines()
    last = json.loads(runs[-1])
    assert last["command"] == "maintenance" and last["targets"] == ["app-db"]
    assert last["result"] == "ok" and last["summary"]["ok"] == 2

    proc, doc = maintain(config, "--operation", "cleanup")
    assert one(doc, "cleanup", "public.django_session")["details"]["rows_deleted"] == 0


def _fingerprint(pg: PgCluster, db: str) -> dict[str, object]:
    with pg.connect(db) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        data = conn.execute(
            "SELECT md5(string_agg(b::text, ',' ORDER BY id)) FROM bloated b"
        ).fetchone()
        sessions = conn.execute("SELECT count(*) FROM django_session").fetchone()
        mv = conn.execute("SELECT total FROM by_region WHERE region = 'late'").fetchone()
        stats = conn.execute(
            "SELECT relname, n_dead_tup, vacuum_count, analyze_count FROM pg_stat_user_tables "
            "ORDER BY relname"
        ).fetchall()
        nodes = conn.execute(
            "SELECT relname, relfilenode FROM pg_class WHERE relkind = 'i' "
            "AND relnamespace = 'public'::regnamespace ORDER BY relname"
        ).fetchall()
        extensions = conn.execute("SELECT count(*) FROM pg_extension").fetchone()
    return {
        "data": data,
        "sessions": sessions,
        "mv": mv,
        "stats": stats,
        "nodes": nodes,
        "extensions": extensions,
    }


def test_dry_run_prints_the_sql_and_changes_nothing(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    make_bloat(pg, pg_db)
    pg.psql(
        """
        CREATE TABLE django_session (session_key text PRIMARY KEY, expire_date timestamptz);
        INSERT INTO django_session SELECT 'old' || g, now() - interval '1 day'
            FROM generate_series(1, 20) g;
        CREATE TABLE sales (id int PRIMARY KEY, region text, amount int);
        CREATE MATERIALIZED VIEW by_region AS
            SELECT region, sum(amount) AS total FROM sales GROUP BY region;
        CREATE UNIQUE INDEX ON by_region (region);
        INSERT INTO sales VALUES (1, 'late', 5);
        """,
        dbname=pg_db,
    )
    wait_for(lambda: dead_tuples(pg, pg_db, "bloated") >= 18000, "dead tuples")
    config = make_config(pg_target(pg, pg_db) + SESSION_RULE)
    before = _fingerprint(pg, pg_db)

    proc = run_pyops(config, "maintenance", "--all", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    statements = [ln for ln in lines if not ln.startswith("--")]
    assert all(ln.endswith(";") for ln in statements), statements
    assert "SET lock_timeout = '5000ms';" in statements
    assert 'VACUUM (ANALYZE) "public"."bloated";' in statements
    assert not any(ln.startswith("ANALYZE") for ln in statements)  # VACUUM (ANALYZE) did
    assert (
        "-- skipped: app-db analyze public.tidy: analyzed by this run's VACUUM (ANALYZE)" in lines
    )
    assert 'REINDEX INDEX CONCURRENTLY "public"."bloated_pkey";' in statements
    assert 'REFRESH MATERIALIZED VIEW CONCURRENTLY "public"."by_region";' in statements
    assert (
        'DELETE FROM "public"."django_session" WHERE ("session_key") IN (SELECT "session_key" '
        'FROM "public"."django_session" WHERE (expire_date < now()) LIMIT 10 FOR UPDATE SKIP '
        "LOCKED);"
    ) in statements
    assert any("skipped: app-db amcheck" in ln for ln in lines)

    proc, doc = maintain(config, "--all", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert doc["dry_run"] is True
    assert 'VACUUM (ANALYZE) "public"."bloated";' in doc["sql"]
    assert one(doc, "cleanup", "public.django_session")["details"]["matching_rows"] == 20
    assert one(doc, "amcheck", "app-db")["status"] == "skipped"

    assert _fingerprint(pg, pg_db) == before


def test_a_locked_table_times_out_and_the_rest_still_runs(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    pg.psql(
        """
        CREATE TABLE busy (id int PRIMARY KEY);
        CREATE TABLE calm (id int PRIMARY KEY);
        INSERT INTO busy SELECT generate_series(1, 100);
        INSERT INTO calm SELECT generate_series(1, 100);
        """,
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db) + "\n[maintenance]\nlock_timeout_seconds = 1\n")
    holder = pg.connect(pg_db, autocommit=False)
    try:
        holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        proc, doc = maintain(config, "--operation", "vacuum,analyze", "--operation", "reindex")
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 0, proc.stderr
    for op, obj in (
        ("vacuum", "public.busy"),
        ("analyze", "public.busy"),
        ("reindex", "public.busy_pkey"),
    ):
        step = one(doc, op, obj)
        assert step["status"] == "timeout", step
        assert "lock timeout" in step["details"]["error"]
        assert 0.9 <= step["duration_s"] < 5
    for op, obj in (
        ("vacuum", "public.calm"),
        ("reindex", "public.calm_pkey"),
    ):
        assert one(doc, op, obj)["status"] == "ok"
    # busy's vacuum timed out, so analyze tried it again; calm's VACUUM (ANALYZE) covered it
    assert one(doc, "analyze", "public.calm")["details"]["note"].startswith("analyzed by")
    assert doc["summary"]["timeout"] == 3 and doc["summary"]["failed"] == 0
    assert "timed out waiting for a lock" in proc.stderr
    assert value(pg, pg_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


def test_amcheck_passes_on_a_healthy_database_and_fails_on_corruption(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    pg.psql(
        """
        CREATE FUNCTION shifted(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql
            AS $$ BEGIN RETURN x; END $$;
        CREATE TABLE readings (id int PRIMARY KEY, v int);
        INSERT INTO readings SELECT g, g FROM generate_series(1, 500) g;
        CREATE INDEX readings_shifted ON readings (shifted(v));
        """,
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db))
    proc, doc = maintain(config, "--operation", "amcheck")
    assert proc.returncode == 0, proc.stderr
    skipped = one(doc, "amcheck", "app-db")
    assert (
        skipped["status"] == "skipped" and "CREATE EXTENSION amcheck" in skipped["details"]["note"]
    )

    pg.psql("CREATE EXTENSION amcheck", dbname=pg_db)
    proc, doc = maintain(config, "--operation", "amcheck")
    assert proc.returncode == 0, proc.stderr
    healthy = one(doc, "amcheck", "app-db")
    assert healthy["status"] == "ok", healthy
    assert healthy["details"]["heap_checked"] is True
    assert healthy["details"]["relations_checked"] > 100  # user and system relations
    assert any("readings_shifted" in s for s in healthy["sql"])

    # an "immutable" function that changes its mind: the index no longer matches the heap
    pg.psql(
        "CREATE OR REPLACE FUNCTION shifted(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN x + 1; END $$",
        dbname=pg_db,
    )
    proc, doc = maintain(config, "--operation", "amcheck,vacuum")
    assert proc.returncode == 1, proc.stderr
    broken = one(doc, "amcheck", "app-db")
    assert broken["status"] == "failed"
    assert any("readings_shifted" in c for c in broken["details"]["corruption"])
    vacuum = steps(doc, "vacuum")
    assert [s["status"] for s in vacuum] == ["skipped"]
    assert "corruption" in vacuum[0]["details"]["note"]


def test_unreachable_target_fails_its_steps_only(
    pg: PgCluster, pg_db: str, make_config: MakeConfig, tmp_path: Path
) -> None:
    db = tmp_path / "ok.sqlite3"
    import sqlite3

    sqlite3.connect(db).close()
    body = (
        pg_target(pg, "no_such_database", name="gone")
        + f'[[targets]]\nname = "lite"\ntype = "sqlite"\npath = "{db}"\n'
    )
    proc, doc = maintain(make_config(body), "--all")
    assert proc.returncode == 1
    connect = one(doc, "connect", "")
    assert connect["target"] == "gone" and "database missing" in connect["details"]["error"]
    lite = [s for s in doc["steps"] if s["target"] == "lite"]
    assert {s["operation"] for s in lite} >= {"integrity", "vacuum", "stats"}
    assert all(s["status"] in ("ok", "skipped") for s in lite), lite
    assert doc["summary"]["failed"] == 1


def test_an_interrupted_reindex_leaves_no_silent_leftover(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    """REINDEX CONCURRENTLY builds t_pkey_ccnew, then waits for writers; at the lock
    timeout pyops tries to drop the half-built copy, reports it when it cannot, and the
    next run lists it as an invalid index to drop."""
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db) + "\n[maintenance]\nlock_timeout_seconds = 1\n")
    writer = pg.connect(pg_db, autocommit=False)
    try:
        writer.execute("INSERT INTO t VALUES (1000)")  # holds ROW EXCLUSIVE until rollback
        proc, doc = maintain(config, "--operation", "reindex")
    finally:
        writer.rollback()
        writer.close()
    assert proc.returncode == 0, proc.stderr
    step = one(doc, "reindex", "public.t_pkey")
    assert step["status"] == "timeout"
    # the writer also blocks DROP INDEX CONCURRENTLY, so the copy is reported, not hidden
    (leftover,) = step["details"]["leftovers"]
    assert leftover.startswith("public.t_pkey_ccnew: could not drop")
    assert 'run DROP INDEX CONCURRENTLY "public"."t_pkey_ccnew"' in leftover

    proc, doc = maintain(config, "--operation", "reindex")
    assert proc.returncode == 0, proc.stderr
    assert one(doc, "reindex", "public.t_pkey")["status"] == "ok"
    invalid = one(doc, "reindex", "public.t_pkey_ccnew")
    assert invalid["status"] == "skipped" and invalid["details"]["invalid"] is True


def test_a_timed_out_reindex_drops_the_copy_it_left(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    """As above, but the writer finishes while pyops waits to drop the copy: it is gone."""
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
        dbname=pg_db,
    )
    config = make_config(pg_target(pg, pg_db) + "\n[maintenance]\nlock_timeout_seconds = 3\n")
    writer = pg.connect(pg_db, autocommit=False)
    writer.execute("INSERT INTO t VALUES (1000)")

    def finish_writer_when_the_drop_waits() -> None:
        with pg.connect(pg_db) as watcher:
            wait_for(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'DROP INDEX CONCURRENTLY%'"
                    ).fetchone()
                    == (1,)
                ),
                "pyops to wait in DROP INDEX CONCURRENTLY",
            )
        writer.rollback()

    helper = threading.Thread(target=finish_writer_when_the_drop_waits, daemon=True)
    helper.start()
    try:
        proc, doc = maintain(config, "--operation", "reindex")
    finally:
        helper.join(timeout=20)
        writer.rollback()
        writer.close()
    assert proc.returncode == 0, proc.stderr
    step = one(doc, "reindex", "public.t_pkey")
    assert step["status"] == "timeout"
    assert step["details"]["dropped_leftovers"] == ["public.t_pkey_ccnew"]
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."t_pkey_ccnew";' in step["sql"]
    assert value(pg, pg_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


def test_a_role_that_owns_nothing_is_skipped_not_failed(
    pg: PgCluster, pg_db: str, make_config: MakeConfig
) -> None:
    role = f"maint_{pg_db}"
    pg.create_role(role, "unused")
    try:
        pg.psql(
            f"""
            CREATE EXTENSION amcheck;
            CREATE TABLE theirs (id int PRIMARY KEY);
            CREATE TABLE mine (id int PRIMARY KEY);
            ALTER TABLE mine OWNER TO {role};
            """,
            dbname=pg_db,
        )
        target = (
            f'[[targets]]\nname = "app-db"\ntype = "postgres"\ndsn = "{pg.dsn(pg_db, user=role)}"\n'
        )
        proc, doc = maintain(make_config(target), "--operation", "vacuum,reindex,amcheck")
        assert proc.returncode == 0, proc.stderr
        assert one(doc, "vacuum", "public.mine")["status"] == "ok"
        assert one(doc, "reindex", "public.mine_pkey")["status"] == "ok"
        theirs = one(doc, "vacuum", "public.theirs")
        assert theirs["status"] == "skipped" and "not the owner" in theirs["details"]["note"]
        assert one(doc, "reindex", "public.theirs_pkey")["status"] == "skipped"
        amcheck = one(doc, "amcheck", "app-db")
        assert amcheck["status"] == "skipped" and "GRANT EXECUTE" in amcheck["details"]["note"]
    finally:
        pg.psql(f"DROP OWNED BY {role}", dbname=pg_db)
        pg.drop_role(role)
