"""Fixtures for the health tests (helpers and local servers live in health_support.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from health_support import CA, Env, make_ca, redis_server


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path, tmp_path / "repo", tmp_path / "pyops.toml")
    e.repo.mkdir(mode=0o700)
    e.write()
    return e


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real redis-server (scripts/install-deps.sh installs it)."""
    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server not installed (scripts/install-deps.sh)")
    with redis_server(binary, tmp_path_factory.mktemp("redis")) as port:
        yield port
