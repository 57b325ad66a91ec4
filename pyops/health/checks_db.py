"""PostgreSQL checks, per postgres target: reachable and fast, connections, xid
wraparound, long-running queries, blocked sessions, deadlocks and conflicts; and
per server, that every database has a backup (coverage).

A target that cannot be reached makes `database` critical; the other checks then
say `unknown` for it (they cannot know), pointing at `database`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyops import pgdatabases
from pyops.config import PostgresTarget
from pyops.errors import PyopsError
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine
from pyops.pgfacts import XID_LIMIT, Thresholds, level, server, session, short


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
    parts = []
    for target in ctx.postgres_targets:
        t0 = time.monotonic()
        try:
            conn = session.connect(target, session.HEALTH, purpose="health")
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
    limits = Thresholds.from_health(ctx.cfg)

    def one(target: PostgresTarget, conn: Any) -> Part:
        facts = server.connections(conn)
        used, usable, percent = facts.used, facts.usable, facts.percent
        status = level(
            percent, limits.connections_warn_percent, limits.connections_critical_percent
        )
        metrics = {
            f"{target.name}.used": float(used),
            f"{target.name}.max": float(usable),
            f"{target.name}.used_percent": round(percent, 2),
        }
        text = (
            f"{target.name}: {used} of {usable} connections in use ({percent:.0f}%; "
            f"max_connections {facts.max_connections} minus {facts.reserved} reserved)"
        )
        return Part(status, text, metrics)

    return per_target(ctx, "connections", one)


def wraparound(ctx: Context) -> Result:
    """The oldest unfrozen transaction id or multixact id of any database, against the
    2^31 horizon where PostgreSQL stops accepting writes: the nearer of the two counts
    (pgfacts.server.wraparound, which `db report` shows too)."""
    limits = Thresholds.from_health(ctx.cfg)

    def one(target: PostgresTarget, conn: Any) -> Part:
        worst = server.wraparound(conn)[0]
        name, percent = str(worst["database"]), float(worst["percent"])
        xid, mxid = int(worst["xid_age"]), int(worst["multixact_age"])
        status = level(percent, limits.wraparound_warn_percent, limits.wraparound_critical_percent)
        text = (
            f"{target.name}: oldest xid age {xid} in {name} ({100.0 * xid / XID_LIMIT:.2f}% of "
            f"2^31), multixact age {mxid} ({100.0 * mxid / XID_LIMIT:.2f}%)"
        )
        if status != "ok":
            text += f": VACUUM (FREEZE) database {name} before it reaches 100%"
        return Part(
            status,
            text,
            {
                f"{target.name}.xid_age": float(xid),
                f"{target.name}.xid_percent": 100.0 * xid / XID_LIMIT,
                f"{target.name}.multixact_age": float(mxid),
                f"{target.name}.multixact_percent": 100.0 * mxid / XID_LIMIT,
                f"{target.name}.wraparound_percent": percent,
            },
        )

    return per_target(ctx, "wraparound", one)


def long_running(ctx: Context) -> Result:
    """Sessions busy (or idle in a transaction) longer than the threshold, timed as
    pgfacts times them (since the statement began if active, since the transaction
    began if idle in it)."""
    limits = Thresholds.from_health(ctx.cfg)
    seconds = limits.long_running_seconds

    def one(target: PostgresTarget, conn: Any) -> Part:
        rows = server.long_running(conn)
        longest = float(rows[0]["running_s"] or 0.0) if rows else 0.0
        slow = [r for r in rows if float(r["running_s"] or 0.0) >= seconds]
        metrics = {
            f"{target.name}.longest_seconds": round(longest, 1),
            f"{target.name}.count": float(len(slow)),
        }
        if not slow:
            return Part("ok", f"{target.name}: no query over {seconds:g} s", metrics)
        status = level(longest, seconds, limits.long_running_critical_seconds)
        top = slow[0]
        text = (
            f"{target.name}: {len(slow)} session(s) over {seconds:g} s; longest pid "
            f"{top['pid']} ({top['user']}@{top['database']}, {top['state']}) "
            f"{float(top['running_s']):.0f} s: {short(top['query'])}"
        )
        return Part(status, text, metrics)

    return per_target(ctx, "long_running", one)


def blocking(ctx: Context) -> Result:
    """Sessions waiting for a lock another session holds (pg_blocking_pids)."""
    limits = Thresholds.from_health(ctx.cfg)

    def one(target: PostgresTarget, conn: Any) -> Part:
        waiting: dict[int, dict[str, Any]] = {}
        for pair in server.blocked(conn):  # longest wait first
            entry = waiting.setdefault(pair["blocked_pid"], {**pair, "blockers": []})
            entry["blockers"].append(pair["blocking_pid"])
        first = next(iter(waiting.values()), None)
        longest = float(first["waiting_s"] or 0.0) if first else 0.0
        metrics = {
            f"{target.name}.blocked": float(len(waiting)),
            f"{target.name}.longest_wait_seconds": round(longest, 1),
        }
        if first is None:
            return Part("ok", f"{target.name}: no blocked sessions", metrics)
        status: Status = "critical" if longest >= limits.blocking_critical_seconds else "warning"
        text = (
            f"{target.name}: {len(waiting)} blocked session(s); pid {first['blocked_pid']} "
            f"waits {longest:.0f} s on pid {', '.join(map(str, first['blockers']))}: "
            f"{short(first['blocked_query'])}"
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


def coverage(ctx: Context) -> Result:
    """Every database of each configured server (targets grouped by dsn host and port)
    has a backup: a target whose dsn names it, or a `databases = "all"` target that
    includes it. A database nothing covers is a warning naming it, and so is one an
    "all" target cannot name; one an "all" target excludes was left out on purpose."""
    parts = []
    for host_port, targets in pgdatabases.servers(ctx.postgres_targets).items():
        where = pgdatabases.describe_server(host_port)
        asker = next((t for t in targets if pgdatabases.is_all(t)), targets[0])
        try:
            listed = ctx.databases(asker)
        except PyopsError as exc:
            parts.append(Part("unknown", f"{where}: cannot connect (see database): {exc}"))
            continue
        except Exception as exc:  # psycopg.Error: this server only
            parts.append(Part("unknown", f"{where}: listing the databases failed: {exc}"))
            continue
        found = pgdatabases.coverage(targets, listed)
        missing = len(found.uncovered) + len(found.unnamable)
        metrics = {
            f"{where}.databases": float(len(found.covered) + len(found.excluded) + missing),
            f"{where}.uncovered": float(missing),
        }
        for db in found.uncovered:
            parts.append(
                Part(
                    "warning",
                    f"{where}: database {db!r} has no backup: no target covers it (add a "
                    'target for it, or databases = "all" to a target of this server)',
                    metrics,
                )
            )
        for message in found.unnamable.values():
            parts.append(Part("warning", f"{where}: {message}", metrics))
        if not missing:
            aside = "; ".join(f"{db} ({why})" for db, why in found.excluded.items())
            text = f"{where}: all {len(found.covered)} databases have a target" + (
                f"; left out on purpose: {aside}" if aside else ""
            )
            parts.append(Part("ok", text, metrics))
    return combine("coverage", parts, "no PostgreSQL targets")
