"""Fixtures for the pgBackRest tests: one archiving cluster per module (its stanza
collects the backups of the module's tests), a pyops config per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.pgcluster import PgNotAvailable, start_cluster
from pgbr_support import Archiving, Pyops, setup_archiving


@pytest.fixture(scope="module")
def archiving() -> Iterator[Archiving]:
    """A cluster archiving into a fresh stanza, with a database `app` holding `events`."""
    if shutil.which("pgbackrest") is None:
        pytest.skip("pgbackrest not installed (scripts/install-deps.sh)")
    try:
        pg = start_cluster()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))
    with pg:
        # 4 processes: this machine's fsync is slow, and pgBackRest syncs every file
        found = setup_archiving(pg, {"process-max": "4"})
        pg.create_database("app")
        pg.psql(
            "CREATE TABLE events (id serial PRIMARY KEY, phase text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())",
            dbname="app",
        )
        yield found


@pytest.fixture
def pyops(archiving: Archiving, tmp_path: Path) -> Pyops:
    """pyops with the pgbackrest target, its metrics in tmp_path/prom."""
    (tmp_path / "prom").mkdir()
    extra = f'[metrics]\ntextfile_dir = "{tmp_path / "prom"}"\n'
    return Pyops(archiving.pyops_config(tmp_path / "pyops.toml", tmp_path / "repo", extra))
