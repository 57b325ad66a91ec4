"""pyops verify: checksums against the manifest; --deep decodes the whole stream and
checks its structure and content facts. Local files or, with --remote, the objects
in the bucket (streamed, never written)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyops import catalog
from pyops.app import App
from pyops.artifact import read_chunks
from pyops.catalog import Backup, Manifest
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
    remote: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def pick(manifests: list[Manifest], ids: tuple[str, ...], all_: bool) -> list[Manifest]:
    """IDs, every one, or (the default) the newest of each target. Input newest first."""
    if ids:
        by_id = {m.id: m for m in manifests}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise PyopsError(f"no complete backup {', '.join(missing)} (see `pyops list`)")
        return [by_id[i] for i in ids]
    if all_:
        return manifests
    newest: dict[str, Manifest] = {}
    for m in manifests:
        newest.setdefault(m.target, m)
    return list(newest.values())


def select(
    app: App, ids: tuple[str, ...], latest: bool, all_: bool, target: str | None
) -> list[Backup]:
    if ids:
        return [catalog.find(app.repo, i) for i in ids]
    backups = catalog.complete_backups(app.repo, target=target)
    chosen = {m.id for m in pick([b.manifest for b in backups], (), all_)}
    return [b for b in backups if b.id in chosen]


def head(backup: Backup) -> bytes:
    with open(backup.artifact_path, "rb") as f:
        return f.read(HEAD)


def _local_chunks(app: App, manifest: Manifest) -> Iterator[bytes]:
    backup = catalog.find(app.repo, manifest.id)
    if not backup.artifact_path.exists():
        raise VerifyFailed(f"{manifest.id}: artifact {backup.artifact_path.name} is missing")
    return read_chunks(backup.artifact_path)


def _remote_chunks(app: App, manifest: Manifest) -> Iterator[bytes]:
    from pyops.actions.sync import offsite

    store = offsite(app)
    key = store.artifact_key(manifest)
    if store.head(key) is None:
        raise VerifyFailed(f"{manifest.id}: object {key} is missing from the bucket")
    return store.stream(key)


def checksum(manifest: Manifest, chunks: Iterable[bytes]) -> None:
    check = Checksum(manifest)
    for _ in check.through(chunks):
        pass
    check.check()


def deep(app: App, manifest: Manifest, chunks: Iterable[bytes]) -> None:
    codec = app.codec
    with app.scratch(f"verify-{manifest.id}") as scratch, codec.decoder(manifest) as decoders:
        check = Checksum(manifest)
        try:
            module(manifest.type).deep_check(manifest, check.through(chunks), decoders, scratch)
        except StageFailed as exc:
            raise VerifyFailed(f"{manifest.id}: stream does not decode: {exc}") from None
        check.check()


def verify_one(app: App, manifest: Manifest, deep_: bool, remote: bool) -> VerifyResult:
    source = _remote_chunks if remote else _local_chunks
    try:
        if remote and deep_:
            if manifest.encrypted:
                from pyops.actions.sync import offsite

                store = offsite(app)
                head_ = store.first_bytes(store.artifact_key(manifest), HEAD)
                app.codec.probe_decrypt(head_, manifest.id)
            deep(app, manifest, source(app, manifest))  # one pass over the network
        else:
            checksum(manifest, source(app, manifest))
            if deep_:
                if manifest.encrypted:
                    app.codec.probe_decrypt(head(catalog.find(app.repo, manifest.id)), manifest.id)
                deep(app, manifest, source(app, manifest))
    except PyopsError as exc:
        log.error("verify %s: FAILED: %s", manifest.id, exc)
        return VerifyResult(manifest.id, False, deep_, remote, str(exc))
    log.info("verify %s: ok%s%s", manifest.id, " (deep)" if deep_ else "", " (remote)" * remote)
    return VerifyResult(manifest.id, True, deep_, remote)


def run(app: App, manifests: list[Manifest], deep_: bool, remote: bool) -> list[VerifyResult]:
    if not manifests:
        raise PyopsError("no complete backups to verify (see `pyops list`)")
    return [verify_one(app, m, deep_, remote) for m in manifests]
