"""Fixtures for the container tests: a PostgreSQL reachable only through `<engine>
exec` (ct_support), a fake engine first on PATH, a password-protected application
database in it, and a repository whose pyops runs see that PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ct_support import (
    APP_SCHEMA,
    CONTAINER,
    IMAGE,
    PW_ENV,
    App,
    Box,
    Engine,
    databases,
    make_engine,
    start_box,
    target,
)
from e2e.e2e_support import Repo
from fixtures.pgcluster import PgNotAvailable


def _usable() -> str | None:
    for tool in ("unshare", "nsenter", "ip", "perl"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "true"], capture_output=True, text=True, check=False
    )
    return None if probe.returncode == 0 else f"unshare not permitted: {probe.stderr.strip()}"


@pytest.fixture(scope="session")
def box() -> Iterator[Box]:
    """One PostgreSQL in namespaces of its own for the whole session."""
    why = _usable()
    if why:
        pytest.skip(why)
    try:
        started = start_box()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def engine(box: Box, tmp_path: Path) -> Engine:
    """The fake docker, with container `postgres_db` (a Debian-like image)."""
    made = make_engine(tmp_path / "engine", ("docker", "podman"))
    made.add(CONTAINER, box.pid, IMAGE, box.bindir)
    return made


@pytest.fixture
def app(box: Box) -> Iterator[App]:
    tag = uuid.uuid4().hex[:10]
    made = App(f"app_{tag}", f"r_{tag}", f"pw-{uuid.uuid4().hex}")
    box.psql(
        f"CREATE ROLE {made.role} LOGIN CREATEDB PASSWORD '{made.password}';"
        f"CREATE DATABASE {made.db} OWNER {made.role};"
    )
    box.psql(f"SET ROLE {made.role};\n{APP_SCHEMA}", made.db)
    try:
        yield made
    finally:
        for name in databases(box, made.db) + databases(box, "pyops_drill_"):
            box.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        box.psql(f"DROP ROLE IF EXISTS {made.role}")


@pytest.fixture
def repo(tmp_path: Path, engine: Engine, app: App) -> Repo:
    """A repository with target `app` in the container; pyops runs with the fake
    engine first on PATH and the role's password in PW_ENV."""
    made = Repo(tmp_path, env={"PATH": engine.path_env(), PW_ENV: app.password})
    assert PW_ENV not in os.environ
    return made.write(target("app", app.dsn()))
