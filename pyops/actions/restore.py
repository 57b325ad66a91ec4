"""pyops restore: preview, typed confirmation, safety backup, restore beside the live
data, check, and only then swap it into place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyops import catalog
from pyops.actions import backup as backup_action
from pyops.actions.verify import head
from pyops.app import App
from pyops.artifact import read_chunks
from pyops.catalog import Backup
from pyops.config import Target
from pyops.errors import Aborted, PyopsError
from pyops.progress import human
from pyops.sources import RestorePlan, module
from pyops.stream import Checksum

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    backup: Backup
    target: Target
    plan: RestorePlan

    def preview(self, now_text: str, age_text: str) -> str:
        m = self.backup.manifest
        src = (
            m.source.get("database") or m.source.get("path") or ", ".join(m.source.get("paths", []))
        )
        lines = [
            f"backup:      {m.id} ({age_text} old, taken {m.started_at})",
            f"size:        {human(m.size)}, {m.format}, "
            f"{'encrypted' if m.encrypted else 'not encrypted'}",
            f"source:      {src} on {m.host}",
            f"destination: {self.plan.destination}"
            + (" (will be REPLACED)" if self.plan.overwrites else " (new)"),
        ]
        lines += [f"note:        {n}" for n in self.plan.notes]
        return "\n".join(lines)


def choose(app: App, backup_id: str | None, latest: bool, target: str | None) -> Backup:
    if backup_id:
        return catalog.find(app.repo, backup_id)
    backups = [
        b
        for b in catalog.complete_backups(app.repo, target=target)
        if b.manifest.tier != "pre-restore"
    ]
    if not backups:
        raise PyopsError(f"no complete backup{f' of {target}' if target else ''} to restore")
    targets = {b.manifest.target for b in backups}
    if len(targets) > 1:
        raise PyopsError(f"--latest needs --target (several targets: {', '.join(sorted(targets))})")
    return backups[0]


def prepare(app: App, backup: Backup, into: str | None) -> Prepared:
    target = app.config.target(backup.manifest.target)
    if target.type != backup.manifest.type:
        raise PyopsError(f"{backup.id} is a {backup.manifest.type} backup; target is {target.type}")
    if not backup.artifact_path.exists():
        raise PyopsError(f"{backup.id}: artifact {backup.artifact_path} is missing")
    plan = module(target.type).plan(target, into)
    if backup.manifest.encrypted:
        app.codec.probe_decrypt(head(backup), backup.id)  # wrong key: stop before anything
    return Prepared(backup, target, plan)


def run(
    app: App,
    prepared: Prepared,
    into: str | None,
    *,
    confirm: Callable[[Prepared], None],
    safety_backup: bool,
    jobs: int,
) -> str:
    confirm(prepared)
    target, backup = prepared.target, prepared.backup
    if prepared.plan.overwrites and safety_backup:
        log.info("restore %s: taking a safety backup of the current state first", backup.id)
        safety = backup_action.backup_target(app, target, "pre-restore")
        log.info("restore %s: safety backup %s", backup.id, safety.id)
    stamp = catalog.stamp(app.clock())
    manifest = backup.manifest
    source = module(target.type)
    with app.scratch(f"restore-{backup.id}") as scratch, app.codec.decoder(manifest) as decoders:
        check = Checksum(manifest)
        staged = source.restore(
            target,
            manifest,
            check.through(read_chunks(backup.artifact_path)),
            decoders,
            into,
            stamp,
            scratch,
            jobs,
        )
        try:
            check.check()
        except BaseException:
            staged.discard()
            raise
    summary: str = staged.commit()
    log.info("restore %s: %s", backup.id, summary)
    return summary


def require_typed_name(ask: Callable[[str], str]) -> Callable[[Prepared], None]:
    """Confirmation by typing the target's name, as borgmatic and pgBackRest operators
    know it: a stray Enter or 'y' never restores."""

    def confirm(prepared: Prepared) -> None:
        answer = ask(f"Type the target name ({prepared.target.name}) to restore")
        if answer.strip() != prepared.target.name:
            raise Aborted("restore aborted: the name did not match; nothing was changed")

    return confirm
