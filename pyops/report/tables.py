"""Per-table sections: scan and vacuum statistics, and dead-tuple bloat."""

from __future__ import annotations

from psycopg import sql

from pyops.report.context import Probe, safe_size
from pyops.report.model import Advice, Column, Section, Severity, Table

# a table is worth vacuuming by hand once this many tuples are dead, and this share
BLOAT_MIN_DEAD = 1000
BLOAT_INFO_RATIO = 0.2
BLOAT_WARN_RATIO = 0.5


def tables(probe: Probe) -> Section:
    """The busiest tables: sequential vs index scans, dead tuples, last (auto)vacuum
    and (auto)analyze."""
    rows = probe.dicts(
        """
        SELECT schemaname || '.' || relname AS table, seq_scan, seq_tup_read,
               coalesce(idx_scan, 0) AS idx_scan, n_live_tup, n_dead_tup,
               greatest(last_vacuum, last_autovacuum) AS last_vacuum,
               greatest(last_analyze, last_autoanalyze) AS last_analyze
        FROM pg_stat_user_tables
        ORDER BY seq_scan + coalesce(idx_scan, 0) DESC, n_live_tup DESC, 1
        LIMIT %(limit)s
        """,
        {"limit": probe.options.limit},
    )
    count = probe.one("SELECT count(*) FROM pg_stat_user_tables")[0]
    section = Section(
        "tables",
        "Tables",
        facts={"tables": count, "stats_reset": probe.stats_reset()},
        tables=[
            Table(
                "tables",
                "busiest tables (sequential and index scans since statistics reset)",
                (
                    Column("table", "table"),
                    Column("seq_scan", "seq scans", "int"),
                    Column("seq_tup_read", "seq rows read", "int"),
                    Column("idx_scan", "idx scans", "int"),
                    Column("n_live_tup", "live", "int"),
                    Column("n_dead_tup", "dead", "int"),
                    Column("last_vacuum", "last vacuum", "time"),
                    Column("last_analyze", "last analyze", "time"),
                ),
                rows,
            )
        ],
    )
    if count > len(rows):
        section.notes.append(f"{count - len(rows)} quieter table(s) not shown")
    return section


def bloat(probe: Probe) -> Section:
    """Space held by dead tuples, estimated as table size x dead / (live + dead)."""
    found = probe.dicts(
        f"""
        SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup,
               {safe_size("pg_table_size", "s.relid")} AS table_bytes,
               greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum
        FROM pg_stat_user_tables s
        WHERE s.n_dead_tup > 0
        ORDER BY s.n_dead_tup DESC, 1, 2
        LIMIT 200
        """  # noqa: S608 - code-defined fragments; values are bound
    )
    rows = []
    for r in found:
        live, dead = int(r["n_live_tup"]), int(r["n_dead_tup"])
        ratio = round(dead / (live + dead), 4) if live + dead else 0.0
        size = r["table_bytes"]
        rows.append(
            {
                "schema": r["schemaname"],
                "name": r["relname"],
                "table": f"{r['schemaname']}.{r['relname']}",
                "table_bytes": size,
                "n_live_tup": live,
                "n_dead_tup": dead,
                "dead_ratio": ratio,
                "wasted_bytes_estimate": int(size * ratio) if size is not None else None,
                "last_vacuum": r["last_vacuum"],
            }
        )
    rows.sort(key=lambda r: (-(r["wasted_bytes_estimate"] or 0), -r["n_dead_tup"]))
    section = Section(
        "bloat",
        "Bloat (estimate)",
        tables=[
            Table(
                "tables",
                "tables holding dead tuples",
                (
                    Column("table", "table"),
                    Column("table_bytes", "size", "bytes"),
                    Column("n_live_tup", "live", "int"),
                    Column("n_dead_tup", "dead", "int"),
                    Column("dead_ratio", "dead", "percent"),
                    Column("wasted_bytes_estimate", "wasted (est.)", "bytes"),
                    Column("last_vacuum", "last vacuum", "time"),
                ),
                rows[: probe.options.limit],
                empty="no dead tuples",
            )
        ],
        notes=[
            "an estimate: table size x dead / (live + dead) tuples from pg_stat_user_tables; "
            "the pgstattuple extension measures it exactly",
            "VACUUM makes dead space reusable; only VACUUM FULL or pg_repack return it to "
            "the operating system",
        ],
    )
    for r in rows:
        if r["n_dead_tup"] < BLOAT_MIN_DEAD or r["dead_ratio"] < BLOAT_INFO_RATIO:
            continue
        severity: Severity = "warning" if r["dead_ratio"] >= BLOAT_WARN_RATIO else "info"
        statement = sql.SQL("VACUUM (ANALYZE) {};").format(sql.Identifier(r["schema"], r["name"]))
        section.advice.append(
            Advice(
                severity,
                f"{r['table']}: {r['n_dead_tup']} dead tuples ({r['dead_ratio']:.0%}) hold "
                "space autovacuum has not reclaimed yet",
                probe.sql(statement),
                object=r["table"],
            )
        )
    return section
