"""PostgreSQL checks, per postgres target: reachable and fast, connections, xid
wraparound, long-running queries, blocked sessions, deadlocks and conflicts.

A target that cannot be reached makes `database` critical; the other checks then
say `unknown` for it (they cannot know), pointing at `database`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyops.config import PostgresTarget
from pyops.errors import PyopsError
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine

XID_LIMIT = 2**31
ACTIVITY = """
SELECT pid, usename, datname, state,
       extract(epoch FROM now() - coalesce(query_start, xact_start, backend_start))::float8,
       left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 80)
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def _level(value: float, warn: float, crit: float) -> Status:
    if value >= crit:
        return "critical"
    if value >= warn:
        return "warning"
    return "ok"


def per_target(
    ctx: Context, name: str, fn: Callable[[PostgresTarget, Any], Part], empty: str = ""
) -> Result:
    parts = []
    for target in ctx.postgres_targets:
        try:
            conn = ctx.db(target)
        except PyopsError as exc:
            parts.append(Part("unknown", f"{target.name}: cannot connect (see database): {exc}"))
            continue
        try:
            parts.append(fn(target, conn))
        except Exception as exc:  # psycopg.Error and friends: this target only
            parts.append(Part("unknown", f"{target.name}: query failed: {exc}".strip()))
    return combine(name, parts, empty or "no PostgreSQL targets")


def database(ctx: Context) -> Result:
    """Connect (a fresh connection: that is what is measured) and SELECT 1."""
    from pyops.sources import postgres

    parts = []
    for target in ctx.postgres_targets:
        t0 = time.monotonic()
        try:
            conn = postgres.connect(target, autocommit=True)
        except PyopsError as exc:
            parts.append(Part("critical", str(exc), {f"{target.name}.up": 0.0}))
            continue
        connect_ms = (time.monotonic() - t0) * 1000
        try:
            t1 = time.monotonic()
            conn.execute("SELECT 1").fetchone()
            query_ms = (time.monotonic() - t1) * 1000
            version = conn.info.parameter_status("server_version") or "?"
        except Exception as exc:
            parts.append(Part("critical", f"{target.name}: SELECT 1 failed: {exc}"))
            continue
        finally:
            conn.close()
        metrics = {
            f"{target.name}.up": 1.0,
            f"{target.name}.connect_ms": round(connect_ms, 2),
            f"{target.name}.query_ms": round(query_ms, 2),
        }
        slow = max(connect_ms, query_ms) > ctx.cfg.db_latency_warn_ms
        text = (
            f"{target.name}: PostgreSQL {version}, connect {connect_ms:.0f} ms, "
            f"SELECT 1 {query_ms:.1f} ms"
        )
        if slow:
            text += f" (above {ctx.cfg.db_latency_warn_ms:g} ms)"
        parts.append(Part("warning" if slow else "ok", text, metrics))
    return combine("database", parts, "no PostgreSQL targets")


def connections(ctx: Context) -> Result:
    cfg = ctx.cfg

    def one(target: PostgresTarget, conn: Any) -> Part:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
            " current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
        ).fetchone()
        used, limit, reserved = int(row[0]), int(row[1]), int(row[2])
        usable = max(1, limit - reserved)
        percent = 100.0 * used / usable
        status = _level(percent, cfg.connections_warn_percent, cfg.connections_critical_percent)
        metrics = {
            f"{target.name}.used": float(used),
            f"{target.name}.max": float(usable),
            f"{target.name}.used_percent": round(percent, 2),
        }
        text = (
            f"{target.name}: {used} of {usable} connections in use ({percent:.0f}%; "
            f"max_connections {limit} minus {reserved} reserved)"
        )
        return Part(status, text, metrics)

    return per_target(ctx, "connections", one)


def wraparound(ctx: Context) -> Result:
    """The oldest unfrozen transaction id of any database, against the 2^31 horizon
    where PostgreSQL stops accepting writes."""
    cfg = ctx.cfg

    def one(target: PostgresTarget, conn: Any) -> Part:
        row = conn.execute(
            "SELECT datname, age(datfrozenxid) FROM pg_database "
            "ORDER BY age(datfrozenxid) DESC LIMIT 1"
        ).fetchone()
        name, age = str(row[0]), int(row[1])
        percent = 100.0 * age / XID_LIMIT
        status = _level(percent, cfg.wraparound_warn_percent, cfg.wraparound_critical_percent)
        text = f"{target.name}: oldest xid age {age} in {name} ({percent:.2f}% of 2^31)"
        if status != "ok":
            text += f": VACUUM (FREEZE) database {name} before it reaches 100%"
        return Part(
            status,
            text,
            {f"{target.name}.xid_age": float(age), f"{target.name}.xid_percent": percent},
        )

    return per_target(ctx, "wraparound", one)


def long_running(ctx: Context) -> Result:
    """Sessions busy (or idle in a transaction) longer than the threshold."""
    cfg = ctx.cfg

    def one(target: PostgresTarget, conn: Any) -> Part:
        rows = conn.execute(
            ACTIVITY + " AND state IS NOT NULL AND state <> 'idle' ORDER BY 5 DESC"
        ).fetchall()
        longest = float(rows[0][4]) if rows else 0.0
        slow = [r for r in rows if float(r[4]) >= cfg.long_running_seconds]
        metrics = {
            f"{target.name}.longest_seconds": round(longest, 1),
            f"{target.name}.count": float(len(slow)),
        }
        if not slow:
            return Part(
                "ok", f"{target.name}: no query over {cfg.long_running_seconds:g} s", metrics
            )
        status = _level(longest, cfg.long_running_seconds, cfg.long_running_critical_seconds)
        top = slow[0]
        text = (
            f"{target.name}: {len(slow)} session(s) over {cfg.long_running_seconds:g} s; longest "
            f"pid {top[0]} ({top[1]}@{top[2]}, {top[3]}) {float(top[4]):.0f} s: {top[5]}"
        )
        return Part(status, text, metrics)

    return per_target(ctx, "long_running", one)


def blocking(ctx: Context) -> Result:
    """Sessions waiting for a lock another session holds (pg_blocking_pids)."""
    cfg = ctx.cfg

    def one(target: PostgresTarget, conn: Any) -> Part:
        rows = conn.execute(
            "SELECT pid, pg_blocking_pids(pid),"
            " extract(epoch FROM now() - coalesce(query_start, xact_start))::float8,"
            " left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 80)"
            " FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND cardinality(pg_blocking_pids(pid)) > 0"
            " ORDER BY 3 DESC"
        ).fetchall()
        longest = float(rows[0][2] or 0) if rows else 0.0
        metrics = {
            f"{target.name}.blocked": float(len(rows)),
            f"{target.name}.longest_wait_seconds": round(longest, 1),
        }
        if not rows:
            return Part("ok", f"{target.name}: no blocked sessions", metrics)
        status: Status = "critical" if longest >= cfg.blocking_critical_seconds else "warning"
        pid, blockers, _, query = rows[0]
        text = (
            f"{target.name}: {len(rows)} blocked session(s); pid {pid} waits {longest:.0f} s "
            f"on pid {', '.join(map(str, blockers))}: {query}"
        )
        return Part(status, text, metrics)

    return per_target(ctx, "blocking", one)


def deadlocks(ctx: Context) -> Result:
    """Deadlocks and recovery conflicts since the previous health run (counters kept in
    the state dir). The first run records a baseline; a stats reset starts a new one."""

    def one(target: PostgresTarget, conn: Any) -> Part:
        row = conn.execute(
            "SELECT deadlocks, conflicts FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        now = {"deadlocks": float(row[0] or 0), "conflicts": float(row[1] or 0)}
        before = ctx.remember(f"postgres:{target.name}", now)
        metrics = {
            f"{target.name}.deadlocks_total": now["deadlocks"],
            f"{target.name}.conflicts_total": now["conflicts"],
        }
        if before is None:
            return Part("ok", f"{target.name}: baseline recorded", metrics)
        new = {k: now[k] - float(before.get(k, 0)) for k in now}
        if any(v < 0 for v in new.values()):
            return Part("ok", f"{target.name}: statistics were reset; new baseline", metrics)
        metrics[f"{target.name}.deadlocks_new"] = new["deadlocks"]
        metrics[f"{target.name}.conflicts_new"] = new["conflicts"]
        if new["deadlocks"] or new["conflicts"]:
            text = (
                f"{target.name}: {new['deadlocks']:.0f} deadlock(s) and {new['conflicts']:.0f} "
                "recovery conflict(s) since the last health run (see the server log)"
            )
            return Part("warning", text, metrics)
        return Part("ok", f"{target.name}: no deadlocks since the last run", metrics)

    return per_target(ctx, "deadlocks", one)
