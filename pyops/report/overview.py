"""Server-wide sections: connections, sizes, cache hit ratio, xid wraparound."""

from __future__ import annotations

from pyops.pgfacts import XID_LIMIT, level, server
from pyops.report.context import Probe, safe_size, user_schemas
from pyops.report.model import Advice, Column, Section, Severity, Table

# a cache ratio is only worth advice once enough blocks were read to mean something
CACHE_MIN_BLOCKS_READ = 100_000
CACHE_WARN_RATIO = 0.99


def _ratio(hit: int, read: int) -> float | None:
    return round(hit / (hit + read), 4) if hit + read else None


def connections(probe: Probe) -> Section:
    """Client connections by state, against what max_connections allows."""
    facts = server.connections(probe)
    rows, limit, reserved = facts.states, facts.max_connections, facts.reserved
    used, usable = facts.used, facts.usable
    percent = round(facts.percent, 1)
    section = Section(
        "connections",
        "Connections",
        facts={
            "max_connections": limit,
            "superuser_reserved_connections": reserved,
            "in_use": used,
            "in_use_percent": percent,
        },
        tables=[
            Table(
                "states",
                "client connections by state (all databases; this database)",
                (
                    Column("state", "state"),
                    Column("total", "total", "int"),
                    Column("this_db", "this db", "int"),
                ),
                rows,
            )
        ],
    )
    limits = probe.options.thresholds
    judged = level(
        facts.percent, limits.connections_warn_percent, limits.connections_critical_percent
    )
    if judged != "ok":
        severity: Severity = judged
        section.advice.append(
            Advice(
                severity,
                f"{used} of {usable} usable connections in use ({percent:.0f}%)",
                "-- put a pooler (PgBouncer) in front of the application, or raise the limit:\n"
                f"ALTER SYSTEM SET max_connections = {int(limit) * 2};  -- restart required",
                object="max_connections",
            )
        )
    return section


def size(probe: Probe) -> Section:
    """Database sizes, and the largest tables of this one (table, indexes, TOAST)."""
    databases = probe.dicts(
        "SELECT datname AS database, CASE WHEN has_database_privilege(oid, 'CONNECT')"
        " THEN pg_database_size(oid) END AS bytes, datname = current_database() AS current"
        " FROM pg_database WHERE datallowconn ORDER BY 2 DESC NULLS LAST, 1"
    )
    tables = probe.dicts(
        f"""
        SELECT n.nspname || '.' || c.relname AS table,
               {safe_size("pg_total_relation_size", "c.oid")} AS total_bytes,
               {safe_size("pg_relation_size", "c.oid")} AS heap_bytes,
               {safe_size("pg_indexes_size", "c.oid")} AS index_bytes,
               greatest(c.reltuples, 0)::bigint AS rows_estimate
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND {user_schemas()}
        ORDER BY 2 DESC NULLS FIRST, 1 LIMIT %(limit)s
        """,  # noqa: S608 - code-defined fragments; values are bound
        {"limit": probe.options.limit},
    )
    section = Section(
        "size",
        "Size",
        facts={"database": probe.database},
        tables=[
            Table(
                "databases",
                "databases",
                (
                    Column("database", "database"),
                    Column("bytes", "size", "bytes"),
                    Column("current", "this one"),
                ),
                databases,
            ),
            Table(
                "tables",
                f"largest tables of {probe.database}",
                (
                    Column("table", "table"),
                    Column("total_bytes", "total", "bytes"),
                    Column("heap_bytes", "table", "bytes"),
                    Column("index_bytes", "indexes", "bytes"),
                    Column("rows_estimate", "rows (est.)", "int"),
                ),
                tables,
            ),
        ],
    )
    if any(r["total_bytes"] is None for r in tables):
        section.notes.append(
            "a size shown as '-' belongs to a table another session holds (or waits for) "
            "in ACCESS EXCLUSIVE mode: measuring it would wait for that lock"
        )
    return section


def cache(probe: Probe) -> Section:
    """Share of heap and index block reads served from shared_buffers (pg_statio)."""
    total = probe.one(
        "SELECT coalesce(sum(heap_blks_hit), 0)::bigint, coalesce(sum(heap_blks_read), 0)::bigint,"
        " coalesce(sum(idx_blks_hit), 0)::bigint, coalesce(sum(idx_blks_read), 0)::bigint,"
        " pg_size_bytes(current_setting('shared_buffers'))"
        " FROM pg_statio_user_tables"
    )
    heap_hit, heap_read, idx_hit, idx_read, shared_buffers = (int(v or 0) for v in total)
    rows = probe.dicts(
        "SELECT schemaname || '.' || relname AS table, heap_blks_read, heap_blks_hit,"
        " round(heap_blks_hit::numeric / nullif(heap_blks_hit + heap_blks_read, 0), 4)::float8"
        "   AS heap_hit_ratio,"
        " round(idx_blks_hit::numeric / nullif(idx_blks_hit + idx_blks_read, 0), 4)::float8"
        "   AS index_hit_ratio"
        " FROM pg_statio_user_tables WHERE heap_blks_read + heap_blks_hit > 0"
        " ORDER BY heap_blks_read DESC, 1 LIMIT %(limit)s",
        {"limit": probe.options.limit},
    )
    heap, index = _ratio(heap_hit, heap_read), _ratio(idx_hit, idx_read)
    section = Section(
        "cache",
        "Cache hit ratio",
        facts={
            "heap_hit_ratio": heap,
            "index_hit_ratio": index,
            "heap_blocks_read": heap_read,
            "index_blocks_read": idx_read,
            "shared_buffers_bytes": shared_buffers,
        },
        tables=[
            Table(
                "tables",
                "tables reading most blocks from outside shared_buffers",
                (
                    Column("table", "table"),
                    Column("heap_blks_read", "blocks read", "int"),
                    Column("heap_blks_hit", "blocks hit", "int"),
                    Column("heap_hit_ratio", "heap hit ratio", "percent"),
                    Column("index_hit_ratio", "index hit ratio", "percent"),
                ),
                rows,
            )
        ],
        notes=[
            f"counted since {probe.stats_reset() or 'statistics began (never reset)'}; a "
            "block read from the OS page cache counts as read"
        ],
    )
    for kind, ratio, read in (("heap", heap, heap_read), ("index", index, idx_read)):
        if ratio is not None and ratio < CACHE_WARN_RATIO and read >= CACHE_MIN_BLOCKS_READ:
            mib = max(128, shared_buffers * 2 // (1024 * 1024))
            section.advice.append(
                Advice(
                    "warning",
                    f"{kind} cache hit ratio {ratio:.1%} over {read} blocks read: the working "
                    "set does not fit in shared_buffers",
                    f"ALTER SYSTEM SET shared_buffers = '{mib}MB';  -- restart required; "
                    "keep it to about 25% of RAM",
                    object=f"{kind}_hit_ratio",
                )
            )
    return section


def wraparound(probe: Probe) -> Section:
    """Transaction-id age of each database against the 2^31 horizon where PostgreSQL
    stops accepting writes."""
    rows = server.wraparound(probe)
    freeze_max = probe.one("SELECT current_setting('autovacuum_freeze_max_age')::bigint")[0]
    section = Section(
        "wraparound",
        "Transaction-ID wraparound",
        facts={"autovacuum_freeze_max_age": freeze_max, "limit": XID_LIMIT},
        tables=[
            Table(
                "databases",
                "age of the oldest unfrozen transaction id per database",
                (
                    Column("database", "database"),
                    Column("xid_age", "xid age", "int"),
                    Column("xid_percent", "% of 2^31", "float"),
                    Column("multixact_age", "multixact age", "int"),
                    Column("multixact_percent", "% of 2^31", "float"),
                ),
                rows,
            )
        ],
        notes=[
            f"autovacuum freezes a table once its age passes autovacuum_freeze_max_age "
            f"({freeze_max}); PostgreSQL stops assigning ids near 100%"
        ],
    )
    limits = probe.options.thresholds
    for r in rows:
        percent = float(r["percent"])
        judged = level(percent, limits.wraparound_warn_percent, limits.wraparound_critical_percent)
        if judged == "ok":
            continue
        severity: Severity = judged
        section.advice.append(
            Advice(
                severity,
                f"database {r['database']} is at {percent:.1f}% of the wraparound horizon: "
                f"run this connected to {r['database']} (or `vacuumdb --freeze`)",
                "VACUUM (FREEZE, ANALYZE, VERBOSE);",
                object=str(r["database"]),
            )
        )
    return section
