"""pyops restore: preview, typed confirmation, safety backup, restore beside the live
data, check, and only then swap it into place.

A backup whose artifact does not match its manifest is never restored, and the
refusal says so: "failed its checksum", and which backup of the target is the newest
one that passes (`--latest` checks before choosing; a restore by id finds out while
streaming). A disk that fills names the path and the file system that filled."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyops import attachments, hooks, pgdatabases, stream
from pyops.actions import backup as backup_action
from pyops.app import App
from pyops.artifact import mount_point, no_room
from pyops.catalog import Backup
from pyops.config import FilesTarget, PostgresTarget, Target
from pyops.errors import Aborted, ConfigError, PyopsError, UsageError, VerifyFailed
from pyops.manifest import stamp as make_stamp
from pyops.progress import human
from pyops.sources import RestoreOptions, RestorePlan, module
from pyops.storage import StoreError
from pyops.stream import Checksum

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    backup: Backup
    target: Target
    plan: RestorePlan
    options: RestoreOptions = field(default_factory=RestoreOptions)

    def preview(self, age_text: str) -> str:
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
        # what the backup left out on purpose (a manifest is input: only lists of text)
        for key, note in (
            (
                "exclude_table_data",
                "rows of {} were not backed up (exclude_table_data): those tables come back empty",
            ),
            (
                "row_security_tables",
                "{}: only the rows their row-level security policies showed the backup role "
                "were backed up (enable_row_security)",
            ),
        ):
            names = m.source.get(key)
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                lines.append(f"note:        {note.format(', '.join(names))}")
        return "\n".join(lines)


HEAD = 1 << 16
# how many older backups are checksummed, at most, to name the newest good one
GOOD_CANDIDATES = 5


def check_target(app: App, target: str, remote: bool) -> None:
    """A known target, and one backup's worth: a `databases = "all"` target stands for
    one backup per database, restored one at a time. A pgbackrest target is restored by
    pgBackRest itself (docs/pgbackrest.md); pyops drills it."""
    if app.config.target(target).type == "pgbackrest":
        raise UsageError(
            f"--target {target} is a pgbackrest target: restore its cluster with pgBackRest "
            "(`pgbackrest --stanza=... restore`, docs/pgbackrest.md); `pyops drill --target "
            f"{target} [--target-time TIME]` proves it restores",
            "--target",
        )
    if not pgdatabases.is_all(app.config.target(target)):
        return
    names = pgdatabases.stored_names(app.config, app.remote() if remote else app.local(), [target])
    known = ", ".join(n for n in names if n != target) or "none has a backup yet"
    raise UsageError(
        f"--target {target} stands for every database of its server: restore one database "
        f"at a time, --target {target}-<database> ({known})",
        "--target",
    )


def choose(app: App, backup_id: str | None, target: str | None) -> Backup:
    """The backup named by id (another repository's too, when named explicitly), or the
    newest of this repository's, once its artifact has passed its checksum: a damaged
    newest one is refused, naming the newest good one."""
    local = app.local()
    if backup_id:
        return local.find(backup_id, foreign_ok=True)
    backups = [b for b in local.backups(target) if b.manifest.tier != "pre-restore"]
    if not backups:
        raise PyopsError(f"no complete backup{f' of {target}' if target else ''} to restore")
    targets = {b.manifest.target for b in backups}
    if len(targets) > 1:
        raise UsageError(
            f"--latest needs --target: the repository holds backups of several targets "
            f"({', '.join(sorted(targets))})",
            "--target",
        )
    newest = backups[0]
    log.info("restore: checking the sha256 of %s before choosing it", newest.id)
    problem = checksum_problem(app, newest)
    if problem:
        raise damaged(app, newest, problem, "the newest backup")
    return newest


def checksum_problem(app: App, backup: Backup) -> str | None:
    """What is wrong with the artifact in the repository, said after the backup's id
    ("failed its checksum: ..."); None when it matches its manifest."""
    try:
        stream.checksum(backup.manifest, app.local().chunks(backup))
    except VerifyFailed as exc:
        return checksum_failed(backup, exc)
    except (StoreError, OSError) as exc:
        return f"cannot be read: {exc}"
    return None


def checksum_failed(backup: Backup, exc: VerifyFailed) -> str:
    return f"failed its checksum: {str(exc).removeprefix(f'{backup.id}: ')}"


def newest_good(app: App, damaged_backup: Backup) -> tuple[Backup | None, list[str]]:
    """The newest other backup of the same target (not a pre-restore one) whose
    artifact passes its checksum, and the ids found damaged on the way."""
    target = damaged_backup.manifest.target
    others = [
        b
        for b in app.local().backups(target)
        if b.manifest.tier != "pre-restore" and b.id != damaged_backup.id
    ]
    bad: list[str] = []
    for backup in others[:GOOD_CANDIDATES]:
        log.info("restore: checking the sha256 of %s", backup.id)
        if checksum_problem(app, backup) is None:
            return backup, bad
        bad.append(backup.id)
    return None, bad


def damaged(app: App, backup: Backup, problem: str, which: str = "backup") -> VerifyFailed:
    """The refusal of a backup that failed its checksum, naming the newest good one."""
    target = backup.manifest.target
    head = f"{which} {backup.id} {problem}; it was not restored"
    good, bad = newest_good(app, backup)
    also = f"; {', '.join(bad)} failed too" if bad else ""
    if good is not None:
        advice = (
            f"The newest good backup of {target} is {good.id}, taken "
            f"{good.manifest.started_at}{also}: pyops restore {good.id}"
        )
    elif bad:
        advice = (
            f"None of the next {len(bad)} older backups of {target} passes its checksum "
            f"either ({', '.join(bad)}): `pyops verify --all --target {target}` checks every "
            "one; `pyops list --remote` shows the bucket's copies"
        )
    else:
        advice = (
            f"There is no other backup of {target} in the repository: `pyops list --remote` "
            "shows the bucket's copies"
        )
    return VerifyFailed(f"{head}. {advice}")


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


def check_options(backup: Backup, into: str | None, options: RestoreOptions) -> None:
    """What a restore of this backup can and cannot be asked: exit 2, before anything."""
    m = backup.manifest
    asked = [
        flag
        for flag, on in (
            ("--table", options.tables),
            ("--schema", options.schemas),
            ("--no-owner", options.no_owner),
            ("--no-acl", options.no_acl),
        )
        if on
    ]
    if asked and m.type != "postgres":
        raise UsageError(f"{asked[0]} applies to PostgreSQL backups; {m.id} is {m.type}", asked[0])
    if asked and m.format == "plain":
        raise UsageError(
            f"{asked[0]}: {m.id} is a plain SQL dump, which replays as a whole with its "
            "owners and grants; selecting or leaving them out needs the custom, directory "
            "or tar format (set format on the target). Nothing was changed",
            asked[0],
        )
    if options.partial and not into:
        flag = "--table" if options.tables else "--schema"
        raise UsageError(
            f"{flag} restores part of a backup: give --into NEWDB, then copy what you need "
            "into the live database (nothing was changed)",
            flag,
        )


def prepare(
    app: App, backup: Backup, into: str | None, options: RestoreOptions | None = None
) -> Prepared:
    target = app.config.target(backup.manifest.target)
    opts = options or RestoreOptions()
    if target.type != backup.manifest.type:
        raise PyopsError(f"{backup.id} is a {backup.manifest.type} backup; target is {target.type}")
    if into is not None and not into.strip():
        raise UsageError(
            "--into is empty (an unset shell variable?): nothing was changed", "--into"
        )
    check_options(backup, into, opts)
    if isinstance(target, FilesTarget) and not into:
        problem = recorded_paths_differ(target, backup)
        if problem:
            raise PyopsError(problem)
    local = app.local()
    if local.store.stat(backup.artifact_key) is None:
        raise PyopsError(f"{backup.id}: artifact {backup.artifact_key} is missing")
    if backup.manifest.encrypted:  # wrong key: stop before anything
        app.codec.probe_decrypt(local.head(backup, HEAD), backup.id)
    if "globals" in backup.manifest.attachments:
        opts = replace(opts, globals=attachments.saved_state(local, backup, app.codec))
    plan = module(target.type).plan(target, into, backup.manifest, opts)
    return Prepared(backup, target, plan, opts)


def run(
    app: App,
    prepared: Prepared,
    into: str | None,
    *,
    confirm: Callable[[Prepared], None],
    safety_backup: bool,
) -> str:
    confirm(prepared)
    # the operator's hooks: before_restore once confirmed, before the safety backup (which
    # then sees the app quiesced); after_restore after it, failed or not; on_error
    backup = prepared.backup
    hook = hooks.Hooks(
        app.config, prepared.target, "restore", backup.manifest.tier, backup.id, into or ""
    )
    try:
        with hook.around():
            summary = _restore(app, prepared, into, safety_backup)
    except PyopsError as exc:
        if not hook.problems or isinstance(exc, (ConfigError, UsageError)):
            raise  # (exit 2 keeps its type)
        raise PyopsError(hooks.join(str(exc), *hook.problems)) from exc
    hook.settle(f"the restore itself is complete: {summary}")
    return summary


def _restore(app: App, prepared: Prepared, into: str | None, safety_backup: bool) -> str:
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
        try:
            staged = source.restore(
                target,
                manifest,
                check.through(app.local().chunks(backup)),
                decoders,
                into,
                stamp,
                scratch,
                prepared.options.jobs,
                prepared.options,
            )
        except OSError as exc:
            if no_room(exc) is None:
                raise
            raise disk_full(exc, prepared, scratch) from None
        except PyopsError:
            if check.failed is not None:  # the last byte passed: the checksum said no
                raise damaged(app, backup, checksum_failed(backup, check.failed)) from None
            if check.bytes == 0:  # failed before reading the artifact: not about it
                raise
            # a damaged artifact makes a decoder or the restoring tool fail before the
            # last byte: read it all to find out whether that was the cause
            problem = checksum_problem(app, backup)
            if problem:
                raise damaged(app, backup, problem) from None
            raise
        try:
            check.check()
        except VerifyFailed as exc:
            staged.discard()
            raise damaged(app, backup, checksum_failed(backup, exc)) from None
        except BaseException:
            staged.discard()
            raise
    summary: str = staged.commit()
    log.info("restore %s: %s", backup.id, summary)
    return summary


def disk_full(exc: OSError, prepared: Prepared, scratch: Path) -> PyopsError:
    """A write of the restore found no room: name the path and its file system. The
    writers name the file they were writing; without a name, it is the scratch for
    PostgreSQL (pg_restore -j's decoded copy), else the destination."""
    m = prepared.backup.manifest
    if exc.filename:
        filled = Path(str(exc.filename))
    elif isinstance(prepared.target, PostgresTarget):
        filled = scratch
    else:
        filled = Path(prepared.plan.destination)
    size = m.content.get("bytes") or m.source.get("size")
    room = f" for about {human(int(size))}" if isinstance(size, int) and size > 0 else ""
    return PyopsError(
        f"{no_room(exc)} restoring {m.id}: no room to write {filled} (file system "
        f"{mount_point(filled)}); what was restored so far was removed and nothing was "
        f"changed. Free space there, or restore --into a place with room{room}"
    )


def require_typed_name(ask: Callable[[str], str]) -> Callable[[Prepared], None]:
    """Confirmation by typing the target's name, as borgmatic and pgBackRest operators
    know it: a stray Enter or 'y' never restores."""

    def confirm(prepared: Prepared) -> None:
        answer = ask(f"Type the target name ({prepared.target.name}) to restore")
        if answer.strip() != prepared.target.name:
            raise Aborted("restore aborted: the name did not match; nothing was changed")

    return confirm
