"""One report session against one PostgreSQL target: the connection, the options,
the statements read once from pg_stat_statements, and each section built once
(`recommendations` reads the advice of the others).

The session is pgfacts' report session: read-only, autocommit, with short lock and
statement timeouts set at connect (a role's own settings do not apply). Catalog
and statistics views take no locks on user tables, but size and deparse functions
(pg_relation_size, pg_get_indexdef, ...) open the relation: queries call them
through `guarded()`, which skips a table another session holds (or waits for) in
ACCESS EXCLUSIVE mode, and `lock_timeout` bounds a lock taken during the report.
Thresholds are [health]'s (pgfacts.Thresholds), so a finding here is a finding of
`pyops health` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pyops.config import PostgresTarget
from pyops.pgfacts import Thresholds, session
from pyops.report.model import Section

# prefixed to every query the report runs, so pg_stat_statements' view of the
# application leaves the report's own statements out
MARK = "/* pyops report */ "
LIMITS = session.REPORT

# Every query goes through psycopg with parameters (possibly none), so a literal
# percent sign is written `%%` in all of the report's SQL.

# Catalog functions that deparse or measure a relation open it first and so wait for
# another session's ACCESS EXCLUSIVE lock (pg_get_indexdef, pg_get_constraintdef of a
# CHECK, pg_get_expr, pg_relation_size and the other size functions). LOCKED is every
# relation of a table (the table, its indexes, its TOAST table and TOAST index) one of
# which another session holds or waits for in that mode, granted or queued (a queued
# request blocks later ones too). An uncorrelated scalar subquery: read once per query.
LOCKED = """(SELECT coalesce(array_agg(DISTINCT m.oid), '{}'::oid[]) FROM (
  WITH hit AS (
    SELECT l.relation FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid IS DISTINCT FROM pg_backend_pid()),
  owner AS (
    SELECT relation AS oid FROM hit
    UNION SELECT i.indrelid FROM pg_index i JOIN hit ON hit.relation = i.indexrelid
    UNION SELECT c.oid FROM pg_class c JOIN hit ON hit.relation = c.reltoastrelid
    UNION SELECT c.oid FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid
                 JOIN hit ON hit.relation = i.indexrelid)
  SELECT oid FROM owner
  UNION SELECT i.indexrelid FROM pg_index i JOIN owner o ON o.oid = i.indrelid
  UNION SELECT c.reltoastrelid FROM pg_class c JOIN owner o ON o.oid = c.oid
  UNION SELECT i.indexrelid FROM pg_class c JOIN owner o ON o.oid = c.oid
               JOIN pg_index i ON i.indrelid = c.reltoastrelid
) m)"""


def locked(*rels: str) -> str:
    """SQL: true when reading any of `rels` (oid expressions) would wait for a lock."""
    return f"(ARRAY[{', '.join(rels)}]::oid[] && {LOCKED})"


def guarded(expression: str, *rels: str) -> str:
    """SQL: `expression`, or NULL when it would wait for a lock on one of `rels`."""
    return f"CASE WHEN {locked(*rels)} THEN NULL ELSE {expression} END"


def safe_size(function: str, rel: str) -> str:
    """SQL: `function(rel)`, or NULL when that would wait for a lock."""
    return guarded(f"{function}({rel})", rel)


def locked_note(tables: Iterable[str], what: str) -> str:
    """The note naming the tables whose `what` was not read for a lock."""
    names = ", ".join(sorted(set(tables)))
    return (
        f"{names}: held (or awaited) by another session in ACCESS EXCLUSIVE mode, so "
        f"{what} not read (reading would wait for that lock); the rest is complete. Run "
        "the report again once the lock is gone"
    )


USER_SCHEMAS = """
  {n}.nspname NOT IN ('pg_catalog', 'information_schema')
  AND {n}.nspname NOT LIKE 'pg\\_toast%%' AND {n}.nspname NOT LIKE 'pg\\_temp%%'
"""


def user_schemas(alias: str = "n") -> str:
    return USER_SCHEMAS.format(n=alias)


@dataclass(frozen=True)
class Options:
    """What the report lists and how it judges: `thresholds` come from [health], as
    `health` reads them; `long_running_seconds` (what the long-running section lists)
    defaults to [health] long_running_seconds."""

    thresholds: Thresholds = Thresholds()
    listed_long_running_seconds: float | None = None
    limit: int = 20

    @property
    def long_running_seconds(self) -> float:
        if self.listed_long_running_seconds is not None:
            return self.listed_long_running_seconds
        return self.thresholds.long_running_seconds


@dataclass(frozen=True)
class Statement:
    """One row of pg_stat_statements for this database."""

    queryid: int
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    query: str

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0


@dataclass
class Statements:
    available: bool
    message: str = ""  # why not, and how to enable it
    enable_sql: str = ""
    version: str = ""
    rows: list[Statement] = field(default_factory=list)


@dataclass
class Probe:
    target: PostgresTarget
    conn: psycopg.Connection[Any]
    options: Options
    builders: dict[str, Callable[[Probe], Section]]
    database: str = ""
    server_version: str = ""
    _sections: dict[str, Section] = field(default_factory=dict)
    _statements: Statements | None = None
    # rows several sections read (the index list): read once per report
    _shared: dict[str, Any] = field(default_factory=dict)

    # --- reading -----------------------------------------------------------------

    def rows(
        self, query: str | sql.Composed, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[Any]:
        text = query if isinstance(query, str) else query.as_string(self.conn)
        return self.conn.execute(MARK + text, params).fetchall()  # type: ignore[arg-type]

    def dicts(
        self, query: str | sql.Composed, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        text = query if isinstance(query, str) else query.as_string(self.conn)
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(MARK + text, params)  # type: ignore[arg-type]
            return cur.fetchall()

    def one(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        found = self.rows(query, params)
        return found[0] if found else None

    def sql(self, statement: sql.Composable) -> str:
        """Advice SQL as text, identifiers quoted by psycopg."""
        return statement.as_string(self.conn)

    # --- shared results ------------------------------------------------------------

    def section(self, name: str) -> Section:
        """Build a section once; a server error becomes the section's error, so one
        section that hits a lock timeout does not cost the rest of the report."""
        if name not in self._sections:
            try:
                self._sections[name] = self.builders[name](self)
            except psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    message += f" ({LIMITS.describe()}: another session holds a lock)"
                self._sections[name] = Section(name, name, error=message)
        return self._sections[name]

    def shared(self, key: str, read: Callable[[], Any]) -> Any:
        """`read()` once per report, for rows that several sections use."""
        if key not in self._shared:
            self._shared[key] = read()
        return self._shared[key]

    def statements(self) -> Statements:
        if self._statements is None:
            from pyops.report import statements

            self._statements = statements.read(self)
        return self._statements

    def stats_reset(self) -> Any:
        row = self.one(
            "SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()"
        )
        return row[0] if row else None


def connect(target: PostgresTarget) -> psycopg.Connection[Any]:
    """The report's session (PyopsError says why a connect failed)."""
    return session.connect(target, LIMITS, purpose="db report")


def start(
    target: PostgresTarget,
    conn: psycopg.Connection[Any],
    options: Options,
    builders: dict[str, Callable[[Probe], Section]],
) -> Probe:
    """Learn what the server is; the session's limits were set at connect."""
    probe = Probe(target, conn, options, builders)
    row = probe.one("SELECT current_database(), current_setting('server_version')")
    probe.database, probe.server_version = str(row[0]), str(row[1])
    return probe
