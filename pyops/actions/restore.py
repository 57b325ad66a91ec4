"""pyops restore: preview, typed confirmation, safety backup, restore beside the live
data, check, and only then swap it into place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyops.actions import backup as backup_action
from pyops.app import App
from pyops.catalog import Backup
from pyops.config import FilesTarget, Target
from pyops.errors import Aborted, PyopsError
from pyops.manifest import stamp as make_stamp
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


HEAD = 1 << 16


def choose(app: App, backup_id: str | None, latest: bool, target: str | None) -> Backup:
    """The backup named by id (another repository's too, when named explicitly), or the
    newest of this repository's."""
    local = app.local()
    if backup_id:
        return local.find(backup_id, foreign_ok=True)
    backups = [b for b in local.backups(target) if b.manifest.tier != "pre-restore"]
    if not backups:
        raise PyopsError(f"no complete backup{f' of {target}' if target else ''} to restore")
    targets = {b.manifest.target for b in backups}
    if len(targets) > 1:
        raise PyopsError(f"--latest needs --target (several targets: {', '.join(sorted(targets))})")
    return backups[0]


def recorded_paths_differ(target: FilesTarget, backup: Backup) -> str | None:
    """An in-place files restore writes where the config says; a backup of other paths
    would put them somewhere the preview and the safety backup did not cover."""
    recorded = [str(p) for p in backup.manifest.source.get("paths", [])]
    configured = [str(p) for p in target.paths]
    if recorded == configured:
        return None
    return (
        f"{backup.id} holds {', '.join(recorded) or 'no paths'}, but target {target.name} is "
        f"configured with {', '.join(configured)}: refusing to restore in place. Restore it "
        "with --into DIR and move what you need"
    )


def prepare(app: App, backup: Backup, into: str | None) -> Prepared:
    target = app.config.target(backup.manifest.target)
    if target.type != backup.manifest.type:
        raise PyopsError(f"{backup.id} is a {backup.manifest.type} backup; target is {target.type}")
    if into is not None and not into.strip():
        raise PyopsError("--into is empty (an unset shell variable?): nothing was changed")
    if isinstance(target, FilesTarget) and not into:
        problem = recorded_paths_differ(target, backup)
        if problem:
            raise PyopsError(problem)
    local = app.local()
    if local.store.stat(backup.artifact_key) is None:
        raise PyopsError(f"{backup.id}: artifact {backup.artifact_key} is missing")
    plan = module(target.type).plan(target, into)
    if backup.manifest.encrypted:  # wrong key: stop before anything
        app.codec.probe_decrypt(local.head(backup, HEAD), backup.id)
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
    stamp = make_stamp(app.clock())
    manifest = backup.manifest
    source = module(target.type)
    with app.scratch(f"restore-{backup.id}") as scratch, app.codec.decoder(manifest) as decoders:
        check = Checksum(manifest)
        staged = source.restore(
            target,
            manifest,
            check.through(app.local().chunks(backup)),
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
