"""`[[maintenance.cleanup]]` rules on PostgreSQL: batched deletes, each batch its own
transaction, so a cleanup of millions of rows never holds locks for long, never
builds one huge transaction, and can stop anywhere without losing finished work.

Rows are picked by primary key (ctid on a table without one) with FOR UPDATE SKIP
LOCKED: rows the application is working on are left for the next run rather than
waited for.
"""

from __future__ import annotations

from psycopg import sql

from pyops.config import CleanupRule
from pyops.config_rules import split_table_name
from pyops.maintenance import StepFailed
from pyops.maintenance.pgsession import Session

FIND_IN_PATH = """
SELECT n.nspname, c.oid, c.relkind::text
FROM unnest(current_schemas(false)) WITH ORDINALITY AS s(nsp, pos)
JOIN pg_namespace n ON n.nspname = s.nsp
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s AND c.relkind IN ('r', 'p')
ORDER BY s.pos LIMIT 1
"""
FIND = """
SELECT n.nspname, c.oid, c.relkind::text FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
PRIMARY_KEY = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


def batch_statement(
    table: sql.Identifier, where: str, batch_size: int, key: list[str]
) -> sql.Composed:
    """One batch: DELETE the first `batch_size` matching rows not locked by others."""
    cond = sql.SQL(where)  # operator-written SQL from the (0600) config, by design
    if key:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in key)
        return sql.SQL(
            "DELETE FROM {t} WHERE ({cols}) IN (SELECT {cols} FROM {t} WHERE ({cond}) "
            "LIMIT {n} FOR UPDATE SKIP LOCKED)"
        ).format(t=table, cols=cols, cond=cond, n=sql.Literal(batch_size))
    return sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {t} WHERE ({cond}) "
        "LIMIT {n} FOR UPDATE SKIP LOCKED))"
    ).format(t=table, cond=cond, n=sql.Literal(batch_size))


def cleanup(session: Session, rules: list[tuple[int, CleanupRule]]) -> None:
    for index, rule in rules:
        key = f"maintenance.cleanup[{index}].table"
        schema, name = split_table_name(rule.table, key)
        with session.step("cleanup", rule.table) as step:
            found = (
                session.one(FIND, (schema, name)) if schema else session.one(FIND_IN_PATH, (name,))
            )
            if found is None:
                raise StepFailed(
                    f"table {rule.table!r} not found in {session.target.name}'s database "
                    f"(names are case-sensitive; schema.table for other schemas): fix {key}"
                )
            nsp, oid, kind = str(found[0]), int(found[1]), str(found[2])
            step.object = f"{nsp}.{name}"
            pk = [str(r[0]) for r in session.rows(PRIMARY_KEY, (oid,))]
            if not pk and kind == "p":
                raise StepFailed(
                    f"partitioned table {step.object} has no primary key: ctid is not unique "
                    "across partitions; add a primary key or name a partition in " + key
                )
            table = sql.Identifier(nsp, name)
            stmt = batch_statement(table, rule.where, rule.batch_size, pk)
            step.details.update(
                where=rule.where, batch_size=rule.batch_size, key=pk or ["ctid"], rows_deleted=0
            )
            if session.dry_run:
                count = sql.SQL("SELECT count(*) FROM {} WHERE ({})").format(
                    table, sql.SQL(rule.where)
                )
                step.details["matching_rows"] = int(session.one(count)[0])
                session.run(step, stmt)
                continue
            batches = 0
            # recorded once: the same statement runs until a batch comes back short
            session.journal.note(step, session.name, session.text(stmt) + ";")
            while True:
                cur = session.conn.execute(stmt)
                batches += 1
                deleted = max(cur.rowcount, 0)
                step.details["rows_deleted"] += deleted
                step.details["batches"] = batches
                if deleted < rule.batch_size:
                    break
