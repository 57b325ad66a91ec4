"""`pyops db report` against the throwaway cluster: a database with
pg_stat_statements, a config naming it, and the real CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures.cli import run_pyops, write_config
from fixtures.pgcluster import PgCluster

TARGET = "app"


def flush(conn: psycopg.Connection[Any]) -> None:
    """Make this session's table and index counters visible to others now (PG 15
    flushes them at most once a second otherwise)."""
    conn.execute("SELECT pg_stat_force_next_flush()")


@dataclass
class ReportDb:
    pg: PgCluster
    name: str
    config: Path

    @property
    def dsn(self) -> str:
        return self.pg.dsn(self.name)

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit)

    def sql(self, *statements: str) -> None:
        """Each statement on its own (autocommit: CONCURRENTLY needs it), then flush."""
        with self.connect() as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]
            flush(conn)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, "db", "report", *args, timeout=120)

    def report(self, *sections: str, args: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON report of these sections for the one target; exit 0 required."""
        picked = [a for s in sections for a in ("--section", s)]
        result = self.run(*picked, *args, "--format", "json")
        assert result.returncode == 0, result.stderr + result.stdout
        doc = json.loads(result.stdout)
        assert list(doc) == [TARGET]
        section_doc: dict[str, Any] = doc[TARGET]
        return section_doc


def target_toml(dsn: str, name: str = TARGET) -> str:
    return f'[[targets]]\nname = {json.dumps(name)}\ntype = "postgres"\ndsn = {json.dumps(dsn)}\n'


def recommendations(doc: dict[str, Any], section: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = doc["recommendations"]["recommendations"]
    return [r for r in rows if section is None or r["section"] == section]


def advice_for(doc: dict[str, Any], section: str, obj: str) -> dict[str, Any]:
    found = [r for r in recommendations(doc, section) if r["object"] == obj]
    assert len(found) == 1, (section, obj, recommendations(doc))
    return found[0]


@pytest.fixture
def bare_db(pg: PgCluster, pg_db: str, tmp_path: Path) -> ReportDb:
    """A fresh database without pg_stat_statements, and a config naming it."""
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", target_toml(pg.dsn(pg_db)))
    return ReportDb(pg, pg_db, config)


@pytest.fixture
def db(bare_db: ReportDb) -> Iterator[ReportDb]:
    """The same with pg_stat_statements installed and this database's entries reset."""
    bare_db.sql(
        "CREATE EXTENSION pg_stat_statements",
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
        " WHERE datname = current_database()), 0)",
    )
    yield bare_db
