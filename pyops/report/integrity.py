"""Integrity: invalid indexes, NOT VALID constraints, tables without a primary key,
and sequences (or the columns they feed) close to the end of their range."""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from pyops.report.context import Probe, user_schemas
from pyops.report.model import Advice, Column, Section, Severity, Table

SEQUENCE_WARN_PERCENT = 80.0
SEQUENCE_CRITICAL_PERCENT = 95.0
TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}
# leftovers of an interrupted REINDEX CONCURRENTLY: drop them, do not rebuild them
REINDEX_LEFTOVER = re.compile(r"_cc(new|old)\d*$")

INVALID_INDEXES = f"""
SELECT n.nspname AS schema, t.relname AS table_name, c.relname AS index_name,
       pg_get_indexdef(i.indexrelid) AS definition,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
               WHERE p.index_relid = i.indexrelid) AS building
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND {user_schemas()}
ORDER BY 1, 2, 3
"""  # noqa: S608 - code-defined fragments; values are bound
NOT_VALID = f"""
SELECT n.nspname AS schema, t.relname AS table_name, con.conname AS constraint_name,
       CASE con.contype WHEN 'f' THEN 'foreign key' WHEN 'c' THEN 'check'
            ELSE con.contype::text END AS kind,
       pg_get_constraintdef(con.oid) AS definition
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE NOT con.convalidated AND {user_schemas()}
ORDER BY 1, 2, 3
"""  # noqa: S608 - code-defined fragments; values are bound
WITHOUT_PK = f"""
SELECT n.nspname AS schema, c.relname AS table_name, c.relkind::text AS relkind,
       greatest(c.reltuples, 0)::bigint AS rows_estimate,
       (SELECT ci.relname FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
        WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnatts = i.indnkeyatts
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                          AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull)
        ORDER BY i.indnatts, ci.relname LIMIT 1) AS unique_index,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
               AND a.attname = 'id' AND NOT a.attisdropped) AS has_id
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {user_schemas()}
  AND NOT EXISTS (SELECT 1 FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""  # noqa: S608 - code-defined fragments; values are bound
# each sequence with the column it feeds (serial: 'a', identity: 'i' dependency)
SEQUENCES = """
SELECT s.schemaname AS schema, s.sequencename AS name, s.data_type::text AS data_type,
       s.last_value, s.min_value, s.max_value, s.increment_by,
       tn.nspname AS table_schema, t.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type
FROM pg_sequences s
JOIN pg_namespace sn ON sn.nspname = s.schemaname
JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid
     AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE s.last_value IS NOT NULL
ORDER BY 1, 2
"""


def integrity(probe: Probe) -> Section:
    invalid = probe.dicts(INVALID_INDEXES)
    not_valid = probe.dicts(NOT_VALID)
    without_pk = probe.dicts(WITHOUT_PK)
    checked = probe.dicts(SEQUENCES)
    sequences = [
        s for s in (_usage(r) for r in checked) if s["used_percent"] >= SEQUENCE_WARN_PERCENT
    ]
    for group in (invalid, not_valid, without_pk):
        for r in group:
            r["table"] = f"{r['schema']}.{r['table_name']}"
    section = Section(
        "integrity",
        "Integrity",
        facts={
            "invalid_indexes": len(invalid),
            "not_valid_constraints": len(not_valid),
            "tables_without_primary_key": len(without_pk),
            "sequences_checked": len(checked),
            "sequences_near_limit": len(sequences),
        },
        tables=[
            Table(
                "invalid_indexes",
                "invalid indexes (a failed CREATE INDEX / REINDEX CONCURRENTLY)",
                (
                    Column("table", "table"),
                    Column("index_name", "index"),
                    Column("definition", "definition", "query"),
                ),
                invalid,
            ),
            Table(
                "not_valid_constraints",
                "constraints added NOT VALID and never validated",
                (
                    Column("table", "table"),
                    Column("constraint_name", "constraint"),
                    Column("kind", "kind"),
                    Column("definition", "definition", "query"),
                ),
                not_valid,
            ),
            Table(
                "tables_without_primary_key",
                "tables without a primary key",
                (
                    Column("table", "table"),
                    Column("rows_estimate", "rows (est.)", "int"),
                    Column("unique_index", "unique index usable as key"),
                ),
                without_pk,
            ),
            Table(
                "sequences",
                f"sequences past {SEQUENCE_WARN_PERCENT:g}% of their range (or of the column "
                "they feed)",
                (
                    Column("sequence", "sequence"),
                    Column("data_type", "type"),
                    Column("last_value", "last value", "int"),
                    Column("limit", "limit", "int"),
                    Column("used_percent", "used", "float"),
                    Column("column", "feeds column"),
                    Column("column_type", "column type"),
                ),
                sequences,
            ),
        ],
    )
    section.advice += [_invalid_advice(probe, r) for r in invalid if not r["building"]]
    section.notes += [
        f"index {r['schema']}.{r['index_name']} is being built right now"
        for r in invalid
        if r["building"]
    ]
    section.advice += [_not_valid_advice(probe, r) for r in not_valid]
    section.advice += [_pk_advice(probe, r) for r in without_pk]
    section.advice += [_sequence_advice(probe, s) for s in sequences]
    return section


def _usage(r: dict[str, Any]) -> dict[str, Any]:
    """How much of its range a sequence used: of its own max (min when descending), or
    of the column it feeds when that type is narrower (an integer column fed by a
    bigint sequence fails at 2^31)."""
    column_max = TYPE_MAX.get(str(r["column_type"] or ""))
    ascending = int(r["increment_by"]) > 0
    if ascending:
        limit = min(int(r["max_value"]), column_max or int(r["max_value"]))
    else:
        limit = max(int(r["min_value"]), -(column_max + 1) if column_max else int(r["min_value"]))
    last = int(r["last_value"])
    used = 100.0 * last / limit if limit and (last > 0) == (limit > 0) else 0.0
    column = f"{r['table_schema']}.{r['table_name']}.{r['column_name']}" if r["column_name"] else ""
    return {
        **r,
        "sequence": f"{r['schema']}.{r['name']}",
        "limit": limit,
        "used_percent": round(used, 2),
        "column": column,
        "column_limits": column_max is not None
        and column_max < TYPE_MAX["bigint"]
        and abs(limit) >= column_max,
    }


def _invalid_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    ident = sql.Identifier(r["schema"], r["index_name"])
    label = f"{r['schema']}.{r['index_name']}"
    if REINDEX_LEFTOVER.search(r["index_name"]):
        return Advice(
            "warning",
            f"invalid index {label} on {r['table']} is left over from an interrupted REINDEX "
            "CONCURRENTLY: writes still maintain it, no query uses it",
            probe.sql(sql.SQL("DROP INDEX CONCURRENTLY {};").format(ident)),
            object=label,
        )
    return Advice(
        "warning",
        f"index {label} on {r['table']} is invalid (a failed concurrent build): no query uses "
        "it, writes still maintain it; rebuild it (or drop it)",
        probe.sql(sql.SQL("REINDEX INDEX CONCURRENTLY {};").format(ident)),
        object=label,
    )


def _not_valid_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    statement = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {};").format(
        sql.Identifier(r["schema"], r["table_name"]), sql.Identifier(r["constraint_name"])
    )
    return Advice(
        "warning",
        f"{r['kind']} constraint {r['constraint_name']} on {r['table']} is NOT VALID: rows "
        "written before it was added were never checked (validating takes only a SHARE "
        "UPDATE EXCLUSIVE lock)",
        probe.sql(statement),
        object=f"{r['table']}.{r['constraint_name']}",
    )


def _pk_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    table = sql.Identifier(r["schema"], r["table_name"])
    finding = (
        f"table {r['table']} has no primary key: duplicate rows cannot be told apart, and "
        "logical replication cannot replicate its UPDATEs and DELETEs"
    )
    if r["unique_index"] and r["relkind"] == "r":
        statement = sql.SQL("ALTER TABLE {} ADD PRIMARY KEY USING INDEX {};").format(
            table, sql.Identifier(r["unique_index"])
        )
        finding += f"; unique index {r['unique_index']} on NOT NULL columns can become it"
    elif r["has_id"]:
        statement = sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({});").format(
            table, sql.Identifier("id")
        )
        finding += "; if its id column is unique and never NULL, make it the key"
    else:
        statement = sql.SQL(
            "ALTER TABLE {} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;"
        ).format(table)
        finding += (
            "; add a key column (this rewrites the table under an exclusive lock), or "
            "ADD PRIMARY KEY (columns that identify a row)"
        )
    return Advice("warning", finding, probe.sql(statement), object=r["table"])


def _sequence_advice(probe: Probe, s: dict[str, Any]) -> Advice:
    severity: Severity = "critical" if s["used_percent"] >= SEQUENCE_CRITICAL_PERCENT else "warning"
    statements = []
    if s["column_limits"]:
        statements.append(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE bigint;").format(
                sql.Identifier(s["table_schema"], s["table_name"]),
                sql.Identifier(s["column_name"]),
            )
        )
    clauses = []
    ascending = int(s["increment_by"]) > 0
    type_max = TYPE_MAX.get(s["data_type"], TYPE_MAX["bigint"])
    if s["data_type"] != "bigint":
        clauses.append("AS bigint")
    if ascending and int(s["max_value"]) < type_max:
        clauses.append("NO MAXVALUE")
    if not ascending and int(s["min_value"]) > -type_max - 1:
        clauses.append("NO MINVALUE")
    if clauses:
        statements.append(
            sql.SQL("ALTER SEQUENCE {} " + " ".join(clauses) + ";").format(
                sql.Identifier(s["schema"], s["name"])
            )
        )
    where = f" (it feeds {s['column']}, {s['column_type']})" if s["column"] else ""
    finding = (
        f"sequence {s['sequence']}{where} is at {s['used_percent']:.0f}% of its limit "
        f"{s['limit']}: inserts fail when it runs out"
    )
    if s["column_limits"]:
        finding += "; widening the column rewrites the table under an exclusive lock"
    return Advice(
        severity,
        finding,
        "\n".join(probe.sql(st) for st in statements),
        object=s["sequence"],
    )
