"""The snapshot session of a PostgreSQL backup: the connection that exports the
snapshot pg_dump reads, holds it open (with an ACCESS SHARE lock on every table,
as pg_dump takes) while pg_dump runs, and counts each table's rows in it for the
manifest.

Its limits are pgfacts.session.snapshot(): a table lock is waited for at most
`lock_wait_seconds` (pg_dump gets the same as --lock-wait-timeout); no statement
or idle-in-transaction timeout, and a role's own settings do not apply to it.

Whatever goes wrong in this session is THE cause of a failed backup and is
reported as such, naming the table: when it fails, pg_dump can only say "could
not import the requested snapshot", an echo. Before anything runs it checks that
the role may read every table and may open the connections a backup needs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pyops import pgdatabases
from pyops.config import PostgresTarget
from pyops.errors import ConfigError, PyopsError, StageFailed
from pyops.pgfacts import server, session, short

log = logging.getLogger(__name__)

FACTS = """
SELECT current_database(), current_setting('server_version'),
       current_setting('server_version_num')::int, pg_database_size(current_database()),
       pg_encoding_to_char(encoding), datcollate, datctype
FROM pg_database WHERE datname = current_database()
"""
SHOWN = 5  # names listed in one message before "and N more"


class SnapshotFailed(PyopsError):
    """The backup's snapshot session failed: the cause, whatever pg_dump said after."""


def _ident(name: str) -> str:
    """A role or database name as it would be written in SQL."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def pg_dump_connections(target: PostgresTarget) -> int:
    """pg_dump's connections: one, or with -j N (directory format) a leader and N workers."""
    return target.jobs + 1 if target.format == "directory" and target.jobs > 1 else 1


def connection_limit_message(
    target: PostgresTarget, text: str, room: server.Room | None = None
) -> str:
    """A CONNECTION LIMIT leaves no room (`text`: the server's "too many connections for
    role ..." or, before anything failed, `room`): say why pyops needs more than one
    connection, and how to make room."""
    need = 1 + pg_dump_connections(target)
    workers = ", with its parallel workers" if need > 2 else ""
    if room is not None and room.limit is not None:
        kind = room.limit
        name = _ident(room.role if kind == "role" else room.database)
        state = (
            f"{kind} {name} has CONNECTION LIMIT {room.setting} and {room.in_use} of its "
            "connections are in use (pyops' snapshot session included)"
        )
        value = str(room.in_use - 1 + need)
    else:
        found = re.search(r'too many connections for (role|database) "([^"]+)"', text)
        kind, name = (found.group(1), _ident(found.group(2))) if found else ("role", "<role>")
        state = f"{kind} {name} has reached its CONNECTION LIMIT"
        value = "<more>"
    return (
        f"target {target.name}: {state}: a backup needs {need} connections at once for a "
        f"consistent snapshot (pyops' snapshot session, which holds the snapshot, and "
        f"pg_dump{workers}). Make room: ALTER {kind.upper()} {name} CONNECTION LIMIT {value}; "
        f"(-1: no limit), or close idle sessions of that {kind}"
    )


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


@dataclass
class Snapshot:
    target: PostgresTarget
    conn: psycopg.Connection[Any]
    id: str = ""
    user: str = ""
    facts: tuple[Any, ...] = ()
    tables: list[tuple[str, str]] = field(default_factory=list)
    current: str = ""  # the table the session is working on
    pid: int = 0  # its backend
    without_data: set[str] = field(default_factory=set)  # exclude_table_data matched these
    row_security_tables: list[str] = field(default_factory=list)  # policies filter these
    _counts: dict[str, int] = field(default_factory=dict)
    _error: psycopg.Error | None = None
    _stopping: bool = False
    _thread: threading.Thread | None = None

    @property
    def server_major(self) -> int:
        return int(self.facts[2]) // 10000

    @property
    def source(self) -> dict[str, Any]:
        f = self.facts
        return {
            "database": f[0],
            "server_version": f[1],
            "size": int(f[3]),
            "encoding": f[4],
            "collate": f[5],
            "ctype": f[6],
        }

    @property
    def dump_facts(self) -> dict[str, Any]:
        """What pg_dump was told to leave out or filter, and which tables that touched:
        the manifest's source facts (a restore preview shows them)."""
        facts: dict[str, Any] = {
            "exclude_table_data": list(self.target.exclude_table_data),
            "enable_row_security": self.target.enable_row_security,
        }
        if self.target.exclude_table_data:
            facts["tables_without_data"] = sorted(self.without_data)
        if self.target.enable_row_security:
            facts["row_security_tables"] = list(self.row_security_tables)
        return facts

    # --- opening -----------------------------------------------------------------------

    def _begin(self) -> None:
        conn = self.conn
        self._check_room()
        # what pg_dump does with the same flag: with it, policies filter what the role
        # sees (the count too); without it, a table they would filter is an error
        on = "on" if self.target.enable_row_security else "off"
        conn.execute(sql.SQL("SET row_security = {}").format(sql.SQL(on)))
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = server.tables(conn)
        denied = [f"{s}.{t}" for s, t, may in rows if not may]
        if denied:
            raise SnapshotFailed(self._denied_message(denied))
        self.tables = [(s, t) for s, t, _ in rows]
        self.without_data = self._tables_without_data()
        self._check_row_security()
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        facts = conn.execute(FACTS).fetchone()
        assert row is not None and facts is not None
        self.id, self.facts = str(row[0]), tuple(facts)
        # pg_dump takes these same locks when it starts; taking them first means the
        # count never waits, and a table another session holds is named here
        for schema, table in self.tables:
            self.current = f"{schema}.{table}"
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(schema, table))
            )
        self.current = ""

    def _check_room(self) -> None:
        room = server.room(self.conn)
        self.user = room.role
        if room.free is not None and room.free < pg_dump_connections(self.target):
            raise SnapshotFailed(connection_limit_message(self.target, "", room))

    def _tables_without_data(self) -> set[str]:
        """The tables `exclude_table_data` matches, matched as pg_dump matches them
        (its regular expressions, and a pattern without a schema matching the tables
        visible on this session's search_path, which is pg_dump's: the dsn's, role's and
        database's settings), among the tables a backup holds."""
        found: set[str] = set()
        collate = " COLLATE pg_catalog.default" if self.conn.info.server_version >= 120000 else ""
        query = sql.SQL(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND c.relname OPERATOR(pg_catalog.~) %(name)s{collate}"
            " AND CASE WHEN %(schema)s::text IS NULL"
            " THEN pg_catalog.pg_table_is_visible(c.oid)"
            " ELSE n.nspname OPERATOR(pg_catalog.~) %(schema)s{collate} END"
        ).format(collate=sql.SQL(collate))
        for pattern in self.target.exclude_table_data:
            schema, name = pgdatabases.table_pattern(pattern)
            try:
                rows = self.conn.execute(query, {"name": name, "schema": schema}).fetchall()
            except psycopg.errors.InvalidRegularExpression as exc:
                raise ConfigError(
                    f"targets.{self.target.name}.exclude_table_data",
                    f"{pattern!r} is not a valid pattern: {exc.diag.message_primary or exc}",
                ) from None
            found |= {f"{s}.{t}" for s, t in rows}
        return found & {f"{s}.{t}" for s, t in self.tables}

    def _check_row_security(self) -> None:
        """Tables whose row-level security applies to this role (it neither owns them
        nor bypasses RLS, or owns them with FORCE ROW LEVEL SECURITY): pg_dump refuses
        them without --enable-row-security; with it, they are dumped filtered, and the
        manifest names them."""
        rows = self.conn.execute(
            "SELECT n.nspname, c.relname, pg_catalog.pg_has_role(c.relowner, 'USAGE')"
            " FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND c.relrowsecurity"
            " AND pg_catalog.row_security_active(c.oid) ORDER BY 1, 2"
        ).fetchall()
        ours = {f"{s}.{t}" for s, t in self.tables}
        found = [(f"{s}.{t}", bool(owner)) for s, t, owner in rows if f"{s}.{t}" in ours]
        if self.target.enable_row_security:
            self.row_security_tables = [name for name, _ in found]
            return
        found = [(name, owner) for name, owner in found if name not in self.without_data]
        if found:
            raise SnapshotFailed(self._row_security_message(found))

    def _row_security_message(self, found: list[tuple[str, bool]]) -> str:
        user = _ident(self.user) if self.user else "the connecting role"
        names = _listed([name for name, _ in found])
        if all(owner for _, owner in found):
            why = f"{user} owns it but it has FORCE ROW LEVEL SECURITY"
            fix = (
                "set enable_row_security = true in the target (pg_dump --enable-row-security; "
                f"the backup then holds the rows its policies let {user} see), or back up as "
                "a role with BYPASSRLS or a superuser"
            )
        else:
            why = f"{user} does not own it and does not bypass row-level security"
            fix = (
                "back up as the owner, a role with BYPASSRLS or a superuser; or set "
                "enable_row_security = true in the target to keep only the rows its policies "
                f"let {user} see"
            )
        return (
            f"target {self.target.name}: row-level security applies to table {names} "
            f"({why}): pg_dump refuses to dump it as it is. To back it up, {fix}"
        )

    # --- counting ----------------------------------------------------------------------

    def start_counting(self) -> None:
        """Count every table's rows in the snapshot, on a thread, while pg_dump runs;
        not those whose rows exclude_table_data leaves out (the backup holds none)."""
        counted = [(s, t) for s, t in self.tables if f"{s}.{t}" not in self.without_data]

        def count() -> None:
            try:
                server.count_rows(self.conn, counted, self._counts, cheap=True)
            except psycopg.Error as exc:
                self.current = next(
                    (f"{s}.{t}" for s, t in counted if f"{s}.{t}" not in self._counts), ""
                )
                self._error = exc

        self._thread = threading.Thread(target=count, name="pyops-count", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        """Exact row count per table; the count's own failure is raised as the cause."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._explain_error(self._error)
        # a table whose rows were left out comes back empty: that is what the drill
        # finds, and the manifest's source facts say why
        return {**dict.fromkeys(sorted(self.without_data), 0), **self._counts}

    def stop(self) -> None:
        """Cancel a count still running (the backup failed or was interrupted)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._stopping = True
        try:
            cancel = getattr(self.conn, "cancel_safe", None) or self.conn.cancel
            cancel()
        except Exception as exc:  # the connection may be gone already
            log.debug("could not cancel the row count: %s", exc)
        thread.join(30)

    def close(self) -> None:
        self.stop()
        self.conn.close()

    # --- explaining failures -------------------------------------------------------------

    def explain(self, exc: BaseException) -> BaseException:
        """What to raise for `exc`, an error of the backup while this session was open:
        this session's own failure if it had one (the cause), else pg_dump's error made
        specific (which table is locked and by whom, the connection limit), else `exc`."""
        self.stop()
        if isinstance(exc, SnapshotFailed) or not isinstance(exc, Exception):
            return exc
        error = self._error
        if error is not None and not (
            self._stopping and isinstance(error, psycopg.errors.QueryCanceled)
        ):
            return self._explain_error(error)
        if isinstance(exc, StageFailed) and exc.stage == "pg_dump":
            return self._explain_pg_dump(exc) or exc
        if isinstance(exc, psycopg.Error):
            return self._explain_error(exc)
        return exc

    def _explain_error(self, exc: psycopg.Error) -> SnapshotFailed:
        t = f"target {self.target.name}"
        table = self.current
        where = f"table {table}" if table else "the snapshot session"
        text = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
        if isinstance(exc, psycopg.errors.LockNotAvailable) and table:
            return SnapshotFailed(self._lock_message([table]))
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            denied = [table] if table else []
            return SnapshotFailed(self._denied_message(denied, text))
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return SnapshotFailed(
                f"{t}: pyops' snapshot session was canceled while reading {where} ({text}). "
                "pyops sets statement_timeout = 0 for that session, so another session or an "
                "administrator canceled it (pg_cancel_backend), or a pooler in between dropped "
                "the setting; run the backup again"
            )
        if self.conn.broken:
            return SnapshotFailed(
                f"{t}: pyops' snapshot session was disconnected while reading {where} ({text}): "
                "the snapshot pg_dump reads ended with it. Check the server log (a restart, "
                "pg_terminate_backend, a pooler's or the network's idle timeout)"
            )
        return SnapshotFailed(f"{t}: reading {where} in the backup's snapshot failed: {text}")

    def _denied_message(self, tables: list[str], text: str = "") -> str:
        user = _ident(self.user) if self.user else "the connecting role"
        cause = f" ({text})" if text else ""
        quoted = [".".join(_ident(part) for part in t.split(".", 1)) for t in tables]
        grant = (
            f"GRANT SELECT ON {_listed(quoted)} TO {user}"
            if tables
            else f"GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {user}"
        )
        return (
            f"target {self.target.name}: permission denied for table {_listed(tables) or '?'}: "
            f"role {user} may not read it{cause}. A backup reads every table (pg_dump, and "
            f"pyops' row count for the manifest): {grant}; or connect as the tables' owner"
        )

    def _explain_pg_dump(self, exc: StageFailed) -> SnapshotFailed | None:
        text = exc.stderr_tail
        if "too many connections for" in text:
            return SnapshotFailed(connection_limit_message(self.target, text))
        locked = re.search(r"LOCK TABLE (.+?) IN ACCESS SHARE MODE", text)
        if locked and ("statement timeout" in text or "lock timeout" in text):
            names = [
                n.strip().removeprefix("ONLY ").replace('"', "") for n in locked.group(1).split(",")
            ]
            return SnapshotFailed(self._lock_message(names))
        if "could not import the requested snapshot" in text:
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error as gone:
                return self._explain_error(gone)
        return None

    def _lock_message(self, tables: list[str]) -> str:
        """Which session holds (or queues for) an ACCESS EXCLUSIVE lock on `tables` (one,
        or those one LOCK TABLE statement of pg_dump named)."""
        waited = f"pyops waited lock_wait_seconds = {self.target.lock_wait_seconds:g} s"
        ours = {self.pid}
        try:
            with session.connect(self.target, session.DIAGNOSE, purpose="diagnose") as conn:
                rows = server.exclusive_locks(conn)
        except (PyopsError, psycopg.Error) as exc:
            head = (
                f"target {self.target.name}: table {_listed(tables)} is locked by another session"
            )
            return f"{head}; {waited} (who holds it could not be read: {exc})"
        found = [r for r in rows if r["relation"] in tables and r["pid"] not in ours]
        named = _listed(list(dict.fromkeys(r["relation"] for r in found)) or tables)
        head = f"target {self.target.name}: table {named} is locked by another session"
        if not found:
            return (
                f"{head} in ACCESS EXCLUSIVE mode, and {waited}; the lock was gone before "
                "pyops could see who held it. Run the backup again, or find it in the server "
                "log (log_lock_waits = on)"
            )
        holders = [self._holder(r, ours) for r in found[:3]]
        pid, holding = self._head_of_queue(found, ours)
        if pid is None:
            fix = "COMMIT PREPARED or ROLLBACK PREPARED it"
        elif holding:
            fix = f"end the session holding the lock: SELECT pg_terminate_backend({pid});"
        else:  # queued behind this backup alone: it came as the backup began
            fix = f"end the queued statement: SELECT pg_terminate_backend({pid});"
        return (
            f"{head}: {'; '.join(holders)}. {waited}. Let it finish and run the backup "
            f"again, or {fix}"
        )

    @staticmethod
    def _head_of_queue(found: list[dict[str, Any]], ours: set[int]) -> tuple[int | None, bool]:
        """The session to end so the lock goes, and whether it holds a lock: a holder of
        the ACCESS EXCLUSIVE lock, else what its waiter waits for, else the waiter."""
        for row in found:
            if row["granted"] and row["pid"] is not None:
                return int(row["pid"]), True
        for row in found:
            behind = [p for p in row["blocked_by"] or [] if p not in ours]
            if behind:
                return int(behind[0]), True
        return next((int(r["pid"]) for r in found if r["pid"] is not None), None), False

    @staticmethod
    def _holder(row: dict[str, Any], ours: set[int]) -> str:
        if row["pid"] is None:
            return (
                f"a prepared transaction holds an ACCESS EXCLUSIVE lock on {row['relation']} "
                "(see pg_prepared_xacts)"
            )
        who = ", ".join(
            str(v)
            for v in (row["user"], row["application_name"] or None, row["state"])
            if v is not None
        )
        since = f", transaction open {row['xact_s']:.0f} s" if row["xact_s"] is not None else ""
        query = f"; its last statement: {short(row['query'])}" if row["query"] else ""
        if row["granted"]:
            return (
                f"pid {row['pid']} ({who}{since}) holds an ACCESS EXCLUSIVE lock on "
                f"{row['relation']}{query}"
            )
        behind = [p for p in row["blocked_by"] or [] if p not in ours]
        after = f", itself waiting for pid {', '.join(map(str, behind))}" if behind else ""
        if not behind and row["blocked_by"]:
            after = ", itself waiting for this backup's own session (it came as the backup began)"
        return (
            f"pid {row['pid']} ({who}{since}) waits for an ACCESS EXCLUSIVE lock on "
            f"{row['relation']} and every reader queues behind it{after}{query}"
        )


def open_snapshot(
    target: PostgresTarget, housekeeping: Callable[[psycopg.Connection[Any]], None]
) -> Snapshot:
    """Connect, run `housekeeping` on the session (autocommit, before the snapshot: it
    costs no extra connection), check the room for a backup's connections and the right
    to read every table, export the snapshot and lock the tables; SnapshotFailed names
    what stood in the way."""
    conn = session.connect(
        target, session.snapshot(target.lock_wait_seconds), purpose="backup snapshot"
    )
    snap = Snapshot(target, conn, pid=conn.info.backend_pid)
    try:
        housekeeping(conn)
        snap._begin()
    except psycopg.Error as exc:
        failure = snap._explain_error(exc)
        conn.close()
        raise failure from None
    except BaseException:
        conn.close()
        raise
    return snap
