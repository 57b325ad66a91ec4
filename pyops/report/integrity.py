"""Integrity: invalid indexes, NOT VALID constraints, tables without a primary key,
and sequences (or the columns they feed) close to the end of their range."""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from pyops.report import advice as ddl
from pyops.report.context import Probe, guarded, locked, locked_note, user_schemas
from pyops.report.model import Advice, Column, Section, Severity, Table

SEQUENCE_WARN_PERCENT = 80.0
SEQUENCE_CRITICAL_PERCENT = 95.0
TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}
# leftovers of an interrupted REINDEX CONCURRENTLY: drop them, do not rebuild them
REINDEX_LEFTOVER = re.compile(r"_cc(new|old)\d*$")
CREATE_INDEX = re.compile(r"^CREATE (UNIQUE )?INDEX ")

# the key columns (or expressions) and predicate feed the query that lists the rows
# a unique index cannot accept; NULLS_NOT_DISTINCT is filled in for the server
KEY_COLUMNS = (
    "ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)"
    " FROM generate_series(1, i.indnkeyatts) k ORDER BY k)"
)
INVALID_INDEXES = f"""
SELECT n.nspname AS schema, t.relname AS table_name, c.relname AS index_name,
       c.relkind::text AS relkind, i.indisunique,
       {guarded("pg_get_indexdef(i.indexrelid)", "i.indexrelid")} AS definition,
       {guarded(KEY_COLUMNS, "i.indexrelid")} AS key_columns,
       {guarded("pg_get_expr(i.indpred, i.indrelid)", "i.indexrelid")} AS predicate,
       NULLS_NOT_DISTINCT AS nulls_not_distinct,
       {locked("i.indexrelid")} AS locked,
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
       pn.nspname || '.' || p.relname AS referenced,
       {guarded("pg_get_constraintdef(con.oid)", "con.conrelid", "con.confrelid")} AS definition,
       {locked("con.conrelid", "con.confrelid")} AS locked
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class p ON p.oid = con.confrelid
LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace
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
       (SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = c.oid
        AND a.attname = 'id' AND NOT a.attisdropped) AS id_not_null
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {user_schemas()}
  AND NOT EXISTS (SELECT 1 FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""  # noqa: S608 - code-defined fragments; values are bound
# Each sequence with every column it feeds: owned by it (serial, OWNED BY: 'a'), an
# identity ('i'), or a DEFAULT that calls nextval() on it, owned or not (the default
# depends on the sequence, 'n'; its expression tree names nextval's oid). Read from
# pg_sequence, not pg_sequences, so that last_value is guarded like the rest.
SEQUENCES = f"""
WITH seq AS (
  SELECT c.oid, n.nspname AS schema, c.relname AS name,
         format_type(s.seqtypid, NULL) AS data_type, s.seqmin AS min_value,
         s.seqmax AS max_value, s.seqincrement AS increment_by, s.seqcycle AS cycle,
         CASE WHEN has_sequence_privilege(c.oid, 'SELECT,USAGE')
              THEN {guarded("pg_sequence_last_value(c.oid)", "c.oid")} END AS last_value,
         {locked("c.oid")} AS locked
  FROM pg_sequence s
  JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {user_schemas()}
), feeds AS (
  SELECT d.objid AS seq, d.refobjid AS rel, d.refobjsubid AS attnum,
         CASE d.deptype WHEN 'i' THEN 'identity' ELSE 'owned' END AS how
  FROM pg_depend d
  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
    AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
  UNION
  SELECT d.refobjid, ad.adrelid, ad.adnum, 'default'
  FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
  WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
    AND d.deptype = 'n'
    AND strpos(ad.adbin::text,
               ':funcid ' || 'nextval(regclass)'::regprocedure::oid::text || ' ') > 0
)
SELECT seq.*, tn.nspname AS table_schema, t.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type, f.how,
       (SELECT string_agg(ui.indexrelid::regclass::text, ', ') FROM pg_index ui
        WHERE ui.indrelid = a.attrelid AND ui.indisunique AND ui.indisvalid
          AND a.attnum = ANY((ui.indkey::int2[])[0:ui.indnkeyatts - 1])) AS unique_index
FROM seq
LEFT JOIN feeds f ON f.seq = seq.oid
LEFT JOIN pg_class t ON t.oid = f.rel
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = f.rel AND a.attnum = f.attnum
ORDER BY seq.schema, seq.name, tn.nspname, t.relname, a.attname, f.how DESC
"""  # noqa: S608 - code-defined fragments; values are bound


def integrity(probe: Probe) -> Section:
    nulls = "i.indnullsnotdistinct" if probe.conn.info.server_version >= 150000 else "false"
    invalid = probe.dicts(INVALID_INDEXES.replace("NULLS_NOT_DISTINCT", nulls))
    not_valid = probe.dicts(NOT_VALID)
    without_pk = probe.dicts(WITHOUT_PK)
    every = _by_sequence(probe.dicts(SEQUENCES))
    checked = [s for s in every if s["last_value"] is not None]
    sequences = [
        s for s in (_usage(s) for s in checked) if s["used_percent"] >= SEQUENCE_WARN_PERCENT
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
                [{k: v for k, v in r.items() if k != "locked"} for r in invalid],
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
                [{k: v for k, v in r.items() if k != "locked"} for r in not_valid],
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
                    Column("cycle", "cycles"),
                    Column("column", "feeds column"),
                    Column("column_type", "column type"),
                ),
                [_public_sequence(s) for s in sequences],
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
    held = [r["table"] for r in (*invalid, *not_valid) if r["locked"]]
    held += [s["sequence"] for s in every if s["locked"]]
    if held:
        section.notes.append(
            locked_note(
                held,
                "the definitions of its indexes and constraints (or the "
                "sequence's last value) were",
            )
        )
    return section


def _by_sequence(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per sequence with `feeds`: each column it feeds, once (a serial column
    is both owned and defaulted: owned wins)."""
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(
            r["oid"],
            {
                **{k: r[k] for k in SEQUENCE_KEYS},
                "sequence": f"{r['schema']}.{r['name']}",
                "feeds": [],
            },
        )
        if r["column_name"] is None:
            continue
        label = f"{r['table_schema']}.{r['table_name']}.{r['column_name']}"
        if label not in [f["column"] for f in s["feeds"]]:
            s["feeds"].append(
                {
                    "column": label,
                    "table_schema": r["table_schema"],
                    "table_name": r["table_name"],
                    "column_name": r["column_name"],
                    "column_type": r["column_type"],
                    "how": r["how"],
                    "unique_index": r["unique_index"],
                }
            )
    return list(out.values())


SEQUENCE_KEYS = (
    "schema",
    "name",
    "data_type",
    "min_value",
    "max_value",
    "increment_by",
    "cycle",
    "last_value",
    "locked",
)


def _used(last: int, limit: int) -> float:
    return 100.0 * last / limit if limit and (last > 0) == (limit > 0) else 0.0


def _usage(s: dict[str, Any]) -> dict[str, Any]:
    """How much of its range a sequence used: of its own max (min when descending), or
    of a column it feeds whose type ends sooner or at the same value (an integer column
    fed by a bigint sequence fails at 2^31, whether or not the sequence owns it).
    `widen`: the columns to widen with it, those past the warning level of their own."""
    ascending = int(s["increment_by"]) > 0
    own = int(s["max_value"]) if ascending else int(s["min_value"])
    last = int(s["last_value"])
    limit = own
    narrow = []  # the columns that fail before (or when) the sequence ends
    for f in s["feeds"]:
        type_max = TYPE_MAX.get(str(f["column_type"]))
        if type_max is None or type_max == TYPE_MAX["bigint"]:
            continue
        column_limit = type_max if ascending else -(type_max + 1)
        if abs(column_limit) <= abs(own):
            narrow.append({**f, "limit": column_limit, "used": _used(last, column_limit)})
            limit = column_limit if abs(column_limit) < abs(limit) else limit
    return {
        **s,
        "limit": limit,
        "used_percent": round(_used(last, limit), 2),
        "column": ", ".join(f["column"] for f in s["feeds"]),
        "column_type": ", ".join(str(f["column_type"]) for f in s["feeds"]),
        "widen": [f for f in narrow if f["used"] >= SEQUENCE_WARN_PERCENT],
    }


def _public_sequence(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("sequence", "data_type", "last_value", "limit", "used_percent", "cycle")
    feeds = [{k: v for k, v in f.items() if k not in ("limit", "used")} for f in s["feeds"]]
    return {
        **{k: s[k] for k in keys},
        "column": s["column"],
        "column_type": s["column_type"],
        "feeds": feeds,
    }


def _invalid_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    ident = sql.Identifier(r["schema"], r["index_name"])
    label = f"{r['schema']}.{r['index_name']}"
    drop = ddl.Step(
        sql.SQL("DROP INDEX CONCURRENTLY {};").format(ident),
        ddl.locks_drop_concurrently(r["table"]),
    )
    if REINDEX_LEFTOVER.search(r["index_name"]):
        return Advice(
            "warning",
            f"invalid index {label} on {r['table']} is left over from an interrupted REINDEX "
            "CONCURRENTLY: writes still maintain it, no query uses it",
            ddl.ddl(probe, drop),
            object=label,
        )
    finding = (
        f"index {label} on {r['table']} is invalid (a failed or cancelled concurrent "
        "build): no query uses it, writes still maintain it"
    )
    if r["relkind"] == "I":
        return Advice(
            "warning",
            finding + "; a partitioned index is invalid until every partition has an index "
            f"attached to it: create the missing ones and ALTER INDEX {label} ATTACH PARTITION",
            "",
            object=label,
        )
    if r["definition"] is None:
        return Advice(
            "warning",
            finding + "; its definition could not be read now (its table is locked): run the "
            "report again",
            "",
            object=label,
        )
    rebuild = ddl.Step(
        sql.SQL(CREATE_INDEX.sub(r"CREATE \1INDEX CONCURRENTLY ", str(r["definition"])) + ";"),
        ddl.locks_create_concurrently(r["table"], label),
    )
    if not r["indisunique"]:
        return Advice(
            "warning",
            finding + "; drop it and build it again (a rebuild that fails again leaves one "
            "invalid index, not two as REINDEX CONCURRENTLY would)",
            ddl.ddl(probe, drop, rebuild),
            object=label,
        )
    return Advice(
        "warning",
        finding + "; a unique build fails on rows sharing a key, and fails again until "
        "they are gone: list them with the query below, delete or merge all but one of "
        "each, then drop the index and build it again",
        ddl.ddl(probe, drop, rebuild, preface=_duplicates_query(probe, r)),
        object=label,
    )


def _duplicates_query(probe: Probe, r: dict[str, Any]) -> str:
    """The rows a unique index cannot accept: its key (columns or expressions, as the
    server deparses them) shared by more than one row within its predicate; NULLs do
    not collide unless the index says NULLS NOT DISTINCT."""
    keys = [sql.SQL(f"({k})") for k in r["key_columns"]]
    where: list[sql.Composable] = [sql.SQL(f"({r['predicate']})")] if r["predicate"] else []
    if not r["nulls_not_distinct"]:
        where += [sql.SQL("{} IS NOT NULL").format(k) for k in keys]
    query = sql.SQL(
        "SELECT {keys}, count(*) AS copies, array_agg(ctid ORDER BY ctid) AS ctids\n"
        "FROM {table}{where}\nGROUP BY {keys}\nHAVING count(*) > 1\nORDER BY count(*) DESC;"
    ).format(
        keys=sql.SQL(", ").join(keys),
        table=sql.Identifier(r["schema"], r["table_name"]),
        where=sql.SQL("\nWHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
    )
    return "\n".join(
        [
            ddl.comment(
                f"1. rows sharing a key of {r['schema']}.{r['index_name']} (reads the whole "
                "table; takes no lock that blocks others). Keep one of each"
            ),
            probe.sql(query),
            ddl.comment("2. once it returns nothing: drop the index and build it again"),
        ]
    )


def _not_valid_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    statement = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {};").format(
        sql.Identifier(r["schema"], r["table_name"]), sql.Identifier(r["constraint_name"])
    )
    return Advice(
        "warning",
        f"{r['kind']} constraint {r['constraint_name']} on {r['table']} is NOT VALID: rows "
        "written before it was added were never checked",
        ddl.ddl(probe, ddl.Step(statement, ddl.locks_validate(r["table"], r["referenced"]))),
        object=f"{r['table']}.{r['constraint_name']}",
    )


def _pk_advice(probe: Probe, r: dict[str, Any]) -> Advice:
    table = sql.Identifier(r["schema"], r["table_name"])
    finding = (
        f"table {r['table']} has no primary key: duplicate rows cannot be told apart, and "
        "logical replication cannot replicate its UPDATEs and DELETEs"
    )
    if r["unique_index"] and r["relkind"] == "r":
        finding += f"; unique index {r['unique_index']} on NOT NULL columns can become it"
        steps = [_using_index(table, r["table"], r["unique_index"], "no scan: already NOT NULL")]
    elif r["id_not_null"] is not None and r["relkind"] == "r":
        name = ddl.choose_name(probe, r["schema"], r["table_name"], "", "pkey")
        finding += (
            "; if its id column is unique, build a unique index on it without blocking "
            "writes, then make that index the key"
        )
        steps = [
            ddl.Step(
                sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({});").format(
                    sql.Identifier(name), table, sql.Identifier("id")
                ),
                ddl.locks_create_concurrently(r["table"], f"{r['schema']}.{name}"),
            ),
            _using_index(
                table,
                r["table"],
                name,
                "no scan: id is NOT NULL"
                if r["id_not_null"]
                else "plus a full scan to set id NOT NULL, held all along",
            ),
        ]
    elif r["id_not_null"] is not None:
        finding += "; if its id column is unique and never NULL, make it the key"
        steps = [
            ddl.Step(
                sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({});").format(table, sql.Identifier("id")),
                ddl.locks_rewrite(f"{r['table']} and its partitions", "index build"),
            )
        ]
    else:
        finding += (
            "; add a key column (this rewrites the table under an exclusive lock), or "
            "ADD PRIMARY KEY (columns that identify a row)"
        )
        steps = [
            ddl.Step(
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;"
                ).format(table),
                ddl.locks_rewrite(r["table"], "table rewrite and index build"),
            )
        ]
    return Advice("warning", finding, ddl.ddl(probe, *steps), object=r["table"])


def _using_index(table: sql.Identifier, label: str, index: str, scan: str) -> ddl.Step:
    return ddl.Step(
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY USING INDEX {};").format(
            table, sql.Identifier(index)
        ),
        ddl.locks_brief_exclusive(label, scan),
    )


def _sequence_advice(probe: Probe, s: dict[str, Any]) -> Advice:
    steps = [
        ddl.Step(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE bigint;").format(
                sql.Identifier(f["table_schema"], f["table_name"]),
                sql.Identifier(f["column_name"]),
            ),
            ddl.locks_rewrite(
                f"{f['table_schema']}.{f['table_name']}",
                "table rewrite and index rebuild (foreign keys on the column are checked "
                "again, which locks and reads their tables too)",
            ),
        )
        for f in s["widen"]
    ]
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
        steps.append(
            ddl.Step(
                sql.SQL("ALTER SEQUENCE {} " + " ".join(clauses) + ";").format(
                    sql.Identifier(s["schema"], s["name"])
                ),
                ddl.locks_sequence(s["sequence"]),
            )
        )
    where = (
        " (it feeds "
        + ", ".join(f"{f['column']} {f['column_type']}, {_how(f['how'])}" for f in s["feeds"])
        + ")"
        if s["feeds"]
        else ""
    )
    at = f"sequence {s['sequence']}{where} is at {s['used_percent']:.0f}% of its limit {s['limit']}"
    severity: Severity = "critical" if s["used_percent"] >= SEQUENCE_CRITICAL_PERCENT else "warning"
    own = int(s["max_value"] if ascending else s["min_value"])
    # a column narrower than the sequence fails first, CYCLE or not
    overflows = [f for f in s["widen"] if abs(f["limit"]) < abs(own)]
    if s["cycle"] and not overflows:
        finding, severity = _cycle_finding(s, at, severity)
    else:
        finding = at + ": inserts fail when " + ("the column's type" if overflows else "it")
        finding += " runs out"
        if s["widen"]:
            finding += "; widening the column rewrites the table under an exclusive lock"
    sql_text = ddl.ddl(probe, *steps) if steps else ""
    return Advice(severity, finding, sql_text, object=s["sequence"])


def _how(how: str) -> str:
    return {
        "owned": "owned by it",
        "identity": "identity",
        "default": "DEFAULT nextval(), not owned",
    }[how]


def _cycle_finding(s: dict[str, Any], at: str, severity: Severity) -> tuple[str, Severity]:
    """A CYCLE sequence does not run out: it starts again and hands out values already
    used. That breaks inserts only where a unique index holds the old values."""
    start = s["min_value"] if int(s["increment_by"]) > 0 else s["max_value"]
    finding = (
        at + f": it is CYCLE, so after {s['limit']} it starts again at {start} and hands out "
        "values it has handed out before"
    )
    unique = [f for f in s["feeds"] if f["unique_index"]]
    if unique:
        finding += "; " + ", ".join(
            f"{f['column']} is unique ({f['unique_index']})" for f in unique
        )
        finding += (
            ": inserts then fail on duplicate keys wherever the old rows are still there. "
            "Widen the sequence (and its columns) to postpone that, or delete old rows "
            "before it wraps"
        )
        return finding, severity
    finding += (
        "; no unique index holds them, so the repeated values go in silently: "
        "make sure that is intended, or widen the sequence"
    )
    return finding, "info"
