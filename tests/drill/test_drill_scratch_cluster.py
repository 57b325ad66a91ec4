"""`pyops drill --scratch-cluster` through the real CLI: the newest backup restored into
a throwaway initdb with no application roles, compared exactly, and the cluster gone."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drill_support import (
    ZSTD,
    Live,
    Repo,
    databases_like,
    describe,
    edit_manifest,
    files_target,
    newest_manifest,
    pg_target,
    scratch_tmpdir,
    sqlite_target,
)
from fixtures.pgcluster import PgCluster
from psycopg import sql

from pyops import scratchcluster

PG_ROWS = 250 + 17 + 3  # drill_support.seed_postgres


@pytest.fixture
def tmpdir_env(repo: Repo) -> Iterator[Path]:
    """pyops' TMPDIR (where the scratch cluster goes): empty again afterwards."""
    if not scratchcluster.installed():
        pytest.skip("no /usr/lib/postgresql/<major>/bin with a server")
    with scratch_tmpdir() as path:
        repo.env["TMPDIR"] = str(path)
        yield path


def only_drill(proc_stdout: str) -> dict[str, Any]:
    (d,) = json.loads(proc_stdout)["drills"]
    assert isinstance(d, dict)
    return d


def newest_drill_record(repo: Repo) -> dict[str, Any]:
    runs = [r for r in repo.json("history", "--limit", "5")["runs"] if r["command"] == "drill"]
    assert runs, "no drill in the run log"
    record: dict[str, Any] = runs[0]
    return record


def server_major(pg: PgCluster) -> int:
    with pg.connect() as conn:
        return conn.info.server_version // 10000


def test_a_superuser_owned_database_comes_back_on_a_bare_cluster(
    repo: Repo, live: Live, tmpdir_env: Path
) -> None:
    repo.write(pg_target("appdb", live.pg.dsn(live.db)) + ZSTD)
    repo.ok("backup")
    before = live.fingerprint()

    proc = repo.run("drill", "--scratch-cluster", "--format", "json")
    assert proc.returncode == 0, describe(proc)
    d = only_drill(proc.stdout)
    assert d["ok"] is True and d["error"] is None, d
    assert d["scratch_cluster"] == f"PostgreSQL {server_major(live.pg)}"
    assert d["scratch"] == live.db  # its original name, on the new cluster
    assert d["checked"] == {"tables": 3, "rows": PG_ROWS}
    assert d["cluster_s"] > 0 and d["restore_s"] > 0
    total = d["fetch_s"] + d["cluster_s"] + d["restore_s"] + d["check_s"]
    assert d["rto_s"] == pytest.approx(total, abs=0.01)
    assert d["leftover"] is None and d["warnings"] == [], d

    # nothing on the live server, nothing left of the cluster, live data untouched
    assert list(tmpdir_env.iterdir()) == []
    assert databases_like(live.pg, "pyops_drill_") == []
    assert live.fingerprint() == before
    record = newest_drill_record(repo)
    assert record["result"] == "ok" and record["targets"] == ["appdb"]
    assert record["drills"][0]["scratch_cluster"] == d["scratch_cluster"]

    text = repo.run("drill", "--scratch-cluster")
    assert text.returncode == 0, describe(text)
    line = text.stdout.strip()
    assert line.startswith(f"appdb: ok {d['backup']} RTO "), line
    assert "cluster " in line and line.endswith(f"in a scratch cluster ({d['scratch_cluster']})")
    assert list(tmpdir_env.iterdir()) == []


@pytest.fixture
def owned(pg: PgCluster) -> Iterator[tuple[str, str, str]]:
    """A database owned by a non-superuser role, with a read-only role granted SELECT:
    (database, owner, reader)."""
    tag = uuid.uuid4().hex[:8]
    db, owner, reader = f"owned_{tag}", f"app_owner_{tag}", f"app_ro_{tag}"
    pg.create_role(owner, "unused")
    pg.create_role(reader, "unused")
    pg.create_database(db, owner=owner)
    pg.psql(
        f"""
        SET ROLE {owner};
        CREATE TABLE items (id int PRIMARY KEY, name text);
        INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 40) g;
        CREATE SCHEMA audit;
        CREATE TABLE audit.events (id bigserial PRIMARY KEY, what text);
        INSERT INTO audit.events (what) SELECT 'e' || g FROM generate_series(1, 5) g;
        GRANT USAGE ON SCHEMA audit TO {reader};
        GRANT SELECT ON ALL TABLES IN SCHEMA public, audit TO {reader};
        """,
        dbname=db,
    )
    try:
        yield db, owner, reader
    finally:
        pg.drop_database(db)
        for role in (owner, reader):
            pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            pg.drop_role(role)


def test_a_database_of_an_owner_role_with_grants_comes_back_on_a_bare_cluster(
    repo: Repo, live: Live, owned: tuple[str, str, str], tmpdir_env: Path
) -> None:
    db, owner, _ = owned
    repo.write(pg_target("owned", live.pg.dsn(db, user=owner)) + ZSTD)
    repo.ok("backup")
    proc = repo.run("drill", "--scratch-cluster", "--format", "json")
    d = only_drill(proc.stdout)
    assert list(tmpdir_env.iterdir()) == []
    assert d["ok"] is True, d["error"]
    assert proc.returncode == 0, describe(proc)
    assert d["scratch"] == db
    assert d["checked"] == {"tables": 2, "rows": 45}


def test_a_failure_on_the_scratch_cluster_is_that_targets_alone_and_leaves_nothing(
    repo: Repo, live: Live, tmpdir_env: Path
) -> None:
    repo.write(pg_target("appdb", live.pg.dsn(live.db)) + sqlite_target("lite", live.sqlite) + ZSTD)
    repo.ok("backup")
    manifest = newest_manifest(repo.path, "appdb")

    def wrong(doc: dict[str, Any]) -> None:
        doc["content"]["tables"]["public.items"] += 1

    edit_manifest(manifest, wrong)

    proc = repo.run("drill", "--scratch-cluster", "--format", "json")
    assert proc.returncode == 1, describe(proc)
    drills = {d["target"]: d for d in json.loads(proc.stdout)["drills"]}
    assert drills["appdb"]["ok"] is False
    assert "table public.items: 250 rows, manifest says 251" in drills["appdb"]["error"]
    assert drills["lite"]["ok"] is True, drills["lite"]
    assert list(tmpdir_env.iterdir()) == []
    assert newest_drill_record(repo)["result"] == "failed"


def test_sqlite_and_files_targets_ignore_it_with_a_note(
    repo: Repo, live: Live, tmpdir_env: Path
) -> None:
    repo.write(sqlite_target("lite", live.sqlite) + files_target("media", live.files) + ZSTD)
    repo.ok("backup")
    proc = repo.run("drill", "--scratch-cluster", "--format", "json")
    assert proc.returncode == 0, describe(proc)
    for d in json.loads(proc.stdout)["drills"]:
        assert d["ok"] is True and d["scratch_cluster"] is None, d
        assert d["cluster_s"] == 0
        (note,) = d["warnings"]
        assert "--scratch-cluster applies to postgres targets" in note, note
    record = newest_drill_record(repo)
    assert record["result"] == "ok" and record["warnings"] == 2
    text = repo.run("drill", "--scratch-cluster")
    assert text.returncode == 0, describe(text)
    assert text.stdout.count("\n  warning: --scratch-cluster applies to postgres targets") == 2
    assert list(tmpdir_env.iterdir()) == []


def test_keep_and_scratch_cluster_are_refused_together(repo: Repo, live: Live) -> None:
    repo.write(pg_target("appdb", live.pg.dsn(live.db)))
    proc = repo.run("drill", "--scratch-cluster", "--keep")
    assert proc.returncode == 2, describe(proc)
    assert "--keep and --scratch-cluster" in proc.stderr
