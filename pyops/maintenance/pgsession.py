"""A PostgreSQL maintenance session: one autocommit connection per target.

VACUUM, REINDEX CONCURRENTLY and REFRESH ... CONCURRENTLY cannot run inside a
transaction block, and each cleanup batch must commit on its own, so the session
is autocommit: every statement is its own transaction. `lock_timeout` keeps a
step from queueing behind the application's locks (and everything the
application does next from queueing behind us); a step that hits it ends as
"timeout" and the run goes on.

Planning reads only the catalogs and the statistics views, which take no locks on
user tables: functions such as pg_relation_size() lock the relation, so they run
inside the step they belong to, where a timeout is that step's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pyops.config import PostgresTarget
from pyops.maintenance import Journal, Status, Step
from pyops.pgfacts import USER_RELATIONS
from pyops.pgfacts import session as pgfacts_session

# USER_RELATIONS: the relations maintenance works on (amcheck also reads the system
# catalogs, see pgcheck)
__all__ = ["USER_RELATIONS", "Relation", "Session", "classify", "open_session"]


def classify(exc: Exception) -> Status | None:
    """A lock or statement timeout is "timeout"; any other server error "failed"."""
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return "timeout"
    if isinstance(exc, psycopg.Error):
        return "failed"
    return None


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind
    is_partition: bool
    owned: bool
    live: int
    dead: int
    pages: int
    tuples: float

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def dead_ratio(self) -> float:
        total = self.live + self.dead
        return round(self.dead / total, 4) if total else 0.0


@dataclass
class Session:
    target: PostgresTarget
    conn: psycopg.Connection[Any]
    journal: Journal
    lock_timeout_s: float
    server_version: int = 0
    user: str = ""
    notices: list[str] = field(default_factory=list)
    analyzed: set[int] = field(default_factory=set)  # by this run's VACUUM (ANALYZE)

    @property
    def dry_run(self) -> bool:
        return self.journal.dry_run

    @property
    def name(self) -> str:
        return self.target.name

    @contextlib.contextmanager
    def step(self, operation: str, obj: str) -> Iterator[Step]:
        with self.journal.step(self.name, operation, obj, classify) as step:
            yield step

    def text(self, stmt: sql.Composable) -> str:
        return stmt.as_string(self.conn)

    def run(self, step: Step | None, stmt: sql.Composed) -> bool:
        """Run a statement that changes something, or with --dry-run only record it.
        Returns whether it ran."""
        self.journal.note(step, self.name, self.text(stmt) + ";")
        if self.dry_run:
            return False
        self.notices.clear()
        self.conn.execute(stmt)
        return True

    def rows(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> list[Any]:
        """A read: runs in --dry-run too (planning needs it), never recorded as SQL."""
        return self.conn.execute(query, params or None).fetchall()

    def one(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> Any:
        found = self.rows(query, params)
        return found[0] if found else None

    def skipped_by_server(self) -> str | None:
        """VACUUM/ANALYZE of a table we may not maintain is a WARNING, not an error."""
        for notice in self.notices:
            if notice.lower().startswith("skipping"):
                return notice
        return None

    # --- catalog ---------------------------------------------------------------

    def owned_expr(self) -> str:
        """SQL: may the current user maintain pg_class row `c`?"""
        expr = "pg_has_role(c.relowner, 'USAGE')"
        if self.server_version >= 170000:
            expr += " OR has_table_privilege(c.oid, 'MAINTAIN')"
        return f"({expr})"

    def relations(self, kinds: str = "rm") -> list[Relation]:
        """User tables (and matviews, partitioned parents) with live/dead tuple counts."""
        query = f"""
            SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relispartition,
                   {self.owned_expr()}, coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
                   c.relpages, c.reltuples
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
            WHERE c.relkind = ANY(%s) AND {USER_RELATIONS}
            ORDER BY n.nspname, c.relname
        """  # noqa: S608 - code-defined fragments; values are bound
        return [Relation(*row) for row in self.rows(query, (list(kinds),))]


@contextlib.contextmanager
def open_session(
    target: PostgresTarget, journal: Journal, lock_timeout_s: float
) -> Iterator[Session]:
    """Connect (autocommit) as pgfacts' maintenance session: lock_timeout from
    [maintenance], no statement timeout (a role's own cannot cancel a VACUUM midway).
    PyopsError says why a connect failed."""
    limits = pgfacts_session.maintenance(lock_timeout_s)
    conn = pgfacts_session.connect(target, limits, purpose="maintenance")
    try:
        opened = Session(target, conn, journal, lock_timeout_s)
        conn.add_notice_handler(lambda diag: opened.notices.append(diag.message_primary or ""))
        # session settings, not changes: in force from the connection's start (planning
        # reads obey them in --dry-run too); listed so the SQL shown is the whole story
        for setting in pgfacts_session.set_statements(limits):
            journal.note(None, target.name, opened.text(setting) + ";")
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_user"
        ).fetchone()
        assert row is not None
        opened.server_version, opened.user = int(row[0]), str(row[1])
        yield opened
    finally:
        conn.close()
