"""Per-table sections: scan and vacuum statistics, and bloat."""

from __future__ import annotations

from psycopg import sql

from pyops.pgfacts import bloat as bloat_estimate
from pyops.report import advice as ddl
from pyops.report.context import Probe, locked_note, safe_size
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
    """Estimated space the live rows do not need, per table: pgfacts.bloat's estimate,
    the one `maintenance --operation bloat` gives."""
    widths = bloat_estimate.widths_by_oid(probe.rows(bloat_estimate.TABLE_WIDTHS))
    block_size = int(probe.one(bloat_estimate.BLOCK_SIZE)[0])
    found = probe.dicts(
        f"""
        SELECT s.relid, s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup,
               {safe_size("pg_relation_size", "s.relid")} AS table_bytes,
               greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum
        FROM pg_stat_user_tables s
        ORDER BY s.n_dead_tup DESC, 2, 3
        """  # noqa: S608 - code-defined fragments; values are bound
    )
    rows = []
    held = [f"{r['schemaname']}.{r['relname']}" for r in found if r["table_bytes"] is None]
    for r in found:
        live, dead = int(r["n_live_tup"]), int(r["n_dead_tup"])
        size = r["table_bytes"]
        estimate = (
            bloat_estimate.estimate_table(
                int(size),
                live,
                dead,
                widths.get(r["relid"], bloat_estimate.Widths(None)),
                block_size,
            )
            if size is not None
            else bloat_estimate.Estimate(None, "unavailable")
        )
        if dead == 0 and not estimate.wasted_bytes:
            continue
        rows.append(
            {
                "schema": r["schemaname"],
                "name": r["relname"],
                "table": f"{r['schemaname']}.{r['relname']}",
                "table_bytes": size,
                "n_live_tup": live,
                "n_dead_tup": dead,
                "dead_ratio": round(dead / (live + dead), 4) if live + dead else 0.0,
                "wasted_bytes_estimate": estimate.wasted_bytes,
                "wasted_ratio_estimate": estimate.ratio(int(size)) if size is not None else None,
                "method": estimate.method,
                "last_vacuum": r["last_vacuum"],
            }
        )
    rows.sort(key=lambda r: (-(r["wasted_bytes_estimate"] or 0), -r["n_dead_tup"], r["table"]))
    section = Section(
        "bloat",
        "Bloat (estimate)",
        tables=[
            Table(
                "tables",
                "tables holding dead tuples or space their live rows do not need",
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
                empty="no dead tuples, no estimated waste",
            )
        ],
        notes=[
            "an estimate from statistics: the table's size (main fork) less the pages its live "
            "rows would fill at the fillfactor, from pg_stats' column widths (method "
            "pg_stats), or its dead-tuple share where that is larger or there are no "
            "statistics (dead_tuples); the same numbers `pyops maintenance --operation bloat` "
            "gives. The pgstattuple extension measures it exactly",
            "VACUUM makes dead space reusable; only VACUUM FULL or pg_repack return it to "
            "the operating system",
        ],
    )
    if held:
        section.notes.append(locked_note(held, "its size was"))
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
                ddl.ddl(probe, ddl.Step(statement, ddl.locks_vacuum(r["table"]))),
                object=r["table"],
            )
        )
    return section
