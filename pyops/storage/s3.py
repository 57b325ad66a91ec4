"""S3 (or any S3-compatible store) as a store: the offsite copy.

Keys live under a root (`<prefix>/<host>/`). Uploads are multipart and streamed a
part at a time; every part carries its SHA-256 as a header the store validates
(and, where the store echoes it, pyops compares the echo), the whole object's
SHA-256 is computed from the bytes actually sent and rides along as metadata (or,
for an upload that starts before it is known, is recorded after: s3seal.py), and
after completing an upload its size and sha256 are confirmed with a HEAD. A
failed upload is aborted so no half object or dangling upload remains.
Credentials come from `access_key_id_file` / `secret_access_key_file` when set, else
from boto3's standard chain (environment, shared file, instance role).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyops.config import OffsiteConfig
from pyops.errors import ConfigError
from pyops.growing import GrowingFile
from pyops.storage import (
    ChecksumMismatch,
    NotFound,
    ObjectInfo,
    Progress,
    StoreError,
    check_key,
    s3seal,
)
from pyops.throttle import Throttle

log = logging.getLogger(__name__)

MIN_PART = 8 << 20
MAX_PARTS = 9000  # S3 allows 10,000; leave room
GROWTH_STEP = 1000  # a growing file's parts double in size every this many parts
DOWNLOAD_CHUNK = 1 << 20


STALE_UPLOAD = timedelta(days=1)


class OffsiteError(StoreError):
    """The bucket could not be reached or refused an operation."""


def part_size(total: int) -> int:
    """Parts big enough that any artifact fits in S3's 10,000-part limit."""
    need = -(-total // MAX_PARTS)
    size = max(MIN_PART, need)
    return -(-size // (1 << 20)) * (1 << 20)


def growing_part_sizes() -> Iterator[int]:
    """Part sizes for a file of unknown final size: 8 MiB, doubling every 1,000 parts,
    so 9,000 parts hold ~4 TiB (past S3's 5 TiB object limit with the 10,000th)."""
    number = 0
    while True:
        yield MIN_PART << min(number // GROWTH_STEP, 9)
        number += 1


def b64sha256(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class PartReader(io.RawIOBase):
    """One part of a file as a seekable stream: botocore reads it in chunks (to sign and
    to send) instead of pyops holding the whole part in memory."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length, self.pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + pos))
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        left = self.length - self.pos
        n = left if size is None or size < 0 else min(size, left)
        data = os.pread(self.fd, n, self.offset + self.pos) if n else b""
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class S3Store:
    """One bucket, under one root prefix (`<prefix>/<host>/`)."""

    def __init__(self, config: OffsiteConfig, root: str, client: Any = None) -> None:
        if not config.bucket:
            raise ConfigError("offsite.bucket", "no bucket configured for offsite copies")
        self.config = config
        self.root = root if not root or root.endswith("/") else f"{root}/"
        self.client = client or self._client()
        self.throttle = Throttle(config.max_upload_rate)  # every byte pyops sends

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        from pyops import secrets

        # the key files when the config names them; else boto3's standard chain, whose
        # environment keys were moved out of reach of child processes at start-up
        # (pyops.secrets), so hand them over
        keys = secrets.s3_keys(self.config)
        if keys is not None:
            session = boto3.session.Session(
                aws_access_key_id=keys[0], aws_secret_access_key=keys[1]
            )
        else:
            session = boto3.session.Session(
                aws_access_key_id=secrets.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=secrets.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=secrets.get("AWS_SESSION_TOKEN"),
            )
        return session.client(
            "s3",
            endpoint_url=self.config.endpoint_url or None,
            region_name=self.config.region or None,
            config=BotoConfig(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"} if self.config.endpoint_url else None,
            ),
        )

    def describe(self) -> str:
        where = self.config.endpoint_url or "AWS"
        return f"s3://{self.config.bucket}/{self.root} ({where})"

    def name(self, key: str) -> str:
        return f"{self.root}{check_key(key)}"

    # --- calls ----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.config.bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            if err.get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"{what}: no such object in {self.describe()}") from None
            raise OffsiteError(
                f"{what} failed at {self.describe()}: {err.get('Code')}: {err.get('Message')}"
            ) from None
        except BotoCoreError as exc:
            raise self._unreachable(what, exc) from None

    def _unreachable(self, what: str, exc: Exception) -> OffsiteError:
        return OffsiteError(
            f"{what} failed: cannot reach {self.describe()}: {exc}. Check the network, "
            "endpoint_url and credentials; local backups stay and `pyops sync` uploads them"
        )

    def _object_args(self, sha256: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": {"sha256": sha256} if sha256 else {}}
        if self.config.storage_class:
            args["StorageClass"] = self.config.storage_class
        if self.config.sse == "AES256":
            args["ServerSideEncryption"] = "AES256"
        elif self.config.sse == "aws:kms":
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = self.config.kms_key_id
        return args

    def _lock(self, name: str) -> None:
        """COMPLIANCE retain-until on a finished object. Set explicitly after the upload:
        some S3-compatible stores ignore lock headers on multipart uploads."""
        if self.config.object_lock_days <= 0:
            return
        until = datetime.now(UTC) + timedelta(days=self.config.object_lock_days)
        self._call(
            f"object lock of {name}",
            self.client.put_object_retention,
            Key=name,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
            ChecksumAlgorithm="SHA256",
        )

    # --- the store interface ----------------------------------------------------

    def _pages(self, prefix: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """Every page of a listing under `prefix` (list_objects_v2's continuation)."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page: dict[str, Any] = self._call(
                "listing the bucket",
                self.client.list_objects_v2,
                Prefix=f"{self.root}{prefix}",
                **kw,
                **extra,
            )
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for page in self._pages(prefix):
            for o in page.get("Contents", []):
                yield ObjectInfo(o["Key"][len(self.root) :], int(o["Size"]))

    def children(self, prefix: str = "") -> Iterator[str]:
        start = len(self.root) + len(prefix)
        for page in self._pages(prefix, Delimiter="/"):
            for found in page.get("CommonPrefixes", []):
                name = str(found["Prefix"])[start:].rstrip("/")
                if name:
                    yield name

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            answer = self._call(f"head of {key}", self.client.head_object, Key=self.name(key))
        except NotFound:
            return None
        sha256 = answer.get("Metadata", {}).get("sha256") or s3seal.tagged_sha256(
            self, key, answer.get("VersionId")
        )
        return ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            sha256=sha256,
            retain_until=answer.get("ObjectLockRetainUntilDate"),
            storage_class=str(answer.get("StorageClass") or "STANDARD"),
        )

    def put_file(self, key: str, path: Path, sha256: str, progress: Progress = None) -> None:
        """Multipart upload of a finished file, `concurrency` parts in flight at most,
        each read from disk as botocore sends it (flat memory)."""
        size = path.stat().st_size
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            psize = part_size(size)
            offsets = range(0, size, psize) if size else range(1)

            def parts() -> Iterator[tuple[int, Any, int]]:
                for offset in offsets:
                    length = min(psize, size - offset)
                    yield offset, PartReader(fd, offset, length), length

            self._multipart(key, sha256, parts(), progress)
        finally:
            os.close(fd)

    def put_stream(
        self, key: str, chunks: Iterable[bytes], sha256: str, progress: Progress = None
    ) -> None:
        """Multipart upload of a stream of unknown length: one part buffered at a time."""

        def parts() -> Iterator[tuple[int, Any, int]]:
            buf = bytearray()
            offset = 0
            for chunk in chunks:
                buf += chunk
                while len(buf) >= MIN_PART:
                    part = bytes(buf[:MIN_PART])
                    del buf[:MIN_PART]
                    yield offset, io.BytesIO(part), len(part)
                    offset += len(part)
            if buf or offset == 0:
                yield offset, io.BytesIO(bytes(buf)), len(buf)

        self._multipart(key, sha256, parts(), progress)

    def put_growing(self, key: str, source: GrowingFile, progress: Progress = None) -> None:
        """Multipart upload of a file still being written: each part is sent as soon as
        the writer has written it whole, read from disk like put_file's (flat memory,
        whatever the lag); completed only once the writer has finished and the bytes
        read have the sha256 it computed. S3 takes metadata when an upload starts,
        before the sha256 is known: the completed object gets it as a tag, or by a
        server-side copy onto itself (pyops.storage.s3seal)."""

        def parts() -> Iterator[tuple[int, Any, int]]:
            for offset, length in source.ranges(growing_part_sizes()):
                yield offset, PartReader(source.fd, offset, length), length

        self._multipart(key, lambda: source.sha256, parts(), progress)

    def _multipart(
        self,
        key: str,
        sha256: str | Callable[[], str],
        parts: Iterator[tuple[int, Any, int]],
        progress: Progress,
    ) -> None:
        """`sha256`: the whole object's, or (a growing source) what says it once every
        part has been read."""
        name = self.name(key)
        known = sha256 if isinstance(sha256, str) else None
        created = self._call(
            f"upload of {name}",
            self.client.create_multipart_upload,
            Key=name,
            ChecksumAlgorithm="SHA256",
            **self._object_args(known),
        )
        upload_id = created["UploadId"]
        try:
            whole, total, sent = self._send_parts(name, upload_id, parts, progress)
            expected = sha256 if isinstance(sha256, str) else sha256()
            if whole != expected:
                raise ChecksumMismatch(
                    f"upload of {name}: the bytes read have sha256 {whole[:16]}..., the "
                    f"manifest says {expected[:16]}...: the local file changed; not completed"
                )
            done = self._call(
                f"upload of {name}",
                self.client.complete_multipart_upload,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": sent},
            )
        except BaseException:
            self.abort(name, upload_id)
            raise
        if known is None:
            s3seal.seal(self, name, total, expected, done.get("VersionId"))
        self._confirm(key, total, expected)
        self._lock(name)

    def _send_parts(
        self,
        name: str,
        upload_id: str,
        parts: Iterator[tuple[int, Any, int]],
        progress: Progress,
    ) -> tuple[str, int, builtins.list[dict[str, Any]]]:
        """Send parts, `concurrency` in flight. Each part is hashed here, in order, as
        it is read: its own SHA-256 (checked by the store) and the whole object's."""
        concurrency = max(1, self.config.concurrency)
        slots = threading.BoundedSemaphore(concurrency)
        lock = threading.Lock()
        whole = hashlib.sha256()
        total = 0

        def send(number: int, body: Any, length: int, digest: str) -> dict[str, Any]:
            try:
                answer = self._call(
                    f"upload of {name} (part {number})",
                    self.client.upload_part,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=digest,
                )
                echoed = answer.get("ChecksumSHA256")
                if echoed and echoed != digest:
                    raise OffsiteError(
                        f"upload of {name} (part {number}): the store computed checksum "
                        f"{echoed}, pyops sent {digest}: the part was damaged on the way"
                    )
                if progress is not None:
                    with lock:
                        progress(length)
                return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": digest}
            finally:
                slots.release()

        futures: list[Future[dict[str, Any]]] = []
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for number, (_offset, body, length) in enumerate(parts, start=1):
                slots.acquire()  # memory: at most `concurrency` parts read at once
                if any(f.done() and f.exception() for f in futures):
                    slots.release()
                    break
                part_hash = hashlib.sha256()
                while chunk := body.read(DOWNLOAD_CHUNK):
                    self.throttle.take(len(chunk))  # max_upload_rate, over the parts sent
                    part_hash.update(chunk)
                    whole.update(chunk)
                body.seek(0)
                total += length
                digest = base64.b64encode(part_hash.digest()).decode()
                futures.append(pool.submit(send, number, body, length, digest))
        return whole.hexdigest(), total, [f.result() for f in futures]

    def _confirm(self, key: str, size: int, sha256: str) -> None:
        """After completing: the object the store now holds has the size and sha256 sent."""
        info = self.stat(key)
        if info is None or info.size != size or info.sha256 != sha256:
            found = "nothing" if info is None else f"{info.size} bytes, sha256 {info.sha256}"
            raise OffsiteError(
                f"upload of {self.name(key)}: the store holds {found}, expected {size} bytes "
                f"with sha256 {sha256}"
            )

    def abort(self, name: str, upload_id: str) -> None:
        try:
            self._call(
                f"abort of {name}",
                self.client.abort_multipart_upload,
                Key=name,
                UploadId=upload_id,
            )
        except StoreError as exc:
            log.warning(
                "could not abort the multipart upload of %s (retried by sync): %s", name, exc
            )

    def abort_stale_uploads(self, ours: Callable[[str], bool]) -> int:
        """Best-effort housekeeping: abort multipart uploads older than a day whose key
        `ours` recognises. Never raises: a store without ListMultipartUploads, or a
        policy without that permission, only gets a warning."""
        try:
            found = self._call(
                "listing multipart uploads", self.client.list_multipart_uploads, Prefix=self.root
            )
        except StoreError as exc:
            log.warning("could not list dangling multipart uploads (skipped): %s", exc)
            return 0
        cutoff = datetime.now(UTC) - STALE_UPLOAD
        count = 0
        for upload in found.get("Uploads", []):
            name = str(upload.get("Key", ""))
            started = upload.get("Initiated")
            if not name.startswith(self.root) or not ours(name[len(self.root) :]):
                continue
            if not isinstance(started, datetime) or started > cutoff:
                continue
            self.abort(name, upload["UploadId"])
            count += 1
        return count

    def put_bytes(self, key: str, data: bytes) -> None:
        """A small object: one PUT with its checksum (object lock needs one)."""
        name = self.name(key)
        sha = hashlib.sha256(data).hexdigest()
        self.throttle.take(len(data))
        self._call(
            f"upload of {name}",
            self.client.put_object,
            Key=name,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64sha256(data),
            **self._object_args(sha),
        )
        self._lock(name)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        name = self.name(key)
        if length <= 0:
            return b""
        try:
            answer = self._call(
                f"download of {name}",
                self.client.get_object,
                Key=name,
                Range=f"bytes={start}-{start + length - 1}",
            )
        except OffsiteError as exc:
            if "InvalidRange" in str(exc):
                return b""
            raise
        return bytes(answer["Body"].read())

    def open_chunks(self, key: str) -> Iterator[bytes]:
        """An object's bytes a chunk at a time."""
        from botocore.exceptions import BotoCoreError

        name = self.name(key)
        answer = self._call(f"download of {name}", self.client.get_object, Key=name)
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := body.read(DOWNLOAD_CHUNK):
                    yield chunk
            except BotoCoreError as exc:
                raise OffsiteError(f"download of {name} broke off: {exc}") from None
            finally:
                body.close()

        return chunks()

    def delete(self, key: str) -> None:
        name = self.name(key)
        self._call(f"delete of {name}", self.client.delete_object, Key=name)
