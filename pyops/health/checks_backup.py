"""Checks of the backups themselves: fresh (locally and offsite), of a plausible size,
and drilled recently. All read manifests and the run log; none touches data. A
`databases = "all"` target is judged per database (Context.backup_targets)."""

from __future__ import annotations

import statistics
from datetime import datetime

from pyops import runlog
from pyops.catalog import Backup
from pyops.config import Target
from pyops.errors import PyopsError
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine
from pyops.manifest import Manifest
from pyops.retention import RECENT, below_median

TIER_ORDER = ("daily", "weekly", "monthly")


def max_age_hours(ctx: Context) -> dict[str, float]:
    cfg = ctx.cfg
    return {
        "daily": cfg.backup_max_age_hours,
        "weekly": cfg.weekly_max_age_days * 24,
        "monthly": cfg.monthly_max_age_days * 24,
    }


def _hours(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds() / 3600


def _fmt_age(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def unlisted(ctx: Context) -> list[Part]:
    """For each `databases = "all"` target whose server could not be asked which
    databases it holds: the checks judge the databases the repository has backups of."""
    ctx.backup_targets()
    return [
        Part(
            "unknown",
            f"{name}: cannot list the databases of its server ({why}); judging the databases "
            "the repository holds backups of",
        )
        for name, why in sorted(ctx.unlisted.items())
    ]


def dumped(ctx: Context) -> list[Target]:
    """The targets pyops backs up itself: a pgbackrest target's backups are pgBackRest's
    (the pgbackrest check judges them)."""
    return [t for t in ctx.backup_targets() if t.type != "pgbackrest"]


def freshness(ctx: Context, manifests: list[Manifest], where: str) -> list[Part]:
    """Per target and tier (tiers with retention > 0): the newest backup of that tier or
    a longer one (a weekly backup is also a fresh daily one) must be younger than the
    tier's limit. A tier never written yet is fine while the target's backups are all
    younger than that limit (a new install), critical after."""
    limits = max_age_hours(ctx)
    retention = ctx.app.config.retention
    parts = unlisted(ctx)
    for target in dumped(ctx):
        mine = [m for m in manifests if m.target == target.name and m.tier in TIER_ORDER]
        if not mine:
            parts.append(Part("critical", f"{target.name}: no complete {where} backup"))
            continue
        first = min(m.started for m in mine)
        for i, tier in enumerate(TIER_ORDER):
            if getattr(retention, tier) <= 0:
                continue
            covering = [m for m in mine if m.tier in TIER_ORDER[i:]]
            limit = limits[tier]
            subject = f"{target.name}.{tier}"
            if not covering:
                since = _hours(ctx.now, first)
                status: Status = "ok" if since < limit else "critical"
                parts.append(
                    Part(
                        status,
                        f"{target.name}: no {where} {tier} backup yet "
                        f"(first backup {_fmt_age(since)} ago, limit {_fmt_age(limit)})",
                    )
                )
                continue
            newest = max(covering, key=lambda m: m.started)
            age = _hours(ctx.now, newest.started)
            metrics = {
                f"{subject}.age_hours": round(age, 3),
                f"{subject}.last_timestamp": newest.started.timestamp(),
            }
            if age > limit:
                text = (
                    f"{target.name}: newest {where} {tier} backup {newest.id} is "
                    f"{_fmt_age(age)} old (limit {_fmt_age(limit)})"
                )
                parts.append(Part("critical", text, metrics))
            else:
                parts.append(Part("ok", f"{subject} {_fmt_age(age)}", metrics))
    return parts


def backup_freshness(ctx: Context) -> Result:
    manifests = [b.manifest for b in ctx.app.local().backups()]
    return combine("backup_freshness", freshness(ctx, manifests, "local"))


def offsite_freshness(ctx: Context) -> Result:
    try:
        manifests = [b.manifest for b in ctx.app.remote().backups()]
    except PyopsError as exc:
        return Result("offsite_freshness", "unknown", f"cannot list the bucket: {exc}")
    return combine("offsite_freshness", freshness(ctx, manifests, "offsite"))


def backup_size(ctx: Context) -> Result:
    """The newest backup of each target and tier is not below `backup_size_min_ratio` x
    the median of that tier's previous ones (the RECENT last): a sudden drop means a
    dump lost data. Retention applies the same rule (such a backup does not count)."""
    ratio = ctx.cfg.backup_size_min_ratio
    parts = unlisted(ctx)
    for target in dumped(ctx):
        for tier in TIER_ORDER:
            backups = ctx.app.local().backups(target.name, tier)
            if not backups:
                continue
            newest = backups[0].manifest
            previous = [b.manifest.size for b in backups[1 : 1 + RECENT]]
            subject = f"{target.name}.{tier}"
            metrics = {f"{subject}.bytes": float(newest.size)}
            if not previous:
                parts.append(Part("ok", f"{subject}: first backup, nothing to compare", metrics))
                continue
            median = statistics.median(previous)
            metrics[f"{subject}.median_bytes"] = float(median)
            if below_median(newest.size, previous, ratio) is not None:
                parts.append(
                    Part(
                        "warning",
                        f"{target.name}: {newest.id} is {newest.size} bytes, below {ratio:g} x "
                        f"the median {median:.0f} of the {len(previous)} previous {tier} "
                        "backups: check the source lost no data",
                        metrics,
                    )
                )
            else:
                parts.append(Part("ok", f"{subject} {newest.size} bytes", metrics))
    return combine("backup_size", parts, "no complete backups to compare")


def drill_freshness(ctx: Context) -> Result:
    """Each target's last successful `pyops drill`, from the run log."""
    limit_days = ctx.cfg.drill_max_age_days
    last: dict[str, datetime] = {}
    for record in runlog.read(ctx.app.state):
        if record.get("command") != "drill" or record.get("result") != "ok":
            continue
        try:
            when = datetime.fromisoformat(str(record["started_at"]))
        except (KeyError, ValueError):
            continue
        for name in record.get("targets") or []:
            if name not in last or when > last[name]:
                last[name] = when
    parts = unlisted(ctx)
    for target in ctx.backup_targets():
        if target.name not in last:
            parts.append(Part("warning", f"{target.name}: never drilled (run `pyops drill`)"))
            continue
        days = _hours(ctx.now, last[target.name]) / 24
        metrics = {
            f"{target.name}.age_days": round(days, 3),
            f"{target.name}.last_timestamp": last[target.name].timestamp(),
        }
        if days > limit_days:
            text = (
                f"{target.name}: last successful drill {days:.0f} days ago "
                f"(limit {limit_days:g}; run `pyops drill`)"
            )
            parts.append(Part("warning", text, metrics))
        else:
            parts.append(Part("ok", f"{target.name} drilled {days:.1f} days ago", metrics))
    return combine("drill_freshness", parts)


def manifests(ctx: Context) -> Result:
    """Every manifest in the repository is usable: a refused one (malformed, misplaced,
    forged) is critical and named; unauthenticated manifests (no repository key), and a
    newest backup (of a target and tier) that recorded warnings (a file changed while
    tar read it, stored torn), are warnings until a clean backup follows."""
    app = ctx.app
    try:
        listing = app.local().scan()
    except PyopsError as exc:
        return Result("manifests", "unknown", f"cannot read the repository: {exc}")
    parts = [Part("critical", f"{r.key}: {r.reason}") for r in listing.refused]
    parts += [
        Part("warning", f"{r.key}: {r.reason}: not ours, not touched") for r in listing.foreign
    ]
    if app.config.repository.key_file is None:
        parts.append(
            Part(
                "warning",
                "manifests are unauthenticated: no repository.key_file (`pyops init` creates "
                "one); anyone who can write the repository or bucket can forge a backup",
            )
        )
    newest: dict[tuple[str, str], Backup] = {}
    for b in listing.backups:  # newest first
        newest.setdefault((b.manifest.target, b.manifest.tier), b)
    warned = [b for b in newest.values() if b.manifest.warnings]
    parts += [
        Part(
            "warning",
            f"{b.id}: {len(b.manifest.warnings)} warning(s), e.g. {b.manifest.warnings[0]}",
        )
        for b in warned
    ]
    counts = {
        "usable": float(len(listing.backups)),
        "refused": float(len(listing.refused)),
        "foreign": float(len(listing.foreign)),
        "with_warnings": float(len(warned)),
    }
    parts.append(Part("ok", f"{len(listing.backups)} manifests usable", counts))
    return combine("manifests", parts)
