"""PostgreSQL operations that only read: bloat, stats, amcheck."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from pyops.maintenance import StepFailed
from pyops.maintenance.pgsession import Session
from pyops.pgfacts import bloat


def _relation_size(session: Session, oid: int) -> int:
    # ACCESS SHARE lock: only inside a step, so a timeout is that step's
    return int(session.one("SELECT pg_relation_size(%s::oid::regclass)", (oid,))[0])


def bloat_report(session: Session) -> None:
    """Dead-tuple ratio and estimated wasted bytes per table, then per index of it (an
    index's dead ratio is its table's: VACUUM removes both kinds of dead entry). The
    estimate is pgfacts.bloat's, the one `db report` gives too."""
    bs = int(session.one(bloat.BLOCK_SIZE)[0])
    widths = bloat.widths_by_oid(session.rows(bloat.TABLE_WIDTHS))
    indexes: dict[int, list[Any]] = defaultdict(list)
    for row in session.rows(bloat.INDEX_WIDTHS):
        indexes[row[2]].append(row)
    for rel in session.relations("rm"):
        with session.step("bloat", rel.label) as step:
            size = _relation_size(session, rel.oid)
            est = bloat.estimate_table(
                size, rel.live, rel.dead, widths.get(rel.oid, bloat.Widths(None)), bs
            )
            step.details.update(
                kind="table",
                bytes=size,
                live_tuples=rel.live,
                dead_tuples=rel.dead,
                dead_ratio=rel.dead_ratio,
                wasted_bytes_est=est.wasted_bytes,
                wasted_ratio_est=est.ratio(size),
                method=est.method,
            )
        for oid, name, _table, am, plain, natts, matched, key_width, ifill in indexes[rel.oid]:
            with session.step("bloat", f"{rel.schema}.{name}") as step:
                size = _relation_size(session, oid)
                usable = am == "btree" and plain and matched == natts and key_width is not None
                est = bloat.index(
                    size, rel.live, float(key_width) if usable else None, bs, int(ifill)
                )
                step.details.update(
                    kind="index",
                    table=rel.label,
                    access_method=am,
                    bytes=size,
                    dead_ratio=rel.dead_ratio,
                    wasted_bytes_est=est.wasted_bytes,
                    wasted_ratio_est=est.ratio(size),
                    method=est.method,
                )


STATS = """
SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid),
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
       c.reltuples, s.n_live_tup, s.n_dead_tup, s.seq_scan, s.idx_scan,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.oid = %s
"""


def stats(session: Session) -> None:
    """Database size, then sizes and row estimates per table (and matview)."""
    with session.step("stats", session.target.name) as step:
        row = session.one(
            "SELECT current_database(), pg_database_size(current_database()), "
            "current_setting('server_version')"
        )
        step.object = str(row[0])
        step.details.update(kind="database", total_bytes=int(row[1]), server_version=row[2])
    for rel in session.relations("rm"):
        with session.step("stats", rel.label) as step:
            r = session.one(STATS, (rel.oid,))
            step.details.update(
                kind="matview" if rel.kind == "m" else "table",
                total_bytes=int(r[0]),
                table_bytes=int(r[1]),
                index_bytes=int(r[2]),
                toast_bytes=int(r[3]),
                rows_estimate=int(r[4]) if r[4] is not None and r[4] >= 0 else None,
                live_tuples=r[5],
                dead_tuples=r[6],
                seq_scans=r[7],
                index_scans=r[8],
                last_vacuum=_latest(r[9], r[10]),
                last_analyze=_latest(r[11], r[12]),
            )


def _latest(*stamps: Any) -> str | None:
    present = [s for s in stamps if s is not None]
    return max(present).isoformat() if present else None


# --- amcheck --------------------------------------------------------------------------

AMCHECK_INDEXES = """
SELECT n.nspname, ci.relname FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ci.relnamespace
JOIN pg_am am ON am.oid = ci.relam
WHERE am.amname = 'btree' AND ci.relkind = 'i' AND i.indisvalid AND i.indisready
  AND ci.relpersistence <> 't'
ORDER BY n.nspname, ci.relname
"""
AMCHECK_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
ORDER BY n.nspname, c.relname
"""
CORRUPTION = (psycopg.errors.IndexCorrupted, psycopg.errors.DataCorrupted)


def _message(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).strip()


def amcheck(session: Session) -> None:
    """Every btree index (bt_index_check with heapallindexed: each heap tuple has its
    index entry) and every table (verify_heapam, PostgreSQL 14+), system catalogs
    included, like pg_amcheck. Corruption fails the step; a relation whose lock is not
    granted in time is listed and makes the step "timeout"."""
    with session.step("amcheck", session.target.name) as step:
        ext = session.one(
            "SELECT n.nspname, e.extversion FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'"
        )
        if ext is None:
            step.status = "skipped"
            step.details["note"] = (
                "the amcheck extension is not installed in this database: run "
                "CREATE EXTENSION amcheck; as a superuser to enable this check"
            )
            return
        schema = str(ext[0])
        may = session.one(
            "SELECT has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = 'bt_index_check' AND n.nspname = %s AND p.pronargs = 2",
            (schema,),
        )
        if not (may and may[0]):
            step.status = "skipped"
            step.details["note"] = (
                f"role {session.user} may not run amcheck: as a superuser, GRANT EXECUTE ON "
                f"FUNCTION {schema}.bt_index_check(regclass, boolean), "
                f"{schema}.verify_heapam TO {session.user}"
            )
            return
        heap = session.one(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = 'verify_heapam' AND n.nspname = %s "
            "AND has_function_privilege(p.oid, 'EXECUTE')",
            (schema,),
        )
        corrupt: list[str] = []
        errors: list[str] = []
        timeouts: list[str] = []
        checks: list[tuple[str, sql.Composed]] = []
        for nsp, name in session.rows(AMCHECK_INDEXES):
            rel = sql.Literal(session.text(sql.Identifier(nsp, name)))
            checks.append(
                (
                    f"{nsp}.{name}",
                    sql.SQL("SELECT {}({}::regclass, true)").format(
                        sql.Identifier(schema, "bt_index_check"), rel
                    ),
                )
            )
        if heap:
            for nsp, name in session.rows(AMCHECK_TABLES):
                rel = sql.Literal(session.text(sql.Identifier(nsp, name)))
                checks.append(
                    (
                        f"{nsp}.{name}",
                        sql.SQL(
                            "SELECT blkno, offnum, attnum, msg FROM {}({}::regclass, "
                            "on_error_stop => false, check_toast => true)"
                        ).format(sql.Identifier(schema, "verify_heapam"), rel),
                    )
                )
        for label, stmt in checks:
            session.journal.note(step, session.name, session.text(stmt) + ";")
            if session.dry_run:
                continue
            try:
                found = session.rows(stmt)
            except CORRUPTION as exc:
                corrupt.append(f"{label}: {_message(exc)}")
                continue
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                timeouts.append(label)
                continue
            except psycopg.errors.UndefinedTable:
                continue  # dropped since we listed it
            except psycopg.Error as exc:
                errors.append(f"{label}: {_message(exc)}")
                continue
            # bt_index_check returns one void row; verify_heapam one row per problem
            corrupt += [
                f"{label}: block {r[0]} offset {r[1]} attribute {r[2]}: {r[3]}"
                for r in found
                if len(r) == 4
            ]
        step.details.update(
            extension_version=ext[1],
            relations_checked=len(checks) - len(timeouts),
            heap_checked=bool(heap),
        )
        if not heap:
            step.details["note"] = (
                "indexes only: verify_heapam needs amcheck 1.3 (PostgreSQL 14+) and EXECUTE on it"
            )
        if timeouts:
            step.details["timed_out"] = timeouts
            step.status = "timeout"
        if errors:
            step.details["errors"] = errors[:50]
        if corrupt:
            step.details["corruption"] = corrupt[:50]
            raise StepFailed(
                f"{len(corrupt)} corruption report(s), first: {corrupt[0]}. Restore from a "
                "verified backup or REINDEX the index; keep a copy of the data directory first"
            )
        if errors:
            raise StepFailed(f"{len(errors)} relation(s) could not be checked: {errors[0]}")
