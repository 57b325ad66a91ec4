"""Fixtures for the drill and script tests: live data of every target type, a repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from drill_support import Live, Repo, databases_like, seed_files, seed_postgres, seed_sqlite
from fixtures.pgcluster import PgCluster


@pytest.fixture
def live(pg: PgCluster, pg_db: str, tmp_path: Path) -> Iterator[Live]:
    """A seeded PostgreSQL database, SQLite file and directory; drill scratch databases
    left behind by a failing test are dropped afterwards."""
    seed_postgres(pg, pg_db)
    sqlite = tmp_path / "live" / "app.sqlite3"
    sqlite.parent.mkdir()
    seed_sqlite(sqlite)
    files = tmp_path / "live" / "media"
    files.mkdir()
    seed_files(files)
    try:
        yield Live(pg, pg_db, sqlite, files)
    finally:
        for name in databases_like(pg, "pyops_drill_"):
            pg.drop_database(name)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A not-yet-existing repository under tmp_path; pyops creates it."""
    return Repo(tmp_path)
