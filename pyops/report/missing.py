"""Missing indexes: large tables read mostly by sequential scans, with the
statements from pg_stat_statements that name them, and the column to index when
those statements look rows up by `col = $n`.

A table whose inferred column already leads an index is not listed again: the
index is there (the scan counters only restart with pg_stat_reset()). It is listed
under `indexed` instead, so that recommendations do not call that new index unused.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from psycopg import sql

from pyops.report import sqlshape
from pyops.report.context import Probe, Statement
from pyops.report.model import Advice, Column, Section, Table

MIN_ROWS = 10_000  # smaller tables are cheap to scan
MIN_SEQ_SCANS = 50
MIN_ROWS_PER_SCAN = 1_000  # a LIMIT 1 scan is not the problem
STATEMENTS_PER_TABLE = 5

CANDIDATES = """
SELECT s.relid, s.schemaname, s.relname, s.seq_scan, s.seq_tup_read,
       coalesce(s.idx_scan, 0) AS idx_scan, s.n_live_tup,
       (s.seq_tup_read / greatest(s.seq_scan, 1))::bigint AS rows_per_scan
FROM pg_stat_user_tables s
WHERE s.n_live_tup >= %(min_rows)s AND s.seq_scan >= %(min_scans)s
  AND s.seq_tup_read / greatest(s.seq_scan, 1) >= %(min_per_scan)s
  AND s.seq_scan > coalesce(s.idx_scan, 0)
ORDER BY s.seq_tup_read DESC
LIMIT 50
"""
COLUMNS = "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
# the first key column of each index of the table (none for an expression)
LEADING = """
SELECT a.attname, n.nspname || '.' || c.relname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = %s AND i.indisvalid
ORDER BY 2
"""


def missing_indexes(probe: Probe) -> Section:
    candidates = probe.dicts(
        CANDIDATES,
        {"min_rows": MIN_ROWS, "min_scans": MIN_SEQ_SCANS, "min_per_scan": MIN_ROWS_PER_SCAN},
    )
    found = probe.statements()
    section = Section(
        "missing-indexes",
        "Missing indexes",
        facts={
            "min_rows": MIN_ROWS,
            "min_seq_scans": MIN_SEQ_SCANS,
            "min_rows_per_scan": MIN_ROWS_PER_SCAN,
        },
    )
    tables: list[dict[str, Any]] = []
    statements: list[dict[str, Any]] = []
    indexed: list[dict[str, Any]] = []
    for c in candidates:
        schema, name = str(c["schemaname"]), str(c["relname"])
        label = f"{schema}.{name}"
        touching = [s for s in found.rows if sqlshape.mentions(s.query, schema, name)]
        touching.sort(key=lambda s: -s.total_ms)
        columns = {str(r[0]) for r in probe.rows(COLUMNS, (c["relid"],))}
        leading = {str(r[0]): str(r[1]) for r in reversed(probe.rows(LEADING, (c["relid"],)))}
        column = _column(touching, columns)
        if column and column in leading:
            indexed.append({"table": label, "column": column, "index": leading[column]})
            section.notes.append(
                f"{label}: still counted as scanned sequentially, but {column!r} is now "
                "indexed (the counters restart only with pg_stat_reset())"
            )
            continue
        share = c["seq_scan"] / (c["seq_scan"] + c["idx_scan"])
        tables.append(
            {
                "table": label,
                "n_live_tup": c["n_live_tup"],
                "seq_scan": c["seq_scan"],
                "seq_tup_read": c["seq_tup_read"],
                "idx_scan": c["idx_scan"],
                "seq_share": round(share, 4),
                "rows_per_scan": c["rows_per_scan"],
                "column": column,
                "statements": [s.query for s in touching[:STATEMENTS_PER_TABLE]],
            }
        )
        statements.extend(
            {
                "table": label,
                "calls": s.calls,
                "mean_ms": round(s.mean_ms, 3),
                "columns": ", ".join(sqlshape.equality_columns(s.query)),
                "query": s.query,
            }
            for s in touching[:STATEMENTS_PER_TABLE]
        )
        section.advice.append(_advice(probe, schema, name, c, column, found.available))
    section.tables = [
        Table(
            "tables",
            f"tables of >= {MIN_ROWS} rows read mostly by sequential scans",
            (
                Column("table", "table"),
                Column("n_live_tup", "rows", "int"),
                Column("seq_scan", "seq scans", "int"),
                Column("rows_per_scan", "rows/scan", "int"),
                Column("idx_scan", "idx scans", "int"),
                Column("seq_share", "seq share", "percent"),
                Column("column", "index on"),
            ),
            tables,
        ),
        Table(
            "statements",
            "statements naming those tables (pg_stat_statements, by total time)",
            (
                Column("table", "table"),
                Column("calls", "calls", "int"),
                Column("mean_ms", "mean", "ms"),
                Column("columns", "col = $n"),
                Column("query", "query", "query"),
            ),
            statements,
            empty="none found" if found.available else "pg_stat_statements is not available",
        ),
        Table(
            "indexed",
            "read by sequential scans before the index on their look-up column existed",
            (Column("table", "table"), Column("column", "column"), Column("index", "index")),
            indexed,
        ),
    ]
    if not found.available and tables:
        section.notes.append(found.message)
    return section


def _column(touching: list[Statement], columns: set[str]) -> str | None:
    """The column of this table most often looked up by `col = $n`, weighted by calls."""
    votes: Counter[str] = Counter()
    for s in touching:
        for col in sqlshape.equality_columns(s.query):
            if col in columns:
                votes[col] += s.calls
    return votes.most_common(1)[0][0] if votes else None


def _advice(
    probe: Probe,
    schema: str,
    name: str,
    c: dict[str, Any],
    column: str | None,
    statements_available: bool,
) -> Advice:
    label = f"{schema}.{name}"
    finding = (
        f"{label} ({c['n_live_tup']} rows) was read by {c['seq_scan']} sequential scans of "
        f"~{c['rows_per_scan']} rows each, {c['idx_scan']} index scans"
    )
    if column:
        statement = sql.SQL("CREATE INDEX CONCURRENTLY ON {} ({});").format(
            sql.Identifier(schema, name), sql.Identifier(column)
        )
        return Advice(
            "warning",
            finding + f"; its statements look rows up by {column} = $n",
            probe.sql(statement),
            object=label,
        )
    why = (
        "no `col = $n` lookup of its columns in pg_stat_statements"
        if statements_available
        else "pg_stat_statements is not available to tell which column"
    )
    return Advice(
        "info",
        finding + f"; {why}: EXPLAIN the statements that read it",
        "",
        object=label,
    )
