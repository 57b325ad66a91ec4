"""PostgreSQL operations that rewrite or refresh: vacuum, analyze, reindex, matviews.

Each works one object at a time, so a lock timeout costs one table, not the run.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from pyops.maintenance import Step
from pyops.maintenance.pgsession import USER_RELATIONS, Session

NOT_OWNED = "the connecting role ({user}) may not maintain it (not the owner)"


def _size(session: Session, oid: int) -> int:
    """pg_relation_size takes an ACCESS SHARE lock: call it inside a step only."""
    row = session.one("SELECT pg_relation_size(%s::oid::regclass)", (oid,))
    return int(row[0]) if row and row[0] is not None else 0


def _size_by_name(session: Session, ident: sql.Identifier) -> int:
    """REINDEX CONCURRENTLY builds a new index (a new oid) and gives it the old name."""
    row = session.one("SELECT pg_relation_size(to_regclass(%s))", (session.text(ident),))
    return int(row[0]) if row and row[0] is not None else 0


def _dead(session: Session, oid: int) -> int:
    row = session.one("SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = %s", (oid,))
    return int(row[0]) if row and row[0] is not None else 0


def vacuum(session: Session, min_dead_ratio: float) -> None:
    """VACUUM (ANALYZE) each table and matview (partitions, not their parents), or only
    those whose dead-tuple ratio reaches `min_dead_ratio`."""
    for rel in session.relations("rm"):
        if not rel.owned:
            session.journal.skip(
                session.name, "vacuum", rel.label, NOT_OWNED.format(user=session.user)
            )
            continue
        if min_dead_ratio > 0 and rel.dead_ratio < min_dead_ratio:
            session.journal.skip(
                session.name,
                "vacuum",
                rel.label,
                f"dead-tuple ratio {rel.dead_ratio} is below vacuum_min_dead_ratio "
                f"{min_dead_ratio}",
                dead_tuples=rel.dead,
            )
            continue
        with session.step("vacuum", rel.label) as step:
            step.details.update(dead_tuples_before=rel.dead, dead_ratio_before=rel.dead_ratio)
            stmt = sql.SQL("VACUUM (ANALYZE) {}").format(rel.ident)
            if session.dry_run:
                session.run(step, stmt)
                session.analyzed.add(rel.oid)
                continue
            before = _size(session, rel.oid)
            session.run(step, stmt)
            _server_skip(session, step.details)
            if "skipped" not in step.details:
                session.analyzed.add(rel.oid)
            after = _size(session, rel.oid)
            step.details.update(
                dead_tuples_after=_dead(session, rel.oid),
                bytes_before=before,
                bytes_after=after,
                # space VACUUM made reusable (estimate); truncated: given back to the OS
                reusable_bytes_est=int(before * rel.dead_ratio),
                truncated_bytes=max(0, before - after),
            )
            if "skipped" in step.details:
                step.status = "skipped"


def _server_skip(session: Session, details: dict[str, Any]) -> None:
    skipped = session.skipped_by_server()
    if skipped:
        details["skipped"] = skipped


def analyze(session: Session) -> None:
    """ANALYZE every table once: plain tables and matviews, and each partition tree through
    its root (which also gathers the parent's statistics autovacuum never collects)."""
    for rel in session.relations("rmp"):
        if rel.is_partition:
            continue  # the root's ANALYZE recurses into it
        if not rel.owned:
            session.journal.skip(
                session.name, "analyze", rel.label, NOT_OWNED.format(user=session.user)
            )
            continue
        if rel.oid in session.analyzed:
            session.journal.skip(
                session.name, "analyze", rel.label, "analyzed by this run's VACUUM (ANALYZE)"
            )
            continue
        with session.step("analyze", rel.label) as step:
            session.run(step, sql.SQL("ANALYZE {}").format(rel.ident))
            _server_skip(session, step.details)
            if "skipped" in step.details:
                step.status = "skipped"


# --- reindex -------------------------------------------------------------------------

INDEXES = """
SELECT ci.oid, n.nspname, ci.relname, c.oid, c.relname, i.indisvalid, i.indisexclusion,
       {owned}
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ci.relnamespace
WHERE ci.relkind = 'i' AND {user_relations}
ORDER BY n.nspname, c.relname, ci.relname
"""

INVALID_ON = """
SELECT ci.oid, n.nspname, ci.relname FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ci.relnamespace
WHERE i.indrelid = %s AND NOT i.indisvalid
"""


def reindex(session: Session) -> None:
    """REINDEX INDEX CONCURRENTLY, one index at a time. Invalid indexes (leftovers of a
    failed CONCURRENTLY build, e.g. *_ccnew) are reported, not rebuilt; a rebuild that
    fails or times out drops the invalid copy it left behind."""
    query = INDEXES.format(owned=session.owned_expr(), user_relations=USER_RELATIONS)
    concurrently = session.server_version >= 120000
    for _oid, schema, name, table_oid, table, valid, exclusion, owned in session.rows(query):
        label = f"{schema}.{name}"
        ident = sql.Identifier(schema, name)
        if not valid:
            session.journal.skip(
                session.name,
                "reindex",
                label,
                "invalid index (indisvalid = false), e.g. left by a failed CREATE INDEX or "
                "REINDEX CONCURRENTLY, or being built right now: check, then drop it with "
                f"DROP INDEX CONCURRENTLY {session.text(ident)}",
                invalid=True,
                table=f"{schema}.{table}",
            )
            continue
        if not owned:
            session.journal.skip(
                session.name, "reindex", label, NOT_OWNED.format(user=session.user)
            )
            continue
        if exclusion and concurrently:
            session.journal.skip(
                session.name,
                "reindex",
                label,
                "exclusion-constraint index: REINDEX CONCURRENTLY cannot rebuild it; run "
                f"REINDEX INDEX {session.text(ident)} in a maintenance window",
            )
            continue
        stmt = sql.SQL("REINDEX INDEX {}{}").format(
            sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), ident
        )
        with session.step("reindex", label) as step:
            step.details["concurrently"] = concurrently
            if session.dry_run:
                session.run(step, stmt)
                continue
            invalid_before = {r[0] for r in session.rows(INVALID_ON, (table_oid,))}
            before = _size_by_name(session, ident)
            try:
                session.run(step, stmt)
            except Exception:
                _drop_leftovers(session, step, table_oid, invalid_before)
                raise
            step.details.update(bytes_before=before, bytes_after=_size_by_name(session, ident))


def _drop_leftovers(session: Session, step: Step, table_oid: int, invalid_before: set[int]) -> None:
    """An interrupted REINDEX CONCURRENTLY leaves an invalid *_ccnew (or *_ccold) index
    that costs write work for nothing: drop what this run left, report the rest."""
    for oid, schema, name in session.rows(INVALID_ON, (table_oid,)):
        if oid in invalid_before:
            continue
        ident = sql.Identifier(schema, name)
        try:
            session.run(step, sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ident))
            step.details.setdefault("dropped_leftovers", []).append(f"{schema}.{name}")
        except Exception as exc:
            step.details.setdefault("leftovers", []).append(
                f"{schema}.{name}: could not drop ({str(exc).strip()}); "
                f"run DROP INDEX CONCURRENTLY {session.text(ident)}"
            )


# --- materialized views ----------------------------------------------------------------

MATVIEWS = """
SELECT c.oid, n.nspname, c.relname, c.relispopulated, {owned},
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
               AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND {user_relations}
ORDER BY c.oid
"""


def matviews(session: Session) -> None:
    """REFRESH MATERIALIZED VIEW, CONCURRENTLY (readers are not blocked) where a unique
    index on plain columns allows it and the view is populated. Oldest first, so a view
    built on another is refreshed after it."""
    query = MATVIEWS.format(owned=session.owned_expr(), user_relations=USER_RELATIONS)
    for _oid, schema, name, populated, owned, unique in session.rows(query):
        label = f"{schema}.{name}"
        if not owned:
            session.journal.skip(
                session.name, "matviews", label, NOT_OWNED.format(user=session.user)
            )
            continue
        concurrently = bool(populated and unique)
        with session.step("matviews", label) as step:
            step.details["concurrently"] = concurrently
            if not concurrently:
                step.details["why_not_concurrently"] = (
                    "not populated yet" if not populated else "no unique index on plain columns"
                )
            stmt = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
                sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""),
                sql.Identifier(schema, name),
            )
            session.run(step, stmt)
