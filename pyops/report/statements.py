"""pg_stat_statements: reading it (and saying exactly how to enable it when it is
not there), the slowest and most-called statements, and N+1 loops.

Only this database's statements are read (dbid), and not the report's own.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pyops.report import sqlshape
from pyops.report.context import MARK, Probe, Statement, Statements
from pyops.report.model import Advice, Column, Section, Table

EXTENSION = "pg_stat_statements"
# an N+1 loop: one statement run this often, returning about one row each time
N_PLUS_ONE_MIN_CALLS = 100
N_PLUS_ONE_MAX_ROWS_PER_CALL = 1.5
QUERY_WIDTH = 70


def read(probe: Probe) -> Statements:
    found = probe.one(
        "SELECT n.nspname, e.extversion FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = %s",
        (EXTENSION,),
    )
    preload = str(probe.one("SELECT current_setting('shared_preload_libraries')")[0])
    if found is None:
        return absent(probe.database, preload, installed=False)
    schema, version = str(found[0]), str(found[1])
    columns = {
        str(r[0])
        for r in probe.rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            (sql.Identifier(schema, EXTENSION).as_string(probe.conn),),
        )
    }
    # PostgreSQL 13 renamed total_time/mean_time to total_exec_time/mean_exec_time
    total, mean = (
        ("total_exec_time", "mean_exec_time")
        if "total_exec_time" in columns
        else ("total_time", "mean_time")
    )
    query = sql.SQL(
        "SELECT queryid, calls, {total}, {mean}, rows, query FROM {view}"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE {mark} ORDER BY {total} DESC LIMIT 10000"
    ).format(
        total=sql.Identifier(total),
        mean=sql.Identifier(mean),
        view=sql.Identifier(schema, EXTENSION),
        mark=sql.Literal(MARK.strip().replace("%", "%%") + "%%"),
    )
    try:
        rows = probe.rows(query)
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return absent(probe.database, preload, installed=True)
    return Statements(
        available=True,
        version=version,
        rows=[
            Statement(
                int(r[0] or 0), int(r[1]), float(r[2]), float(r[3]), int(r[4]), str(r[5] or "")
            )
            for r in rows
        ],
    )


def absent(database: str, preload: str, installed: bool) -> Statements:
    """Why statement statistics are unavailable, and the steps (and SQL) to enable
    them: preload the library (restart), then CREATE EXTENSION in this database."""
    libraries = [p.strip().strip('"') for p in preload.split(",") if p.strip()]
    steps = []
    sqls = []
    if EXTENSION in libraries:
        preloaded = "shared_preload_libraries already loads it"
    else:
        wanted = ", ".join([*libraries, EXTENSION])
        preloaded = "it is not in shared_preload_libraries"
        steps.append(
            f"add it to shared_preload_libraries (postgresql.conf: shared_preload_libraries = "
            f"'{wanted}') and restart PostgreSQL"
        )
        sqls.append(
            sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {};")
            .format(sql.Literal(wanted))
            .as_string(None)
            + "  -- then restart PostgreSQL"
        )
    if not installed:
        steps.append(f"run CREATE EXTENSION {EXTENSION}; in database {database}")
        sqls.append(f"CREATE EXTENSION {EXTENSION};")
    what = (
        f"{EXTENSION} is installed in database {database} but not loaded"
        if installed
        else f"{EXTENSION} is not installed in database {database}"
    )
    return Statements(
        available=False,
        message=f"{what} ({preloaded}): to enable it, " + ", then ".join(steps),
        enable_sql="\n".join(sqls),
    )


def _absent_section(section: Section, found: Statements) -> Section:
    section.facts[EXTENSION] = "absent"
    section.notes.append(found.message)
    section.advice.append(
        Advice(
            "info",
            found.message,
            found.enable_sql,
            object=EXTENSION,
        )
    )
    return section


STATEMENT_COLUMNS = (
    Column("calls", "calls", "int"),
    Column("mean_ms", "mean", "ms"),
    Column("total_ms", "total", "ms"),
    Column("rows_per_call", "rows/call", "float"),
    Column("query", "query", "query"),
)


def _row(s: Statement) -> dict[str, Any]:
    return {
        "queryid": s.queryid,
        "calls": s.calls,
        "mean_ms": round(s.mean_ms, 3),
        "total_ms": round(s.total_ms, 3),
        "rows": s.rows,
        "rows_per_call": round(s.rows_per_call, 2),
        "query": s.query,
    }


def queries(probe: Probe) -> Section:
    found = probe.statements()
    section = Section("queries", "Statements (pg_stat_statements)")
    if not found.available:
        return _absent_section(section, found)
    limit = probe.options.limit
    slowest = sorted(found.rows, key=lambda s: (-s.mean_ms, -s.calls))[:limit]
    most = sorted(found.rows, key=lambda s: (-s.calls, -s.total_ms))[:limit]
    section.facts = {
        EXTENSION: found.version,
        "statements": len(found.rows),
        "total_ms": round(sum(s.total_ms for s in found.rows), 3),
    }
    section.tables = [
        Table(
            "slowest",
            "slowest statements (mean time per call)",
            STATEMENT_COLUMNS,
            [_row(s) for s in slowest],
        ),
        Table("most_called", "most-called statements", STATEMENT_COLUMNS, [_row(s) for s in most]),
    ]
    return section


def n_plus_one(probe: Probe) -> Section:
    """Statements run very often for about one row each, looking rows up by
    `col = $n`: the application loops where one `col = ANY($1)` or a join would do."""
    found = probe.statements()
    section = Section("n-plus-one", "N+1 query patterns")
    if not found.available:
        return _absent_section(section, found)
    rows = []
    for s in found.rows:
        if s.calls < N_PLUS_ONE_MIN_CALLS or s.rows_per_call > N_PLUS_ONE_MAX_ROWS_PER_CALL:
            continue
        shape = sqlshape.single_row_lookup(s.query)
        if shape is None:
            continue
        schema, table, column = shape
        rewrite = sqlshape.batched(s.query, column)
        rows.append(
            {
                **_row(s),
                "table": f"{schema}.{table}" if schema else table,
                "column": column,
                "batched": rewrite,
            }
        )
        section.advice.append(
            Advice(
                "warning",
                f"N+1: `{sqlshape.one_line(s.query, QUERY_WIDTH)}` ran {s.calls} times at "
                f"{s.rows_per_call:.1f} row(s) per call: fetch all keys at once (or join) in "
                "the application",
                rewrite,
                object=str(s.queryid),
            )
        )
    rows.sort(key=lambda r: -r["calls"])
    section.facts = {
        "min_calls": N_PLUS_ONE_MIN_CALLS,
        "max_rows_per_call": N_PLUS_ONE_MAX_ROWS_PER_CALL,
    }
    section.tables = [
        Table(
            "statements",
            f"looked up one row at a time (>= {N_PLUS_ONE_MIN_CALLS} calls, "
            f"<= {N_PLUS_ONE_MAX_ROWS_PER_CALL} rows per call)",
            (
                Column("calls", "calls", "int"),
                Column("rows_per_call", "rows/call", "float"),
                Column("total_ms", "total", "ms"),
                Column("query", "query", "query"),
                Column("batched", "instead, once", "query"),
            ),
            rows,
        )
    ]
    return section
