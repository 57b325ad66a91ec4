"""Bringing back what a database needs besides its dump: the roles (created when
missing, never altered), the owner, and the database's own state (settings, per-role
settings, ACL, comment); and, before anything is changed, whether the restoring role
will be able to finish (create roles and the database, give it its owner, end the
sessions connected to the live database, rename it aside).

The rules are in pyops.pgstate; this module asks the server and runs statements.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pyops import pgstate
from pyops.errors import PyopsError
from pyops.pgstate import Me

log = logging.getLogger(__name__)

ME = """
SELECT current_user, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),
       (SELECT rolname FROM pg_roles WHERE oid = 10)
FROM pg_roles r WHERE r.rolname = current_user
"""
# the sessions an in-place restore must end, and whether this role may end each
SESSIONS = """
SELECT a.pid, a.usename, a.backend_type, coalesce(r.rolsuper, false),
       a.usesysid IS NOT NULL AND pg_has_role(current_user, a.usesysid, 'MEMBER')
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = %s AND a.pid <> pg_backend_pid() AND a.usesysid IS NOT NULL
"""
# the rename aside needs the live database's ownership (by membership) and CREATEDB
OWNS = "SELECT pg_has_role(current_user, datdba, 'MEMBER') FROM pg_database WHERE datname = %s"
# terminate only what this role may: a refusal would end the restore after all its work
TERMINATE = """
SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = %(db)s AND a.pid <> pg_backend_pid()
  AND (%(super)s OR (NOT r.rolsuper AND (%(signal)s
       OR pg_has_role(current_user, a.usesysid, 'MEMBER'))))
"""


def me(conn: psycopg.Connection[Any]) -> Me:
    row = conn.execute(ME).fetchone()
    assert row is not None
    return Me(str(row[0]), bool(row[1]), bool(row[2]), bool(row[3]), bool(row[4]), str(row[5]))


def existing_roles(conn: psycopg.Connection[Any]) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


def session_problems(conn: psycopg.Connection[Any], live: str, who: Me) -> list[str]:
    """What stands in the way of ending the sessions connected to `live` and renaming
    it aside, said before the safety backup (and before hours of restore)."""
    problems = []
    if not who.superuser:
        row = conn.execute(OWNS, (live,)).fetchone()
        if not (row and row[0]) or not who.createdb:
            problems.append(
                f"renaming database {live} aside needs its ownership (membership in its "
                f"owner role) and CREATEDB, or a superuser; role {who.name} has not"
            )
    if who.superuser:
        return problems
    rows = conn.execute(SESSIONS, (live,)).fetchall()
    supers = [f"pid {pid} ({user})" for pid, user, _kind, sup, _mine in rows if sup]
    others = [f"pid {pid} ({user})" for pid, user, _kind, sup, mine in rows if not sup and not mine]
    if supers:
        problems.append(
            f"superuser sessions are connected to {live}: {', '.join(supers)}; only a "
            "superuser may end them: close them, or restore as a superuser"
        )
    if others and not who.signal_backend:
        problems.append(
            f"sessions of other roles are connected to {live}: {', '.join(others)}; ending "
            f"them at the swap needs GRANT pg_signal_backend TO {who.name}; (or close them "
            "and stop the application first)"
        )
    return problems


def terminate(conn: psycopg.Connection[Any], live: str, who: Me) -> None:
    conn.execute(TERMINATE, {"db": live, "super": who.superuser, "signal": who.signal_backend})


@dataclass
class Outcome:
    """What a rebuild did and could not do, for the restore's summary."""

    created: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.created:
            parts.append(f"created roles {', '.join(self.created)}")
        if self.not_applied:
            parts.append(
                f"NOT re-applied ({len(self.not_applied)}): " + "; ".join(self.not_applied)
            )
        return "; ".join(parts)


def create_roles(
    conn: psycopg.Connection[Any], state: dict[str, Any], outcome: Outcome
) -> set[str]:
    """Create the missing roles (one transaction: all or none); the roles that exist
    now."""
    existing = existing_roles(conn)
    major = int(conn.info.server_version) // 10000
    plan = pgstate.roles(state, existing, major)
    for skipped in plan.skipped:
        log.warning("restore: %s", skipped)
        outcome.not_applied.append(skipped)
    if not plan.steps:
        return existing
    try:
        with conn.transaction():
            for step in plan.steps:
                conn.execute(step.statement)
    except psycopg.Error as exc:
        text = exc.diag.message_primary or str(exc)
        raise PyopsError(
            f"could not create the roles the backup needs ({', '.join(plan.create)}): {text}; "
            "nothing was created. Restore as a superuser, or with --no-owner --no-acl"
        ) from None
    for name in plan.create:
        log.info("restore: created role %s", name)
    outcome.created += plan.create
    return existing | set(plan.create)


def foreseen_refusals(state: dict[str, Any], who: Me) -> list[str]:
    """What a role that is not a superuser will not be able to re-apply, for the
    preview: the application breaks without it until someone runs it by hand."""
    if who.superuser:
        return []
    db = state["database"]
    notes = []
    others = sorted(set(db.get("role_settings", {})) - {who.name})
    if others and not who.createrole:
        notes.append(
            f"settings of roles {', '.join(others)} in the database need a superuser or "
            "CREATEROLE: they will be named with the statement to run, not re-applied"
        )
    names = {e.partition("=")[0] for e in db.get("settings", [])}
    custom = sorted(n for n in names if "." in n)
    if custom:
        notes.append(
            f"custom settings {', '.join(custom)} of the database may need a superuser (or "
            "GRANT SET ON PARAMETER): if refused, they are named with the statement to run; "
            "whatever reads them (an RLS policy, the application) fails until then"
        )
    return notes


def run_steps(
    conn: psycopg.Connection[Any],
    steps: list[tuple[pgstate.Step, pgstate.Step]],
    outcome: Outcome,
) -> None:
    """Each statement on its own: one that the role may not run is named in the
    summary, with the statement to run by hand (as it names the database once it is
    in place: the second of each pair), and does not undo the others."""
    for step, shown in steps:
        try:
            conn.execute(step.statement)
        except psycopg.Error as exc:
            text = exc.diag.message_primary or str(exc).strip()
            statement = shown.statement.as_string(conn)
            log.warning("restore: %s not re-applied: %s; run: %s;", step.what, text, statement)
            outcome.not_applied.append(f"{step.what} ({text}; run: {statement};)")
