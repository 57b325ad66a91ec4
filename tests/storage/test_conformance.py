"""One conformance suite for the storage interface (pyops/storage/__init__.py).

Every test in the first part runs against LocalStore, MemoryStore and S3Store (moto's
server on 127.0.0.1, real boto3 calls; see conftest.py), the way restic's
internal/backend/test/suite.go runs one suite against every backend. The last parts
hold what only one implementation has: symlinks on disk, multipart uploads in S3.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import pyops.storage.s3 as s3mod
from pyops.storage import NotFound, Store, StoreError, read_small
from pyops.storage.s3 import MIN_PART, S3Store

if TYPE_CHECKING:  # conftest modules are not imported by name at run time
    from conftest import Backend

MiB = 1 << 20
BIG = 2 * MIN_PART + MiB  # three parts in S3: 8 MiB, 8 MiB, 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(store: Store, key: str) -> bytes:
    return b"".join(store.open_chunks(key))


def keys(store: Store, prefix: str = "") -> list[str]:
    return sorted(info.key for info in store.list(prefix))


def chunked(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def put(backend: Backend, how: str, key: str, data: bytes, digest: str | None = None,
        progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """Store `data` with put_file (from a file outside the store) or put_stream."""
    digest = sha(data) if digest is None else digest
    if how == "put_file":
        source = backend.scratch / f"source-{len(list(backend.scratch.iterdir()))}"
        source.write_bytes(data)
        backend.store.put_file(key, source, digest, progress)
    else:
        backend.store.put_stream(key, chunked(data), digest, progress)


def leftovers(backend: Backend) -> list[str]:
    """What a refused or broken put may have left behind: any file at all under a local
    root (dot and temp files included), any unfinished multipart upload in S3."""
    if backend.local_root is not None:
        return sorted(
            str(Path(d, f).relative_to(backend.local_root))
            for d, _dirs, files in os.walk(backend.local_root)
            for f in files
        )
    if backend.s3 is not None:
        found = backend.s3.client.list_multipart_uploads(Bucket=backend.s3.bucket)
        return sorted(u["Key"] for u in found.get("Uploads", []))
    return []


@pytest.fixture(scope="module")
def big() -> bytes:
    return random.Random(9).randbytes(BIG)


HOW = ("put_file", "put_stream")
KEY = "db/daily/db-daily-20240101T000000Z.dump.zst"


# --- every store ------------------------------------------------------------------


def test_describe(store: Store) -> None:
    assert isinstance(store.describe(), str)
    assert store.describe()


def test_put_bytes_round_trip(store: Store) -> None:
    data = b'{"manifest": true}\n' * 10
    store.put_bytes("db/daily/a.manifest.json", data)
    assert content(store, "db/daily/a.manifest.json") == data
    assert store.read_range("db/daily/a.manifest.json", 0, len(data)) == data
    info = store.stat("db/daily/a.manifest.json")
    assert info is not None
    assert (info.key, info.size) == ("db/daily/a.manifest.json", len(data))
    assert [(i.key, i.size) for i in store.list()] == [("db/daily/a.manifest.json", len(data))]


def test_put_bytes_replaces_the_object(store: Store) -> None:
    store.put_bytes("repository.json", b"first, and longer")
    store.put_bytes("repository.json", b"second")
    assert content(store, "repository.json") == b"second"
    assert store.stat("repository.json").size == 6  # type: ignore[union-attr]


def test_open_chunks_of_several_chunks(backend: Backend) -> None:
    data = random.Random(1).randbytes(3 * MiB + 17)
    put(backend, "put_stream", KEY, data)
    chunks = list(backend.store.open_chunks(KEY))
    assert all(chunks)
    assert b"".join(chunks) == data


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 0), (0, 5), (3, 4), (0, 100), (98, 10), (99, 1), (100, 1), (100, 0), (150, 10)],
)
def test_read_range(store: Store, start: int, length: int) -> None:
    data = bytes(range(100))
    store.put_bytes("t/daily/x", data)
    assert store.read_range("t/daily/x", start, length) == data[start : start + length]


def test_read_range_of_an_empty_object(store: Store) -> None:
    store.put_bytes("t/daily/empty", b"")
    assert store.read_range("t/daily/empty", 0, 10) == b""
    assert store.read_range("t/daily/empty", 5, 10) == b""


@pytest.mark.parametrize("key", ["missing", "t/daily/missing", "no/such/dir/x"])
def test_reading_a_missing_key_is_notfound(store: Store, key: str) -> None:
    store.put_bytes("t/daily/present", b"x")
    with pytest.raises(NotFound):
        content(store, key)
    with pytest.raises(NotFound):
        store.read_range(key, 0, 10)
    assert store.stat(key) is None


def test_stat(store: Store) -> None:
    assert store.stat("t/daily/a") is None
    store.put_bytes("t/daily/a", b"12345")
    info = store.stat("t/daily/a")
    assert info is not None
    assert (info.key, info.size) == ("t/daily/a", 5)
    assert store.stat("t/daily/b") is None


def test_list_with_prefixes(store: Store) -> None:
    objects = {
        "repository.json": b"{}",
        "db/daily/b.dump": b"bb",
        "db/daily/a.dump": b"a",
        "db/daily/a.manifest.json": b"{}",
        "db/dailyish": b"4444",
        "db/weekly/a.dump": b"55555",
        "db-old/daily/a.dump": b"666666",
        "files/monthly/x.tar": b"",
    }
    for key, data in objects.items():
        store.put_bytes(key, data)
    assert {(i.key, i.size) for i in store.list()} == {(k, len(v)) for k, v in objects.items()}
    assert len(list(store.list())) == len(objects)  # each once
    assert keys(store) == sorted(objects)
    assert keys(store, "db/") == [
        "db/daily/a.dump",
        "db/daily/a.manifest.json",
        "db/daily/b.dump",
        "db/dailyish",
        "db/weekly/a.dump",
    ]
    assert keys(store, "db/daily/") == [
        "db/daily/a.dump",
        "db/daily/a.manifest.json",
        "db/daily/b.dump",
    ]
    assert keys(store, "db/daily") == [*keys(store, "db/daily/"), "db/dailyish"]
    assert keys(store, "db/daily/a") == ["db/daily/a.dump", "db/daily/a.manifest.json"]
    assert keys(store, "db") == [k for k in sorted(objects) if k.startswith("db")]
    assert keys(store, "repository.json") == ["repository.json"]
    assert keys(store, "nothing/") == []


def test_children_are_the_names_one_level_down_that_hold_objects(store: Store) -> None:
    for key in (
        "repository.json",
        "web-2/repository.json",
        "web-1/index.json",
        "web-1/db/daily/a.dump",
        "web-10/files/weekly/b.tar",
        "db-old/daily/x",
    ):
        store.put_bytes(key, b"x")
    assert list(store.children()) == ["db-old", "web-1", "web-10", "web-2"]
    assert list(store.children("web-1/")) == ["db"]
    assert list(store.children("web-1/db/")) == ["daily"]
    assert list(store.children("web-2/")) == []  # an object, no directory
    assert list(store.children("nothing/")) == []


def test_list_below_an_object_is_empty(store: Store) -> None:
    """An object whose key is a "directory" of the prefix does not start with it."""
    store.put_bytes("db", b"a file where a target directory could be")
    store.put_bytes("t/daily/a.dump", b"a")
    assert keys(store, "db/") == []
    assert keys(store, "t/daily/a.dump/") == []
    assert keys(store, "t/daily/a.dump/x") == []
    assert keys(store, "db") == ["db"]


def test_list_of_an_empty_store(store: Store) -> None:
    assert list(store.list()) == []
    assert list(store.list("db/")) == []


def test_another_root_is_not_listed(backend: Backend) -> None:
    other = backend.other_root("host-a-old")  # its root shares a string prefix in S3
    other.put_bytes("db/daily/theirs", b"theirs")
    other.put_bytes("repository.json", b"{}")
    backend.store.put_bytes("db/daily/ours", b"ours")
    assert keys(backend.store) == ["db/daily/ours"]
    assert keys(backend.store, "db/") == ["db/daily/ours"]
    assert backend.store.stat("db/daily/theirs") is None
    assert keys(other) == ["db/daily/theirs", "repository.json"]
    backend.store.delete("db/daily/theirs")
    assert content(other, "db/daily/theirs") == b"theirs"


@pytest.mark.parametrize("how", HOW)
def test_put_with_the_right_sha256(backend: Backend, how: str) -> None:
    data = random.Random(2).randbytes(MiB + 3)
    seen: list[int] = []
    put(backend, how, KEY, data, progress=seen.append)
    assert content(backend.store, KEY) == data
    assert backend.store.stat(KEY).size == len(data)  # type: ignore[union-attr]
    assert keys(backend.store) == [KEY]
    assert sum(seen) == len(data)


@pytest.mark.parametrize("how", HOW)
def test_put_with_a_wrong_sha256_stores_nothing(backend: Backend, how: str) -> None:
    data = b"the bytes on disk" * 1000
    with pytest.raises(StoreError):
        put(backend, how, KEY, data, digest=sha(b"what the manifest says"))
    assert backend.store.stat(KEY) is None
    assert list(backend.store.list()) == []
    assert leftovers(backend) == []


@pytest.mark.parametrize("how", HOW)
def test_a_refused_put_keeps_the_previous_object(backend: Backend, how: str) -> None:
    put(backend, how, KEY, b"good")
    with pytest.raises(StoreError):
        put(backend, how, KEY, b"bad", digest=sha(b"good"))
    assert content(backend.store, KEY) == b"good"
    assert leftovers(backend) in ([], [KEY])  # local: the good file itself


def test_a_stream_that_breaks_off_stores_nothing(backend: Backend) -> None:
    data = random.Random(3).randbytes(2 * MiB)

    def breaking() -> Iterator[bytes]:
        yield data[:MiB]
        raise RuntimeError("the dump died")

    with pytest.raises(RuntimeError, match="the dump died"):
        backend.store.put_stream(KEY, breaking(), sha(data))
    assert backend.store.stat(KEY) is None
    assert list(backend.store.list()) == []
    assert leftovers(backend) == []


@pytest.mark.parametrize("how", HOW)
def test_put_of_several_s3_parts(backend: Backend, how: str, big: bytes) -> None:
    seen: list[int] = []
    put(backend, how, KEY, big, progress=seen.append)
    assert backend.store.stat(KEY).size == BIG  # type: ignore[union-attr]
    assert sha(content(backend.store, KEY)) == sha(big)
    assert backend.store.read_range(KEY, MIN_PART - 3, 6) == big[MIN_PART - 3 : MIN_PART + 3]
    assert sum(seen) == BIG
    assert leftovers(backend) in ([], [KEY])
    if backend.s3 is not None:  # really three parts
        head = backend.s3.client.head_object(
            Bucket=backend.s3.bucket, Key=f"{backend.s3_root}{KEY}", PartNumber=1
        )
        assert head["PartsCount"] == 3


@pytest.mark.parametrize("how", [*HOW, "put_bytes"])
def test_an_empty_object(backend: Backend, how: str) -> None:
    seen: list[int] = []
    if how == "put_bytes":
        backend.store.put_bytes(KEY, b"")
    else:
        put(backend, how, KEY, b"", progress=seen.append)
    assert backend.store.stat(KEY).size == 0  # type: ignore[union-attr]
    assert content(backend.store, KEY) == b""
    assert backend.store.read_range(KEY, 0, 10) == b""
    assert [(i.key, i.size) for i in backend.store.list()] == [(KEY, 0)]
    assert sum(seen) == 0


def test_delete(store: Store) -> None:
    store.put_bytes("t/daily/a", b"a")
    store.put_bytes("t/daily/b", b"b")
    store.delete("t/daily/a")
    assert store.stat("t/daily/a") is None
    with pytest.raises(NotFound):
        content(store, "t/daily/a")
    assert keys(store) == ["t/daily/b"]
    store.delete("t/daily/a")  # absent: not an error
    store.delete("t/weekly/never")
    store.delete("no/such/dir/x")
    assert keys(store) == ["t/daily/b"]


def test_a_directory_is_not_an_object_to_stat(store: Store) -> None:
    store.put_bytes("t/daily/a", b"a")
    assert store.stat("t") is None
    assert store.stat("t/daily") is None


def test_a_directory_is_not_an_object_to_read(store: Store) -> None:
    store.put_bytes("t/daily/a", b"a")
    with pytest.raises(NotFound):
        content(store, "t/daily")
    with pytest.raises(NotFound):
        store.read_range("t/daily", 0, 10)


def test_a_directory_is_not_an_object_to_delete(store: Store) -> None:
    store.put_bytes("t/daily/a", b"a")
    store.delete("t/daily")  # no object there: not an error, and nothing else goes
    assert keys(store) == ["t/daily/a"]


def test_read_small(store: Store) -> None:
    store.put_bytes("repository.json", b"0123456789")
    assert read_small(store, "repository.json", limit=10) == b"0123456789"
    with pytest.raises(StoreError):
        read_small(store, "repository.json", limit=9)


UNSAFE = ["../x", "/abs", "a//b", ".hidden/x", "a/../b", "", "a/", ".", "..", "a/./b", "t/.x"]
METHODS = ["stat", "put_file", "put_stream", "put_bytes", "open_chunks", "read_range", "delete"]


@pytest.mark.parametrize("method", METHODS)
def test_unsafe_keys_are_refused(backend: Backend, method: str) -> None:
    store = backend.store
    source = backend.scratch / "source"
    source.write_bytes(b"data")
    calls: dict[str, Callable[[str], object]] = {
        "stat": store.stat,
        "put_file": lambda k: store.put_file(k, source, sha(b"data")),
        "put_stream": lambda k: store.put_stream(k, iter([b"data"]), sha(b"data")),
        "put_bytes": lambda k: store.put_bytes(k, b"data"),
        "open_chunks": lambda k: content(store, k),
        "read_range": lambda k: store.read_range(k, 0, 10),
        "delete": store.delete,
    }
    outside = sorted(p.name for p in backend.scratch.parent.iterdir())
    for key in UNSAFE:
        with pytest.raises(StoreError, match="unsafe"):
            calls[method](key)
    assert list(store.list()) == []
    assert leftovers(backend) == []
    assert sorted(p.name for p in backend.scratch.parent.iterdir()) == outside
    if backend.s3 is not None:
        assert backend.s3.object_keys() == []


# --- LocalStore: links on disk ------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("link", ["db", "db/daily"])
def test_local_refuses_a_symlinked_directory(local: Backend, tmp_path: Path, link: str) -> None:
    store, root = local.store, local.local_root
    assert root is not None
    outside = tmp_path / "outside"
    (outside / "daily").mkdir(parents=True)
    (outside / "daily" / "x").write_bytes(b"not ours")
    (outside / "x").write_bytes(b"not ours either")
    (root / "db").mkdir(exist_ok=True)
    if link == "db":
        (root / "db").rmdir()
        (root / "db").symlink_to(outside)
    else:
        (root / "db" / "daily").symlink_to(outside / "daily")
    before = snapshot(outside)
    source = local.scratch / "source"
    source.write_bytes(b"new")
    for key in ("db/daily/x", "db/daily/new", "db/daily/sub/new"):
        for call in (
            lambda k: store.stat(k),
            lambda k: store.read_range(k, 0, 10),
            lambda k: content(store, k),
            lambda k: store.put_bytes(k, b"new"),
            lambda k: store.put_file(k, source, sha(b"new")),
            lambda k: store.put_stream(k, iter([b"new"]), sha(b"new")),
            lambda k: store.delete(k),
        ):
            with pytest.raises(StoreError):
                call(key)
    assert snapshot(outside) == before
    assert sorted(p.name for p in outside.rglob("*")) == ["daily", "x", "x"]
    assert list(store.list()) == []


def test_local_does_not_follow_a_symlinked_artifact(local: Backend, tmp_path: Path) -> None:
    store, root = local.store, local.local_root
    assert root is not None
    secret = tmp_path / "secret"
    secret.write_bytes(b"not ours")
    store.put_bytes("db/daily/real", b"real")
    (root / "db" / "daily" / "link").symlink_to(secret)
    with pytest.raises(StoreError):
        content(store, "db/daily/link")
    with pytest.raises(StoreError):
        store.read_range("db/daily/link", 0, 10)
    assert store.stat("db/daily/link") is None
    assert keys(store) == ["db/daily/real"]
    store.put_bytes("db/daily/link", b"replaced")  # replaces the link, not its target
    assert secret.read_bytes() == b"not ours"
    assert content(store, "db/daily/link") == b"replaced"
    (root / "db" / "daily" / "link").unlink()
    (root / "db" / "daily" / "link").symlink_to(secret)
    store.delete("db/daily/link")  # removes the link only
    assert not (root / "db" / "daily" / "link").is_symlink()
    assert secret.read_bytes() == b"not ours"


@pytest.mark.parametrize("method", ["read_range", "open_chunks"])
def test_local_does_not_block_on_a_fifo(local: Backend, method: str) -> None:
    """A FIFO where an artifact should be is not an object (stat says None): reading it
    is refused at once, not left waiting for a writer that never comes."""
    store, root = local.store, local.local_root
    assert root is not None
    store.put_bytes("db/daily/real", b"real")
    fifo = root / "db" / "daily" / "fifo"
    os.mkfifo(fifo)
    assert store.stat("db/daily/fifo") is None
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            if method == "read_range":
                outcome.append(store.read_range("db/daily/fifo", 0, 10))
            else:
                outcome.append(content(store, "db/daily/fifo"))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2)
    blocked = reader.is_alive()
    if blocked:  # let the reader go: a writer that opens and closes at once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert not blocked, f"{method} of a FIFO waited for a writer"
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError), outcome[0]


# --- S3Store: metadata and multipart uploads ----------------------------------------


@pytest.mark.parametrize("how", HOW)
def test_s3_records_the_sha256(s3_backend: Backend, how: str) -> None:
    assert s3_backend.s3 is not None
    data = b"checked" * 1000
    put(s3_backend, how, KEY, data)
    info = s3_backend.store.stat(KEY)
    assert info is not None
    assert info.sha256 == sha(data)
    assert info.storage_class == "STANDARD"
    head = s3_backend.s3.client.head_object(
        Bucket=s3_backend.s3.bucket, Key=f"{s3_backend.s3_root}{KEY}"
    )
    assert head["Metadata"]["sha256"] == sha(data)


def test_s3_put_bytes_records_the_sha256(s3_backend: Backend) -> None:
    s3_backend.store.put_bytes("repository.json", b"{}")
    assert s3_backend.store.stat("repository.json").sha256 == sha(b"{}")  # type: ignore[union-attr]


def start_uploads(backend: Backend, names: list[str]) -> None:
    assert backend.s3 is not None
    for name in names:
        backend.s3.client.create_multipart_upload(Bucket=backend.s3.bucket, Key=name)


def uploads(backend: Backend) -> list[tuple[str, datetime]]:
    assert backend.s3 is not None
    found = backend.s3.client.list_multipart_uploads(Bucket=backend.s3.bucket)
    return sorted((u["Key"], u["Initiated"]) for u in found.get("Uploads", []))


def ours(key: str) -> bool:
    return key.startswith("db/")


def test_s3_aborts_only_stale_uploads_of_ours(s3_backend: Backend) -> None:
    store = s3_backend.store
    assert isinstance(store, S3Store)
    start_uploads(
        s3_backend,
        [
            f"{s3_backend.s3_root}db/daily/a.dump",  # ours
            f"{s3_backend.s3_root}db/weekly/b.dump",  # ours
            f"{s3_backend.s3_root}other/c.dump",  # under our root, but `ours` does not know it
            "pyops/host-b/db/daily/a.dump",  # another root
            "pyops/host-a-old/db/daily/a.dump",  # another root sharing a string prefix
        ],
    )
    # moto reports every upload as initiated in 2010: older than a day
    assert all(
        started < datetime.now(UTC) - timedelta(days=2) for _k, started in uploads(s3_backend)
    )
    assert store.abort_stale_uploads(ours) == 2
    assert [k for k, _ in uploads(s3_backend)] == [
        "pyops/host-a-old/db/daily/a.dump",
        "pyops/host-a/other/c.dump",
        "pyops/host-b/db/daily/a.dump",
    ]
    assert store.abort_stale_uploads(ours) == 0


def test_s3_leaves_young_uploads_alone(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto cannot report a fresh upload (its Initiated is a fixed date in the past), so
    the upload is made young by moving the limit beyond its age."""
    store = s3_backend.store
    assert isinstance(store, S3Store)
    start_uploads(s3_backend, [f"{s3_backend.s3_root}db/daily/a.dump"])
    [(_key, started)] = uploads(s3_backend)
    monkeypatch.setattr(s3mod, "STALE_UPLOAD", datetime.now(UTC) - started + timedelta(days=1))
    assert store.abort_stale_uploads(ours) == 0
    assert [k for k, _ in uploads(s3_backend)] == [f"{s3_backend.s3_root}db/daily/a.dump"]


def test_s3_abort_stale_uploads_only_warns_when_listing_fails(
    s3_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    assert s3_backend.s3 is not None
    store = s3_backend.s3_store("pyops-no-such-bucket")
    with caplog.at_level(logging.WARNING, logger="pyops.storage.s3"):
        assert store.abort_stale_uploads(ours) == 0
    assert any("multipart uploads" in r.getMessage() for r in caplog.records)
