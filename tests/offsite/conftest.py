"""An S3 server on 127.0.0.1 (moto's server mode), reached through boto3 with
endpoint_url exactly as a MinIO user configures it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

CREDS = {
    "AWS_ACCESS_KEY_ID": "pyops-test-key-id",
    "AWS_SECRET_ACCESS_KEY": "pyops-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3:
    server: ThreadedMotoServer
    url: str
    bucket: str
    client: Any

    def config(self, object_lock_days: int = 0, extra: str = "") -> str:
        return (
            f'[offsite]\nbucket = "{self.bucket}"\nendpoint_url = "{self.url}"\n'
            f'region = "us-east-1"\nprefix = "pyops"\nstorage_class = "STANDARD"\n'
            f"object_lock_days = {object_lock_days}\n{extra}\n"
        )

    def object_keys(self) -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(o["Key"] for o in found)


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


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Path:
    import sqlite3

    path = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(500)])
    conn.commit()
    conn.close()
    return path
