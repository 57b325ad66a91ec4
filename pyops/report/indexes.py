"""Index sections: usage, unused indexes, duplicate indexes (identical, and unused
ones whose columns lead a longer index).

Scan counts are this server's since the last statistics reset: a standby's reads
do not show here, so check them before dropping anything.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from psycopg import sql

from pyops.report import advice as ddl
from pyops.report.context import Probe, guarded, locked, locked_note, safe_size, user_schemas
from pyops.report.missing import covers
from pyops.report.model import Advice, Column, Section, Table

UNUSED_WARN_BYTES = 100 * 1024 * 1024

# every index of a user table, with what decides whether it may be dropped; the
# functions that would wait for another session's ACCESS EXCLUSIVE lock are guarded
INDEXES = f"""
SELECT n.nspname AS schema, t.relname AS table_name, c.relname AS index_name,
       i.indexrelid AS oid, i.indrelid, i.indkey::text AS indkey,
       i.indclass::text AS indclass, i.indcollation::text AS indcollation,
       i.indoption::text AS indoption, i.indnatts, i.indnkeyatts, c.relam,
       am.amname, i.indexprs IS NOT NULL AS has_expressions,
       i.indpred IS NOT NULL AS has_predicate,
       coalesce({guarded("pg_get_expr(i.indexprs, i.indrelid)", "i.indexrelid")}, '')
         AS expressions,
       coalesce({guarded("pg_get_expr(i.indpred, i.indrelid)", "i.indexrelid")}, '')
         AS predicate,
       i.indisunique, i.indisprimary, i.indisvalid, c.relispartition,
       con.conname AS constraint_name,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_read, 0) AS idx_tup_read,
       {safe_size("pg_relation_size", "i.indexrelid")} AS bytes,
       {guarded("pg_get_indexdef(i.indexrelid)", "i.indexrelid")} AS definition,
       {locked("i.indexrelid")} AS locked,
       (SELECT count(*) FROM pg_constraint f
        WHERE f.contype = 'f' AND f.conindid = i.indexrelid) AS fk_dependents,
       (SELECT string_agg(f.conname, ', ' ORDER BY f.conname) FROM pg_constraint f
        WHERE f.contype = 'f' AND f.conrelid = i.indrelid AND f.conparentid = 0
          AND {covers("f", "i")}
          AND NOT EXISTS (SELECT 1 FROM pg_index o
                          WHERE o.indexrelid <> i.indexrelid AND {covers("f", "o")})
       ) AS only_index_of_foreign_key
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
LEFT JOIN LATERAL (SELECT conname FROM pg_constraint
                   WHERE conindid = i.indexrelid AND conrelid = i.indrelid LIMIT 1) con ON true
WHERE t.relkind IN ('r', 'm', 'p') AND {user_schemas()}
ORDER BY 1, 2, 3
"""  # noqa: S608 - code-defined fragments; values are bound

# the foreign keys that use an index (the referenced side's unique index)
DEPENDENT_FOREIGN_KEYS = f"""
SELECT f.conname, n.nspname AS schema, t.relname AS table_name,
       {guarded("pg_get_constraintdef(f.oid)", "f.conrelid", "f.confrelid")} AS definition,
       f.convalidated
FROM pg_constraint f
JOIN pg_class t ON t.oid = f.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE f.contype = 'f' AND f.conindid = %s
ORDER BY 2, 3, 1
"""  # noqa: S608 - code-defined fragments; values are bound


def _all(probe: Probe) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = probe.shared("indexes", lambda: probe.dicts(INDEXES))
    for r in rows:
        r["table"] = f"{r['schema']}.{r['table_name']}"
        r["index"] = f"{r['schema']}.{r['index_name']}"
    return rows


def _lock_notes(rows: list[dict[str, Any]], what: str) -> list[str]:
    held = [r["table"] for r in rows if r["locked"]]
    return [locked_note(held, what)] if held else []


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


def _ident(r: dict[str, Any]) -> sql.Identifier:
    return sql.Identifier(r["schema"], r["index_name"])


def _table(r: dict[str, Any]) -> sql.Identifier:
    return sql.Identifier(r["schema"], r["table_name"])


def _drop(probe: Probe, r: dict[str, Any]) -> str:
    return ddl.ddl(
        probe,
        ddl.Step(
            sql.SQL("DROP INDEX CONCURRENTLY {};").format(_ident(r)),
            ddl.locks_drop_concurrently(r["table"]),
        ),
    )


def indexes(probe: Probe) -> Section:
    rows = _all(probe)
    shown_rows = []
    for r in rows:
        kind = (
            "primary key"
            if r["indisprimary"]
            else "unique"
            if r["indisunique"]
            else "constraint"
            if r["constraint_name"]
            else ""
        ) + ("" if r["indisvalid"] else " INVALID")
        shown_rows.append({**r, "kind": kind})
    shown = sorted(shown_rows, key=lambda r: (-(r["bytes"] or 0), r["index"]))
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
                [_public(r, "kind") for r in shown[: probe.options.limit]],
            )
        ],
        notes=_lock_notes(rows, "the size and definition of its indexes were"),
    )


def _public(r: dict[str, Any], *extra: str) -> dict[str, Any]:
    keys = ("index", "table", "bytes", "idx_scan", "idx_tup_read", "definition", *extra)
    return {k: r[k] for k in keys}


def unused(probe: Probe) -> Section:
    """Never scanned since the statistics reset, and enforcing nothing. The only index
    a foreign key's look-ups can use is kept: a parent's DELETE scans the referencing
    table without it, however rarely that happens."""
    rows = _all(probe)
    never = [r for r in rows if r["idx_scan"] == 0 and _droppable(r)]
    found = [r for r in never if not r["only_index_of_foreign_key"]]
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
    section.notes += [
        f"{r['index']} was never scanned but is the only index for foreign key "
        f"{r['only_index_of_foreign_key']} of {r['table']}: kept (deletes and key updates "
        "of the referenced rows look it up)"
        for r in never
        if r["only_index_of_foreign_key"]
    ]
    section.notes += _lock_notes(found, "the size and definition of its indexes were")
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
    first, then one a foreign key uses, then a constraint), then the most scanned,
    then the oldest."""
    enforces = not _droppable(r)
    return (
        enforces,
        r["indisprimary"],
        r["fk_dependents"] > 0,
        bool(r["constraint_name"]),
        r["idx_scan"],
        -r["oid"],
    )


def _comparable(r: dict[str, Any]) -> bool:
    """Valid, not a partition's, and its expressions and predicate could be read (they
    cannot while another session holds its table exclusively)."""
    unreadable = r["locked"] and (r["has_expressions"] or r["has_predicate"])
    return r["indisvalid"] and not r["relispartition"] and not unreadable


def duplicates(probe: Probe) -> Section:
    """Indexes of the same table on the same columns, with the same expressions and
    predicate (and access method, operator classes, collations, sort options and
    INCLUDE split, so that each really can serve the other's queries); and unused
    indexes whose columns lead a longer one."""
    rows_all = _all(probe)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows_all:
        if not _comparable(r):
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
    dropped = {r["index"] for r in rows}
    prefixes = _prefix_duplicates([r for r in rows_all if r["index"] not in dropped])
    section.tables += [
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
        ),
        Table(
            "prefix",
            "never-scanned indexes whose columns lead a longer index (which serves their queries)",
            (
                Column("index", "shorter index"),
                Column("covered_by", "led by it"),
                Column("bytes", "size", "bytes"),
                Column("definition", "definition", "query"),
            ),
            [
                {
                    "table": short["table"],
                    "index": short["index"],
                    "covered_by": long["index"],
                    "bytes": short["bytes"],
                    "idx_scan": short["idx_scan"],
                    "definition": short["definition"],
                }
                for short, long in prefixes
            ],
        ),
    ]
    for short, long in prefixes:
        section.advice.append(
            Advice(
                "info",
                f"index {short['index']} on {short['table']} was never scanned and its "
                f"columns lead {long['index']}, which serves the same look-ups; every "
                "write still maintains it",
                _drop(probe, short),
                object=short["index"],
            )
        )
    section.notes += _lock_notes(
        [r for r in rows_all if not _comparable(r) and r["indisvalid"]],
        "the expressions and predicates of its indexes were",
    )
    return section


def _prefix_duplicates(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(shorter, longer) btree pairs of one table: the shorter is droppable, never
    scanned, plain columns without INCLUDE, and its key columns (with their operator
    classes, collations and sort options) lead the longer's; neither is partial."""

    def fields(r: dict[str, Any]) -> list[list[str]]:
        return [str(r[k]).split() for k in ("indkey", "indclass", "indcollation", "indoption")]

    plain = [
        r
        for r in rows
        if r["amname"] == "btree"
        and _comparable(r)
        and not r["has_predicate"]
        and not r["has_expressions"]
    ]
    found = []
    for short in plain:
        if not (_droppable(short) and short["idx_scan"] == 0):
            continue
        if short["indnatts"] != short["indnkeyatts"]:
            continue
        n = short["indnkeyatts"]
        mine = [f[:n] for f in fields(short)]
        longer = [
            r
            for r in plain
            if r["indrelid"] == short["indrelid"]
            and r["indnkeyatts"] > n
            and [f[:n] for f in fields(r)] == mine
        ]
        if longer:
            longer.sort(key=lambda r: (r["indnkeyatts"], r["index"]))
            found.append((short, longer[0]))
    return found


def _duplicate_advice(probe: Probe, dup: dict[str, Any], keep: dict[str, Any]) -> Advice:
    finding = f"index {dup['index']} duplicates {keep['index']} on {dup['table']}"
    if _droppable(dup):
        return Advice("warning", finding, _drop(probe, dup), object=dup["index"])
    if dup["fk_dependents"]:
        return _repoint_advice(probe, dup, keep, finding)
    if dup["constraint_name"] and not dup["indisprimary"]:
        statement = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {};").format(
            _table(dup), sql.Identifier(dup["constraint_name"])
        )
        return Advice(
            "info",
            finding + f" and backs constraint {dup['constraint_name']}, which nothing "
            "depends on: drop the constraint (its index goes with it)",
            ddl.ddl(
                probe,
                ddl.Step(statement, ddl.locks_brief_exclusive(dup["table"], "it drops the index")),
            ),
            object=dup["index"],
        )
    return Advice(
        "info",
        finding + " and enforces uniqueness itself: keep one unique index, drop the other",
        _drop(probe, dup),
        object=dup["index"],
    )


def _repoint_advice(
    probe: Probe, dup: dict[str, Any], keep: dict[str, Any], finding: str
) -> Advice:
    """A foreign key uses the redundant unique index: it cannot be dropped while the key
    does. The key is dropped and re-added in one transaction (PostgreSQL then picks the
    unique index that remains), NOT VALID so that the exclusive locks are brief, and
    validated afterwards under a weaker lock."""
    fks = probe.dicts(DEPENDENT_FOREIGN_KEYS, (dup["oid"],))
    names = ", ".join(f"{f['schema']}.{f['table_name']}.{f['conname']}" for f in fks)
    finding += f"; foreign key {names} references it, so it cannot be dropped as it is"
    if any(f["definition"] is None for f in fks):
        return Advice(
            "info",
            finding + "; the foreign key's definition could not be read now (its table is "
            "locked): run the report again",
            "",
            object=dup["index"],
        )
    drop_dup = (
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {};").format(
            _table(dup), sql.Identifier(dup["constraint_name"])
        )
        if dup["constraint_name"]
        else sql.SQL("DROP INDEX {};").format(_ident(dup))
    )
    tables = ", ".join(sorted({dup["table"], *(f"{f['schema']}.{f['table_name']}" for f in fks)}))
    steps = [ddl.Step(sql.SQL("BEGIN;"), "")]
    for f in fks:
        steps.append(
            ddl.Step(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {};").format(
                    sql.Identifier(f["schema"], f["table_name"]), sql.Identifier(f["conname"])
                ),
                ddl.locks_brief_exclusive(
                    f"{f['schema']}.{f['table_name']} and {dup['table']}",
                    "no scan; held until COMMIT",
                ),
            )
        )
    steps.append(
        ddl.Step(
            drop_dup,
            ddl.locks_brief_exclusive(dup["table"], "it drops the index; held until COMMIT"),
        )
    )
    for f in fks:
        definition = str(f["definition"])
        steps.append(
            ddl.Step(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {};").format(
                    sql.Identifier(f["schema"], f["table_name"]),
                    sql.Identifier(f["conname"]),
                    sql.SQL(definition if not f["convalidated"] else definition + " NOT VALID"),
                ),
                f"locks: SHARE ROW EXCLUSIVE on {f['schema']}.{f['table_name']} and "
                f"{keep['table']}, no scan (NOT VALID); writes wait until COMMIT",
            )
        )
    steps.append(ddl.Step(sql.SQL("COMMIT;"), f"releases the locks on {tables}"))
    for f in fks:
        if f["convalidated"]:
            steps.append(
                ddl.Step(
                    sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {};").format(
                        sql.Identifier(f["schema"], f["table_name"]), sql.Identifier(f["conname"])
                    ),
                    ddl.locks_validate(f"{f['schema']}.{f['table_name']}", keep["table"]),
                )
            )
    return Advice(
        "info",
        finding + f": re-point the foreign key to {keep['index']} first (drop it and add it "
        "back NOT VALID in one transaction, which PostgreSQL then serves with "
        f"{keep['index']}, and drop the duplicate in between), then validate the key",
        ddl.ddl(probe, *steps),
        object=dup["index"],
    )
