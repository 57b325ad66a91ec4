"""Fixtures for the end-to-end tests (real CLI, real PostgreSQL, real gpg)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Repo, drop_databases
from fixtures.gpgkeys import cleanup_home, make_gnupghome
from fixtures.pgcluster import PgCluster


@pytest.fixture
def src_db(pg: PgCluster, pg_db: str) -> Iterator[str]:
    """`pg_db`, plus cleanup of every database whose name starts with it
    (restores `--into <db>_x`, `<db>_pre_restore_<ts>`, `<db>_pyops_restore_<ts>`)."""
    try:
        yield pg_db
    finally:
        drop_databases(pg, pg_db)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A not-yet-existing repository under tmp_path; pyops creates it."""
    return Repo(tmp_path)


@pytest.fixture
def empty_gnupghome() -> Iterator[Path]:
    """A fresh GNUPGHOME without keys whose agent caches no passphrase."""
    home = make_gnupghome()
    try:
        yield home
    finally:
        cleanup_home(home)


@pytest.fixture
def pg_role(pg: PgCluster) -> Iterator[tuple[str, str]]:
    """(name, password) of a fresh LOGIN CREATEDB role; dropped (with what it owns)."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    pg.create_role(name, password)
    try:
        yield name, password
    finally:
        with contextlib.suppress(Exception):
            with pg.connect() as conn:
                owned = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT datname FROM pg_database d JOIN pg_roles r "
                        "ON r.oid = d.datdba WHERE r.rolname = %s",
                        (name,),
                    ).fetchall()
                ]
            for db in owned:
                pg.drop_database(db)
            pg.drop_role(name)
