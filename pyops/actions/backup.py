"""pyops backup: stream each target through the encoders into the repository.

Order matters: artifact under a temp name -> fsync -> rename -> manifest (temp ->
fsync -> rename). Any failing stage fails the backup and leaves no trace but a
run-log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pyops import __version__, attachments, fleetindex, hooks, secrets
from pyops.app import App
from pyops.artifact import ArtifactWriter, read_chunks
from pyops.catalog import Catalog
from pyops.config import PgbackrestTarget, PostgresTarget, Target
from pyops.errors import ConfigError, PyopsError, os_error_message
from pyops.execute import DEVNULL, PIPE, in_thread, pipeline
from pyops.manifest import Manifest
from pyops.manifest import backup_id as make_id
from pyops.overlap import Overlap
from pyops.pgdatabases import Expanded
from pyops.progress import Progress, human, proc_io
from pyops.sources import module

log = logging.getLogger(__name__)


def resolve_tier(tier: str, now: datetime) -> str:
    """`auto`: monthly on the 1st, weekly on Sunday, else daily (UTC)."""
    if tier != "auto":
        return tier
    if now.day == 1:
        return "monthly"
    if now.weekday() == 6:
        return "weekly"
    return "daily"


@dataclass
class BackupResult:
    target: str
    ok: bool
    id: str | None = None
    tier: str | None = None
    bytes: int = 0
    duration_s: float = 0.0
    error: str | None = None
    offsite: bool = False
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def clean_leftovers(local: Catalog, target: str) -> None:
    """Remove what dead runs left: temp files of dead processes and artifacts without
    a manifest."""
    for key in local.leftovers(target):
        log.warning("removing leftover of an interrupted run: %s/%s", local.describe(), key)
        local.store.delete(key)


def start_time(app: App, local: Catalog, target: str) -> datetime:
    """Now, unless that would collide with or precede the newest backup of the target.
    Same second: wait for the next. Clock went backwards: refuse."""
    newest = local.backups(target)
    now = app.clock().replace(microsecond=0)
    if newest:
        last = newest[0].manifest.started.replace(microsecond=0)
        if now < last:
            raise PyopsError(
                f"target {target}: the clock says {now:%Y-%m-%d %H:%M:%S}Z, earlier than the "
                f"newest backup {newest[0].id}; fix the clock (NTP) before backing up"
            )
        if now == last:
            time.sleep(1.05 - app.clock().microsecond / 1e6)
            now = app.clock().replace(microsecond=0)
            if now <= last:
                raise PyopsError(f"target {target}: clock did not advance past {last}")
    return now


def _write_attachments(
    app: App, data: dict[str, dict[str, Any]], artifact: Path, backup_id: str
) -> dict[str, dict[str, Any]]:
    """Each attachment beside the artifact, encoded like it; the manifest's entries
    (with the notes the data carries, e.g. role passwords not saved)."""
    out = {}
    for kind, content in data.items():
        path = artifact.with_name(attachments.name(backup_id, kind, app.codec))
        entry = attachments.write(path, content, app.codec)
        notes = [str(n) for n in content.get("notes", [])]
        for note in notes:
            log.info("backup %s: %s", backup_id, note)
        out[kind] = {**entry, "notes": notes} if notes else entry
    return out


def _quietly(join: Callable[[], None]) -> None:
    """Wait for a side task of a backup that failed: its own error is not the cause."""
    try:
        join()
    except BaseException as exc:
        log.debug("after the failure, a side task failed too: %s", exc)


def backup_target(app: App, target: Target, tier: str, overlap: Overlap | None = None) -> Manifest:
    """`overlap`: upload the artifact to the bucket while it is written (the caller
    completes the offsite copy with its attachments and manifest). A backup that fails
    leaves nothing of that upload in the bucket."""
    try:
        return _backup_target(app, target, tier, overlap)
    except BaseException:
        if overlap is not None and overlap.upload is not None:
            overlap.upload.discard("the backup failed")
        raise


def _backup_target(app: App, target: Target, tier: str, overlap: Overlap | None) -> Manifest:
    local = app.local(write=True)
    clean_leftovers(local, target.name)
    started = start_time(app, local, target.name)
    t0 = time.monotonic()
    backup_id = make_id(target.name, tier, started)
    source = module(target.type)
    codec = app.codec
    name = f"{backup_id}.{codec.extension(source.extension(target))}"
    artifact = app.local_store().path(f"{target.name}/{tier}/{name}", create_dirs=True)
    compression, encryption = codec.describe()
    log.info("backup %s: starting (%s)", backup_id, target.type)
    warnings: list[str] = []
    with app.scratch(backup_id) as scratch, source.dump(target, scratch) as dump:
        writer = ArtifactWriter(artifact)
        if overlap is not None:
            overlap.start(f"{target.name}/{tier}/{name}", writer.follow())
        # what does not depend on the data runs while it streams: the tool versions
        # for the manifest, and the attachments (captured before the dump started)
        found: dict[str, Any] = {}
        side = in_thread(lambda: found.update(tools=codec.tools()))
        attach = in_thread(
            lambda: found.update(
                attached=_write_attachments(app, dump.attachments, artifact, backup_id)
            )
        )
        try:
            with codec.encoder() as encoders:
                stages = [*dump.stages, *encoders]
                estimate = dump.estimate() if app.interactive else None
                if stages:
                    stdin: Any = open(dump.input_path, "rb") if dump.input_path else None  # noqa: SIM115
                    try:
                        with pipeline(stages, stdin=stdin or DEVNULL, stdout=PIPE) as run:
                            field = "wchar" if dump.stages else "rchar"
                            pid = run.pids[0]
                            with Progress(
                                backup_id, lambda: proc_io(pid, field), estimate, app.interactive
                            ):
                                for chunk in run.chunks():
                                    writer.write(chunk)
                        warnings = run.warnings  # e.g. tar: a file changed as it was read
                    finally:
                        if stdin:
                            stdin.close()
                else:
                    assert dump.input_path is not None
                    with Progress(backup_id, lambda: writer.bytes, estimate, app.interactive):
                        for chunk in read_chunks(dump.input_path):
                            writer.write(chunk)
            content = dump.content()
            attach()
            side()
            attached: dict[str, dict[str, Any]] = found["attached"]
            size, sha = writer.commit()
        except BaseException:
            writer.abort()  # an upload reading it stops (backup_target discards it)
            _quietly(attach)  # never remove an attachment still being written
            _quietly(side)
            for kind in dump.attachments:
                artifact.with_name(attachments.name(backup_id, kind, codec)).unlink(missing_ok=True)
            raise
        tools = {**dump.tools, **found["tools"]}
    finished = app.clock()
    manifest = Manifest(
        id=backup_id,
        target=target.name,
        type=target.type,
        tier=tier,
        host=app.config.host,
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        duration_s=round(time.monotonic() - t0, 3),
        pyops_version=__version__,
        tools=tools,
        source=dump.source,
        format=dump.format,
        compression=compression,
        encryption=encryption,
        artifact={"name": name, "bytes": size, "sha256": sha},
        content=content,
        warnings=warnings,
        attachments=attached,
    )
    for warning in warnings:
        log.warning("backup %s: %s", backup_id, warning)
    try:
        local.write_manifest(manifest)
    except BaseException:
        artifact.unlink(missing_ok=True)
        for entry in attached.values():
            artifact.with_name(entry["name"]).unlink(missing_ok=True)
        raise
    log.info(
        "backup %s: done, %s in %.1fs, sha256 %s",
        backup_id,
        human(size),
        manifest.duration_s,
        sha[:12],
    )
    return manifest


def _pgbackrest(app: App, target: PgbackrestTarget, tier: str) -> BackupResult:
    """`pgbackrest backup` of the tier's type (pyops.tools.pgbackrest). No upload and no
    prune: pgBackRest keeps its own repositories and expires by its repo1-retention-*."""
    from pyops.sources import pgbackrest

    t0 = time.monotonic()
    hook = hooks.Hooks(app.config, target, "backup", tier)  # the same hooks as dumps
    try:
        with hook.around():
            done = pgbackrest.backup(app, target, tier)
            hook.backup_id = done.label
        hook.settle(f"the backup {done.label} itself is complete")
    except PyopsError as exc:
        log.error("backup %s: FAILED: %s", target.name, exc)
        error = hooks.join(str(exc), *hook.problems)
        return BackupResult(
            target.name, False, tier=tier, duration_s=time.monotonic() - t0, error=error
        )
    return BackupResult(
        target.name, True, done.label, tier, done.bytes, done.duration_s, warnings=done.warnings
    )


def _overlap_remote(app: App) -> Catalog | None:
    """The bucket's catalog, for uploading while backing up; None when it cannot be had
    now (unreachable, another repository's prefix): then each backup is uploaded after
    it is complete, and that upload reports the problem, the local backup kept."""
    try:
        return app.remote(write=True)
    except PyopsError as exc:
        log.debug("offsite: no upload during the backup: %s", exc)
        return None


def run(app: App, tier: str, work: Expanded, *, offsite: bool, prune: bool) -> list[BackupResult]:
    """Back up each target (`work`: the selection with each `databases = "all"` target
    replaced by its databases', pgdatabases.expand_targets), copy it offsite, then
    prune the tier written. One failing target does not stop the others; a target whose
    backup or upload failed is not pruned (its older copies may be the only good ones).
    An "all" target whose server could not say which databases it holds has failed."""
    from pyops.actions import prune as prune_action
    from pyops.actions import sync

    tier = resolve_tier(tier, app.clock())
    use_offsite = offsite and bool(app.config.offsite.bucket)
    remotes: list[Catalog | None] = []  # the bucket, asked once, when a dump target starts
    results = []
    for target, why in work.failed:
        log.error("backup %s: FAILED: %s", target.name, why)
        results.append(BackupResult(target.name, False, error=why))
    for warning in work.warnings:
        log.warning("backup: %s", warning)
    for target in work.targets:
        if isinstance(target, PgbackrestTarget):  # pgBackRest's repository, not pyops'
            results.append(_pgbackrest(app, target, tier))
            continue
        t0 = time.monotonic()
        hook = hooks.Hooks(app.config, target, "backup", tier)  # before/after_backup, on_error
        try:
            if isinstance(target, PostgresTarget):  # said before a hook stops the app
                secrets.password(target)
            if use_offsite and not remotes:
                remotes.append(_overlap_remote(app))
            remote = remotes[0] if remotes else None
            overlap = Overlap(remote) if remote is not None else None
            with hook.around():
                manifest = backup_target(app, target, tier, overlap)
                hook.backup_id = manifest.id
        except ConfigError:
            raise  # a broken config is exit 2 for the whole run, not one target's failure
        except (PyopsError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = PyopsError(os_error_message(exc))
            log.error("backup %s: FAILED: %s", target.name, exc)
            error = hooks.join(str(exc), *hook.problems)
            results.append(
                BackupResult(target.name, False, duration_s=time.monotonic() - t0, error=error)
            )
            continue
        result = BackupResult(
            target.name,
            True,
            manifest.id,
            tier,
            manifest.size,
            manifest.duration_s,
            warnings=list(manifest.warnings),
        )
        results.append(result)
        tiers = [tier, "pre-restore"]
        try:
            if use_offsite:
                sync.upload_after_backup(app, manifest.id, overlap.upload if overlap else None)
                result.offsite = True
            if prune:
                rows = prune_action.run(app, [target.name], tiers, dry_run=False, index=False)
                result.pruned = [r.id for r in rows if not r.keep]
                if use_offsite:
                    prune_action.run(
                        app, [target.name], tiers, dry_run=False, remote=True, index=False
                    )
        except PyopsError as exc:
            result.ok = False
            result.error = f"{exc} (the local backup {manifest.id} is kept)"
            log.error("backup %s: %s", target.name, result.error)
        if hook.problems:  # an after_backup hook failed: an app may be left stopped
            result.ok = False
            result.error = hooks.join(
                result.error, *hook.problems, f"the backup {manifest.id} itself is complete"
            )
        if not result.ok:
            result.error = hooks.join(result.error, *hook.on_error(result.error or ""))
    if use_offsite:
        fleetindex.publish(app, "backup")  # best effort: never fails the backup
    return results
