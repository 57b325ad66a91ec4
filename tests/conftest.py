"""Shared pytest fixtures: a throwaway PostgreSQL cluster and real GnuPG keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fixtures.gpgkeys import GpgKey, cleanup_home, generate_key
from fixtures.pgcluster import PgCluster, PgNotAvailable, start_cluster

GPG_TEST_PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """Session-wide throwaway PostgreSQL cluster (skips if no server binaries)."""
    try:
        cluster = start_cluster()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))
    with cluster:
        yield cluster


@pytest.fixture
def pg_db(pg: PgCluster) -> Iterator[str]:
    """Name of a fresh, uniquely named database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    try:
        yield name
    finally:
        pg.drop_database(name)


@pytest.fixture
def gpg_home() -> Iterator[GpgKey]:
    """A GNUPGHOME holding a key pair without passphrase."""
    key = generate_key()
    try:
        yield key
    finally:
        cleanup_home(key.gnupghome)


@pytest.fixture
def gpg_home_protected() -> Iterator[GpgKey]:
    """A GNUPGHOME holding a passphrase-protected key; ``key.passphrase`` is the str."""
    key = generate_key(passphrase=GPG_TEST_PASSPHRASE)
    try:
        yield key
    finally:
        cleanup_home(key.gnupghome)
