"""pyops verify: checksums against the manifest; --deep decodes the whole stream and
checks its structure and content facts. The same code for the repository and, with
--remote, the bucket (objects streamed, never written): the catalog says which
backups there are, and a manifest it refuses is a failed result, named."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyops import attachments, pgdatabases, stream
from pyops.app import App
from pyops.catalog import Backup, Catalog
from pyops.config import Config
from pyops.errors import PyopsError, StageFailed, VerifyFailed
from pyops.manifest import Manifest
from pyops.sources import module
from pyops.storage import NotFound
from pyops.stream import Checksum

log = logging.getLogger(__name__)
HEAD = 1 << 16


@dataclass
class VerifyResult:
    id: str
    ok: bool
    deep: bool
    remote: bool = False
    error: str | None = None
    authenticated: bool = False
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = self.__dict__.copy()
        out["warnings"] = list(self.warnings)
        return out


def select(
    catalog: Catalog,
    ids: tuple[str, ...],
    all_: bool,
    target: str | None,
    deep: bool,
    remote: bool,
    config: Config | None = None,
) -> tuple[list[Backup], list[VerifyResult]]:
    """IDs, every one, or (the default) the newest of each target; and a failed result
    for each manifest the catalog refused among those considered. With `config`, the
    name of a `databases = "all"` target stands for its databases' backups."""
    if ids:
        return [catalog.find(i, foreign_ok=True) for i in ids], []
    listing = pgdatabases.scan(config, catalog, target) if config else catalog.scan(target)
    refused = [
        VerifyResult(r.key, False, deep, remote, f"manifest refused: {r.reason}")
        for r in listing.refused
    ]
    for r in listing.foreign:
        log.warning("verify: %s: foreign (%s): not verified", r.key, r.reason)
    if all_:
        return listing.backups, refused
    newest: dict[str, Backup] = {}
    for b in listing.backups:
        newest.setdefault(b.manifest.target, b)
    return list(newest.values()), refused


def deep(app: App, manifest: Manifest, chunks: Iterable[bytes]) -> None:
    codec = app.codec
    with app.scratch(f"verify-{manifest.id}") as scratch, codec.decoder(manifest) as decoders:
        check = Checksum(manifest)
        try:
            module(manifest.type).deep_check(manifest, check.through(chunks), decoders, scratch)
        except StageFailed as exc:
            raise VerifyFailed(f"{manifest.id}: stream does not decode: {exc}") from None
        check.check()


def verify_one(
    app: App, catalog: Catalog, backup: Backup, deep_: bool, remote: bool
) -> VerifyResult:
    manifest = backup.manifest
    result = VerifyResult(
        manifest.id,
        False,
        deep_,
        remote,
        authenticated=backup.authenticated,
        warnings=tuple(manifest.warnings),
    )
    try:
        if remote:
            from pyops.actions.sync import disagreement

            problem = disagreement(app, backup)
            if problem:
                raise VerifyFailed(f"{manifest.id}: {problem}")
        if catalog.store.stat(backup.artifact_key) is None:
            raise VerifyFailed(f"{manifest.id}: artifact {backup.artifact_key} is missing")
        if deep_ and manifest.encrypted:  # the key opens it: say so before a long read
            app.codec.probe_decrypt(catalog.head(backup, HEAD), manifest.id)
        if deep_:
            try:
                deep(app, manifest, catalog.chunks(backup))  # one pass: the sha256 on the way
            except VerifyFailed:
                if not remote:  # a damaged artifact fails to decode first: say it is damaged
                    stream.checksum(manifest, catalog.chunks(backup))
                raise
        else:
            stream.checksum(manifest, catalog.chunks(backup))
        for kind in manifest.attachments:  # small: checksummed, and decoded when deep
            if deep_:
                attachments.read(catalog, backup, kind, app.codec)
            else:
                stream.checksum(manifest, catalog.attachment(backup, kind), kind)
    except NotFound as exc:
        result.error = f"{manifest.id}: {exc}"
    except PyopsError as exc:
        result.error = str(exc)
    if result.error:
        log.error("verify %s: FAILED: %s", manifest.id, result.error)
        return result
    result.ok = True
    log.info("verify %s: ok%s%s", manifest.id, " (deep)" if deep_ else "", " (remote)" * remote)
    return result


def run(
    app: App, catalog: Catalog, backups: list[Backup], deep_: bool, remote: bool
) -> list[VerifyResult]:
    if not backups:
        raise PyopsError("no complete backups to verify (see `pyops list`)")
    return [verify_one(app, catalog, b, deep_, remote) for b in backups]
