"""One target's failure is its own: the other targets still drill. A scratch that could
not be removed is reported, with the command that removes it, and the drill still
counts as passed."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from drill_support import (
    ZSTD,
    Live,
    Repo,
    databases_like,
    describe,
    files_target,
    pg_target,
    sqlite_target,
    toml_str,
)
from fixtures.pgcluster import PgCluster
from psycopg import sql


def by_target(stdout: str) -> dict[str, dict[str, Any]]:
    return {d["target"]: d for d in json.loads(stdout)["drills"]}


def newest_drill_record(repo: Repo) -> dict[str, Any]:
    runs = [r for r in repo.json("history", "--limit", "5")["runs"] if r["command"] == "drill"]
    assert runs, "no drill in the run log"
    record: dict[str, Any] = runs[0]
    return record


def test_an_os_error_fails_only_its_targets(repo: Repo, live: Live) -> None:
    """A file where the drill directory should be (an OSError, not a PyopsError) used
    to end the whole run with "unexpected error"."""
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + sqlite_target("lite", live.sqlite)
        + files_target("media", live.files)
        + ZSTD
    )
    repo.ok("backup")
    if repo.drill_dir.exists():
        shutil.rmtree(repo.drill_dir)
    repo.drill_dir.write_text("not a directory\n")

    proc = repo.run("drill", "--format", "json")
    assert proc.returncode == 1, describe(proc)
    drills = by_target(proc.stdout)
    assert sorted(drills) == ["appdb", "lite", "media"]
    assert drills["appdb"]["ok"] is True, drills["appdb"]
    for name in ("lite", "media"):
        error = drills[name]["error"]
        assert drills[name]["ok"] is False
        assert "a file stands where a directory should be" in error, error
        assert str(repo.drill_dir) in error, error
        assert "unexpected" not in error
    assert "unexpected error" not in proc.stderr, describe(proc)
    record = newest_drill_record(repo)
    assert record["result"] == "failed"
    assert [d["target"] for d in record["drills"]] == ["appdb", "lite", "media"]


@pytest.fixture
def owner_db(pg: PgCluster) -> Iterator[tuple[str, str, str]]:
    """(database, owner, other): a database of a non-superuser owner (the target's role)
    and another role that may connect to what the owner creates."""
    tag = uuid.uuid4().hex[:8]
    db, owner, other = f"iso_{tag}", f"iso_owner_{tag}", f"iso_reader_{tag}"
    pg.create_role(owner, "unused")
    pg.create_role(other, "unused")
    pg.create_database(db, owner=owner)
    pg.psql(
        f"""
        SET ROLE {owner};
        CREATE TABLE big (id int PRIMARY KEY, pad text);
        INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 100000) g;
        """,
        dbname=db,
    )
    try:
        yield db, owner, other
    finally:
        pg.drop_database(db)
        for name in databases_like(pg, "pyops_drill_iso_"):
            pg.drop_database(name)
        for role in (owner, other):
            pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            pg.drop_role(role)


class Intruder:
    """Another role's session that walks into the drill's scratch database as soon as it
    exists and stays: the owner may not end it (no pg_signal_backend)."""

    def __init__(self, pg: PgCluster, user: str, prefix: str) -> None:
        self.pg, self.user, self.prefix = pg, user, prefix
        self.conn: psycopg.Connection[Any] | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and self.conn is None:
            for name in databases_like(self.pg, self.prefix):
                try:
                    self.conn = psycopg.connect(self.pg.dsn(name, user=self.user))
                except psycopg.OperationalError:
                    continue  # still being created
                return
            time.sleep(0.005)

    def __enter__(self) -> Intruder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        if self.conn is not None:
            self.conn.close()


def test_a_scratch_the_owner_cannot_drop_is_reported_and_the_drill_passes(
    repo: Repo, live: Live, owner_db: tuple[str, str, str], tmp_path: Path
) -> None:
    db, owner, other = owner_db
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    repo.write(
        pg_target("iso", live.pg.dsn(db, user=owner))
        + sqlite_target("lite", live.sqlite)
        + ZSTD
        + f"[metrics]\ntextfile_dir = {toml_str(metrics)}\n"
    )
    repo.ok("backup", "--target", "iso")
    repo.ok("backup", "--target", "lite")

    with Intruder(live.pg, other, "pyops_drill_iso_") as intruder:
        proc = repo.run("drill")  # text: what an operator reads
        assert intruder.conn is not None, "the other role never got into the scratch"
        pid = intruder.conn.info.backend_pid
    assert proc.returncode == 0, describe(proc)

    # the run counts as passed; the run log has every field, the warning and leftover
    record = newest_drill_record(repo)
    assert record["result"] == "ok"
    drills = {d["target"]: d for d in record["drills"]}
    iso = drills["iso"]
    assert iso["ok"] is True and iso["error"] is None, iso
    assert iso["checked"] == {"tables": 1, "rows": 100000}
    scratch = iso["scratch"]
    assert databases_like(live.pg, "pyops_drill_iso_") == [scratch]  # really left
    assert iso["leftover"] == (
        f"database {scratch} on {owner}@{live.pg.host}:{live.pg.port}/{db}: as its owner or a "
        f'superuser, DROP DATABASE "{scratch}" WITH (FORCE);'
    ), iso["leftover"]
    (warning,) = iso["warnings"]
    assert warning.startswith("scratch NOT removed: cannot drop database"), warning
    assert f"pid {pid} (user {other})" in warning, warning
    assert "GRANT pg_signal_backend TO" in warning, warning
    assert drills["lite"]["ok"] is True and drills["lite"]["leftover"] is None
    assert record["warnings"] == 1
    assert record["leftovers"] == [iso["leftover"]]

    # the output says it plainly, under the target's ok line
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("iso: ok iso.daily."), lines
    assert lines[1] == f"  warning: {warning}", lines
    assert lines[2] == f"  SCRATCH LEFT BEHIND: {iso['leftover']}", lines
    assert lines[3].startswith("lite: ok lite.daily."), lines
    assert "scratch left behind" in proc.stderr  # the log says so too

    prom = (metrics / "pyops_drill.prom").read_text()
    assert 'pyops_drill_last_warnings{target="iso",tier="daily"} 1' in prom, prom
    assert 'pyops_drill_last_run_ok{target="iso",tier="daily"} 1' in prom, prom
