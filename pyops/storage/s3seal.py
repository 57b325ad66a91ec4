"""Recording the sha256 of an S3 object completed without it.

S3 takes an object's metadata when its upload starts. An upload that starts before
the sha256 is known (Store.put_growing: the artifact sent while the backup writes
it) records it once the object is complete: as the object's `sha256` tag (one small
request, no new version), or, on a store or policy without object tagging, by a
server-side copy of the object onto itself with the metadata set (nothing crosses
the uplink again; in a versioned bucket the version without it is then deleted, or
left to the lifecycle rule when the policy forbids that). `tagged_sha256` reads the
tag back for `S3Store.stat`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyops.storage import StoreError

if TYPE_CHECKING:
    from pyops.storage.s3 import S3Store

log = logging.getLogger(__name__)

EMPTY_SHA256_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # of b""
COPY_PART = 256 << 20  # server-side copy ranges: each call well inside the read timeout


def tagged_sha256(store: S3Store, key: str, version: str | None) -> str | None:
    """The sha256 an overlapped upload recorded as a tag (see `seal`), if any."""
    extra = {"VersionId": version} if version and version != "null" else {}
    try:
        answer = store._call(
            f"tags of {key}", store.client.get_object_tagging, Key=store.name(key), **extra
        )
    except StoreError:  # no tagging in this store or this policy: nothing recorded
        return None
    tags = {t.get("Key"): t.get("Value") for t in answer.get("TagSet", [])}
    return tags.get("sha256") or None


def seal(store: S3Store, name: str, size: int, sha256: str, version: str | None) -> None:
    """Record the sha256 of an object completed without it: as its `sha256` tag
    (one small request, no new version), or, where the store or the policy has no
    object tagging, by a server-side copy onto itself with the metadata."""
    extra = {"VersionId": version} if version and version != "null" else {}
    try:
        store._call(
            f"tagging of {name}",
            store.client.put_object_tagging,
            Key=name,
            Tagging={"TagSet": [{"Key": "sha256", "Value": sha256}]},
            **extra,
        )
        return
    except StoreError as exc:
        log.info("%s: no object tagging (%s): recording its sha256 by a copy", name, exc)
    _reseal(store, name, size, sha256, version)


def _reseal(store: S3Store, name: str, size: int, sha256: str, version: str | None) -> None:
    """Copy the object just completed onto itself (server-side, in ranges) with its
    sha256 in the metadata; then drop the version without it. Any failure removes
    the object: no object without its sha256 is left."""
    version = None if version == "null" else version  # unversioned, or suspended
    source: dict[str, str] = {"Bucket": store.config.bucket, "Key": name}
    if version:
        source["VersionId"] = version
    try:
        if size == 0:
            done = store._call(
                f"upload of {name}",
                store.client.put_object,
                Key=name,
                Body=b"",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=EMPTY_SHA256_B64,
                **store._object_args(sha256),
            )
        else:
            done = _copy_onto_itself(store, name, size, sha256, source)
    except BaseException:
        # no object without its sha256: remove the version (or, not allowed to, hide it)
        if not _drop(store, name, version) and version:
            _drop(store, name, None)
        raise
    if version and version != done.get("VersionId") and not _drop(store, name, version, True):
        log.info(
            "%s: the version without its sha256 stays as a noncurrent version (no "
            "s3:DeleteObjectVersion) until the bucket's lifecycle rule expires it",
            name,
        )


def _copy_onto_itself(
    store: S3Store, name: str, size: int, sha256: str, source: dict[str, str]
) -> dict[str, Any]:
    created = store._call(
        f"copy of {name}",
        store.client.create_multipart_upload,
        Key=name,
        **store._object_args(sha256),
    )
    upload_id = created["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, size, COPY_PART), start=1):
            end = min(size, start + COPY_PART) - 1
            answer = store._call(
                f"copy of {name} (part {number})",
                store.client.upload_part_copy,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        done: dict[str, Any] = store._call(
            f"copy of {name}",
            store.client.complete_multipart_upload,
            Key=name,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        store.abort(name, upload_id)
        raise
    return done


def _drop(store: S3Store, name: str, version: str | None, quiet: bool = False) -> bool:
    """Best effort: delete (a version of) an object pyops just wrote."""
    extra = {"VersionId": version} if version else {}
    try:
        store._call(f"delete of {name}", store.client.delete_object, Key=name, **extra)
    except StoreError as exc:
        if not quiet:
            log.warning("could not delete %s (%s): %s", name, version or "latest", exc)
        return False
    return True
