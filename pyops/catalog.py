"""The catalog: the only code that names keys, reads and writes manifests, lists
complete backups, chooses "latest", copies a backup between stores and deletes one.

It works over any store (the repository directory, the bucket, memory), so local
and remote listing, latest, prune and copy exist once. A backup is complete when
its manifest exists: the artifact goes first, the manifest last; deleting goes
manifest first. Every manifest read back is validated (shape, place, repository,
MAC) before anything uses it; one that fails is reported by key and never read
from, written to or deleted through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyops import manifest as mf
from pyops.errors import PyopsError
from pyops.fsutil import temp_owner_alive
from pyops.manifest import MANIFEST_SUFFIX, TIERS, InvalidManifest, Manifest
from pyops.storage import (
    ChecksumMismatch,
    NotFound,
    Progress,
    Store,
    StoreError,
    check_key,
    read_small,
)

log = logging.getLogger(__name__)
# re-exported: most callers only need these names
__all__ = ["MANIFEST_SUFFIX", "TIERS", "Backup", "Catalog", "Listing", "Manifest", "Refusal"]


@dataclass(frozen=True)
class Backup:
    """A complete backup whose manifest passed every check of its catalog."""

    manifest: Manifest
    authenticated: bool

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def artifact_key(self) -> str:
        m = self.manifest
        return f"{m.target}/{m.tier}/{m.artifact_name}"

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.id)

    def attachment_key(self, kind: str) -> str:
        m = self.manifest
        return f"{m.target}/{m.tier}/{m.attachments[kind]['name']}"

    @property
    def data_keys(self) -> list[tuple[str, int, str]]:
        """(key, bytes, sha256) of every file of the backup but its manifest: the
        artifact first, then the attachments."""
        m = self.manifest
        out = [(self.artifact_key, m.size, m.sha256)]
        for kind, entry in sorted(m.attachments.items()):
            out.append((self.attachment_key(kind), int(entry["bytes"]), str(entry["sha256"])))
        return out


@dataclass(frozen=True)
class Refusal:
    """A manifest the catalog will not use, and why."""

    key: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason}


@dataclass
class Listing:
    backups: list[Backup] = field(default_factory=list)  # usable, newest first
    refused: list[Refusal] = field(default_factory=list)  # invalid, forged, unauthenticated
    foreign: list[Refusal] = field(default_factory=list)  # another repository's: not touched

    def report(self, prefix: str, where: str, consequence: str) -> None:
        """Say what the catalog would not use: an operator must see a forged manifest."""
        for refusal in self.refused:
            log.warning("%s: %s: %s: %s", prefix, refusal.key, refusal.reason, consequence)
        if self.foreign:
            keys = ", ".join(r.key for r in self.foreign)
            log.warning("%s: foreign backups under %s: not touched (%s)", prefix, where, keys)

    def latest(self, target: str | None = None) -> Backup | None:
        for b in self.backups:
            if b.manifest.tier != "pre-restore" and (target is None or b.manifest.target == target):
                return b
        return None


# the host's fleet index, beside its backups and repository.json: written and read only
# through pyops/fleetindex.py (which seals it with the repository key, like a manifest)
INDEX_KEY = "index.json"


def manifest_key(backup_id: str) -> str:
    target, tier, _ = mf.parse_id(backup_id)
    return f"{target}/{tier}/{backup_id}{MANIFEST_SUFFIX}"


class Catalog:
    """The backups of one repository in one store."""

    def __init__(
        self,
        store: Store,
        *,
        repository_id: str | None,
        key: bytes | None,
        allow_unauthenticated: bool = False,
    ) -> None:
        self.store = store
        self.repository_id = repository_id
        self.key = key
        self.allow_unauthenticated = allow_unauthenticated

    def describe(self) -> str:
        return self.store.describe()

    # --- reading ------------------------------------------------------------------

    def _read(self, key: str) -> tuple[Backup | None, Refusal | None, bool]:
        """(backup, refusal, foreign) for the manifest at `key`."""
        target, tier, name = key.split("/")
        stem = name[: -len(MANIFEST_SUFFIX)]
        try:
            m = Manifest.parse(read_small(self.store, key), key)
            mf.check_place(m, target, tier, stem)
        except (InvalidManifest, StoreError) as exc:
            return None, Refusal(key, str(exc).removeprefix(f"{key}: ")), False
        ours = self.repository_id
        other = bool(m.repository_id and ours and m.repository_id != ours)
        if self.key is None:
            if other:
                return None, Refusal(key, f"belongs to repository {m.repository_id}"), True
            return Backup(m, False), None, False
        if mf.authentic(self.key, m):
            if other:  # sealed with our key, by another repository sharing it
                return None, Refusal(key, f"belongs to repository {m.repository_id}"), True
            return Backup(m, True), None, False
        # with a key, only an authentic manifest may say whose it is: a changed
        # repository_id must not turn a forged or altered manifest into a "foreign" one
        if m.mac:
            why = "its MAC does not match the repository key: forged or altered"
            return None, Refusal(key, why), False
        if self.allow_unauthenticated:
            if other:
                return None, Refusal(key, f"belongs to repository {m.repository_id}"), True
            return Backup(m, False), None, False
        why = (
            "unauthenticated (no MAC): written before the repository key existed, or forged "
            "(`pyops init` signs verified old backups; --allow-unauthenticated uses it anyway)"
        )
        return None, Refusal(key, why), False

    def _manifest_keys(self, target: str | None, tier: str | None) -> Iterator[str]:
        prefix = f"{target}/" if target else ""
        if target and tier:
            prefix += f"{tier}/"
        for info in self.store.list(prefix):
            parts = info.key.split("/")
            if len(parts) != 3 or not parts[2].endswith(MANIFEST_SUFFIX):
                continue
            if (target and parts[0] != target) or (tier and parts[1] != tier):
                continue
            yield info.key

    def scan(self, target: str | None = None, tier: str | None = None) -> Listing:
        """Every manifest (of `target`, `tier`), judged."""
        out = Listing()
        for key in self._manifest_keys(target, tier):
            backup, refusal, foreign = self._read(key)
            if backup is not None:
                out.backups.append(backup)
            elif foreign:
                out.foreign.append(refusal)  # type: ignore[arg-type]
            else:
                out.refused.append(refusal)  # type: ignore[arg-type]
        out.backups.sort(key=lambda b: (b.manifest.started_at, b.id), reverse=True)
        return out

    def backups(self, target: str | None = None, tier: str | None = None) -> list[Backup]:
        return self.scan(target, tier).backups

    def find(self, backup_id: str, *, foreign_ok: bool = False) -> Backup:
        """The backup named by id. `foreign_ok`: another repository's backup under the
        same prefix, named explicitly by its id, may be read (never pruned)."""
        key = manifest_key(backup_id)
        if self.store.stat(key) is None:
            raise PyopsError(f"no complete backup {backup_id} in {self.describe()}")
        backup, refusal, foreign = self._read(key)
        if backup is not None:
            return backup
        assert refusal is not None
        if foreign and foreign_ok:
            # named explicitly by id: judged as if it were ours (shape, place, MAC); a
            # MAC under the other repository's key passes only --allow-unauthenticated
            m = Manifest.parse(read_small(self.store, key), key)
            if self.key is None or mf.authentic(self.key, m):
                return Backup(m, self.key is not None)
            why = f"{refusal.reason}, and its MAC does not match this repository's key"
            if not self.allow_unauthenticated:
                raise PyopsError(
                    f"{self.describe()}: {key}: {why}: not used (--allow-unauthenticated "
                    "uses it anyway)"
                )
            log.warning("%s: %s: used UNAUTHENTICATED (--allow-unauthenticated)", key, why)
            return Backup(m, False)
        raise PyopsError(f"{self.describe()}: {key}: {refusal.reason}: not used")

    def latest(self, target: str) -> Backup:
        found = self.scan(target).latest(target)
        if found is None:
            raise PyopsError(f"no complete backup of {target} in {self.describe()}")
        return found

    def read_manifest_bytes(self, backup: Backup) -> bytes:
        return read_small(self.store, backup.manifest_key)

    def chunks(self, backup: Backup) -> Iterator[bytes]:
        return self.store.open_chunks(backup.artifact_key)

    def head(self, backup: Backup, count: int) -> bytes:
        return self.store.read_range(backup.artifact_key, 0, count)

    def artifact_path(self, backup: Backup) -> Path:
        """The artifact as a local file (local stores only)."""
        path_of: Callable[[str], Path] | None = getattr(self.store, "path", None)
        if path_of is None:
            raise PyopsError(f"{self.describe()} is not a local repository")
        return path_of(backup.artifact_key)

    # --- writing ------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> Backup:
        """Seal (MAC) and store the manifest: from now on the backup is complete."""
        manifest.repository_id = manifest.repository_id or (self.repository_id or "")
        mf.seal(self.key, manifest)
        backup = Backup(manifest, self.key is not None)
        self.store.put_bytes(backup.manifest_key, manifest.to_json())
        return backup

    def delete(self, backup: Backup) -> None:
        """Manifest first: from that moment it is no longer a backup."""
        self.store.delete(backup.manifest_key)
        for key, _size, _sha in backup.data_keys:
            self.store.delete(key)

    def attachment(self, backup: Backup, kind: str) -> Iterator[bytes]:
        return self.store.open_chunks(backup.attachment_key(kind))

    def leftovers(self, target: str) -> list[str]:
        """Keys of dead runs: temp files whose process is gone, and artifacts whose
        manifest never came. Only names pyops makes are considered."""
        infos = [i for i in self.store.list(f"{target}/") if len(i.key.split("/")) == 3]
        names = {i.key for i in infos}
        out = []
        for info in infos:
            _target, tier, name = info.key.split("/")
            if tier not in TIERS or not _safe_key(info.key):
                continue
            head = mf.ID_RE.match(".".join(name.split(".")[:3]))
            if head is None or head["target"] != target or head["tier"] != tier:
                continue
            if mf.TEMP_RE.search(name):
                base = mf.TEMP_RE.sub("", name)
                if _made_by_pyops(base) and not temp_owner_alive(name):
                    out.append(info.key)
                continue
            stem = ".".join(name.split(".")[:3])
            if (
                mf.ID_RE.match(stem)
                and mf.object_of_backup(stem, name)
                and f"{target}/{tier}/{stem}{MANIFEST_SUFFIX}" not in names
            ):
                out.append(info.key)
        return out


def _safe_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True


def _made_by_pyops(name: str) -> bool:
    stem = ".".join(name.split(".")[:3])
    if not mf.ID_RE.match(stem):
        return False
    return name == f"{stem}{MANIFEST_SUFFIX}" or mf.object_of_backup(stem, name)


def copy(
    src: Catalog, dst: Catalog, backup: Backup, progress: Progress = None, fresh: bool = False
) -> bool:
    """Upload and fetch are this one copy: the artifact and the attachments streamed
    into `dst`, each with its sha256 checked against the manifest (nothing stored when
    it differs), then the manifest, byte for byte, last. What `dst` already holds
    identically (an object whose recorded size and sha256 match, the same manifest
    bytes) is not sent again, unless `fresh`. Returns whether anything was sent."""
    data = src.read_manifest_bytes(backup)
    if Manifest.parse(data, backup.manifest_key) != backup.manifest:  # not what was judged
        raise PyopsError(f"{backup.id}: its manifest in {src.describe()} changed while copied")
    missing = [
        (key, sha)
        for key, size, sha in backup.data_keys
        if fresh or not _holds(dst, key, size, sha)
    ]
    if not missing and _same_bytes(dst, backup.manifest_key, data):
        return False
    path_of: Callable[[str], Path] | None = getattr(src.store, "path", None)
    for key, sha in missing:
        # the artifact reports progress; attachments are small
        shown = progress if key == backup.artifact_key else None
        try:
            if path_of is not None:
                dst.store.put_file(key, path_of(key), sha, shown)
            else:
                dst.store.put_stream(key, src.store.open_chunks(key), sha, shown)
        except (NotFound, FileNotFoundError):
            what = "artifact" if key == backup.artifact_key else "attachment"
            raise PyopsError(f"{backup.id}: {what} {key} is missing in {src.describe()}") from None
        except ChecksumMismatch as exc:
            raise ChecksumMismatch(f"{backup.id}: copy to {dst.describe()} failed: {exc}") from None
        except StoreError as exc:
            raise PyopsError(f"{backup.id}: copy to {dst.describe()} failed: {exc}") from None
    dst.store.put_bytes(backup.manifest_key, data)
    return True


def _holds(catalog: Catalog, key: str, size: int, sha: str) -> bool:
    there = catalog.store.stat(key)
    return there is not None and there.size == size and there.sha256 == sha


def _same_bytes(catalog: Catalog, key: str, data: bytes) -> bool:
    try:
        return read_small(catalog.store, key) == data
    except NotFound:
        return False
