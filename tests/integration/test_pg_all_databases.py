"""Every database covered, through the real CLI against real clusters:

- `databases = "all"`: one backup per database (its own id, retention, drill), each
  restorable; a database created later is picked up by the next run; one whose name
  cannot be part of a target name is reported; an unreachable server fails the run;
- `health --check coverage`: a database nothing backs up is a warning naming it;
- `exclude_table_data`: schema kept, rows gone, recorded, and the drill still passes;
- `enable_row_security`: a FORCE ROW LEVEL SECURITY table owned by the backup role.

The "all" tests get a cluster of their own: they back up every database it holds."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.pgcluster import PgCluster, PgNotAvailable, start_cluster
from integration_helpers import Pyops, output

pytestmark = pytest.mark.postgres

ROWS = {"app": 100, "shop": 50, "billing": 20, "scratch_1": 5}


def toml(value: str) -> str:
    return json.dumps(value)


def target(name: str, dsn: str, **keys: Any) -> str:
    lines = ["[[targets]]", f"name = {toml(name)}", 'type = "postgres"', f"dsn = {toml(dsn)}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def fill(pg: PgCluster, db: str, rows: int) -> None:
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, note text);"
        f"INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, {rows}) g;",
        dbname=db,
    )


def count(pg: PgCluster, db: str, table: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM {table}", dbname=db).strip())


def as_json(proc: Any, key: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(proc.stdout)[key]
    return data


@pytest.fixture(scope="module")
def server() -> Iterator[PgCluster]:
    try:
        cluster = start_cluster()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))
    with cluster:
        for db, rows in ROWS.items():
            cluster.create_database(db)
            fill(cluster, db, rows)
        yield cluster


@pytest.fixture
def all_config(pyops: Pyops, server: PgCluster) -> str:
    body = target(
        "pg-all", server.dsn("postgres"), databases="all", exclude=["postgres", "scratch_*"]
    )
    pyops.write(body)
    return body


def health(pyops: Pyops, check: str) -> tuple[int, dict[str, Any]]:
    proc = pyops.run("health", "--check", check, "--format", "json")
    (result,) = json.loads(proc.stdout)["checks"]
    return proc.returncode, result


# --- databases = "all" ---------------------------------------------------------------------


def test_one_backup_per_database_each_restorable_and_drillable(
    pyops: Pyops, server: PgCluster, all_config: str
) -> None:
    proc = pyops.ok("backup", "--format", "json")
    results = as_json(proc, "backups")
    assert sorted(r["target"] for r in results) == ["pg-all-app", "pg-all-billing", "pg-all-shop"]
    assert all(r["ok"] and r["id"].startswith(f"{r['target']}.daily.") for r in results)
    for r in results:
        manifest = pyops.manifest(r["id"])
        db = r["target"].removeprefix("pg-all-")
        assert manifest["source"]["database"] == db
        assert manifest["content"]["tables"] == {"public.items": ROWS[db]}

    # list, verify and prune take the "all" target's name for its databases' backups
    listed = pyops.listed("--target", "pg-all")
    assert sorted(b["target"] for b in listed) == ["pg-all-app", "pg-all-billing", "pg-all-shop"]
    verified = as_json(pyops.ok("verify", "--target", "pg-all", "--format", "json"), "results")
    assert len(verified) == 3 and all(v["ok"] for v in verified)
    pruned = as_json(
        pyops.ok("prune", "--target", "pg-all", "--dry-run", "--format", "json"), "backups"
    )
    assert sorted(p["target"] for p in pruned) == ["pg-all-app", "pg-all-billing", "pg-all-shop"]
    assert all(p["keep"] for p in pruned)

    drilled = pyops.ok(
        "drill", "--target", "pg-all-app", "--target", "pg-all-shop", "--target", "pg-all-billing",
        "--format", "json",
    )  # fmt: skip
    drills = as_json(drilled, "drills")
    assert [d["ok"] for d in drills] == [True, True, True], output(drilled)
    assert {d["target"]: d["checked"]["rows"] for d in drills} == {
        "pg-all-app": 100,
        "pg-all-shop": 50,
        "pg-all-billing": 20,
    }

    # named both ways, a database is backed up once
    again = pyops.ok("backup", "--target", "pg-all", "--target", "pg-all-app", "--format", "json")
    assert sorted(r["target"] for r in as_json(again, "backups")) == [
        "pg-all-app",
        "pg-all-billing",
        "pg-all-shop",
    ]

    copy = f"shop_copy_{uuid.uuid4().hex[:6]}"
    try:
        restored = pyops.run(
            "restore", "--latest", "--target", "pg-all-shop", "--into", copy, "--yes"
        )
        assert restored.returncode == 0, output(restored)
        assert count(server, copy, "items") == 50
    finally:
        server.drop_database(copy)


def test_a_database_created_later_is_backed_up_by_the_next_run(
    pyops: Pyops, server: PgCluster, all_config: str
) -> None:
    first = as_json(pyops.ok("backup", "--format", "json"), "backups")
    assert "pg-all-later" not in {r["target"] for r in first}
    server.create_database("later")
    try:
        fill(server, "later", 7)
        code, coverage = health(pyops, "coverage")
        assert (code, coverage["status"]) == (0, "ok"), coverage  # the "all" target covers it
        assert "scratch_1 (pg-all: exclude 'scratch_*')" in coverage["message"]
        # until its first backup, its freshness says so
        code, fresh = health(pyops, "backup_freshness")
        assert (
            fresh["status"] == "critical"
            and "pg-all-later: no complete local backup" in fresh["message"]
        )
        second = as_json(pyops.ok("backup", "--format", "json"), "backups")
        assert {r["target"] for r in second} == {
            "pg-all-app",
            "pg-all-billing",
            "pg-all-shop",
            "pg-all-later",
        }
        later = next(r for r in second if r["target"] == "pg-all-later")
        assert pyops.manifest(later["id"])["content"]["tables"] == {"public.items": 7}
        code, fresh = health(pyops, "backup_freshness")
        assert fresh["status"] == "ok", fresh

        # with targets of their own only, what nothing covers is a warning naming it
        pyops.write(target("app-db", server.dsn("app")))
        code, coverage = health(pyops, "coverage")
        assert (code, coverage["status"]) == (1, "warning"), coverage
        for db in ("postgres", "shop", "billing", "scratch_1", "later"):
            assert f"database {db!r} has no backup: no target covers it" in coverage["message"]
        assert "'app'" not in coverage["message"]
        assert (
            coverage["metrics"][next(k for k in coverage["metrics"] if k.endswith(".uncovered"))]
            == 5
        )
    finally:
        server.drop_database("later")


def test_a_database_the_all_target_cannot_name_is_reported(
    pyops: Pyops, server: PgCluster, all_config: str
) -> None:
    server.create_database("my db")
    try:
        proc = pyops.ok("backup", "--format", "json")
        assert "my db" not in proc.stdout
        assert "database 'my db' is not backed up by target pg-all" in proc.stderr
        assert "Give it a target of its own" in proc.stderr
        (run,) = as_json(pyops.ok("history", "--limit", "1", "--format", "json"), "runs")
        assert run["result"] == "ok" and run["warnings"] == 1
        assert "database 'my db' is not backed up" in run["not_backed_up"][0]
        code, coverage = health(pyops, "coverage")
        assert (code, coverage["status"]) == (1, "warning")
        assert "database 'my db' is not backed up by target pg-all" in coverage["message"]

        # given a target of its own, it is covered and the run no longer warns
        pyops.write(all_config + target("my-db", server.dsn("my db")))
        code, coverage = health(pyops, "coverage")
        assert (code, coverage["status"]) == (0, "ok"), coverage
        proc = pyops.ok("backup", "--format", "json")
        assert "my db" not in proc.stderr
        assert "my-db" in {r["target"] for r in as_json(proc, "backups")}
    finally:
        server.drop_database("my db")


def test_an_unreachable_server_fails_the_run(pyops: Pyops, server: PgCluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = s.getsockname()[1]
        dead = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
        pyops.write(
            target("pg-all", dead, databases="all")
            + target("app-db", server.dsn("app"))
        )  # fmt: skip
        proc = pyops.run("backup", "--format", "json")
    assert proc.returncode == 1, output(proc)
    results = {r["target"]: r for r in as_json(proc, "backups")}
    assert results["app-db"]["ok"]
    assert not results["pg-all"]["ok"]
    assert "cannot list the databases of the server" in results["pg-all"]["error"]
    assert "cannot reach PostgreSQL" in results["pg-all"]["error"]


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"databases": "every"}, "targets[0].databases"),
        ({"exclude": ["scratch_*"]}, "targets[0].exclude"),
        ({"exclude_table_data": ["app.public.items"]}, "targets[0].exclude_table_data[0]"),
        ({"exclude_table_data": ['"unclosed']}, "targets[0].exclude_table_data[0]"),
        ({"enable_row_security": "yes"}, "targets[0].enable_row_security"),
    ],
)
def test_bad_keys_exit_2_naming_the_key(pyops: Pyops, keys: dict[str, Any], key: str) -> None:
    pyops.write(target("pg", "host=/tmp dbname=app", **keys))
    proc = pyops.run("config", "check")
    assert proc.returncode == 2, output(proc)
    assert f"config: {key}:" in proc.stderr


def test_a_target_named_like_a_database_of_an_all_target_is_refused(pyops: Pyops) -> None:
    pyops.write(
        target("pg-all", "host=/tmp dbname=postgres", databases="all")
        + target("pg-all-app", "host=/tmp dbname=app")
    )
    proc = pyops.run("backup")
    assert proc.returncode == 2, output(proc)
    assert "config: targets[1].name: 'pg-all-app' would also be the name of" in proc.stderr


# --- exclude_table_data ------------------------------------------------------------------------


def test_exclude_table_data_keeps_the_schema_and_drops_the_rows(
    pyops: Pyops, pg: PgCluster, pg_db: str
) -> None:
    pg.psql(
        "CREATE TABLE django_session (k text PRIMARY KEY, v text);"
        "INSERT INTO django_session SELECT 's' || g, 'x' FROM generate_series(1, 30) g;"
        "CREATE SCHEMA audit;"
        "CREATE TABLE audit.log (id int); INSERT INTO audit.log SELECT generate_series(1, 40);"
        'CREATE TABLE audit."Events" (id int); INSERT INTO audit."Events" VALUES (1), (2);'
        # not on the search_path: an unqualified pattern does not reach it (pg_dump's rule)
        "CREATE SCHEMA other;"
        "CREATE TABLE other.django_session (k text); INSERT INTO other.django_session VALUES ('a');"
        "CREATE TABLE keep (id int); INSERT INTO keep SELECT generate_series(1, 12);",
        dbname=pg_db,
    )
    patterns = ["django_session", "audit.*"]
    pyops.write(target("app", pg.dsn(pg_db), exclude_table_data=patterns))
    backup_id = pyops.backup("app")
    manifest = pyops.manifest(backup_id)
    assert manifest["source"]["exclude_table_data"] == patterns
    assert manifest["source"]["tables_without_data"] == [
        "audit.Events",
        "audit.log",
        "public.django_session",
    ]
    assert manifest["content"]["tables"] == {
        "audit.Events": 0,
        "audit.log": 0,
        "other.django_session": 1,
        "public.django_session": 0,
        "public.keep": 12,
    }
    drill = pyops.ok("drill", "--target", "app", "--format", "json")
    assert as_json(drill, "drills")[0]["ok"], output(drill)

    copy = f"{pg_db}_copy"
    try:
        proc = pyops.run("restore", backup_id, "--into", copy, "--yes")
        assert proc.returncode == 0, output(proc)
        assert (
            "note:        rows of django_session, audit.* were not backed up "
            "(exclude_table_data): those tables come back empty"
        ) in proc.stderr
        assert count(pg, copy, "django_session") == 0  # the table is there, empty
        assert count(pg, copy, "audit.log") == 0
        assert count(pg, copy, 'audit."Events"') == 0
        assert count(pg, copy, "other.django_session") == 1
        assert count(pg, copy, "keep") == 12
        assert count(pg, pg_db, "django_session") == 30  # the source is untouched
    finally:
        pg.drop_database(copy)


def test_a_search_path_setting_decides_what_an_unqualified_pattern_matches(
    pyops: Pyops, pg: PgCluster, pg_db: str
) -> None:
    """pg_dump matches `django_session` against the tables visible on the session's
    search_path, which the database's own setting decides: pyops counts the same."""
    pg.psql(
        "CREATE SCHEMA app;"
        "CREATE TABLE app.django_session (k text); INSERT INTO app.django_session VALUES ('a');"
        "CREATE TABLE public.django_session (k text);"
        "INSERT INTO public.django_session VALUES ('b'), ('c');"
        f'ALTER DATABASE "{pg_db}" SET search_path = app, public;',
        dbname=pg_db,
    )
    pyops.write(target("app", pg.dsn(pg_db), exclude_table_data=["django_session"]))
    manifest = pyops.manifest(pyops.backup("app"))
    # app.django_session hides public.django_session on that search_path
    assert manifest["source"]["tables_without_data"] == ["app.django_session"]
    assert manifest["content"]["tables"] == {"app.django_session": 0, "public.django_session": 2}
    drill = pyops.ok("drill", "--target", "app", "--format", "json")
    assert as_json(drill, "drills")[0]["ok"], output(drill)


# --- enable_row_security --------------------------------------------------------------------------


@pytest.fixture
def rls_db(pg: PgCluster) -> Iterator[tuple[str, str]]:
    """A database owned by a non-superuser role that owns a FORCE ROW LEVEL SECURITY
    table with a policy hiding some rows, even from it."""
    role = f"owner_{uuid.uuid4().hex[:8]}"
    db = f"rls_{uuid.uuid4().hex[:8]}"
    pg.create_role(role, "unused")
    pg.create_database(db, owner=role)
    pg.psql(
        f'SET ROLE "{role}";'
        "CREATE TABLE secrets (id int PRIMARY KEY, visible boolean NOT NULL);"
        "INSERT INTO secrets SELECT g, g % 3 <> 0 FROM generate_series(1, 30) g;"
        "ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE secrets FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY only_visible ON secrets USING (visible) WITH CHECK (true);"
        "CREATE TABLE plain (id int); INSERT INTO plain VALUES (1), (2), (3);",
        dbname=db,
    )
    try:
        yield role, db
    finally:
        pg.drop_database(db)
        pg.drop_role(role)


def test_row_security_needs_enable_row_security_and_then_drills(
    pyops: Pyops, pg: PgCluster, rls_db: tuple[str, str]
) -> None:
    role, db = rls_db
    dsn = pg.dsn(db, user=role)
    pyops.write(target("app", dsn))
    proc = pyops.run("backup", "--target", "app", "--format", "json")
    assert proc.returncode == 1, output(proc)
    (result,) = as_json(proc, "backups")
    assert "row-level security applies to table public.secrets" in result["error"]
    assert "FORCE ROW LEVEL SECURITY" in result["error"]
    assert "set enable_row_security = true in the target" in result["error"]
    assert pyops.listed() == []

    pyops.write(target("app", dsn, enable_row_security=True))
    backup_id = pyops.backup("app")
    manifest = pyops.manifest(backup_id)
    assert manifest["source"]["enable_row_security"] is True
    assert manifest["source"]["row_security_tables"] == ["public.secrets"]
    # what pg_dump saw under the policy: the 20 visible rows
    assert manifest["content"]["tables"] == {"public.plain": 3, "public.secrets": 20}
    drill = pyops.ok("drill", "--target", "app", "--format", "json")
    (drilled,) = as_json(drill, "drills")
    assert drilled["ok"], output(drill)
    assert drilled["checked"] == {"tables": 2, "rows": 23}


def test_rows_excluded_from_an_rls_table_need_no_row_security(
    pyops: Pyops, pg: PgCluster, rls_db: tuple[str, str]
) -> None:
    """pg_dump does not read a table whose rows exclude_table_data leaves out, so its
    policies are no obstacle."""
    role, db = rls_db
    pyops.write(target("app", pg.dsn(db, user=role), exclude_table_data=["secrets"]))
    manifest = pyops.manifest(pyops.backup("app"))
    assert manifest["content"]["tables"] == {"public.plain": 3, "public.secrets": 0}
