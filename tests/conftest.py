"""Shared pytest fixtures: a throwaway PostgreSQL cluster and real GnuPG keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from fixtures.gpgkeys import GpgKey, cleanup_home, generate_key
from fixtures.pgcluster import PgCluster, PgNotAvailable, start_cluster
from fixtures.s3 import CREDS, S3
from moto.server import ThreadedMotoServer

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[ThreadedMotoServer, str]]:
    saved = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield server, f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_server: tuple[ThreadedMotoServer, str]) -> S3:
    """A fresh bucket with versioning and object lock enabled."""
    server, url = s3_server
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    bucket = f"pyops-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return S3(server, url, bucket, client)
