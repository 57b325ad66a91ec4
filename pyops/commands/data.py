"""The data commands: backup, list, verify, restore, prune, sync, drill, history."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from pyops import metrics, notify, pgdatabases, runlog
from pyops.actions import backup as backup_action
from pyops.actions import drill as drill_action
from pyops.actions import prune as prune_action
from pyops.actions import restore as restore_action
from pyops.actions import sync as sync_action
from pyops.actions import verify as verify_action
from pyops.commands import (
    ALLOW_UNAUTHENTICATED,
    FORMAT,
    Ctx,
    emit,
    emit_results,
    pass_ctx,
    recorded,
)
from pyops.errors import EXIT_FAILED, PyopsError
from pyops.manifest import TIERS
from pyops.progress import human
from pyops.sources import RestoreOptions

# --- backup / list / verify / restore / history ---------------------------------


@click.command()
@click.option(
    "--tier",
    type=click.Choice(["daily", "weekly", "monthly", "auto"]),
    default="daily",
    show_default=True,
    help="auto: monthly on the 1st, weekly on Sunday, else daily (UTC)",
)
@click.option("--target", "targets", multiple=True, metavar="NAME", help="only these targets")
@click.option("--no-offsite", is_flag=True, help="do not upload to the [offsite] bucket")
@click.option("--no-prune", is_flag=True, help="do not apply retention to the tier written")
@FORMAT
@pass_ctx
def backup(
    ctx: Ctx, tier: str, targets: tuple[str, ...], no_offsite: bool, no_prune: bool, fmt: str
) -> None:
    """Back up every (or the named) target, copy it offsite, then prune the tier it wrote.

    Only a target whose backup (and upload) succeeded in this run is pruned."""
    app = ctx.app()
    selected = app.config.select(targets)
    if not selected:
        raise PyopsError("no targets configured: add [[targets]] to the config")
    work = pgdatabases.expand_targets(app, selected)  # databases = "all": one per database
    names = work.names
    note = notify.run(app, "backup", names)
    try:
        with app.lock("backup"), recorded(app, "backup", names) as rec:
            results = backup_action.run(app, tier, work, offsite=not no_offsite, prune=not no_prune)
            rec["bytes"] = sum(r.bytes for r in results)
            rec["backups"] = [r.as_dict() for r in results]
            rec["warnings"] = sum(len(r.warnings) for r in results) + len(work.warnings)
            if work.warnings:
                rec["not_backed_up"] = work.warnings
            failed = [r for r in results if not r.ok]
            if failed:
                rec["result"] = "failed"
    except BaseException as exc:
        note.failed(exc)
        raise
    metrics.record_run(app, "backup", [r.as_dict() for r in results])
    note.finish(notify.backup_outcome(results, work.warnings))
    emit_results(
        fmt,
        "backups",
        results,
        lambda r: (
            f"{r.target}: ok {r.id} {human(r.bytes)}"
            + (f", {len(r.warnings)} WARNING(S):" if r.warnings else "")
            + "".join(f"\n  {w}" for w in r.warnings)
        ),
        lambda r: f"{r.target}: FAILED {r.error}",
    )


def _age(started: datetime) -> str:
    seconds = int((datetime.now(UTC) - started).total_seconds())
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@click.command("list")
@click.option("--target", metavar="NAME")
@click.option("--tier", type=click.Choice(list(TIERS)))
@click.option("--remote", is_flag=True, help="list what the [offsite] bucket holds")
@ALLOW_UNAUTHENTICATED
@FORMAT
@pass_ctx
def list_(
    ctx: Ctx,
    target: str | None,
    tier: str | None,
    remote: bool,
    allow_unauthenticated: bool,
    fmt: str,
) -> None:
    """Complete backups, newest first; then any manifest pyops refuses to use, and why."""
    app = ctx.app(allow_unauthenticated)
    catalog = app.remote() if remote else app.local()
    listing = pgdatabases.scan(app.config, catalog, target, tier)
    rows: list[dict[str, Any]] = [
        {
            "id": b.id,
            "target": b.manifest.target,
            "tier": b.manifest.tier,
            "time": b.manifest.started_at,
            "size": b.manifest.size,
            "encrypted": b.manifest.encrypted,
            "offsite": remote or sync_action.known_offsite(app, b.manifest),
            "authenticated": b.authenticated,
            "warnings": b.manifest.warnings,
        }
        for b in listing.backups
    ]
    refused = [r.as_dict() for r in listing.refused]
    foreign = [r.as_dict() for r in listing.foreign]
    unavailable: list[dict[str, str]] = []
    if not remote:  # pgbackrest targets: what `pgbackrest info` lists of their stanzas
        from pyops.sources import pgbackrest

        engine_rows, unavailable = pgbackrest.list_rows(app, target, tier)
        rows = sorted(rows + engine_rows, key=lambda r: str(r["time"]), reverse=True)

    def shown(r: dict[str, Any]) -> str:  # a pgBackRest label does not name its target
        return f"{r['target']}:{r['id']}" if r.get("engine") else str(r["id"])

    def flag(value: bool | None, no: str = "no") -> str:
        return "-" if value is None else "yes" if value else no

    def text() -> str:
        out = []
        if not rows:
            out.append("no complete backups")
        else:
            width = max(len(shown(r)) for r in rows)
            out.append(
                f"{'ID':<{width}}  {'TIER':<11} {'TIME (UTC)':<20} {'SIZE':>10}  "
                "ENCRYPTED OFFSITE AUTHENTICATED"
            )
            for r in rows:
                when = datetime.fromisoformat(r["time"]).strftime("%Y-%m-%d %H:%M:%S")
                out.append(
                    f"{shown(r):<{width}}  {r['tier']:<11} {when:<20} {human(r['size']):>10}  "
                    f"{flag(r['encrypted']):<9} {flag(r['offsite']):<7} "
                    f"{flag(r['authenticated'], 'NO')}"
                    + (f"  {len(r['warnings'])} warning(s)" if r["warnings"] else "")
                )
        out += [f"REFUSED {r['key']}: {r['reason']}" for r in refused]
        out += [f"FOREIGN {r['key']}: {r['reason']}; not touched" for r in foreign]
        out += [f"UNAVAILABLE {r['target']}: {r['reason']}" for r in unavailable]
        return "\n".join(out)

    data = {"backups": rows, "refused": refused, "foreign": foreign, "unavailable": unavailable}
    emit(fmt, data, text)
    if unavailable:
        raise SystemExit(EXIT_FAILED)


@click.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--latest", is_flag=True, help="the newest backup of each target (the default)")
@click.option("--all", "all_", is_flag=True, help="every complete backup")
@click.option("--target", metavar="NAME")
@click.option(
    "--deep",
    is_flag=True,
    help="also decrypt and decompress everything and check its structure and content",
)
@click.option("--remote", is_flag=True, help="verify the copies in the [offsite] bucket")
@ALLOW_UNAUTHENTICATED
@FORMAT
@pass_ctx
def verify(
    ctx: Ctx,
    ids: tuple[str, ...],
    latest: bool,
    all_: bool,
    target: str | None,
    deep: bool,
    remote: bool,
    allow_unauthenticated: bool,
    fmt: str,
) -> None:
    """Check backups against their manifests (default: the newest of each target).

    A manifest pyops refuses (malformed, misplaced, forged) is a failed result."""
    if sum(map(bool, (ids, latest, all_))) > 1:
        raise click.UsageError("give IDs, --latest or --all, not several")
    app = ctx.app(allow_unauthenticated)
    catalog = app.remote() if remote else app.local()
    backups, refused = verify_action.select(catalog, ids, all_, target, deep, remote, app.config)
    if not backups and not refused:
        raise PyopsError("no complete backups to verify (see `pyops list`)")
    names = sorted({b.manifest.target for b in backups})
    with (
        notify.run(app, "verify", names) as note,
        app.lock("verify"),
        recorded(app, "verify", names) as rec,
    ):
        results = refused + [
            verify_action.verify_one(app, catalog, b, deep, remote) for b in backups
        ]
        note.outcome = notify.verify_outcome(results)
        metrics.record_run(app, "verify", [r.as_dict() for r in results])
        rec["verified"] = [r.as_dict() for r in results]
        rec["warnings"] = sum(len(r.warnings) for r in results)
        if not all(r.ok for r in results):
            rec["result"] = "failed"
    emit_results(
        fmt,
        "results",
        results,
        lambda r: (
            f"{r.id}: ok"
            + (" (deep)" if r.deep else "")
            + ("" if r.authenticated or app.key is None else " (manifest UNAUTHENTICATED)")
            + "".join(f"\n  warning: {w}" for w in r.warnings)
        ),
        lambda r: f"{r.id}: FAILED: {r.error}",
    )


@click.command()
@click.argument("backup_id", required=False, metavar="[ID]")
@click.option("--latest", is_flag=True, help="the newest backup (with --target when several)")
@click.option("--target", metavar="NAME")
@click.option("--into", metavar="DB_OR_PATH", help="restore into a new database / path instead")
@click.option("--yes", is_flag=True, help="do not ask for the target name")
@click.option("--no-safety-backup", is_flag=True, help="skip the pre-restore backup")
@click.option("--remote", is_flag=True, help="fetch the backup from the [offsite] bucket first")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="parallel pg_restore (via a private decrypted scratch file)",
)
@click.option("--no-owner", is_flag=True, help="objects belong to the restoring role")
@click.option("--no-acl", is_flag=True, help="restore no grants")
@click.option(
    "--table", "tables", multiple=True, metavar="NAME", help="only this table (needs --into)"
)
@click.option(
    "--schema", "schemas", multiple=True, metavar="NAME", help="only this schema (needs --into)"
)
@ALLOW_UNAUTHENTICATED
@pass_ctx
def restore(
    ctx: Ctx,
    backup_id: str | None,
    latest: bool,
    target: str | None,
    into: str | None,
    yes: bool,
    no_safety_backup: bool,
    remote: bool,
    jobs: int,
    no_owner: bool,
    no_acl: bool,
    tables: tuple[str, ...],
    schemas: tuple[str, ...],
    allow_unauthenticated: bool,
) -> None:
    """Restore a backup: preview, confirm, safety backup, restore beside, check, swap."""
    if bool(backup_id) == bool(latest):
        raise click.UsageError("give a backup ID or --latest")
    if into is not None and not into.strip():
        raise click.BadParameter("is empty (an unset shell variable?)", param_hint="--into")
    app = ctx.app(allow_unauthenticated)
    if target:
        restore_action.check_target(app, target, remote)
    with app.lock("restore"), recorded(app, "restore", [target or ""]) as rec:
        if remote:
            chosen = sync_action.fetch(app, sync_action.find_remote(app, backup_id, target))
        else:
            chosen = restore_action.choose(app, backup_id, target)
        rec["targets"] = [chosen.manifest.target]
        options = RestoreOptions(jobs, no_owner, no_acl, tables, schemas)
        prepared = restore_action.prepare(app, chosen, into, options)
        click.echo(prepared.preview(_age(chosen.manifest.started)), err=True)

        def ask(prompt: str) -> str:
            if yes:
                return prepared.target.name
            if not sys.stdin.isatty() and os.environ.get("PYOPS_CONFIRM_FROM_STDIN") != "1":
                raise PyopsError(
                    "refusing to restore without confirmation: run on a terminal "
                    "or pass --yes; nothing was changed"
                )
            return str(click.prompt(prompt, default="", show_default=False, err=True))

        summary = restore_action.run(
            app,
            prepared,
            into,
            confirm=restore_action.require_typed_name(ask),
            safety_backup=not no_safety_backup,
        )
        rec["backup"] = chosen.id
        rec["bytes"] = chosen.manifest.size
    click.echo(summary)


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME")
@click.option("--tier", type=click.Choice(list(TIERS)), help="only this tier")
@click.option("--dry-run", is_flag=True, help="show what would be deleted; delete nothing")
@click.option("--remote", is_flag=True, help="prune the [offsite] bucket instead")
@click.option(
    "--accept",
    "accept_ids",
    multiple=True,
    metavar="ID",
    help="accept this backup's unusual size: it counts toward retention from now on",
)
@FORMAT
@pass_ctx
def prune(
    ctx: Ctx,
    targets: tuple[str, ...],
    tier: str | None,
    dry_run: bool,
    remote: bool,
    accept_ids: tuple[str, ...],
    fmt: str,
) -> None:
    """Apply [retention]: each backup with keep/delete and the rule that decided it.

    The newest complete backup of a target is never deleted; a backup far smaller than
    its tier's recent median is kept and not counted until a normal-size one follows
    (or --accept ID); remotely, objects still under object lock are skipped and
    reported."""
    app = ctx.app()
    names = [t.name for t in app.config.select(targets)]
    tiers = [tier] if tier else None
    with app.lock("prune"), recorded(app, "prune", names) as rec:
        rows: Sequence[prune_action.PruneRow] = prune_action.run(
            app, names, tiers, dry_run, remote=remote, accept_ids=accept_ids
        )
        rec["deleted"] = [r.id for r in rows if not r.keep and not dry_run]
    verb = "would delete" if dry_run else "deleted"

    def text() -> str:
        if not rows:
            return "no complete backups"
        width = max(len(r.id) for r in rows)
        return "\n".join(
            f"{r.id:<{width}}  {'keep' if r.keep else verb:<12}  {r.reason}" for r in rows
        )

    emit(fmt, {"dry_run": dry_run, "backups": [r.as_dict() for r in rows]}, text)


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME")
@click.option("--check", is_flag=True, help="only report what differs; change nothing")
@FORMAT
@pass_ctx
def sync(ctx: Ctx, targets: tuple[str, ...], check: bool, fmt: str) -> None:
    """Upload complete local backups the bucket lacks; check remote checksums.

    Idempotent: a backup already offsite with the manifest's sha256 is not re-sent."""
    app = ctx.app()
    # a databases = "all" target stands for its databases' local backups
    configured = [t.name for t in app.config.select(targets)]
    names = pgdatabases.stored_names(app.config, app.local(), configured)
    if check:
        drift = sync_action.reconcile(app, names)
        emit(
            fmt,
            {"drift": [d.as_dict() for d in drift]},
            lambda: (
                "\n".join(f"{d.id}: {d.problem}" for d in drift) or "bucket and manifests agree"
            ),
        )
        if drift:
            raise SystemExit(EXIT_FAILED)
        return
    with (
        notify.run(app, "sync", names) as note,
        app.lock("sync"),
        recorded(app, "sync", names) as rec,
    ):
        result = sync_action.sync(app, names)
        note.outcome = notify.sync_outcome(result)
        rec.update(result.as_dict())
        if result.failed:
            rec["result"] = "failed"
    emit(
        fmt,
        result.as_dict(),
        lambda: (
            f"uploaded {len(result.uploaded)}, already offsite {len(result.present)}, "
            f"failed {len(result.failed)}"
            + "".join(f"\n{k}: FAILED {v}" for k, v in result.failed.items())
        ),
    )
    if result.failed:
        raise SystemExit(EXIT_FAILED)


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME")
@click.option("--remote", is_flag=True, help="fetch each backup from the [offsite] bucket")
@click.option("--keep", is_flag=True, help="keep the scratch database / directory")
@click.option(
    "--scratch-cluster",
    is_flag=True,
    help="postgres targets: restore into a throwaway cluster with no application roles "
    "(the new-server restore), removed afterwards",
)
@click.option(
    "--target-time",
    metavar="TIME",
    help="pgbackrest targets: a point-in-time recovery to TIME (ISO 8601; UTC unless it "
    "says otherwise), from the newest backup that ended before it",
)
@ALLOW_UNAUTHENTICATED
@FORMAT
@pass_ctx
def drill(
    ctx: Ctx,
    targets: tuple[str, ...],
    remote: bool,
    keep: bool,
    scratch_cluster: bool,
    target_time: str | None,
    allow_unauthenticated: bool,
    fmt: str,
) -> None:
    """Disaster-recovery drill: restore each target's latest backup into scratch, compare
    with the manifest, report the time to recover (RTO). Never touches live data.

    A scratch pyops could not remove is named, with the command that removes it; the
    drill itself still counts as passed."""
    if keep and scratch_cluster:
        raise click.UsageError("--keep and --scratch-cluster: a scratch cluster is always removed")
    app = ctx.app(allow_unauthenticated)
    # an "all" target stands for each database the repository (or bucket) has backups of
    catalog = app.remote() if remote else app.local()
    selected = tuple(pgdatabases.stored_targets(app.config, catalog, app.config.select(targets)))
    names = [t.name for t in selected]
    when = _target_time(target_time, selected) if target_time is not None else None
    with (
        notify.run(app, "drill", names) as note,
        app.lock("drill"),
        recorded(app, "drill", names) as rec,
    ):
        if when is not None:
            rec["target_time"] = when.isoformat()
        results = drill_action.run(app, selected, remote, keep, scratch_cluster, when)
        note.outcome = notify.drill_outcome(results)
        metrics.record_run(app, "drill", [r.as_dict() for r in results])
        rec["drills"] = [r.as_dict() for r in results]
        rec["bytes"] = sum(r.bytes for r in results)
        rec["warnings"] = sum(len(r.warnings) for r in results)
        rec["leftovers"] = [r.leftover for r in results if r.leftover]
        if not all(r.ok for r in results):
            rec["result"] = "failed"

    def after(r: drill_action.DrillResult) -> str:
        return "".join(f"\n  warning: {w}" for w in r.warnings) + (
            f"\n  SCRATCH LEFT BEHIND: {r.leftover}" if r.leftover else ""
        )

    emit_results(
        fmt,
        "drills",
        results,
        lambda r: (
            f"{r.target}: ok {r.backup} RTO {r.rto_s:.1f}s (fetch {r.fetch_s:.1f}s, "
            + (f"cluster {r.cluster_s:.1f}s, " if r.scratch_cluster else "")
            + f"restore {r.restore_s:.1f}s, check {r.check_s:.1f}s)"
            + (f" in a scratch cluster ({r.scratch_cluster})" if r.scratch_cluster else "")
            + after(r)
        ),
        lambda r: f"{r.target}: FAILED {r.error}" + after(r),
    )


def _target_time(text: str, selected: Sequence[Any]) -> datetime:
    """--target-time: a past instant, for pgbackrest targets only (exit 2 otherwise)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time (e.g. 2025-05-01T12:00:00Z)",
            param_hint="--target-time",
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when > datetime.now(UTC):
        raise click.BadParameter(f"{when.isoformat()} is in the future", param_hint="--target-time")
    others = [t.name for t in selected if t.type != "pgbackrest"]
    if others:
        raise click.BadParameter(
            f"a point-in-time drill needs a pgbackrest target; {', '.join(others)} "
            "are not (name the pgbackrest targets with --target)",
            param_hint="--target-time",
        )
    return when


@click.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@FORMAT
@pass_ctx
def history(ctx: Ctx, limit: int, fmt: str) -> None:
    """Past runs from the run log, newest first."""
    records = runlog.read(ctx.app().state, limit)

    def text() -> str:
        if not records:
            return "no runs recorded yet"
        return "\n".join(
            f"{r.get('started_at', '?')[:19]}  {r.get('command', '?'):<8} "
            f"{r.get('result', '?'):<6} {r.get('duration_s', 0):>8.1f}s  "
            f"{','.join(r.get('targets', []))}"
            + (f"  {human(r['bytes'])}" if r.get("bytes") else "")
            + (f"  {r['warnings']} warning(s)" if r.get("warnings") else "")
            + (f"  {r['error']}" if r.get("error") else "")
            for r in records
        )

    emit(fmt, {"runs": records}, text)
