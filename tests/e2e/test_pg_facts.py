"""End to end, issue 10 row 15: `health`, `db report` and `maintenance` read one set
of PostgreSQL facts (pyops.pgfacts): the same thresholds from [health], the same
wraparound numbers (multixacts included), one bloat estimate (the one close to
pgstattuple), and one session type whose timeouts a role's own settings cannot
undo. The installed CLI against the throwaway cluster."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from e2e_support import Repo, describe, pg_target
from fixtures.pgcluster import PgCluster
from psycopg import sql

pytestmark = pytest.mark.postgres

TARGET = "app-db"


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health(repo: Repo, *checks: str) -> dict[str, dict[str, Any]]:
    args = [a for c in checks for a in ("--check", c)]
    proc = repo.run("health", *args, "--format", "json")
    assert proc.returncode in (0, 1, 2), describe(proc)
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def report(repo: Repo, *sections: str) -> dict[str, Any]:
    args = [a for s in sections for a in ("--section", s)]
    proc = repo.run("db", "report", *args, "--format", "json")
    assert proc.returncode == 0, describe(proc)
    doc: dict[str, Any] = json.loads(proc.stdout)[TARGET]
    return doc


def maintenance(repo: Repo, *operations: str) -> dict[str, Any]:
    args = [a for o in operations for a in ("--operation", o)]
    proc = repo.run("maintenance", *args, "--format", "json")
    assert proc.returncode == 0, describe(proc)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def advice(doc: dict[str, Any], section: str, obj: str) -> dict[str, Any]:
    found = [
        r
        for r in doc["recommendations"]["recommendations"]
        if r["section"] == section and r["object"] == obj
    ]
    assert len(found) == 1, (section, obj, doc["recommendations"])
    return found[0]


def test_health_and_db_report_judge_by_the_same_health_thresholds(
    pg: PgCluster, src_db: str, repo: Repo
) -> None:
    pg.psql("CREATE TABLE jobs (id int PRIMARY KEY); INSERT INTO jobs VALUES (1);", dbname=src_db)
    repo.write(
        pg_target(TARGET, pg.dsn(src_db)) + "\n[health]\n"
        "long_running_seconds = 1\nlong_running_critical_seconds = 2\n"
        "blocking_critical_seconds = 1\n"
        "wraparound_warn_percent = 0.00000001\nwraparound_critical_percent = 0.0000001\n"
    )
    sleeper, holder, waiter = (pg.connect(src_db) for _ in range(3))
    holder.autocommit = False
    watcher = pg.connect(src_db)
    sleeper_pid, holder_pid, waiter_pid = (c.info.backend_pid for c in (sleeper, holder, waiter))
    errors: list[BaseException] = []

    def run(conn: psycopg.Connection[Any], statement: str) -> threading.Thread:
        def body() -> None:
            try:
                conn.execute(statement)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    holder.execute("UPDATE jobs SET id = 1 WHERE id = 1")
    threads = [run(sleeper, "SELECT pg_sleep(60)"), run(waiter, "UPDATE jobs SET id = 2")]
    try:

        def busy_for(pid: int, seconds: float) -> bool:
            row = watcher.execute(
                "SELECT now() - query_start > make_interval(secs => %s) "
                "FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                (seconds, pid),
            ).fetchone()
            return bool(row and row[0])

        wait_for("pg_sleep to run 2.5 s", lambda: busy_for(sleeper_pid, 2.5))
        wait_for("the waiter to wait 1.5 s", lambda: busy_for(waiter_pid, 1.5))
        checks = health(repo, "long_running", "blocking", "wraparound")
        doc = report(repo, "long-running", "blocking", "wraparound", "recommendations")
    finally:
        watcher.execute("SELECT pg_cancel_backend(%s)", (sleeper_pid,))
        holder.rollback()
        for thread in threads:
            thread.join(30)
        for conn in (sleeper, holder, waiter, watcher):
            conn.close()

    # long-running: [health] long_running_seconds lists it in both, critical past 2 s
    # (the holder counts too: idle in its transaction, timed since that began)
    assert checks["long_running"]["status"] == "critical", checks["long_running"]
    assert checks["long_running"]["metrics"][f"{TARGET}.count"] == 3
    assert doc["long-running"]["facts"]["threshold_seconds"] == 1.0
    listed = {s["pid"] for s in doc["long-running"]["sessions"]}
    assert {sleeper_pid, holder_pid, waiter_pid} <= listed, doc["long-running"]
    assert advice(doc, "long-running", str(sleeper_pid))["severity"] == "critical"
    # blocking: critical past [health] blocking_critical_seconds in both
    assert checks["blocking"]["status"] == "critical", checks["blocking"]
    assert f"pid {waiter_pid} waits" in checks["blocking"]["message"]
    assert (waiter_pid, holder_pid) in [
        (p["blocked_pid"], p["blocking_pid"]) for p in doc["blocking"]["pairs"]
    ]
    assert advice(doc, "blocking", str(holder_pid))["severity"] == "critical"
    # wraparound: one measure (the nearer of xid and multixact age), one verdict
    assert checks["wraparound"]["status"] == "critical", checks["wraparound"]
    metrics = checks["wraparound"]["metrics"]
    worst = doc["wraparound"]["databases"][0]
    assert checks["wraparound"]["message"].startswith(
        f"{TARGET}: oldest xid age {int(metrics[f'{TARGET}.xid_age'])} in {worst['database']}"
    )
    assert metrics[f"{TARGET}.multixact_age"] == worst["multixact_age"]
    assert abs(metrics[f"{TARGET}.xid_age"] - worst["xid_age"]) <= 5
    assert abs(metrics[f"{TARGET}.wraparound_percent"] - worst["percent"]) < 1e-5
    assert advice(doc, "wraparound", worst["database"])["severity"] == "critical"


def test_a_role_with_statement_timeout_1ms_gets_health_report_and_maintenance(
    pg: PgCluster, pg_role: tuple[str, str], src_db: str, repo: Repo
) -> None:
    role, _ = pg_role
    pg.psql(
        "CREATE TABLE events AS SELECT g AS id, md5(g::text) AS payload"
        " FROM generate_series(1, 200000) g;"
        f"ALTER TABLE events OWNER TO {role};",
        dbname=src_db,
    )
    pg.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '1ms'").format(sql.Identifier(role)))
    repo.write(pg_target(TARGET, pg.dsn(src_db, user=role)))

    checks = health(repo, "database", "connections", "wraparound", "long_running", "blocking")
    for name, check in checks.items():
        assert check["status"] == "ok", (name, check)
    doc = report(repo, "connections", "size", "wraparound", "bloat")
    assert all("error" not in section for section in doc.values()), doc
    steps = maintenance(repo, "vacuum", "bloat", "stats")["steps"]
    assert steps and all(s["status"] == "ok" for s in steps), steps


def test_report_and_maintenance_give_one_bloat_estimate_near_pgstattuple(
    pg: PgCluster, src_db: str, repo: Repo
) -> None:
    """After VACUUM the dead tuples are gone but the space stays in the table: the
    estimate still sees it, as pgstattuple does (a dead-tuple share would say 0)."""
    pg.psql(
        """
        CREATE EXTENSION pgstattuple;
        CREATE TABLE churn (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off);
        INSERT INTO churn SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
        UPDATE churn SET payload = repeat('y', 100) WHERE id % 10 <> 0;
        """,
        dbname=src_db,
    )
    # a session of its own: the DML's counts (flushed as that session ended) must not
    # land on top of what VACUUM records
    pg.psql("VACUUM (ANALYZE) churn;", dbname=src_db)
    with pg.connect(src_db) as conn:
        length, dead, free = conn.execute(
            "SELECT table_len, dead_tuple_len, free_space FROM pgstattuple('churn')"
        ).fetchone() or (0, 0, 0)
        wait_for(
            "VACUUM's counts in pg_stat_user_tables",
            lambda: (
                conn.execute(
                    "SELECT n_dead_tup = 0 AND n_live_tup > 0 FROM pg_stat_user_tables "
                    "WHERE relname = 'churn'"
                ).fetchone()
                == (True,)
            ),
        )
    exact = (dead + free) / length
    repo.write(pg_target(TARGET, pg.dsn(src_db)))

    (row,) = [r for r in report(repo, "bloat")["bloat"]["tables"] if r["table"] == "public.churn"]
    (step,) = [
        s
        for s in maintenance(repo, "bloat")["steps"]
        if s["operation"] == "bloat" and s["object"] == "public.churn"
    ]
    details = step["details"]
    assert row["table_bytes"] == details["bytes"] == length
    assert row["wasted_bytes_estimate"] == details["wasted_bytes_est"]
    assert row["method"] == details["method"] == "pg_stats"
    assert row["n_dead_tup"] == 0
    assert abs(row["wasted_ratio_estimate"] - exact) < 0.1, (row, exact)
