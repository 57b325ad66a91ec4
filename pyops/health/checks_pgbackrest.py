"""The `pgbackrest` check, per pgbackrest target: `pgbackrest check` (a WAL switch that
must arrive in the repository), backups fresh per tier (from `pgbackrest info`, by
backup type: full = monthly, diff = weekly, incr = daily, a longer one covering a
shorter), and WAL archiving that keeps up (pg_stat_archiver on the target's server).

Archiving: archive_mode off, or a failure newer than the last success, is critical
(the point-in-time window stops growing and WAL piles up in pg_wal); WAL segments
waiting while the last one archived is older than `archive_max_age_minutes` is a
warning (an idle server archives nothing, and that is fine); failures since the
previous health run that archiving recovered from are a warning once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyops.config import PgbackrestTarget, PostgresTarget
from pyops.errors import PyopsError
from pyops.health.checks_backup import TIER_ORDER, max_age_hours
from pyops.health.context import Context
from pyops.health.result import Part, Result, combine
from pyops.sources import pgbackrest
from pyops.tools import pgbackrest as tool

ARCHIVER = """
SELECT current_setting('archive_mode'), pg_is_in_recovery(),
       a.last_archived_wal, a.last_archived_time, a.failed_count,
       a.last_failed_wal, a.last_failed_time, a.stats_reset, now(),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')
FROM pg_stat_archiver a
"""


def _age(hours: float) -> str:
    if hours < 2:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def check(target: PgbackrestTarget) -> Part:
    try:
        pgbackrest.run(
            target,
            "check",
            tool.check(target.pgbackrest_config, target.stanza),
            pgbackrest.CHECK_S,
        )
    except PyopsError as exc:
        return Part("critical", f"{target.name}: {exc}")
    return Part(
        "ok", f"{target.name}: pgbackrest check passed (a WAL switch reached the repository)"
    )


def freshness(ctx: Context, target: PgbackrestTarget, stanza: pgbackrest.Stanza) -> list[Part]:
    """As backup_freshness judges pyops' own backups, with [health] limits and the
    tiers [retention] keeps."""
    name = target.name
    if stanza.status_code not in (pgbackrest.STATUS_OK, pgbackrest.STATUS_NO_BACKUP):
        return [Part("critical", f"{name}: stanza {stanza.name}: {stanza.status}")]
    if not stanza.backups:
        return [Part("critical", f"{name}: no backup in stanza {stanza.name}")]
    parts = [Part("warning", f"{name}: {w}") for w in stanza.backups[0].warnings()]
    limits = max_age_hours(ctx)
    first = min(b.started for b in stanza.backups)
    for tier in TIER_ORDER:
        if getattr(ctx.app.config.retention, tier) <= 0:
            continue
        limit = limits[tier]
        newest = stanza.newest(tier)
        if newest is None:
            since = (ctx.now - first).total_seconds() / 3600
            parts.append(
                Part(
                    "ok" if since < limit else "critical",
                    f"{name}: no {tool.TIER_TYPES[tier]} ({tier}) backup yet (first backup "
                    f"{_age(since)} ago, limit {_age(limit)})",
                )
            )
            continue
        age = (ctx.now - newest.started).total_seconds() / 3600
        metrics = {
            f"{name}.{tier}.age_hours": round(age, 3),
            f"{name}.{tier}.last_timestamp": newest.started.timestamp(),
        }
        if age > limit:
            text = (
                f"{name}: newest {tier} backup ({tool.TIER_TYPES[tier]} or fuller) "
                f"{newest.label} is {_age(age)} old (limit {_age(limit)})"
            )
            parts.append(Part("critical", text, metrics))
        else:
            parts.append(Part("ok", f"{name}.{tier} {_age(age)} ({newest.label})", metrics))
    return parts


def segment(wal: Any, per_log: int) -> tuple[str, int] | None:
    """(timeline, segment number) of a WAL file name; None for anything else (a
    .history or .backup file is archived too)."""
    if not isinstance(wal, str) or len(wal) != 24:
        return None
    try:
        return wal[:8], int(wal[8:16], 16) * per_log + int(wal[16:24], 16)
    except ValueError:
        return None


def archiving(ctx: Context, target: PgbackrestTarget) -> list[Part]:
    from pyops.pgfacts import session

    name = target.name
    server = PostgresTarget(name=target.name, type="postgres", dsn=target.dsn)
    try:
        with session.connect(server, session.HEALTH, purpose="health") as conn:
            row = conn.execute(ARCHIVER).fetchone()
    except PyopsError as exc:
        return [Part("unknown", f"{name}: cannot read pg_stat_archiver: {exc}")]
    except Exception as exc:  # psycopg.Error: this target only
        return [Part("unknown", f"{name}: reading pg_stat_archiver failed: {exc}")]
    assert row is not None
    mode, standby, wal, archived_at, failed, failed_wal, failed_at, reset, now = row[:9]
    current, segment_bytes = row[9], row[10]
    if mode == "off":
        return [
            Part(
                "critical",
                f"{name}: archive_mode is off: no WAL reaches pgBackRest (set archive_mode = on "
                f"and archive_command = 'pgbackrest --stanza={target.stanza} archive-push %p')",
            )
        ]
    if standby:
        return [Part("ok", f"{name}: a standby: archiving is judged on the primary")]
    age_s = (now - archived_at).total_seconds() if isinstance(archived_at, datetime) else None
    per_log = (1 << 32) // int(segment_bytes or 16 << 20)
    here, done = segment(current, per_log), segment(wal, per_log)
    pending = here[1] - done[1] - 1 if here and done and here[0] == done[0] else None
    metrics: dict[str, float] = {f"{name}.archive_failed_count": float(failed or 0)}
    if age_s is not None:
        metrics[f"{name}.archive_last_age_seconds"] = round(age_s, 1)
    if pending is not None:
        metrics[f"{name}.archive_pending_segments"] = float(max(0, pending))
    previous = ctx.remember(f"pgbackrest_archiver:{name}", {"failed_count": float(failed or 0)})
    last = f"last archived {wal} {_age(age_s / 3600)} ago" if age_s is not None else "none archived"
    if isinstance(failed_at, datetime) and (
        not isinstance(archived_at, datetime) or failed_at > archived_at
    ):
        since = f" since {reset:%Y-%m-%d %H:%M}" if isinstance(reset, datetime) else ""
        return [
            Part(
                "critical",
                f"{name}: WAL archiving FAILS: {failed_wal} failed at "
                f"{failed_at:%Y-%m-%d %H:%M:%S} ({failed} failures{since}); {last}: check "
                "archive_command and the server log",
                metrics,
            )
        ]
    limit_s = ctx.cfg.archive_max_age_minutes * 60
    if pending and pending > 0 and age_s is not None and age_s > limit_s:
        return [
            Part(
                "warning",
                f"{name}: {pending} WAL segment(s) wait to be archived, {last} "
                f"(limit {ctx.cfg.archive_max_age_minutes:g} min)",
                metrics,
            )
        ]
    before = (previous or {}).get("failed_count")
    if before is not None and failed and failed > before:
        return [
            Part(
                "warning",
                f"{name}: {int(failed - before)} WAL archive failure(s) since the last health "
                f"run; archiving recovered ({last})",
                metrics,
            )
        ]
    return [Part("ok", f"{name}: WAL archiving works, {last}", metrics)]


def pgbackrest_check(ctx: Context) -> Result:
    parts: list[Part] = []
    for target in pgbackrest.targets(ctx.app):
        parts.append(check(target))  # first: its WAL switch shows in the archiver's counters
        try:
            stanza = pgbackrest.info(target)
        except PyopsError as exc:
            parts.append(Part("critical", f"{target.name}: {exc}"))
        else:
            parts += freshness(ctx, target, stanza)
        parts += archiving(ctx, target)
    return combine("pgbackrest", parts, "no pgbackrest targets")
