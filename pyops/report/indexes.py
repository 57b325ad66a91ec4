"""Index sections: usage, unused indexes, duplicate indexes.

Scan counts are this server's since the last statistics reset: a standby's reads
do not show here, so check them before dropping anything.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from psycopg import sql

from pyops.report.context import Probe, safe_size, user_schemas
from pyops.report.model import Advice, Column, Section, Table

UNUSED_WARN_BYTES = 100 * 1024 * 1024

# every index of a user table, with what decides whether it may be dropped
INDEXES = f"""
SELECT n.nspname AS schema, t.relname AS table_name, c.relname AS index_name,
       i.indexrelid AS oid, i.indrelid, i.indkey::text AS indkey,
       i.indclass::text AS indclass, i.indcollation::text AS indcollation,
       i.indoption::text AS indoption, i.indnkeyatts, c.relam,
       coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS expressions,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate,
       i.indisunique, i.indisprimary, i.indisvalid, c.relispartition,
       con.conname AS constraint_name,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_read, 0) AS idx_tup_read,
       {safe_size("pg_relation_size", "i.indexrelid")} AS bytes,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
LEFT JOIN LATERAL (SELECT conname FROM pg_constraint
                   WHERE conindid = i.indexrelid AND conrelid = i.indrelid LIMIT 1) con ON true
WHERE t.relkind IN ('r', 'm', 'p') AND {user_schemas()}
ORDER BY 1, 2, 3
"""  # noqa: S608 - code-defined fragments; values are bound


def _all(probe: Probe) -> list[dict[str, Any]]:
    rows = probe.dicts(INDEXES)
    for r in rows:
        r["table"] = f"{r['schema']}.{r['table_name']}"
        r["index"] = f"{r['schema']}.{r['index_name']}"
    return rows


def _droppable(r: dict[str, Any]) -> bool:
    """Not enforcing anything (unique, primary key, a constraint), valid, and not a
    partition's index (those go with their parent's)."""
    return not (
        r["indisunique"]
        or r["indisprimary"]
        or r["constraint_name"]
        or not r["indisvalid"]
        or r["relispartition"]
    )


def _drop(probe: Probe, r: dict[str, Any]) -> str:
    return probe.sql(
        sql.SQL("DROP INDEX CONCURRENTLY {};").format(sql.Identifier(r["schema"], r["index_name"]))
    )


def indexes(probe: Probe) -> Section:
    rows = _all(probe)
    for r in rows:
        r["kind"] = (
            "primary key"
            if r["indisprimary"]
            else "unique"
            if r["indisunique"]
            else "constraint"
            if r["constraint_name"]
            else ""
        ) + ("" if r["indisvalid"] else " INVALID")
    shown = sorted(rows, key=lambda r: (-(r["bytes"] or 0), r["index"]))[: probe.options.limit]
    return Section(
        "indexes",
        "Index usage",
        facts={
            "indexes": len(rows),
            "total_bytes": sum(r["bytes"] or 0 for r in rows),
            "stats_reset": probe.stats_reset(),
        },
        tables=[
            Table(
                "indexes",
                "largest indexes and how often they were scanned",
                (
                    Column("index", "index"),
                    Column("table", "table"),
                    Column("bytes", "size", "bytes"),
                    Column("idx_scan", "scans", "int"),
                    Column("idx_tup_read", "rows read", "int"),
                    Column("kind", "kind"),
                ),
                [_public(r, "kind") for r in shown],
            )
        ],
    )


def _public(r: dict[str, Any], *extra: str) -> dict[str, Any]:
    keys = ("index", "table", "bytes", "idx_scan", "idx_tup_read", "definition", *extra)
    return {k: r[k] for k in keys}


def unused(probe: Probe) -> Section:
    """Never scanned since the statistics reset, and enforcing nothing."""
    found = [r for r in _all(probe) if r["idx_scan"] == 0 and _droppable(r)]
    found.sort(key=lambda r: (-(r["bytes"] or 0), r["index"]))
    since = probe.stats_reset()
    section = Section(
        "unused-indexes",
        "Unused indexes",
        facts={"stats_reset": since},
        tables=[
            Table(
                "indexes",
                "indexes with idx_scan = 0 (unique, primary key and constraint indexes left out)",
                (
                    Column("index", "index"),
                    Column("table", "table"),
                    Column("bytes", "size", "bytes"),
                    Column("definition", "definition", "query"),
                ),
                [_public(r) for r in found],
            )
        ],
        notes=[
            f"scans counted on this server since {since or 'statistics began (never reset)'}: "
            "an index only a standby or a monthly job uses looks unused here"
        ],
    )
    for r in found:
        section.advice.append(
            Advice(
                "warning" if (r["bytes"] or 0) >= UNUSED_WARN_BYTES else "info",
                f"index {r['index']} on {r['table']} was never scanned; every write "
                "still maintains it",
                _drop(probe, r),
                object=r["index"],
            )
        )
    return section


def _keep_first(r: dict[str, Any]) -> tuple[Any, ...]:
    """Which of identical indexes to keep: one that enforces something (a primary key
    first, then a constraint), then the most scanned, then the oldest."""
    enforces = not _droppable(r)
    return (enforces, r["indisprimary"], bool(r["constraint_name"]), r["idx_scan"], -r["oid"])


def duplicates(probe: Probe) -> Section:
    """Indexes of the same table on the same columns, with the same expressions and
    predicate (and access method, operator classes, collations, sort options and
    INCLUDE split, so that each really can serve the other's queries)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in _all(probe):
        if not r["indisvalid"] or r["relispartition"]:
            continue
        key = (
            r["indrelid"],
            r["indkey"],
            r["indnkeyatts"],
            r["indclass"],
            r["indcollation"],
            r["indoption"],
            r["relam"],
            r["expressions"],
            r["predicate"],
        )
        groups[key].append(r)
    rows = []
    section = Section("duplicate-indexes", "Duplicate indexes")
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=_keep_first, reverse=True)
        keep = members[0]
        for dup in members[1:]:
            rows.append(
                {
                    "table": dup["table"],
                    "index": dup["index"],
                    "duplicate_of": keep["index"],
                    "bytes": dup["bytes"],
                    "idx_scan": dup["idx_scan"],
                    "definition": dup["definition"],
                }
            )
            section.advice.append(_duplicate_advice(probe, dup, keep))
    rows.sort(key=lambda r: (r["table"], r["index"]))
    section.tables.append(
        Table(
            "indexes",
            "redundant indexes and the identical index to keep",
            (
                Column("index", "redundant index"),
                Column("duplicate_of", "same as (kept)"),
                Column("bytes", "size", "bytes"),
                Column("idx_scan", "scans", "int"),
                Column("definition", "definition", "query"),
            ),
            rows,
        )
    )
    return section


def _duplicate_advice(probe: Probe, dup: dict[str, Any], keep: dict[str, Any]) -> Advice:
    finding = f"index {dup['index']} duplicates {keep['index']} on {dup['table']}"
    if _droppable(dup):
        return Advice("warning", finding, _drop(probe, dup), object=dup["index"])
    if dup["constraint_name"] and not dup["indisprimary"]:
        statement = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {};").format(
            sql.Identifier(dup["schema"], dup["table_name"]),
            sql.Identifier(dup["constraint_name"]),
        )
        return Advice(
            "info",
            finding + f" and backs constraint {dup['constraint_name']}: drop the constraint "
            "if nothing (a foreign key) depends on it",
            probe.sql(statement),
            object=dup["index"],
        )
    return Advice(
        "info",
        finding + " and enforces uniqueness itself: keep one unique index, drop the other",
        _drop(probe, dup),
        object=dup["index"],
    )
