"""Missing indexes: large tables read mostly by sequential scans, with the
statements from pg_stat_statements that name them, and the column to index when
those statements look rows up by `col = $n`; and foreign keys whose referencing
columns lead no index (each delete or key update of a referenced row scans the
referencing table, and holds its locks while it does).

A table whose inferred column already leads an index is not listed again: the
index is there (the scan counters only restart with pg_stat_reset()). It is listed
under `indexed` instead, so that recommendations do not call that new index unused.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from psycopg import sql

from pyops.report import advice as ddl
from pyops.report import sqlshape
from pyops.report.context import Probe, Statement, user_schemas
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


def covers(con: str, idx: str) -> str:
    """SQL: index `idx` (a pg_index alias) serves the look-ups of foreign key `con` (a
    pg_constraint alias) on its referencing table: valid, not partial, its leading key
    columns are the key's columns in any order, a btree (or a one-column hash)."""
    return f"""(
      {idx}.indrelid = {con}.conrelid AND {idx}.indisvalid AND {idx}.indpred IS NULL
      AND cardinality({con}.conkey) <= {idx}.indnkeyatts
      AND (SELECT array_agg(k ORDER BY k) FROM unnest({con}.conkey) k)
          = (SELECT array_agg(k ORDER BY k)
             FROM unnest(({idx}.indkey::int2[])[0:cardinality({con}.conkey) - 1]) k)
      AND EXISTS (SELECT 1 FROM pg_class ic JOIN pg_am am ON am.oid = ic.relam
                  WHERE ic.oid = {idx}.indexrelid
                    AND (am.amname = 'btree'
                         OR (am.amname = 'hash' AND cardinality({con}.conkey) = 1))))"""  # noqa: S608


# foreign keys (the partitioned table's, not each partition's copy) that no index
# serves, with the evidence: sequential scans of the referencing table, deletes and
# updates of the referenced one
UNINDEXED_FOREIGN_KEYS = f"""
SELECT con.conname, n.nspname AS schema, t.relname AS table_name, t.relkind::text AS relkind,
       pn.nspname AS parent_schema, p.relname AS parent_name,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, pos)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.pos) AS columns,
       greatest(t.reltuples, coalesce(st.n_live_tup, 0), 0)::bigint AS rows_estimate,
       coalesce(st.seq_scan, 0) AS seq_scan, coalesce(st.seq_tup_read, 0) AS seq_tup_read,
       coalesce(ps.n_tup_del, 0) AS parent_deletes, coalesce(ps.n_tup_upd, 0) AS parent_updates
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class p ON p.oid = con.confrelid
JOIN pg_namespace pn ON pn.oid = p.relnamespace
LEFT JOIN pg_stat_user_tables st ON st.relid = con.conrelid
LEFT JOIN pg_stat_user_tables ps ON ps.relid = con.confrelid
WHERE con.contype = 'f' AND con.conparentid = 0 AND {user_schemas()}
  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE {covers("con", "i")})
ORDER BY 2, 3, 1
"""  # noqa: S608 - code-defined fragments; values are bound

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
    foreign_keys = _foreign_keys(probe, found.rows if found.available else None)
    # a table whose look-up column is an unindexed foreign key's: one index fixes both
    fk_columns = {(f["table"], f["columns"][0]): f["object"] for f in foreign_keys}
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
        if column and (label, column) in fk_columns:
            section.notes.append(
                f"{label}: its look-up column {column!r} is foreign key "
                f"{fk_columns[label, column]}'s: the index advised for that key serves both"
            )
            continue
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
        Table(
            "foreign_keys",
            "foreign keys whose referencing columns lead no index",
            (
                Column("table", "table"),
                Column("constraint", "foreign key"),
                Column("columns_text", "columns"),
                Column("references", "references"),
                Column("rows_estimate", "rows (est.)", "int"),
                Column("seq_scan", "seq scans", "int"),
                Column("parent_deletes", "parent deletes", "int"),
                Column("parent_updates", "parent updates", "int"),
                Column("statement_calls", "parent writes (pg_stat_statements)", "int"),
            ),
            foreign_keys,
        ),
    ]
    section.advice += [_foreign_key_advice(probe, f) for f in foreign_keys]
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
        return Advice(
            "warning",
            finding + f"; its statements look rows up by {column} = $n",
            _create_index(probe, schema, name, [column], "r"),
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


def _create_index(probe: Probe, schema: str, name: str, columns: list[str], relkind: str) -> str:
    """CREATE INDEX CONCURRENTLY, named as PostgreSQL would name it (so that a build
    stopped by lock_timeout leaves an index the advice can name); a partitioned table
    cannot be indexed concurrently in one statement."""
    index = ddl.choose_name(probe, schema, name, "_".join(columns), "idx")
    table = f"{schema}.{name}"
    target = sql.SQL("{} ON {} ({})").format(
        sql.Identifier(index),
        sql.Identifier(schema, name),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )
    if relkind == "p":
        return ddl.ddl(
            probe,
            ddl.Step(
                sql.SQL("CREATE INDEX {};").format(target), ddl.locks_create_partitioned(table)
            ),
        )
    return ddl.ddl(
        probe,
        ddl.Step(
            sql.SQL("CREATE INDEX CONCURRENTLY {};").format(target),
            ddl.locks_create_concurrently(table, f"{schema}.{index}"),
        ),
    )


def _writes(query: str, schema: str, name: str) -> bool:
    """Whether a statement deletes from or updates the table `schema.name`."""
    table = rf'(?:"?{re.escape(schema)}"?\.)?"?{re.escape(name)}"?(?![\w$"])'
    return re.search(rf"\b(?:delete\s+from|update)\s+(?:only\s+)?{table}", query, re.I) is not None


def _foreign_keys(probe: Probe, found: list[Statement] | None) -> list[dict[str, Any]]:
    """Unindexed foreign keys, with the statements that delete from or update the
    referenced table (None: pg_stat_statements is not available)."""
    rows = probe.dicts(UNINDEXED_FOREIGN_KEYS)
    for r in rows:
        r["table"] = f"{r['schema']}.{r['table_name']}"
        r["references"] = f"{r['parent_schema']}.{r['parent_name']}"
        r["constraint"] = r["conname"]
        r["object"] = f"{r['table']}.{r['conname']}"
        r["columns_text"] = ", ".join(r["columns"])
        writes = (
            [s for s in found if _writes(s.query, r["parent_schema"], r["parent_name"])]
            if found is not None
            else None
        )
        r["statement_calls"] = sum(s.calls for s in writes) if writes is not None else None
        r["statements"] = [s.query for s in writes[:STATEMENTS_PER_TABLE]] if writes else []
    return rows


def _foreign_key_advice(probe: Probe, f: dict[str, Any]) -> Advice:
    columns = f["columns_text"]
    per_scan = f["seq_tup_read"] // f["seq_scan"] if f["seq_scan"] else 0
    evidence = [
        f"{f['seq_scan']} sequential scans of {f['table']} (~{per_scan} rows each)",
        f"{f['parent_deletes']} rows deleted from and {f['parent_updates']} updated in "
        f"{f['references']}",
    ]
    if f["statement_calls"] is None:
        evidence.append("pg_stat_statements is not available to show which statements")
    elif f["statement_calls"]:
        evidence.append(
            f"{f['statement_calls']} calls of statements that remove or change rows of "
            f"{f['references']} (pg_stat_statements)"
        )
    return Advice(
        "warning" if f["rows_estimate"] >= MIN_ROWS else "info",
        f"foreign key {f['constraint']} of {f['table']} ({columns}) references "
        f"{f['references']}, and no index leads with {columns}: every delete or key update "
        f"of a {f['references']} row scans {f['table']} (~{f['rows_estimate']} rows) for "
        f"referencing rows, and joins on the key read it whole. Evidence: " + "; ".join(evidence),
        _create_index(probe, f["schema"], f["table_name"], list(f["columns"]), f["relkind"]),
        object=f["object"],
    )
