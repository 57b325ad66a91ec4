"""pg_stat_statements: reading it (and saying exactly how to enable it when it is
not there), the slowest and most-called statements, and N+1 loops with the one query
that replaces each.

Only this database's statements are read (dbid), and not the report's own. A batched
rewrite is shown only once the server has PREPAREd it (in a read-only transaction,
then DEALLOCATEd; never executed) with the parameter types the loop's statement has,
its key turned into an array.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pyops.report import sqlshape
from pyops.report.context import MARK, Probe, Statement, Statements
from pyops.report.model import Advice, Column, Section, Table
from pyops.report.sqlshape import Candidate

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


# --- N+1 loops and the query that replaces each ------------------------------------------

_NAMES = itertools.count(1)
# a table locked by a migration makes PREPARE wait: each check waits at most this long
CHECK_LOCK_TIMEOUT = "1s"


@dataclass(frozen=True)
class Prepared:
    """What the server made of a statement: its parameter types, or why it refused it."""

    types: list[str] | None
    error: str = ""
    locked: bool = False  # a table it names is locked by another session


def prepare(probe: Probe, statement: str) -> Prepared:
    """PREPARE `statement` in a read-only transaction, read its parameter types, and
    DEALLOCATE it. Nothing runs; parsing takes ACCESS SHARE on the tables it names, so a
    table held in ACCESS EXCLUSIVE mode makes this wait (CHECK_LOCK_TIMEOUT) and fail."""
    conn = probe.conn
    name = f"pyops_check_{next(_NAMES)}"
    prepared = False
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(f"SET LOCAL lock_timeout = '{CHECK_LOCK_TIMEOUT}'")
            conn.execute(f"{MARK}PREPARE {name} AS {statement}")
            prepared = True
            row = probe.one(
                "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s",
                (name,),
            )
            conn.execute(f"DEALLOCATE {name}")
            prepared = False
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            raise
        first = str(exc).strip().splitlines()
        message = first[0] if first else type(exc).__name__
        return Prepared(None, message, isinstance(exc, psycopg.errors.LockNotAvailable))
    finally:
        if prepared and not (conn.broken or conn.closed):
            conn.execute(f"DEALLOCATE {name}")
    return Prepared([str(t) for t in (row[0] if row and row[0] else [])])


def _aggregates(probe: Probe, names: list[str]) -> set[str]:
    """Which of these function names are aggregates (the catalog says)."""
    if not names:
        return set()
    return {
        str(r[0])
        for r in probe.rows(
            "SELECT DISTINCT proname::text FROM pg_proc WHERE proname = ANY(%s) AND prokind = 'a'",
            (names,),
        )
    }


def _key_refusal(key_type: str, c: Candidate) -> str | None:
    if key_type.endswith("]"):
        return (
            f"${c.param} ({c.column}) is an array itself ({key_type}): an array of such keys "
            "would be one multidimensional array, not one key per element"
        )
    if key_type in ("unknown", "-") or key_type.startswith("any"):
        return f"the server cannot tell the type of ${c.param} ({c.column}): {key_type}"
    return None


def batch(probe: Probe, query: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(offered, rejected): for each `col = $n` of the statement, the first batched
    form that the server PREPAREs with the statement's own parameter types (the key's
    now an array), or why none is offered; and every form dropped, with the reason."""
    offered: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    original = prepare(probe, query)
    if original.types is None:
        reason = (
            f"it could not be checked: a table it names is locked by another session "
            f"({original.error} after {CHECK_LOCK_TIMEOUT}); run the report again later"
            if original.locked
            else "the statement as pg_stat_statements recorded it does not PREPARE here "
            f"({original.error}), so no rewrite of it can be checked"
        )
        rejected.append({"column": None, "parameter": None, "form": None, "reason": reason})
        return offered, rejected
    aggregates = _aggregates(probe, sqlshape.function_names(query))
    for c in sqlshape.candidates(query):
        key_type = original.types[c.param - 1] if c.param <= len(original.types) else "-"
        where = {"column": c.column, "parameter": f"${c.param}"}
        refusal = _key_refusal(key_type, c)
        forms = [] if refusal else sqlshape.rewrites(query, c, key_type, aggregates)
        if refusal is None and not forms:
            refusal = f"{c.column} (${c.param}): only a query that reads FROM tables is batched"
        if refusal is not None:
            rejected.append({**where, "form": None, "reason": refusal})
            continue
        expected = [f"{t}[]" if i == c.param - 1 else t for i, t in enumerate(original.types)]
        for rewrite in forms:
            checked = prepare(probe, rewrite.sql)
            if checked.types is None:
                reason = f"it does not PREPARE: {checked.error}"
            elif checked.types != expected:
                reason = (
                    f"its parameter types would be ({', '.join(checked.types)}), not "
                    f"({', '.join(expected)})"
                )
            else:
                offered.append(
                    {
                        **where,
                        "type": key_type,
                        "form": rewrite.form,
                        "sql": rewrite.sql,
                        "note": rewrite.note,
                    }
                )
                break
            rejected.append({**where, "form": rewrite.form, "reason": reason, "sql": rewrite.sql})
    return offered, rejected


def _rejected_text(r: dict[str, Any]) -> str:
    if r["form"] is None:  # the reason names the parameter
        return str(r["reason"])
    return f"{r['column']} ({r['parameter']}): the {r['form']} form is not offered, {r['reason']}"


def _advice(s: Statement, offered: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Advice:
    head = (
        f"N+1: `{sqlshape.one_line(s.query, QUERY_WIDTH)}` ran {s.calls} times at "
        f"{s.rows_per_call:.1f} row(s) per call"
    )
    dropped = "; ".join(_rejected_text(r) for r in rejected)
    dropped = f" (not offered: {dropped})" if dropped else ""
    if not offered:
        return Advice(
            "warning",
            f"{head}: fetch all keys at once (or join) in the application; no batched "
            f"rewrite is offered: {'; '.join(_rejected_text(r) for r in rejected)}",
            "",
            object=str(s.queryid),
        )
    if len(offered) == 1:
        (o,) = offered
        return Advice(
            "warning",
            f"{head}: run it once with every key, {o['parameter']} an array of "
            f"{o['type']}: {o['note']}{dropped}",
            str(o["sql"]),
            object=str(s.queryid),
        )
    names = ", ".join(f"{o['column']} ({o['parameter']})" for o in offered)
    return Advice(
        "warning",
        f"{head}: pg_stat_statements does not say which parameter varies between calls "
        f"({names}): use the rewrite for the one that does{dropped}",
        "\n".join(
            f"-- if {o['column']} ({o['parameter']}) varies: {o['note']}\n{o['sql']}"
            for o in offered
        ),
        object=str(s.queryid),
    )


def _instead(offered: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> str:
    """The text table's cell: the rewrite, the choice, or why there is none."""
    if len(offered) == 1:
        return str(offered[0]["sql"])
    if offered:
        return f"{len(offered)} rewrites, one per parameter that may vary: see recommendations"
    return "none: " + "; ".join(_rejected_text(r) for r in rejected)


def n_plus_one(probe: Probe) -> Section:
    """Statements run very often for about one row each, looking rows up by
    `col = $n`: the application loops that one query for every key would replace."""
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
        schema, table, _ = shape
        offered, rejected = batch(probe, s.query)
        rows.append(
            {
                **_row(s),
                "table": f"{schema}.{table}" if schema else table,
                "columns": [c.column for c in sqlshape.candidates(s.query)],
                "rewrites": offered,
                "rejected": rejected,
                "instead": _instead(offered, rejected),
            }
        )
        section.advice.append(_advice(s, offered, rejected))
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
                Column("instead", "instead, once", "query"),
            ),
            rows,
        )
    ]
    section.notes.append(
        "each rewrite was PREPAREd on this server (read-only, then DEALLOCATEd, never run) "
        "with the statement's parameter types, its key an array"
    )
    return section
