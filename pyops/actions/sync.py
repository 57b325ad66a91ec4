"""Offsite copies: upload complete local backups that the bucket lacks, check what is
there against the manifests, fetch a backup back, prune the bucket.

Idempotent by key and checksum: a backup whose artifact object already carries
the manifest's sha256 and size, and whose manifest object exists, is not sent
again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyops import catalog, retention
from pyops.actions.prune import policy
from pyops.app import App
from pyops.artifact import ArtifactWriter
from pyops.catalog import Backup, Manifest
from pyops.errors import PyopsError
from pyops.offsite import Offsite
from pyops.progress import Progress, human

log = logging.getLogger(__name__)


def offsite(app: App) -> Offsite:
    return Offsite(app.config.offsite, app.config.host)


# --- which backups are offsite, as far as this host knows -----------------------


def _marker(app: App, backup_id: str) -> Path:
    return app.state / "offsite" / backup_id


def mark_offsite(app: App, manifest: Manifest) -> None:
    catalog.make_private_dir(app.state / "offsite")
    catalog.write_atomic(_marker(app, manifest.id), manifest.sha256.encode())


def known_offsite(app: App, manifest: Manifest) -> bool:
    path = _marker(app, manifest.id)
    return path.exists() and path.read_text().strip() == manifest.sha256


# --- upload -------------------------------------------------------------------


def upload(app: App, store: Offsite, backup: Backup) -> bool:
    """Artifact first, then the manifest. Returns False when it was already there."""
    manifest = backup.manifest
    key = store.artifact_key(manifest)
    obj = store.head(key)
    artifact_there = obj is not None and obj.size == manifest.size and obj.sha256 == manifest.sha256
    manifest_there = artifact_there and store.head(store.manifest_key(manifest)) is not None
    if manifest_there:
        mark_offsite(app, manifest)
        return False
    if not artifact_there:
        sent = [0]

        def progress(n: int) -> None:
            sent[0] += n

        with Progress(
            f"upload {manifest.artifact_name}", lambda: sent[0], manifest.size, app.interactive
        ):
            store.upload_file(
                backup.artifact_path, key, manifest.sha256, progress, app.config.offsite.concurrency
            )
    store.put_small(store.manifest_key(manifest), backup.manifest_path.read_bytes())
    mark_offsite(app, manifest)
    log.info("offsite %s: uploaded %s to %s", manifest.id, human(manifest.size), key)
    return True


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    aborted_uploads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def sync(app: App, targets: list[str]) -> SyncResult:
    """Upload every complete local backup of `targets` that the bucket lacks."""
    store = offsite(app)
    result = SyncResult(aborted_uploads=store.abort_stale_uploads())
    for target in targets:
        for backup in reversed(catalog.complete_backups(app.repo, target=target)):
            try:
                if upload(app, store, backup):
                    result.uploaded.append(backup.id)
                else:
                    result.present.append(backup.id)
            except PyopsError as exc:
                result.failed[backup.id] = str(exc)
                log.error("offsite %s: upload failed: %s", backup.id, exc)
    return result


# --- reconciliation -------------------------------------------------------------


@dataclass
class Drift:
    id: str
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def reconcile(app: App, targets: list[str]) -> list[Drift]:
    """What the bucket holds versus the manifests, changing nothing."""
    store = offsite(app)
    cfg = app.config.offsite
    drift: list[Drift] = []
    remote = {m.id: m for m in store.manifests() if m.target in targets}
    for target in targets:
        for backup in catalog.complete_backups(app.repo, target=target):
            if backup.id not in remote:
                drift.append(Drift(backup.id, "not offsite (run `pyops sync`)"))
    for manifest in remote.values():
        obj = store.head(store.artifact_key(manifest))
        if obj is None:
            drift.append(Drift(manifest.id, "manifest offsite but artifact object missing"))
            continue
        if obj.size != manifest.size:
            drift.append(
                Drift(manifest.id, f"object is {obj.size} bytes, manifest {manifest.size}")
            )
        if obj.sha256 != manifest.sha256:
            drift.append(Drift(manifest.id, "object sha256 metadata differs from the manifest"))
        if cfg.storage_class and obj.storage_class != cfg.storage_class:
            drift.append(
                Drift(manifest.id, f"storage class {obj.storage_class}, config {cfg.storage_class}")
            )
        if cfg.object_lock_days > 0 and obj.retain_until is None:
            drift.append(Drift(manifest.id, "no object-lock retain-until date"))
    return drift


# --- fetch back -----------------------------------------------------------------


def find_remote(app: App, backup_id: str | None, target: str | None) -> Manifest:
    store = offsite(app)
    remote = store.manifests()  # one listing plus one GET per manifest: fetch it once
    if backup_id:
        manifests = [m for m in remote if m.id == backup_id]
    else:
        manifests = [m for m in remote if m.tier != "pre-restore"]
        if target:
            manifests = [m for m in manifests if m.target == target]
    if not manifests:
        what = backup_id or (f"backup of {target}" if target else "backup")
        raise PyopsError(f"no complete {what} in {store.describe()}")
    if not backup_id and len({m.target for m in manifests}) > 1:
        raise PyopsError("--latest --remote needs --target (the bucket holds several targets)")
    return manifests[0]


def fetch(app: App, manifest: Manifest, fresh: bool = False) -> Backup:
    """Download a remote backup into the local repository (temp name, sha256 checked in
    the stream, rename, manifest last): from then on it is an ordinary local backup.
    An identical local copy is used instead, unless `fresh` (a drill must read the
    bucket's bytes)."""
    store = offsite(app)
    directory = catalog.make_private_dir(catalog.tier_dir(app.repo, manifest.target, manifest.tier))
    local = Backup(manifest, directory)
    if not fresh and local.manifest_path.exists() and local.artifact_path.exists():
        existing = catalog.find(app.repo, manifest.id)
        if existing.manifest.sha256 == manifest.sha256:
            log.info("fetch %s: a local copy exists; using it", manifest.id)
            return existing
    writer = ArtifactWriter(local.artifact_path)
    try:
        with Progress(
            f"download {manifest.artifact_name}",
            lambda: writer.bytes,
            manifest.size,
            app.interactive,
        ):
            for chunk in store.stream(store.artifact_key(manifest)):
                writer.write(chunk)
        if writer.bytes != manifest.size or writer.hash.hexdigest() != manifest.sha256:
            raise PyopsError(
                f"{manifest.id}: the object in the bucket does not match its manifest "
                f"({writer.bytes} bytes, sha256 {writer.hash.hexdigest()[:16]}...): not restoring"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    catalog.write_atomic(local.manifest_path, manifest.to_json())
    log.info("fetch %s: downloaded %s, sha256 ok", manifest.id, human(manifest.size))
    return local


# --- remote prune ---------------------------------------------------------------


@dataclass
class RemotePruneRow:
    id: str
    target: str
    tier: str
    keep: bool
    reason: str
    locked_until: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def prune_remote(
    app: App, targets: list[str], tiers: list[str] | None, dry_run: bool
) -> list[RemotePruneRow]:
    """The local rules applied to the bucket. An object still under object lock is
    skipped and reported, not an error."""
    store = offsite(app)
    for drift in reconcile(app, targets):
        log.warning("offsite drift: %s: %s", drift.id, drift.problem)
    manifests = [m for m in store.manifests() if m.target in targets]
    items = [retention.Item(m.id, m.target, m.tier, m.started) for m in manifests]
    by_id = {m.id: m for m in manifests}
    now = datetime.now(UTC)
    rows = []
    for decision in retention.apply(items, policy(app), app.clock(), tiers):
        m = by_id[decision.item.id]
        row = RemotePruneRow(m.id, m.target, m.tier, decision.keep, decision.reason)
        if not decision.keep:
            locks = [
                o.retain_until
                for o in (store.head(store.artifact_key(m)), store.head(store.manifest_key(m)))
                if o is not None and o.retain_until is not None and o.retain_until > now
            ]
            if locks:
                row.keep = True
                row.locked_until = max(locks).isoformat()
                row.reason += f"; object lock until {row.locked_until}: skipped"
                log.warning("prune --remote %s: locked until %s, skipped", m.id, row.locked_until)
            elif not dry_run:
                store.delete(store.manifest_key(m))
                store.delete(store.artifact_key(m))
                log.info("prune --remote %s: deleted (%s)", m.id, decision.reason)
        rows.append(row)
    return rows


def remote_manifests(app: App, target: str | None, tier: str | None) -> list[Manifest]:
    return [
        m
        for m in offsite(app).manifests()
        if (not target or m.target == target) and (not tier or m.tier == tier)
    ]


def upload_after_backup(app: App, backup_id: str) -> None:
    """Send the run's own backup, then anything else of the target still missing."""
    backup = catalog.find(app.repo, backup_id)
    store = offsite(app)
    upload(app, store, backup)
    for other in reversed(catalog.complete_backups(app.repo, target=backup.manifest.target)):
        if other.id != backup_id and not known_offsite(app, other.manifest):
            upload(app, store, other)
