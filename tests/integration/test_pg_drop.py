"""pgdrop.drop against a real server, as the non-superuser owner pyops runs as: other
roles' sessions, its own, a superuser's, and the retry while a session lingers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from fixtures.pgcluster import PgCluster
from psycopg import sql

from pyops.errors import PyopsError
from pyops.sources import pgdrop

# a plain DROP DATABASE itself waits up to 5 s for sessions to leave: the shortest
# bounded attempt is that long, whatever timeout_s says
SHORT = 1.0


@dataclass
class Roles:
    """An owner role (LOGIN CREATEDB, not superuser), another role, and their database."""

    pg: PgCluster
    owner: str
    other: str
    db: str
    held: list[psycopg.Connection[Any]] = field(default_factory=list)

    def connect(self, user: str, dbname: str = "postgres") -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.pg.dsn(dbname, user=user), autocommit=True)
        self.held.append(conn)
        return conn

    def session_in_db(self, user: str) -> tuple[psycopg.Connection[Any], int]:
        conn = self.connect(user, self.db)
        return conn, conn.info.backend_pid

    def exists(self) -> bool:
        with self.pg.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db,))
            return row.fetchone() is not None

    def alive(self, pid: int) -> bool:
        with self.pg.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            return row.fetchone() is not None


@pytest.fixture
def roles(pg: PgCluster) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:8]
    r = Roles(pg, owner=f"drop_owner_{tag}", other=f"drop_ro_{tag}", db=f"drop_db_{tag}")
    pg.create_role(r.owner, "unused")
    pg.create_role(r.other, "unused")
    pg.create_database(r.db, owner=r.owner)
    try:
        yield r
    finally:
        for conn in r.held:
            conn.close()
        pg.drop_database(r.db)
        pg.drop_role(r.owner)
        pg.drop_role(r.other)


def test_another_roles_session_without_pg_signal_backend_is_named(roles: Roles) -> None:
    _, pid = roles.session_in_db(roles.other)
    owner = roles.connect(roles.owner)

    t0 = time.monotonic()
    with pytest.raises(PyopsError) as caught:
        pgdrop.drop(owner, roles.db, timeout_s=SHORT)
    took = time.monotonic() - t0
    message = str(caught.value)

    assert took < 15, took  # bounded: one FORCE, then plain DROPs for about timeout_s
    assert f"cannot drop database {roles.db}" in message
    assert f"pid {pid} (user {roles.other})" in message, message
    assert f'GRANT pg_signal_backend TO "{roles.owner}";' in message, message
    assert f'DROP DATABASE "{roles.db}" WITH (FORCE);' in message, message
    assert "ALLOW_CONNECTIONS false" in message, message
    # nothing it may not touch was touched; the database refuses newcomers meanwhile
    assert roles.exists()
    assert roles.alive(pid)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(roles.pg.dsn(roles.db, user=roles.other)).close()


def test_another_roles_session_with_pg_signal_backend_is_ended(roles: Roles) -> None:
    roles.pg.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(roles.owner)))
    _, pid = roles.session_in_db(roles.other)
    pgdrop.drop(roles.connect(roles.owner), roles.db)
    assert not roles.exists()
    assert not roles.alive(pid)


def test_its_own_sessions_are_ended(roles: Roles) -> None:
    _, first = roles.session_in_db(roles.owner)
    busy = roles.connect(roles.owner, roles.db)
    busy.execute("BEGIN")
    busy.execute("CREATE TABLE t AS SELECT 1 AS x")  # idle in transaction, holding locks
    pgdrop.drop(roles.connect(roles.owner), roles.db)
    assert not roles.exists()
    assert not roles.alive(first)


def test_a_superusers_session_needs_a_superuser(roles: Roles) -> None:
    roles.pg.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(roles.owner)))
    admin = roles.pg.connect(roles.db)
    roles.held.append(admin)
    pid = admin.info.backend_pid
    with pytest.raises(PyopsError) as caught:
        pgdrop.drop(roles.connect(roles.owner), roles.db, timeout_s=SHORT)
    message = str(caught.value)
    assert f"pid {pid} (user postgres (superuser))" in message, message
    assert "only a superuser can end a superuser's session" in message, message
    assert "GRANT pg_signal_backend" not in message, message  # it has it: no use
    assert roles.exists() and roles.alive(pid)


def test_it_retries_until_a_lingering_session_leaves(roles: Roles) -> None:
    """A session the owner may not end stays past one DROP's own 5 s wait, then
    leaves: a later attempt drops the database. The owner's own session there (which
    WITH (FORCE) would have ended, had it been allowed to) is ended on the way."""
    _, own = roles.session_in_db(roles.owner)
    lingering, _ = roles.session_in_db(roles.other)
    roles.held.remove(lingering)
    closer = threading.Timer(6.5, lingering.close)
    closer.start()
    try:
        t0 = time.monotonic()
        pgdrop.drop(roles.connect(roles.owner), roles.db, timeout_s=20)
        took = time.monotonic() - t0
    finally:
        closer.cancel()
        lingering.close()
    assert not roles.exists()
    assert not roles.alive(own)
    assert 6 < took < 20, took  # more than one attempt, well inside the bound


def test_not_the_owner_is_refused_at_once(roles: Roles) -> None:
    t0 = time.monotonic()
    with pytest.raises(PyopsError) as caught:
        pgdrop.drop(roles.connect(roles.other), roles.db)
    assert time.monotonic() - t0 < 2  # no retry can help
    message = str(caught.value)
    assert f"belongs to role {roles.owner} and pyops connects as {roles.other}" in message
    assert f'DROP DATABASE "{roles.db}" WITH (FORCE);' in message
    assert roles.exists()


def test_a_missing_database_is_nothing_to_do(roles: Roles) -> None:
    pgdrop.drop(roles.connect(roles.owner), f"{roles.db}_never_made")
