"""The one kind of PostgreSQL session pyops opens: its limits travel in the
connection's startup packet (libpq `options`), so they hold from the first
statement and win over a role's or database's own settings (`ALTER ROLE ... SET
statement_timeout = '1ms'` cancels nothing of pyops').

Each use has its limits here, in one place:

- backup's snapshot session: waits for a table lock at most `lock_wait_seconds`;
  no statement or idle-in-transaction timeout, since it counts every table and
  holds the snapshot open while pg_dump runs;
- `health`, `db report`: short lock and statement timeouts, read-only;
- `maintenance`: lock timeout from [maintenance]; no statement timeout (a VACUUM
  of a large table takes what it takes);
- restore and drill: the target's `lock_wait_seconds`, no statement timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pyops.config import PostgresTarget


@dataclass(frozen=True)
class Limits:
    """Session settings; 0 means no limit, as in PostgreSQL."""

    lock_timeout_s: float
    statement_timeout_s: float
    idle_in_transaction_s: float = 0.0
    read_only: bool = False

    def settings(self) -> dict[str, str]:
        out = {
            "lock_timeout": _ms(self.lock_timeout_s),
            "statement_timeout": _ms(self.statement_timeout_s),
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction_s),
        }
        if self.read_only:
            out["default_transaction_read_only"] = "on"
        return out

    def describe(self) -> str:
        """For messages: 'lock_timeout 3s, statement_timeout 60s'."""
        return (
            f"lock_timeout {_seconds(self.lock_timeout_s)}, "
            f"statement_timeout {_seconds(self.statement_timeout_s)}"
        )


def _ms(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms" if seconds > 0 else "0"


def _seconds(seconds: float) -> str:
    return f"{seconds:g}s" if seconds > 0 else "none"


HEALTH = Limits(lock_timeout_s=3, statement_timeout_s=30, read_only=True)
REPORT = Limits(lock_timeout_s=3, statement_timeout_s=60, read_only=True)
# looking at pg_locks after a failure: never wait long for anything
DIAGNOSE = Limits(lock_timeout_s=2, statement_timeout_s=10, read_only=True)


def snapshot(lock_wait_seconds: float) -> Limits:
    """Backup: wait for table locks as long as pg_dump does, nothing else is limited."""
    return Limits(lock_timeout_s=lock_wait_seconds, statement_timeout_s=0)


def restore(lock_wait_seconds: float) -> Limits:
    """Restore and drill (CREATE/DROP/RENAME DATABASE, exact counts of the restored
    tables): the target's lock_wait_seconds, no statement timeout."""
    return Limits(lock_timeout_s=lock_wait_seconds, statement_timeout_s=0)


def maintenance(lock_timeout_seconds: float) -> Limits:
    """Maintenance: [maintenance] lock_timeout_seconds; a VACUUM takes what it takes."""
    return Limits(lock_timeout_s=lock_timeout_seconds, statement_timeout_s=0)


def startup_options(target: PostgresTarget, limits: Limits) -> str:
    """libpq `options`: the dsn's own (else PGOPTIONS), then ours, which win."""
    own = str(conninfo_to_dict(target.dsn).get("options") or os.environ.get("PGOPTIONS") or "")
    ours = " ".join(f"-c {name}={value}" for name, value in limits.settings().items())
    return f"{own} {ours}".strip()


def connect(
    target: PostgresTarget,
    limits: Limits,
    *,
    purpose: str,
    db: str | None = None,
    autocommit: bool = True,
) -> psycopg.Connection[Any]:
    """Connect with `limits` in force from the start; PyopsError says why a connect
    failed. `purpose` names the session in pg_stat_activity ("pyops <purpose>")."""
    from pyops.sources import postgres  # the connection string and the password live there

    conn = postgres.connect(
        target,
        db,
        autocommit=autocommit,
        options=startup_options(target, limits),
        application_name=f"pyops {purpose}",
    )
    try:
        if conn.info.server_version >= 170000:
            # PostgreSQL 17's transaction_timeout is unknown to older servers, so it
            # cannot go in the startup packet
            conn.execute(
                sql.SQL("SET transaction_timeout = {}").format(
                    sql.Literal(_ms(limits.statement_timeout_s))
                )
            )
            if not autocommit:
                conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def set_statements(limits: Limits) -> list[sql.Composed]:
    """The settings as SET statements, for output that lists what a session runs
    (`maintenance --dry-run`)."""
    return [
        sql.SQL("SET {} = {}").format(sql.SQL(name), sql.Literal(value))
        for name, value in limits.settings().items()
    ]
