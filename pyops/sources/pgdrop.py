"""Dropping a scratch or leftover database robustly, as the owner that made it.

`DROP DATABASE ... WITH (FORCE)` ends every other session first, but only when this
role may end all of them: as a non-superuser it fails (InsufficientPrivilege) the
moment an autovacuum worker or another role's session is inside, and a superuser's
session can be ended by a superuser only. So: new connections are refused first,
then FORCE is tried; failing that, pyops ends the sessions it may end and runs a plain
`DROP DATABASE` (which itself ends autovacuum workers and waits up to 5 s for the
rest), retrying for a bounded time. What still blocks it is named in the error, with
the SQL to finish by hand.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import errors, sql

from pyops.errors import PyopsError

log = logging.getLogger(__name__)
DROP_TIMEOUT_S = 20.0
FIRST_PAUSE_S = 0.2
LONGEST_PAUSE_S = 2.0
SHOWN = 5  # sessions named in one message

# errors after which another attempt can succeed: sessions still inside, a lock
RETRY = (errors.ObjectInUse, errors.LockNotAvailable)

SESSIONS = """
SELECT a.pid, coalesce(a.usename, ''), coalesce(a.backend_type, ''),
       coalesce(a.application_name, ''), coalesce(r.rolsuper, false)
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = %s AND a.pid <> pg_backend_pid()
ORDER BY a.pid
"""

# the rule of pg_terminate_backend: a superuser may end any session; others only
# sessions of non-superuser roles whose privileges they have, or any non-superuser's
# session with pg_signal_backend. An autovacuum worker has no role: only a superuser
# ends it here, a plain DROP DATABASE ends it anyway.
MAY_END = """
SELECT a.pid
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = %s AND a.pid <> pg_backend_pid()
  AND (current_setting('is_superuser') = 'on'
       OR (r.oid IS NOT NULL AND NOT r.rolsuper
           AND (pg_has_role(r.oid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))))
"""


def drop(conn: psycopg.Connection[Any], name: str, timeout_s: float = DROP_TIMEOUT_S) -> None:
    """Drop database `name` if it exists. `conn`: an autocommit session to another
    database (`postgres`). PyopsError names what still blocks it, and how to finish."""
    ident = sql.Identifier(name)
    if not _exists(conn, name):
        return
    _must_own(conn, name)
    fenced = _fence(conn, ident)
    if conn.info.server_version >= 130000:  # WITH (FORCE) is new in 13
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            return
        except (errors.InsufficientPrivilege, *RETRY) as exc:
            log.info(
                "drop database %s: WITH (FORCE) refused (%s); ending the sessions this "
                "role may end, then DROP DATABASE",
                name,
                _first_line(exc),
            )
    deadline = time.monotonic() + timeout_s
    pause = FIRST_PAUSE_S
    while True:
        _end_sessions(conn, name)
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
            return
        except RETRY as exc:
            last: psycopg.Error = exc
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, LONGEST_PAUSE_S)
    raise PyopsError(_blocked(conn, name, timeout_s, fenced, last))


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _must_own(conn: psycopg.Connection[Any], name: str) -> None:
    """Only its owner (or a member of that role, or a superuser) may drop a database:
    no retry helps otherwise, so say so at once."""
    row = conn.execute(
        "SELECT pg_has_role(datdba, 'USAGE'), pg_get_userbyid(datdba), current_user "
        "FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None or row[0]:
        return
    raise PyopsError(
        f"cannot drop database {name}: it belongs to role {row[1]} and pyops connects as "
        f"{row[2]}; as {row[1]} or a superuser run: {_by_hand(conn, name)}"
    )


def _fence(conn: psycopg.Connection[Any], ident: sql.Identifier) -> bool:
    """Refuse new connections (its owner may; a failure changes nothing): a client that
    keeps reconnecting cannot hold the drop off. True if connections are now refused."""
    fenced = False
    for option in ("ALLOW_CONNECTIONS false", "CONNECTION LIMIT 0"):
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} " + option).format(ident))
            fenced = fenced or option.startswith("ALLOW")
        except psycopg.Error as exc:
            log.debug("ALTER DATABASE %s %s: %s", ident.as_string(conn), option, exc)
    return fenced


def _end_sessions(conn: psycopg.Connection[Any], name: str) -> None:
    """pg_terminate_backend for each session in `name` this role may end; one that is
    gone meanwhile, or refused, is left to the DROP's own wait and the final message."""
    for (pid,) in conn.execute(MAY_END, (name,)).fetchall():
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.Error as exc:
            log.debug("pg_terminate_backend(%s): %s", pid, exc)


def _by_hand(conn: psycopg.Connection[Any], name: str) -> str:
    quoted = sql.Identifier(name).as_string(conn)
    return f"DROP DATABASE {quoted} WITH (FORCE);"


def _describe(row: tuple[Any, ...]) -> str:
    pid, user, kind, app, superuser = row
    parts = [f"user {user}" + (" (superuser)" if superuser else "")] if user else []
    if kind:  # hidden from a role without pg_read_all_stats, for others' sessions
        parts.append(kind)
    elif not user:
        parts.append("no role: an autovacuum worker or another background process")
    if app:
        parts.append(f"application {app!r}")
    return f"pid {pid} ({', '.join(parts)})"


def _blocked(
    conn: psycopg.Connection[Any], name: str, timeout_s: float, fenced: bool, last: psycopg.Error
) -> str:
    """Who is still inside `name`, why pyops could not end them, what to run."""
    me, superuser = conn.execute(
        "SELECT current_user, current_setting('is_superuser') = 'on'"
    ).fetchone() or ("?", False)
    sessions = conn.execute(SESSIONS, (name,)).fetchall()
    may_end = {pid for (pid,) in conn.execute(MAY_END, (name,)).fetchall()}
    blocking = [r for r in sessions if r[0] not in may_end]
    shown = blocking or sessions
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    if shown:
        who = "still connected: " + ", ".join(_describe(r) for r in shown[:SHOWN]) + more
    else:
        who = _other_holders(conn, name) or f"the server said: {_first_line(last)}"
    hints = []
    if any(r[4] for r in blocking):
        hints.append("only a superuser can end a superuser's session")
    if any(r[1] and not r[4] for r in blocking) and not superuser:
        hints.append(
            f"role {me} may end only sessions of roles it belongs to (to let it end the "
            f"others: GRANT pg_signal_backend TO {sql.Identifier(me).as_string(conn)};)"
        )
    if fenced:
        hints.append("new connections to it are already refused (ALLOW_CONNECTIONS false)")
    hint = "; ".join(hints)
    return (
        f"cannot drop database {name} (tried for {timeout_s:g}s): {who}"
        + (f"; {hint}" if hint else "")
        + f". End those sessions and drop it by hand as a superuser: {_by_hand(conn, name)}"
    )


def _other_holders(conn: psycopg.Connection[Any], name: str) -> str:
    """No session inside, yet in use: prepared transactions or logical replication slots."""
    found = []
    prepared = conn.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,)
    ).fetchall()
    if prepared:
        gids = ", ".join(repr(str(g)) for (g,) in prepared[:SHOWN])
        found.append(f"prepared transactions {gids} (ROLLBACK PREPARED 'gid'; in {name})")
    slots = conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
    ).fetchall()
    if slots:
        names = ", ".join(str(s) for (s,) in slots[:SHOWN])
        found.append(f"replication slots {names} (SELECT pg_drop_replication_slot('name');)")
    return "held by " + " and ".join(found) if found else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
