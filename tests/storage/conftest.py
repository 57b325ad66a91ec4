"""Every storage implementation behind one fixture, for the conformance suite.

`backend` is parametrized over LocalStore (a directory under tmp_path), MemoryStore
and S3Store (moto's server on 127.0.0.1, a fresh bucket per test: the `s3` fixture of
tests/conftest.py), as restic's internal/backend/test/suite.go runs one suite against
every backend. The S3 server only starts when an S3 case runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.s3 import S3

from pyops.config import OffsiteConfig
from pyops.storage import Store
from pyops.storage.local import LocalStore
from pyops.storage.memory import MemoryStore
from pyops.storage.s3 import S3Store

KINDS = ("local", "memory", "s3")
S3_ROOT = "pyops/host-a/"


@dataclass
class Backend:
    kind: str
    store: Store
    other_root: Callable[[str], Store]  # another root in the same place (bucket, parent dir)
    scratch: Path  # for source files, outside every store
    s3: S3 | None = None  # the bucket, for looking behind the store's back
    local_root: Path | None = None
    s3_root: str = S3_ROOT

    def s3_store(self, bucket: str) -> S3Store:
        """An S3Store on the same server, in `bucket` (which may not exist)."""
        assert self.s3 is not None
        return S3Store(s3_config(self.s3, bucket), self.s3_root)


def s3_config(s3: S3, bucket: str | None = None) -> OffsiteConfig:
    return OffsiteConfig(
        bucket=bucket or s3.bucket,
        endpoint_url=s3.url,
        region="us-east-1",
        storage_class="STANDARD",
    )


def make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if kind == "local":
        root = tmp_path / "repo"
        root.mkdir()
        return Backend(kind, LocalStore(root), lambda name: LocalStore(tmp_path / name), scratch,
                       local_root=root)  # fmt: skip
    if kind == "memory":
        return Backend(kind, MemoryStore(), lambda name: MemoryStore(name), scratch)
    s3: S3 = request.getfixturevalue("s3")
    config = s3_config(s3)
    return Backend(
        kind, S3Store(config, S3_ROOT), lambda name: S3Store(config, f"pyops/{name}/"), scratch, s3
    )


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture
def local(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return make_backend("local", tmp_path, request)


@pytest.fixture
def s3_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return make_backend("s3", tmp_path, request)
