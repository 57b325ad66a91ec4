"""The command's outside: target selection, exit codes, text and JSON layout, and a
report that does not hang behind another session's exclusive lock."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import TARGET, ReportDb, target_toml
from fixtures.cli import run_pyops, write_config
from fixtures.pgcluster import PgCluster

from pyops.report.registry import SECTIONS

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_all_sections_in_order_as_text_and_json(db: ReportDb) -> None:
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    text = db.run()
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"== {TARGET}: postgres@")
    headers = [
        line.split(":")[0][3:] for line in text.stdout.splitlines() if line.startswith("-- ")
    ]
    assert headers == list(SECTIONS)
    # aligned: the header row and the data rows of a table start their columns together
    lines = text.stdout.splitlines()
    i = lines.index("  largest tables of " + db.name + ":")
    header, row = lines[i + 1], lines[i + 2]
    assert header.split()[:2] == ["table", "total"] and row.split()[0] == "public.t"
    assert header.index("total") + len("total") == row.index("KiB") + len("KiB")

    doc = db.report()
    assert list(doc) == list(SECTIONS)
    assert doc["connections"]["facts"]["max_connections"] == 50
    assert db.name in [d["database"] for d in doc["size"]["databases"]]
    assert {"critical", "warning", "info"} == set(doc["recommendations"]["facts"])


def test_target_must_be_postgres(pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "pyops.toml",
        tmp_path / "repo",
        target_toml(pg.dsn(pg_db))
        + f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{tmp_path}"]\n',
    )
    refused = run_pyops(config, "db", "report", "--target", "media")
    assert refused.returncode == 2
    assert "--target" in refused.stderr and "'media' is a files target" in refused.stderr
    assert refused.stdout == ""
    unknown = run_pyops(config, "db", "report", "--target", "nope")
    assert unknown.returncode == 2 and "--target" in unknown.stderr
    bad_section = run_pyops(config, "db", "report", "--section", "everything")
    assert bad_section.returncode == 2 and "--section" in bad_section.stderr
    # by default every PostgreSQL target, and only those
    default = run_pyops(config, "db", "report", "--section", "connections", "--format", "json")
    assert default.returncode == 0, default.stderr
    assert list(json.loads(default.stdout)) == [TARGET]

    files_only = write_config(
        tmp_path / "files.toml",
        tmp_path / "repo",
        f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{tmp_path}"]\n',
    )
    none = run_pyops(files_only, "db", "report")
    assert none.returncode == 2 and "no PostgreSQL target configured" in none.stderr


def test_unreachable_target_fails_alone(pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    dead = f"host=127.0.0.1 port={_free_port()} dbname=app user=postgres"
    config = write_config(
        tmp_path / "pyops.toml",
        tmp_path / "repo",
        target_toml(dead, "gone") + target_toml(pg.dsn(pg_db)),
    )
    result = run_pyops(config, "db", "report", "--section", "wraparound", "--format", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["gone"]["error"].startswith("target gone: cannot reach PostgreSQL")
    assert pg_db in [d["database"] for d in doc[TARGET]["wraparound"]["databases"]]


def test_sizes_do_not_wait_for_an_exclusive_lock(db: ReportDb) -> None:
    db.sql("CREATE TABLE locked (id int)", "CREATE TABLE free (id int)")
    holder = db.connect(autocommit=False)
    try:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        doc = db.report("size", "indexes", "bloat")
        assert time.monotonic() - t0 < 10
        sizes = {t["table"]: t["total_bytes"] for t in doc["size"]["tables"]}
        assert sizes["public.locked"] is None and sizes["public.free"] == 0
        assert any("ACCESS EXCLUSIVE" in n for n in doc["size"]["notes"])
    finally:
        holder.close()
