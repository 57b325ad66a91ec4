"""Conformance of Store.put_growing: storing a file while it is still being written.

Every test runs against LocalStore, MemoryStore and S3Store (moto's server on
127.0.0.1), like test_conformance.py. The writer is pyops' own ArtifactWriter; the
store reads the file through its own descriptor as it grows. No sleeps: the writer
waits for the store's progress callback (an Event, with a generous deadline) to
prove the store read bytes before the file was complete.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import pyops.storage.s3 as s3mod
from pyops.artifact import ArtifactWriter
from pyops.growing import GrowingFile, WriterFailed
from pyops.storage import ChecksumMismatch, Store, s3seal
from pyops.storage.s3 import MIN_PART

if TYPE_CHECKING:  # conftest modules are not imported by name at run time
    from conftest import Backend

MiB = 1 << 20
KEY = "files/daily/files.daily.20240101T000000Z.tar.zst"
DEADLINE = 120  # seconds: generous, for a loaded machine; never reached when it works


def content(store: Store, key: str) -> bytes:
    return b"".join(store.open_chunks(key))


class Upload:
    """put_growing in a thread of its own, as the backup runs it."""

    def __init__(self, store: Store, source: GrowingFile) -> None:
        self.read = 0
        self.started = threading.Event()  # the store has sent (or stored) some bytes
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(store, source))
        self.thread.start()

    def _progress(self, n: int) -> None:
        self.read += n
        self.started.set()

    def _run(self, store: Store, source: GrowingFile) -> None:
        try:
            store.put_growing(KEY, source, self._progress)
        except BaseException as exc:
            self.error = exc
        finally:
            source.close()

    def join(self) -> BaseException | None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "put_growing did not return"
        return self.error


def pieces(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def leftovers(backend: Backend) -> list[str]:
    if backend.local_root is not None:
        return sorted(str(p.relative_to(backend.local_root)) for p in backend.local_root.rglob("*")
                      if p.is_file())  # fmt: skip
    if backend.s3 is not None:
        found = backend.s3.client.list_multipart_uploads(Bucket=backend.s3.bucket)
        return sorted(u["Key"] for u in found.get("Uploads", []))
    return []


def s3_versions(backend: Backend) -> list[str]:
    assert backend.s3 is not None
    found = backend.s3.client.list_object_versions(Bucket=backend.s3.bucket)
    return [v["Key"] for v in found.get("Versions", [])] + [
        m["Key"] for m in found.get("DeleteMarkers", [])
    ]


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(14).randbytes(2 * MIN_PART + 3 * MiB)  # three S3 parts


def test_stores_the_file_while_it_is_written(backend: Backend, data: bytes) -> None:
    writer = ArtifactWriter(backend.scratch / "artifact.bin")
    upload = Upload(backend.store, writer.follow())
    head = MIN_PART + MiB  # more than one S3 part: something the store can send now
    for chunk in pieces(data[:head]):
        writer.write(chunk)
    assert upload.started.wait(DEADLINE), "the store read nothing of a file still written"
    assert upload.thread.is_alive()  # and did not finish: the file is not complete
    assert backend.store.stat(KEY) is None  # nothing visible before the writer finished
    for chunk in pieces(data[head:]):
        writer.write(chunk)
    size, digest = writer.commit()
    assert upload.join() is None
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert content(backend.store, KEY) == data
    info = backend.store.stat(KEY)
    assert info is not None and info.size == len(data)
    if info.sha256 is not None:  # stores that record it record the writer's
        assert info.sha256 == digest
    assert leftovers(backend) == ([KEY] if backend.local_root else [])
    if backend.s3 is not None:
        assert s3_versions(backend) == [f"{backend.s3_root}{KEY}"]  # no version without sha


def test_refuses_bytes_changed_under_the_reader(backend: Backend, data: bytes) -> None:
    """The writer hashed one thing, the disk holds another by the time the store reads
    it: the store's own sha256 of what it read catches it and stores nothing."""
    writer = ArtifactWriter(backend.scratch / "artifact.bin")
    source = writer.follow()
    for chunk in pieces(data):
        writer.write(chunk)
    fd = os.open(writer.temp, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x00" if data[5] else b"\x01", 5)  # one byte, inside the first part
    finally:
        os.close(fd)
    writer.commit()
    upload = Upload(backend.store, source)
    error = upload.join()
    assert isinstance(error, ChecksumMismatch), error
    assert backend.store.stat(KEY) is None
    assert leftovers(backend) == []


def test_stores_nothing_when_the_writer_fails(backend: Backend, data: bytes) -> None:
    writer = ArtifactWriter(backend.scratch / "artifact.bin")
    upload = Upload(backend.store, writer.follow())
    for chunk in pieces(data[: MIN_PART + MiB]):
        writer.write(chunk)
    assert upload.started.wait(DEADLINE)  # parts already sent, in S3
    if backend.s3 is not None:
        assert leftovers(backend) == [f"{backend.s3_root}{KEY}"]  # the upload is open
    writer.abort()
    assert isinstance(upload.join(), WriterFailed)
    assert backend.store.stat(KEY) is None
    assert leftovers(backend) == []
    assert not writer.temp.exists()


def test_an_empty_file(backend: Backend) -> None:
    writer = ArtifactWriter(backend.scratch / "artifact.bin")
    upload = Upload(backend.store, writer.follow())
    _size, digest = writer.commit()
    assert upload.join() is None
    assert content(backend.store, KEY) == b""
    info = backend.store.stat(KEY)
    assert info is not None and info.size == 0
    assert info.sha256 in (None, digest)


# --- S3 only --------------------------------------------------------------------------


def no_tagging(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refuses PutObjectTagging as Cloudflare R2 does (501 NotImplemented):
    the real client, answering with the error such a store sends."""
    from botocore.exceptions import ClientError

    def refuse(**_: object) -> None:
        error = {"Error": {"Code": "NotImplemented", "Message": "PutObjectTagging"}}
        raise ClientError(error, "PutObjectTagging")  # type: ignore[arg-type]

    monkeypatch.setattr(store.client, "put_object_tagging", refuse)  # type: ignore[attr-defined]


def test_s3_sha256_is_a_tag_and_makes_no_version(s3_backend: Backend, data: bytes) -> None:
    assert s3_backend.s3 is not None
    writer = ArtifactWriter(s3_backend.scratch / "artifact.bin")
    growing = writer.follow()
    for chunk in pieces(data):
        writer.write(chunk)
    _size, digest = writer.commit()
    s3_backend.store.put_growing(KEY, growing)
    growing.close()
    name = f"{s3_backend.s3_root}{KEY}"
    client, bucket = s3_backend.s3.client, s3_backend.s3.bucket
    assert client.head_object(Bucket=bucket, Key=name)["Metadata"] == {}
    tags = client.get_object_tagging(Bucket=bucket, Key=name)["TagSet"]
    assert tags == [{"Key": "sha256", "Value": digest}]
    assert s3_versions(s3_backend) == [name]
    assert head_etag(s3_backend).endswith("-3")  # the parts as sent


def head_etag(backend: Backend) -> str:
    assert backend.s3 is not None
    head = backend.s3.client.head_object(Bucket=backend.s3.bucket, Key=f"{backend.s3_root}{KEY}")
    return str(head["ETag"]).strip('"')


def test_s3_without_tagging_growing_parts_and_copy_ranges(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store without object tagging gets the sha256 as metadata by a server-side copy
    onto itself (the version without it dropped). Parts that grow (every part here: 8,
    16, 32 MiB) and a copy in several ranges (5 MiB, S3's smallest) still make the same
    object."""
    no_tagging(s3_backend.store, monkeypatch)
    monkeypatch.setattr(s3mod, "GROWTH_STEP", 1)
    monkeypatch.setattr(s3seal, "COPY_PART", 5 * MiB)
    data = random.Random(15).randbytes(8 * MiB + 16 * MiB + 3 * MiB)
    sent: list[int] = []
    source = Path(s3_backend.scratch / "artifact.bin")
    writer = ArtifactWriter(source)
    growing = writer.follow()
    for chunk in pieces(data):
        writer.write(chunk)
    writer.commit()
    s3_backend.store.put_growing(KEY, growing, sent.append)
    growing.close()
    assert sorted(sent) == [3 * MiB, 8 * MiB, 16 * MiB]  # parts go concurrently
    assert content(s3_backend.store, KEY) == data
    info = s3_backend.store.stat(KEY)
    assert info is not None and info.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_backend.s3 is not None
    assert head_etag(s3_backend).endswith("-6")  # 27 MiB copied in 5 MiB ranges
    assert leftovers(s3_backend) == []
    assert s3_versions(s3_backend) == [f"{s3_backend.s3_root}{KEY}"]


@pytest.mark.parametrize("tagging", [True, False])
def test_s3_unversioned_bucket(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch, tagging: bool
) -> None:
    """Without versioning a copy replaces the object in place: nothing to drop (the
    "null" version id of both must not delete the new one)."""
    assert s3_backend.s3 is not None
    bucket = f"plain-{s3_backend.s3.bucket}"[:63]
    s3_backend.s3.client.create_bucket(Bucket=bucket)
    store = s3_backend.s3_store(bucket)
    if not tagging:
        no_tagging(store, monkeypatch)
    data = random.Random(16).randbytes(MIN_PART + 5)
    writer = ArtifactWriter(s3_backend.scratch / "artifact.bin")
    growing = writer.follow()
    for chunk in pieces(data):
        writer.write(chunk)
    _size, digest = writer.commit()
    store.put_growing(KEY, growing)
    growing.close()
    assert content(store, KEY) == data
    info = store.stat(KEY)
    assert info is not None and info.sha256 == digest
