"""pyops verify: checksums against the manifest; --deep decodes the whole stream and
checks its structure and content facts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyops import catalog
from pyops.app import App
from pyops.artifact import read_chunks
from pyops.catalog import Backup
from pyops.errors import PyopsError, StageFailed, VerifyFailed
from pyops.sources import module
from pyops.stream import Checksum

log = logging.getLogger(__name__)
HEAD = 1 << 16


@dataclass
class VerifyResult:
    id: str
    ok: bool
    deep: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def select(
    app: App, ids: tuple[str, ...], latest: bool, all_: bool, target: str | None
) -> list[Backup]:
    if ids:
        return [catalog.find(app.repo, i) for i in ids]
    backups = catalog.complete_backups(app.repo, target=target)
    if all_:
        return backups
    newest: dict[str, Backup] = {}
    for b in backups:  # newest first
        newest.setdefault(b.manifest.target, b)
    return list(newest.values())


def checksum(backup: Backup) -> None:
    path = backup.artifact_path
    if not path.exists():
        raise VerifyFailed(f"{backup.id}: artifact {path.name} is missing")
    check = Checksum(backup.manifest)
    for _ in check.through(read_chunks(path)):
        pass
    check.check()


def head(backup: Backup) -> bytes:
    with open(backup.artifact_path, "rb") as f:
        return f.read(HEAD)


def deep(app: App, backup: Backup) -> None:
    manifest = backup.manifest
    codec = app.codec
    if manifest.encrypted:
        codec.probe_decrypt(head(backup), backup.id)
    with app.scratch(f"verify-{backup.id}") as scratch, codec.decoder(manifest) as decoders:
        check = Checksum(manifest)
        try:
            module(manifest.type).deep_check(
                manifest, check.through(read_chunks(backup.artifact_path)), decoders, scratch
            )
        except StageFailed as exc:
            raise VerifyFailed(f"{backup.id}: stream does not decode: {exc}") from None


def verify_one(app: App, backup: Backup, deep_: bool) -> VerifyResult:
    try:
        checksum(backup)
        if deep_:
            deep(app, backup)
    except PyopsError as exc:
        log.error("verify %s: FAILED: %s", backup.id, exc)
        return VerifyResult(backup.id, False, deep_, str(exc))
    log.info("verify %s: ok%s", backup.id, " (deep)" if deep_ else "")
    return VerifyResult(backup.id, True, deep_)


def run(app: App, backups: list[Backup], deep_: bool) -> list[VerifyResult]:
    if not backups:
        raise PyopsError("no complete backups to verify (see `pyops list`)")
    return [verify_one(app, b, deep_) for b in backups]
