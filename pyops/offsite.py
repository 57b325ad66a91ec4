"""S3 (or any S3-compatible store) as the offsite copy.

Keys mirror the local layout under `<prefix>/<host>/`. Uploads are multipart and
streamed from the finished artifact a part at a time; every part carries its
SHA-256 as a header the store validates, the whole object's SHA-256 rides along
as metadata, and a failed upload is aborted so no half object or dangling
upload remains. The manifest goes up last. Credentials come only from boto3's
standard chain (environment, shared file, instance role).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyops.catalog import ID_RE, MANIFEST_SUFFIX, Manifest
from pyops.config import OffsiteConfig
from pyops.errors import ConfigError, PyopsError

log = logging.getLogger(__name__)

MIN_PART = 8 << 20
MAX_PARTS = 9000  # S3 allows 10,000; leave room
DOWNLOAD_CHUNK = 1 << 20


class OffsiteError(PyopsError):
    """The store could not be reached or refused an operation."""


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    storage_class: str
    sha256: str | None
    retain_until: datetime | None


def part_size(total: int) -> int:
    """Parts big enough that any artifact fits in S3's 10,000-part limit."""
    need = -(-total // MAX_PARTS)
    size = max(MIN_PART, need)
    return -(-size // (1 << 20)) * (1 << 20)


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

    def b64sha256(self) -> str:
        h = hashlib.sha256()
        self.seek(0)
        while chunk := self.read(DOWNLOAD_CHUNK):  # sized reads: flat memory
            h.update(chunk)
        self.seek(0)
        return base64.b64encode(h.digest()).decode()


class Offsite:
    """One bucket, one host's prefix."""

    def __init__(self, config: OffsiteConfig, host: str, client: Any = None) -> None:
        if not config.bucket:
            raise ConfigError("offsite.bucket", "no bucket configured for offsite copies")
        self.config = config
        self.host = host
        self.client = client or self._client()

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        from pyops.execute import hidden

        # credentials from boto3's standard chain; the environment's were moved out of
        # reach of child processes at start-up (App), so hand them over explicitly
        session = boto3.session.Session(
            aws_access_key_id=hidden("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=hidden("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=hidden("AWS_SESSION_TOKEN"),
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

    # --- naming ---------------------------------------------------------------

    @property
    def root(self) -> str:
        prefix = self.config.prefix.strip("/")
        return f"{prefix}/{self.host}/" if prefix else f"{self.host}/"

    def key(self, target: str, tier: str, name: str) -> str:
        return f"{self.root}{target}/{tier}/{name}"

    def manifest_key(self, manifest: Manifest) -> str:
        return self.key(manifest.target, manifest.tier, f"{manifest.id}{MANIFEST_SUFFIX}")

    def artifact_key(self, manifest: Manifest) -> str:
        return self.key(manifest.target, manifest.tier, manifest.artifact_name)

    def describe(self) -> str:
        where = self.config.endpoint_url or "AWS"
        return f"s3://{self.config.bucket}/{self.root} ({where})"

    # --- calls ----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.config.bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
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

    def _object_args(self, sha256: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": {"sha256": sha256}}
        if self.config.storage_class:
            args["StorageClass"] = self.config.storage_class
        if self.config.sse == "AES256":
            args["ServerSideEncryption"] = "AES256"
        elif self.config.sse == "aws:kms":
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = self.config.kms_key_id
        return args

    def _lock(self, key: str) -> None:
        """COMPLIANCE retain-until on a finished object. Set explicitly after the upload:
        some S3-compatible stores ignore lock headers on multipart uploads."""
        if self.config.object_lock_days <= 0:
            return
        until = datetime.now(UTC) + timedelta(days=self.config.object_lock_days)
        self._call(
            f"object lock of {key}",
            self.client.put_object_retention,
            Key=key,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
            ChecksumAlgorithm="SHA256",
        )

    def upload_file(
        self,
        path: Path,
        key: str,
        sha256: str,
        progress: Callable[[int], None] | None = None,
        concurrency: int = 4,
    ) -> None:
        """Multipart upload of a finished file, `concurrency` parts in flight at most."""
        size = path.stat().st_size
        psize = part_size(size)
        created = self._call(
            f"upload of {key}",
            self.client.create_multipart_upload,
            Key=key,
            ChecksumAlgorithm="SHA256",
            **self._object_args(sha256),
        )
        upload_id = created["UploadId"]
        lock = threading.Lock()
        try:
            parts = self._upload_parts(
                path, key, upload_id, size, psize, concurrency, progress, lock
            )
            self._call(
                f"upload of {key}",
                self.client.complete_multipart_upload,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self.abort(key, upload_id)
            raise
        self._lock(key)

    def _upload_parts(
        self,
        path: Path,
        key: str,
        upload_id: str,
        size: int,
        psize: int,
        concurrency: int,
        progress: Callable[[int], None] | None,
        lock: threading.Lock,
    ) -> list[dict[str, Any]]:
        fd = os.open(path, os.O_RDONLY)
        slots = threading.BoundedSemaphore(max(1, concurrency))

        def send(number: int, offset: int) -> dict[str, Any]:
            try:
                length = min(psize, size - offset)
                body = PartReader(fd, offset, length)
                digest = body.b64sha256()
                answer = self._call(
                    f"upload of {key} (part {number})",
                    self.client.upload_part,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=digest,
                )
                if progress is not None:
                    with lock:
                        progress(length)
                return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": digest}
            finally:
                slots.release()

        futures: list[Future[dict[str, Any]]] = []
        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                offsets = range(0, max(size, 1), psize) if size else [0]
                for number, offset in enumerate(offsets, start=1):
                    slots.acquire()  # memory: at most `concurrency` parts read at once
                    if any(f.done() and f.exception() for f in futures):
                        slots.release()
                        break
                    futures.append(pool.submit(send, number, offset))
            return [f.result() for f in futures]
        finally:
            os.close(fd)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                f"abort of {key}", self.client.abort_multipart_upload, Key=key, UploadId=upload_id
            )
        except OffsiteError as exc:
            log.warning(
                "could not abort the multipart upload of %s (retried by sync): %s", key, exc
            )

    def abort_stale_uploads(self) -> int:
        """Abort multipart uploads left under our prefix by runs that died."""
        found = self._call(
            "listing multipart uploads", self.client.list_multipart_uploads, Prefix=self.root
        )
        count = 0
        for upload in found.get("Uploads", []):
            self.abort(upload["Key"], upload["UploadId"])
            count += 1
        return count

    def put_small(self, key: str, data: bytes) -> None:
        """A manifest: one PUT with its checksum (object lock needs one)."""
        sha = hashlib.sha256(data).hexdigest()
        self._call(
            f"upload of {key}",
            self.client.put_object,
            Key=key,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64sha256(data),
            **self._object_args(sha),
        )
        self._lock(key)

    def get_small(self, key: str) -> bytes:
        answer = self._call(f"download of {key}", self.client.get_object, Key=key)
        return bytes(answer["Body"].read())

    def first_bytes(self, key: str, count: int) -> bytes:
        """The start of an object (a ranged GET), e.g. to prove a key opens it."""
        answer = self._call(
            f"download of {key}", self.client.get_object, Key=key, Range=f"bytes=0-{count - 1}"
        )
        return bytes(answer["Body"].read())

    def stream(self, key: str) -> Iterator[bytes]:
        """An object's bytes a chunk at a time."""
        from botocore.exceptions import BotoCoreError

        answer = self._call(f"download of {key}", self.client.get_object, Key=key)
        body = answer["Body"]
        try:
            while chunk := body.read(DOWNLOAD_CHUNK):
                yield chunk
        except BotoCoreError as exc:
            raise OffsiteError(f"download of {key} broke off: {exc}") from None
        finally:
            body.close()

    def head(self, key: str) -> RemoteObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise OffsiteError(f"head of {key} failed: {exc}") from None
        except BotoCoreError as exc:
            raise self._unreachable(f"head of {key}", exc) from None
        return RemoteObject(
            key=key,
            size=int(answer["ContentLength"]),
            storage_class=str(answer.get("StorageClass") or "STANDARD"),
            sha256=answer.get("Metadata", {}).get("sha256"),
            retain_until=answer.get("ObjectLockRetainUntilDate"),
        )

    def keys(self) -> list[tuple[str, int]]:
        """(key, size) of every object under our prefix."""
        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                "listing the bucket", self.client.list_objects_v2, Prefix=self.root, **extra
            )
            out += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def manifests(self) -> list[Manifest]:
        """Complete remote backups of this host (those whose manifest is there), newest first."""
        found = []
        for key, _size in self.keys():
            name = key.rsplit("/", 1)[-1]
            if not name.endswith(MANIFEST_SUFFIX) or not ID_RE.match(name[: -len(MANIFEST_SUFFIX)]):
                continue
            found.append(
                Manifest.from_json(self.get_small(key), f"s3://{self.config.bucket}/{key}")
            )
        found.sort(key=lambda m: (m.started_at, m.id), reverse=True)
        return found

    def delete(self, key: str) -> None:
        self._call(f"delete of {key}", self.client.delete_object, Key=key)
