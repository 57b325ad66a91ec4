"""Issue 11, disaster recovery: what "done" means, through the installed CLI against
real clusters, gpg and the S3 server on 127.0.0.1.

- the server is gone: rebuild from the bucket alone onto a new cluster with no
  application roles, and every part of the database's state equals the source;
- an in-place restore keeps the database's own state (owner, settings, ACL, comment);
- `--into ""` is a usage error that touches nothing;
- one dropped table comes back with `--table/--schema` (plain format: refused);
- `--no-owner --no-acl` onto a server whose roles differ;
- a non-superuser owner's in-place restore stops before the safety backup when it
  could not end another role's session, and says what to grant.

`test_state_snapshot_self_consistent` checks the comparison itself against a copy made
by hand with the stock tools (roles from `pg_dumpall --globals-only`)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import describe, drop_databases
from fixtures.gpgkeys import GpgKey, cleanup_home, public_only_home
from fixtures.pgcluster import PgCluster, PgNotAvailable, start_cluster
from fixtures.s3 import S3
from pgstate_support import (
    ACME_DOCUMENTS,
    APP_ROLES,
    COMMENT,
    CONTENT_SECTIONS,
    DB_SECTIONS,
    PASSWORDS,
    Host,
    assert_same_state,
    build_app_database,
    build_legacy_database,
    can_connect,
    copy_by_hand,
    create_app_roles,
    databases_of,
    differing,
    login,
    pg_target_toml,
    roles_of,
    snapshot,
)
from psycopg import sql

pytestmark = pytest.mark.postgres

TARGET = "app"
SYSTEM_DBS = ["postgres", "template0", "template1"]


def new_cluster() -> PgCluster:
    try:
        return start_cluster()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def shared() -> Iterator[PgCluster]:
    """One cluster for the same-server tests, with the application roles."""
    pg = new_cluster()
    try:
        create_app_roles(pg)
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def app_db(shared: PgCluster) -> Iterator[str]:
    """A fresh realistic database on `shared`; it and every database whose name starts
    with it (`--into`, `_pre_restore_`, `_pyops_restore_`) are dropped afterwards."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    build_app_database(shared, name)
    try:
        yield name
    finally:
        drop_databases(shared, name)


def said(proc: Any) -> str:
    return f"{proc.stdout}\n{proc.stderr}"


def pre_restore_backups(host: Host) -> list[Any]:
    listed: list[Any] = host.json("list", "--tier", "pre-restore")["backups"]
    return listed


# --- a. the server is gone ------------------------------------------------------------


def test_rebuild_from_bucket_alone(tmp_path: Path, s3: S3, gpg_home: GpgKey) -> None:
    old_pg = new_cluster()
    new_pg: PgCluster | None = None
    public = public_only_home(gpg_home)  # the backup host can encrypt, never decrypt
    custody = tmp_path / "custody"  # what the DR doc tells the operator to keep offline
    custody.mkdir(mode=0o700)
    key_file = custody / "repository.key"
    try:
        build_app_database(old_pg, "app")
        build_legacy_database(old_pg, "legacy")
        old = Host(
            tmp_path / "old",
            tmp_path / "old" / "repo",
            key_file=key_file,
            gnupghome=public.gnupghome,
            recipient=gpg_home.email,
            s3=s3,
        ).write(
            pg_target_toml("app", old_pg.dsn("app"))
            + pg_target_toml("legacy", old_pg.dsn("legacy"))
        )
        old.ok("init", "--new-key")
        assert key_file.is_file()
        backups = old.json("backup")["backups"]
        assert sorted((b["id"].split(".")[0], b["ok"], b["offsite"]) for b in backups) == [
            ("app", True, True),
            ("legacy", True, True),
        ], backups
        want_app = snapshot(old_pg, "app", logins=True)
        want_legacy = snapshot(old_pg, "legacy")

        # the disaster: the server, its data directory and the repository are gone
        old_pg.stop()
        shutil.rmtree(old.base)
        cleanup_home(public.gnupghome)

        new_pg = new_cluster()
        assert roles_of(new_pg) == [], "the new server must start without application roles"
        new = Host(
            tmp_path / "new",
            tmp_path / "new" / "repo",
            key_file=key_file,  # from custody, with the gpg secret key
            gnupghome=gpg_home.gnupghome,
            recipient=gpg_home.email,
            s3=s3,
        ).write(
            pg_target_toml("app", new_pg.dsn("app"))
            + pg_target_toml("legacy", new_pg.dsn("legacy"))
        )

        app = new.run("restore", "--remote", "--latest", "--target", "app", "--yes")
        assert app.returncode == 0, describe(app)
        role_lines = [ln for ln in said(app).splitlines() if "role" in ln.lower()]
        unlisted = [r for r in APP_ROLES if not any(r in ln for ln in role_lines)]
        assert not unlisted, f"the restore must list the roles it created; missing {unlisted}\n" + (
            describe(app)
        )
        legacy = new.run("restore", "--remote", "--latest", "--target", "legacy", "--yes")
        assert legacy.returncode == 0, describe(legacy)

        assert_same_state(
            want_app,
            snapshot(new_pg, "app", logins=True),
            "app rebuilt on a new server from the bucket alone",
            context=describe(app),
        )
        assert_same_state(
            want_legacy,
            snapshot(new_pg, "legacy"),
            "legacy (LATIN1) rebuilt on a new server from the bucket alone",
            context=describe(legacy),
        )
        # nothing to replace: no safety backup, no working copies left
        assert databases_of(new_pg) == sorted(["app", "legacy", *SYSTEM_DBS])
        assert pre_restore_backups(new) == []
    finally:
        old_pg.stop()
        if new_pg is not None:
            new_pg.stop()
        cleanup_home(public.gnupghome)


# --- b. in place ----------------------------------------------------------------------


def test_in_place_restore_keeps_database_state(
    shared: PgCluster, app_db: str, tmp_path: Path
) -> None:
    host = Host(tmp_path, tmp_path / "repo").write(pg_target_toml(TARGET, shared.dsn(app_db)))
    host.ok("backup")
    outsider = f"outsider_{uuid.uuid4().hex[:8]}"  # a role never granted CONNECT
    shared.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(outsider)))
    try:
        refused = can_connect(shared, app_db, outsider)
        assert refused is not None and "permission denied" in refused, refused
        before = snapshot(shared, app_db, logins=True)
        done = host.run("restore", "--latest", "--target", TARGET, "--yes")
        assert done.returncode == 0, describe(done)
        after = snapshot(shared, app_db, logins=True)
        assert_same_state(
            before,
            after,
            "the database's own state after an in-place restore",
            sections=(*DB_SECTIONS, "logins"),
            context=describe(done),
        )
        assert_same_state(before, after, "in-place restore", context=describe(done))
        refused = can_connect(shared, app_db, outsider)
        assert refused is not None and "permission denied" in refused, (
            f"{outsider} was never granted CONNECT, yet connects after the restore"
        )
    finally:
        shared.drop_role(outsider)


# --- c. --into "" ---------------------------------------------------------------------


def test_into_empty_refused(shared: PgCluster, app_db: str, tmp_path: Path) -> None:
    host = Host(tmp_path, tmp_path / "repo").write(pg_target_toml(TARGET, shared.dsn(app_db)))
    host.ok("backup")
    dbs = databases_of(shared)
    files = host.files()
    live = snapshot(shared, app_db)
    # an unset shell variable, quoted; a name PostgreSQL would silently cut to 63 bytes
    for into in ("", "   ", f"{app_db}_{'x' * 60}"):
        proc = host.run("restore", "--latest", "--target", TARGET, "--into", into, "--yes")
        assert proc.returncode == 2, describe(proc)
        assert "--into" in proc.stderr, describe(proc)
        assert databases_of(shared) == dbs, describe(proc)
        assert host.files() == files, describe(proc)
        assert pre_restore_backups(host) == []
    assert_same_state(live, snapshot(shared, app_db), "the live database after refused restores")


# --- d. one dropped table -------------------------------------------------------------


def test_restore_one_dropped_table(shared: PgCluster, app_db: str, tmp_path: Path) -> None:
    dsn = shared.dsn(app_db)
    host = Host(tmp_path, tmp_path / "repo").write(
        pg_target_toml(TARGET, dsn) + pg_target_toml("app-plain", dsn, fmt="plain")
    )
    host.ok("backup")
    want = snapshot(shared, app_db)["tables"]["app.customers"]
    assert want["rows"] == 2000
    shared.execute("DROP TABLE app.customers CASCADE", dbname=app_db)  # the classic accident
    live = snapshot(shared, app_db)
    dbs = databases_of(shared)
    files = host.files()
    one_table = ("--table", "customers", "--schema", "app")

    plain_into = f"{app_db}_plain"
    refused = host.run(
        "restore", "--latest", "--target", "app-plain", *one_table, "--into", plain_into, "--yes"
    )
    assert refused.returncode in (1, 2), describe(refused)
    assert "plain" in said(refused).lower(), describe(refused)
    assert databases_of(shared) == dbs, describe(refused)
    assert host.files() == files, describe(refused)

    into = f"{app_db}_restore"
    done = host.run("restore", "--latest", "--target", TARGET, *one_table, "--into", into, "--yes")
    assert done.returncode == 0, describe(done)
    got = snapshot(shared, into)
    assert got["tables"] == {"app.customers": want}, describe(done)
    assert_same_state(live, snapshot(shared, app_db), "the live database after restore --into")
    assert pre_restore_backups(host) == []


# --- e. --no-owner --no-acl onto a server whose roles differ ---------------------------


def acl_roles(item: str) -> set[str]:
    """The grantee and grantor of one snapshot ACL item ('grantee:PRIV by grantor')."""
    grantee = item.split(":", 1)[0]
    grantor = item.rsplit(" by ", 1)[1]
    return {grantee, grantor}


def test_restore_no_owner_no_acl(shared: PgCluster, app_db: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Host(tmp_path / "here", repo).write(pg_target_toml(TARGET, shared.dsn(app_db))).ok("backup")
    want = snapshot(shared, app_db)
    other = new_cluster()  # no application roles
    try:
        there = Host(tmp_path / "there", repo).write(pg_target_toml(TARGET, other.dsn(app_db)))
        done = there.run(
            "restore",
            "--latest",
            "--target",
            TARGET,
            "--no-owner",
            "--no-acl",
            "--into",
            "x",
            "--yes",
        )
        assert done.returncode == 0, describe(done)
        got = snapshot(other, "x")
        assert_same_state(
            want,
            got,
            "content restored with --no-owner --no-acl",
            sections=("tables", "sequences", "policies", "row_security"),
        )
        assert [lo[1:4] for lo in got["large_objects"]] == [lo[1:4] for lo in want["large_objects"]]

        me = other.superuser
        assert (
            "schema app" in got["owners"]
            and "function app.customer_total(integer)" in got["owners"]
        ), got["owners"]
        # public belongs to pg_database_owner in every database since PostgreSQL 15
        foreign = {k: v for k, v in got["owners"].items() if v not in (me, "pg_database_owner")}
        assert foreign == {}, f"objects not owned by the restoring role {me}: {foreign}"
        assert {lo[0] for lo in got["large_objects"]} == {me}

        app_roles = set(APP_ROLES)
        grants = {
            k: v for k, v in got["grants"].items() if any(acl_roles(i) & app_roles for i in v)
        }
        assert grants == {}, f"--no-acl, yet grants naming application roles: {grants}"
        assert not [k for k in got["grants"] if k.startswith("default privileges")], got["grants"]
        lo_acls = [i for lo in got["large_objects"] for i in lo[4] if acl_roles(i) & app_roles]
        assert lo_acls == [], lo_acls
        db_acl = [i for i in got["database_acl"] if acl_roles(i) & app_roles]
        assert db_acl == [], db_acl
    finally:
        other.stop()


# --- f. a non-superuser owner restoring in place --------------------------------------

OWNER_PASSWORD_ENV = "PYOPS_TEST_APP_OWNER_PASSWORD"


def test_non_superuser_in_place_restore_preflight(
    shared: PgCluster, app_db: str, tmp_path: Path
) -> None:
    host = Host(
        tmp_path, tmp_path / "repo", env={OWNER_PASSWORD_ENV: PASSWORDS["app_owner"]}
    ).write(
        pg_target_toml(
            TARGET,
            shared.dsn(app_db, user="app_owner", tcp=True),
            password_env=OWNER_PASSWORD_ENV,
        )
    )
    host.ok("backup")
    want = snapshot(shared, app_db)
    shared.execute(
        "UPDATE app.documents SET title = 'after the backup' WHERE id = 3", dbname=app_db
    )
    live = snapshot(shared, app_db)
    dbs = databases_of(shared)
    files = host.files()
    reader = login(shared, app_db, "app_ro")  # a reporting session of another role
    try:
        stopped = host.run("restore", "--latest", "--yes")
        assert pre_restore_backups(host) == [], (
            "a safety backup was taken for a restore that cannot finish\n" + describe(stopped)
        )
        assert databases_of(shared) == dbs, "databases were created or left\n" + describe(stopped)
        assert host.files() == files, describe(stopped)
        assert stopped.returncode == 1, describe(stopped)
        text = said(stopped)
        assert "pg_signal_backend" in text and "grant" in text.lower(), describe(stopped)
        assert "unexpected error" not in text.lower(), describe(stopped)
        assert reader.execute("SELECT 1").fetchone() == (1,), "the reader's session was ended"
        assert_same_state(
            live,
            snapshot(shared, app_db),
            "the live database after a refused restore",
            sections=(*CONTENT_SECTIONS, *DB_SECTIONS),
        )

        shared.execute("GRANT pg_signal_backend TO app_owner")
        done = host.run("restore", "--latest", "--yes")
        assert done.returncode == 0, describe(done)
        got = snapshot(shared, app_db)
        assert_same_state(
            want,
            got,
            "in-place restore by the owner",
            sections=(
                *CONTENT_SECTIONS,
                "owners",
                "grants",
                "policies",
                "database",
                "database_acl",
            ),
            context=describe(done),
        )
        # a non-superuser may not set every setting (a custom one like app.tenant, one
        # of another role): each one not re-applied is named, for the operator to run
        for role, settings in want["database_settings"].items():
            for setting in settings:
                if setting not in got["database_settings"].get(role, []):
                    name = setting.split("=", 1)[0]
                    assert name in done.stdout, f"{role}: {setting} lost silently\n" + (
                        describe(done)
                    )
        # ... with commands that name the database as it is now called
        assert "_pyops_restore_" not in done.stdout, describe(done)
        assert got["database"]["comment"] == COMMENT
    finally:
        with contextlib.suppress(Exception):
            reader.close()
        shared.execute("REVOKE pg_signal_backend FROM app_owner")


# --- the comparison itself ------------------------------------------------------------


def test_state_snapshot_self_consistent() -> None:
    src = new_cluster()
    dst: PgCluster | None = None
    try:
        build_app_database(src, "app")
        build_legacy_database(src, "legacy")
        first = snapshot(src, "app", logins=True)
        assert_same_state(first, snapshot(src, "app", logins=True), "two snapshots of one database")
        legacy = snapshot(src, "legacy")

        # the fixture is what the DR tests rely on
        assert first["database"]["owner"] == "app_owner"
        assert first["database"]["comment"] == COMMENT
        assert first["database_settings"] == {
            "(every role)": sorted(
                [
                    "search_path=app, public",
                    "statement_timeout=5min",
                    "app.tenant=acme",
                    "DateStyle=ISO, DMY",
                ]
            ),
            "app_ro": ["work_mem=8MB"],
        }
        assert not [i for i in first["database_acl"] if i.startswith("PUBLIC:CONNECT")]
        assert "app_ro:CONNECT by app_owner" in first["database_acl"]
        assert first["sequences"]["app.customers_id_seq"] == {"last_value": 5000, "is_called": True}
        assert first["sequences"]["app.orders_id_seq"] == {"last_value": 7777, "is_called": True}
        assert first["sequences"]["app.invoice_no"] == {"last_value": 1000, "is_called": False}
        assert sorted(lo[0] for lo in first["large_objects"]) == ["app_owner", "app_owner"]
        assert any("app_ro:SELECT by app_owner" in lo[4] for lo in first["large_objects"])
        assert set(first["owners"].values()) == {"app_owner", "pg_database_owner"}
        assert list(first["policies"]) == ["app.documents tenant_isolation"]
        assert first["row_security"]["app.documents"] == {"enabled": True, "forced": False}
        assert first["roles"]["memberships"][0]["role"] == "reporting"
        assert first["logins"]["app_ro settings"][:2] == ["app, public", "8MB"]
        assert first["logins"]["app_ro settings"][-1] == "2024-04-03"  # DMY
        assert first["logins"]["app_rls_user documents"] == [ACME_DOCUMENTS, "acme", "acme"]
        assert sum(t["rows"] for t in first["tables"].values()) == 5600
        assert legacy["database"]["encoding_name"] == "LATIN1"
        assert legacy["database"]["datcollate"] == "C"
        assert legacy["tables"]["public.kunden"]["rows"] == 500
        with src.connect("legacy") as conn:
            row = conn.execute("SELECT convert_to(name, 'LATIN1') FROM kunden WHERE id = 1")
            assert row.fetchone() == (b"M\xfcller",)  # Latin-1 bytes, not UTF-8

        # a copy made by hand with the stock tools compares equal ...
        dst = new_cluster()
        copy_by_hand(src, dst, ["app", "legacy"])
        assert_same_state(first, snapshot(dst, "app", logins=True), "app copied by hand")
        assert_same_state(legacy, snapshot(dst, "legacy"), "legacy copied by hand")

        # ... and what a restore can lose shows, with a readable diff
        dst.psql(
            "ALTER DATABASE app RESET statement_timeout;\n"
            "GRANT CONNECT ON DATABASE app TO PUBLIC;\n"
            "ALTER ROLE app_ro IN DATABASE app RESET work_mem;\n"
        )
        dst.psql(
            "SELECT lo_from_bytea(0, 'x'::bytea);\nSELECT setval('app.invoice_no', 1000, true);\n",
            dbname="app",
        )
        broken = snapshot(dst, "app", logins=True)
        assert differing(first, broken) == [
            "database_acl",
            "database_settings",
            "large_objects",
            "logins",
            "schema",
            "sequences",
        ]
        with pytest.raises(
            AssertionError, match=r"(?s)== database_acl ==.*\n\+PUBLIC:CONNECT by app_owner"
        ):
            assert_same_state(first, broken, "broken copy")
        with pytest.raises(AssertionError, match="statement_timeout=5min"):
            assert_same_state(first, broken, "broken copy", sections=DB_SECTIONS)
    finally:
        src.stop()
        if dst is not None:
            dst.stop()
