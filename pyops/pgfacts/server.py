"""What the server is doing, each fact read by one query: connections in use,
transaction-id and multixact age, long-running sessions, who blocks whom, who
holds ACCESS EXCLUSIVE locks, and how many connections a role may still open.

Every function takes an open connection (or anything with the `dicts` method of
`Reader`, such as `db report`'s probe, which marks its statements) and returns
plain rows, so `health` and `db report` judge the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pyops.pgfacts import XID_LIMIT


class Reader(Protocol):
    def dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...


Source = psycopg.Connection[Any] | Reader


def _dicts(
    source: Source, query: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    if not isinstance(source, psycopg.Connection):
        return source.dicts(query, params or {})
    with source.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall()


# --- the tables a backup holds ----------------------------------------------------------

# plain tables outside the system schemas, not members of an extension (pg_dump leaves
# those to CREATE EXTENSION), and whether the current role may read each
TABLES = """
SELECT n.nspname, c.relname, has_table_privilege(c.oid, 'SELECT')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool]]:
    """(schema, table, may the current role SELECT it) of every table a backup holds."""
    return [(str(s), str(t), bool(may)) for s, t, may in conn.execute(TABLES).fetchall()]


# tables whose rows an index-only scan counts from the smallest index alone: a plain
# (not partial) valid btree index holds a row for every row of the table, and with the
# visibility map nearly all set (as VACUUM leaves it) the scan reads almost no heap page
BY_INDEX = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpages >= %(pages)s AND c.relallvisible >= 0.9 * c.relpages
  AND EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              JOIN pg_am am ON am.oid = ic.relam
              WHERE i.indrelid = c.oid AND am.amname = 'btree' AND i.indpred IS NULL
                AND i.indisvalid AND i.indisready AND i.indislive)
"""
BY_INDEX_PAGES = 128  # 1 MiB: below that, reading the heap costs nothing worth saving


def count_rows(
    conn: psycopg.Connection[Any],
    names: list[tuple[str, str]],
    into: dict[str, int] | None = None,
    *,
    cheap: bool = False,
) -> dict[str, int]:
    """Exact row counts ("schema.table" -> rows), filled into `into` as they come (so a
    failure leaves the first table not in it as the one that failed).

    `cheap` (backup, inside its transaction): count a table with an index and an
    all-visible map from its smallest index (the planner picks the index-only scan
    once sequential scans are off; the count is as exact either way), and without
    parallel workers, so the count neither reads the heap a second time while
    pg_dump reads it nor takes the cores pg_dump and the compressor need."""
    counts = {} if into is None else into
    by_index: set[tuple[str, str]] = set()
    if cheap:
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        rows = conn.execute(BY_INDEX, {"pages": BY_INDEX_PAGES}).fetchall()
        by_index = {(str(s), str(t)) for s, t in rows}
    with conn.cursor() as cur:
        for schema, table in names:
            indexed = (schema, table) in by_index
            if indexed:
                cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            row = cur.fetchone()
            counts[f"{schema}.{table}"] = int(row[0]) if row else 0
            if indexed:
                cur.execute("SET LOCAL enable_seqscan = on")
    return counts


# --- connections -----------------------------------------------------------------------

CONNECTION_STATES = """
SELECT coalesce(state, 'unknown (no privilege)') AS state, count(*) AS total,
       count(*) FILTER (WHERE datname = current_database()) AS this_db
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1 ORDER BY 2 DESC, 1
"""


@dataclass(frozen=True)
class Connections:
    states: list[dict[str, Any]]  # state, total, this_db
    max_connections: int
    reserved: int  # superuser_reserved_connections

    @property
    def used(self) -> int:
        return sum(int(r["total"]) for r in self.states)

    @property
    def usable(self) -> int:
        return max(1, self.max_connections - self.reserved)

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.usable


def connections(source: Source) -> Connections:
    """Client connections by state, against what max_connections leaves to non-superusers."""
    states = _dicts(source, CONNECTION_STATES)
    (row,) = _dicts(
        source,
        "SELECT current_setting('max_connections')::int AS max,"
        " current_setting('superuser_reserved_connections')::int AS reserved",
    )
    return Connections(states, int(row["max"]), int(row["reserved"]))


# --- wraparound ------------------------------------------------------------------------

WRAPAROUND = """
SELECT datname AS database, age(datfrozenxid)::bigint AS xid_age,
       round(100.0 * age(datfrozenxid) / %(limit)s, 2)::float8 AS xid_percent,
       mxid_age(datminmxid)::bigint AS multixact_age,
       round(100.0 * mxid_age(datminmxid) / %(limit)s, 2)::float8 AS multixact_percent,
       (100.0 * greatest(age(datfrozenxid), mxid_age(datminmxid)) / %(limit)s)::float8
         AS percent
FROM pg_database
ORDER BY greatest(age(datfrozenxid), mxid_age(datminmxid)) DESC, age(datfrozenxid) DESC, 1
"""


def wraparound(source: Source) -> list[dict[str, Any]]:
    """Per database, oldest first: the age of its oldest unfrozen transaction id and
    multixact id, each against the 2^31 horizon, and `percent`, the nearer of the two
    (unrounded: what thresholds compare)."""
    return _dicts(source, WRAPAROUND, {"limit": XID_LIMIT})


# --- long-running sessions --------------------------------------------------------------

# how long a session has been at it: an active one since its statement started, one
# idle in a transaction since that transaction began (the transaction is what holds
# locks and the xmin horizon)
RUNNING_SINCE = (
    "coalesce(CASE WHEN state = 'active' THEN query_start ELSE xact_start END,"
    " query_start, backend_start)"
)

RUNNING = f"""
SELECT pid, usename AS user, datname AS database, state, wait_event_type, wait_event,
       extract(epoch FROM now() - {RUNNING_SINCE})::float8 AS running_s, query
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND state IS NOT NULL AND state <> 'idle'
  AND now() - {RUNNING_SINCE} >= make_interval(secs => %(seconds)s)
ORDER BY running_s DESC, pid
"""  # noqa: S608 - code-defined fragments; values are bound


def long_running(source: Source, seconds: float = 0.0) -> list[dict[str, Any]]:
    """Client sessions busy (or idle in a transaction) for `seconds` or more, longest
    first, every database of the server."""
    return _dicts(source, RUNNING, {"seconds": seconds})


# --- locks --------------------------------------------------------------------------------

BLOCKED = """
SELECT a.pid AS blocked_pid, a.usename AS blocked_user, a.datname AS database,
       extract(epoch FROM now() - coalesce(a.query_start, a.xact_start))::float8 AS waiting_s,
       a.wait_event_type, a.query AS blocked_query,
       b.pid AS blocking_pid, b.usename AS blocking_user, b.state AS blocking_state,
       extract(epoch FROM now() - b.xact_start)::float8 AS blocking_xact_s,
       b.query AS blocking_query
FROM pg_stat_activity a
CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE a.pid <> pg_backend_pid()
ORDER BY waiting_s DESC, a.pid, b.pid
"""


def blocked(source: Source) -> list[dict[str, Any]]:
    """(blocked, blocking) session pairs by pg_blocking_pids, longest wait first."""
    return _dicts(source, BLOCKED)


EXCLUSIVE_LOCKS = """
SELECT n.nspname || '.' || c.relname AS relation, l.pid, l.granted,
       a.usename AS user, a.application_name, a.state,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS xact_s,
       a.query, pg_blocking_pids(l.pid) AS blocked_by
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid IS DISTINCT FROM pg_backend_pid()
ORDER BY l.granted DESC, xact_s DESC NULLS LAST, l.pid
"""


def exclusive_locks(source: Source) -> list[dict[str, Any]]:
    """ACCESS EXCLUSIVE locks on relations of this database, held (granted) or waited
    for, by other sessions: what makes a reader (pg_dump, a count) wait. A prepared
    transaction's lock has no pid."""
    return _dicts(source, EXCLUSIVE_LOCKS)


# --- connection limits ----------------------------------------------------------------------

LIMITS = """
SELECT r.rolname, r.rolsuper, r.rolconnlimit,
       (SELECT count(*) FROM pg_stat_activity s
        WHERE s.usename = r.rolname AND s.backend_type = 'client backend') AS role_in_use,
       d.datname, d.datconnlimit,
       (SELECT count(*) FROM pg_stat_activity s
        WHERE s.datname = d.datname AND s.backend_type = 'client backend') AS db_in_use
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""


@dataclass(frozen=True)
class Room:
    """How many more connections the current role may open to this database now.
    `limit` names the CONNECTION LIMIT that binds (None: none does)."""

    free: int | None
    limit: str | None = None
    setting: int = -1
    in_use: int = 0
    role: str = ""
    database: str = ""


def room(conn: psycopg.Connection[Any]) -> Room:
    """Room left under the role's and the database's CONNECTION LIMIT (superusers are
    exempt from both; this connection counts as in use)."""
    row = conn.execute(LIMITS).fetchone()
    assert row is not None
    role, superuser, role_limit, role_used, db, db_limit, db_used = row
    if superuser:
        return Room(None, role=str(role), database=str(db))
    found = [
        Room(int(limit) - int(used), kind, int(limit), int(used), str(role), str(db))
        for kind, limit, used in (("role", role_limit, role_used), ("database", db_limit, db_used))
        if limit is not None and int(limit) >= 0
    ]
    if not found:
        return Room(None, role=str(role), database=str(db))
    return min(found, key=lambda r: r.free if r.free is not None else 0)
