"""Offsite copies: upload complete local backups that the bucket lacks, check what is
there against the manifests, fetch a backup back.

Upload and fetch are the catalog's one copy (artifact checked by sha256, manifest
last); idempotent by key and checksum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops import catalog as cat
from pyops import fleetindex
from pyops.app import App
from pyops.catalog import Backup, Catalog
from pyops.errors import PyopsError, UsageError
from pyops.fsutil import make_private_dir, write_atomic
from pyops.manifest import ID_RE, Manifest, object_of_backup
from pyops.overlap import EarlyUpload
from pyops.progress import Progress, human
from pyops.storage import ChecksumMismatch

log = logging.getLogger(__name__)


# --- which backups are offsite, as far as this host knows -----------------------


def _marker(app: App, backup_id: str) -> Path:
    return app.state / "offsite" / backup_id


def mark_offsite(app: App, manifest: Manifest) -> None:
    make_private_dir(app.state / "offsite")
    write_atomic(_marker(app, manifest.id), manifest.sha256.encode())


def known_offsite(app: App, manifest: Manifest) -> bool:
    path = _marker(app, manifest.id)
    return path.exists() and path.read_text().strip() == manifest.sha256


# --- upload -------------------------------------------------------------------


def upload(app: App, local: Catalog, remote: Catalog, backup: Backup) -> bool:
    """Artifact first, then the manifest. Returns False when it was already there."""
    manifest = backup.manifest
    sent = [0]

    def progress(n: int) -> None:
        sent[0] += n

    with Progress(
        f"upload {manifest.artifact_name}", lambda: sent[0], manifest.size, app.interactive
    ):
        copied = cat.copy(local, remote, backup, progress)
    mark_offsite(app, manifest)
    if copied:
        log.info(
            "offsite %s: uploaded %s to %s", manifest.id, human(manifest.size), remote.describe()
        )
    return copied


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    aborted_uploads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def ours(key: str) -> bool:
    """A key pyops itself uploads: `<target>/<tier>/<id>.<ext>`, an attachment, or its
    manifest."""
    parts = key.split("/")
    if len(parts) != 3:
        return False
    stem = ".".join(parts[2].split(".")[:3])
    return bool(ID_RE.match(stem)) and object_of_backup(stem, parts[2])


def sync(app: App, targets: list[str]) -> SyncResult:
    """Upload every complete local backup of `targets` that the bucket lacks."""
    local, remote = app.local(write=True), app.remote(write=True)
    abort = getattr(remote.store, "abort_stale_uploads", None)
    result = SyncResult(aborted_uploads=abort(ours) if abort else 0)
    for target in targets:
        listing = local.scan(target)
        listing.report("sync", local.describe(), "not used")
        for backup in reversed(listing.backups):
            try:
                if upload(app, local, remote, backup):
                    result.uploaded.append(backup.id)
                else:
                    result.present.append(backup.id)
            except PyopsError as exc:
                result.failed[backup.id] = str(exc)
                log.error("offsite %s: upload failed: %s", backup.id, exc)
    fleetindex.publish(app, "sync")  # best effort
    return result


def upload_after_backup(app: App, backup_id: str, early: EarlyUpload | None = None) -> None:
    """Send the run's own backup, then anything else of the target still missing.
    `early`: its artifact was uploaded while it was written; once that is confirmed
    the ordinary copy sends only the attachments and the manifest."""
    local, remote = app.local(write=True), app.remote(write=True)
    backup = local.find(backup_id)
    if early is not None:
        early.wait()
    upload(app, local, remote, backup)
    for other in reversed(local.backups(backup.manifest.target)):
        if other.id != backup_id and not known_offsite(app, other.manifest):
            upload(app, local, remote, other)


# --- reconciliation -------------------------------------------------------------


@dataclass
class Drift:
    id: str
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def reconcile(app: App, targets: list[str]) -> list[Drift]:
    """What the bucket holds versus the local manifests, changing nothing. The host
    holding the true manifests notices a bucket that disagrees with them."""
    local, remote = app.local(), app.remote()
    cfg = app.config.offsite
    drift: list[Drift] = []
    for target in targets:
        mine = {b.id: b for b in local.backups(target)}
        there = remote.scan(target)
        drift += [Drift(r.key, f"refused: {r.reason}") for r in there.refused]
        drift += [Drift(r.key, f"foreign: {r.reason}; not touched") for r in there.foreign]
        theirs = {b.id: b for b in there.backups}
        for backup_id in mine:
            if backup_id not in theirs:
                drift.append(Drift(backup_id, "not offsite (run `pyops sync`)"))
        for backup in theirs.values():
            m = backup.manifest
            twin = mine.get(backup.id)
            if twin is not None and twin.manifest.canonical() != m.canonical():
                drift.append(Drift(m.id, "the bucket's manifest differs from the local one"))
            for key, size, sha in backup.data_keys[1:]:
                there_ = remote.store.stat(key)
                if there_ is None or there_.size != size or there_.sha256 != sha:
                    drift.append(Drift(m.id, f"{key} missing or differs from the manifest"))
            obj = remote.store.stat(backup.artifact_key)
            if obj is None:
                drift.append(Drift(m.id, "manifest offsite but artifact object missing"))
                continue
            if obj.size != m.size:
                drift.append(Drift(m.id, f"object is {obj.size} bytes, manifest {m.size}"))
            if obj.sha256 != m.sha256:
                drift.append(Drift(m.id, "object sha256 metadata differs from the manifest"))
            if cfg.storage_class and obj.storage_class != cfg.storage_class:
                drift.append(
                    Drift(m.id, f"storage class {obj.storage_class}, config {cfg.storage_class}")
                )
            if cfg.object_lock_days > 0 and obj.retain_until is None:
                drift.append(Drift(m.id, "no object-lock retain-until date"))
    return drift


def disagreement(app: App, backup: Backup) -> str | None:
    """How a remote manifest differs from this host's own copy of it, if it has one."""
    try:
        twin = app.local().find(backup.id)
    except PyopsError:
        return None
    if twin.manifest.canonical() != backup.manifest.canonical():
        return "the bucket's manifest differs from this host's local one"
    return None


# --- fetch back -----------------------------------------------------------------


def find_remote(app: App, backup_id: str | None, target: str | None) -> Backup:
    """A backup in the bucket: the one named (another repository's too, when named
    explicitly), or the newest of this repository's, never a pre-restore one."""
    remote = app.remote()
    if backup_id:
        return remote.find(backup_id, foreign_ok=True)
    listing = remote.scan(target)
    listing.report("remote", remote.describe(), "not used")
    found = [b for b in listing.backups if b.manifest.tier != "pre-restore"]
    if not found:
        what = f"backup of {target}" if target else "backup"
        raise PyopsError(f"no complete {what} in {remote.describe()}")
    targets = sorted({b.manifest.target for b in found})
    if len(targets) > 1:
        raise UsageError(
            "--latest --remote needs --target: the bucket holds backups of several targets "
            f"({', '.join(targets)})",
            "--target",
        )
    return found[0]


def fetch(app: App, backup: Backup, fresh: bool = False) -> Backup:
    """Download a remote backup into the local repository (sha256 checked in the
    stream, manifest last): from then on it is an ordinary local backup. An identical
    local copy is used instead, unless `fresh` (a drill must read the bucket's bytes)."""
    local = app.local(write=True)
    m = backup.manifest
    if not fresh:
        try:
            existing = local.find(m.id, foreign_ok=True)
        except PyopsError:
            existing = None
        if existing is not None and existing.manifest.sha256 == m.sha256:
            log.info("fetch %s: a local copy exists; using it", m.id)
            return existing
    got = [0]

    def progress(n: int) -> None:
        got[0] += n

    with Progress(f"download {m.artifact_name}", lambda: got[0], m.size, app.interactive):
        try:
            cat.copy(app.remote(), local, backup, progress, fresh=True)
        except ChecksumMismatch as exc:
            raise PyopsError(
                f"{m.id}: the object in the bucket does not match its manifest ({exc}): "
                "not restoring"
            ) from None
    log.info("fetch %s: downloaded %s, sha256 ok", m.id, human(m.size))
    return local.find(m.id, foreign_ok=True)
