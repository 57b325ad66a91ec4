"""Prove the test helpers drive real PostgreSQL and GnuPG processes."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from fixtures.gpgkeys import GpgError, GpgKey, cleanup_home, gpg, kill_agent, public_only_home
from fixtures.pgcluster import PgCluster

PLAINTEXT = b"pyops smoke test \x00\x01\x02 payload\n" * 64


# --------------------------------------------------------------------------- postgres


@pytest.mark.postgres
def test_cluster_is_up_and_configured(pg: PgCluster) -> None:
    assert pg.psql("select 1") == "1\n"
    assert pg.tcp_host == "127.0.0.1"
    assert pg.superuser == "postgres"
    assert Path(pg.host, f".s.PGSQL.{pg.port}").exists()
    settings = pg.psql(
        "select name || '=' || setting from pg_settings where name in "
        "('shared_preload_libraries','fsync','max_connections','listen_addresses') order by name"
    ).split()
    assert settings == [
        "fsync=off",
        "listen_addresses=127.0.0.1",
        "max_connections=50",
        "shared_preload_libraries=pg_stat_statements",
    ]
    assert pg.psql("show server_encoding") == "UTF8\n"
    if os.geteuid() == 0:
        # The server must not run as root.
        assert pg.data_dir.stat().st_uid != 0


@pytest.mark.postgres
def test_pg_db_is_fresh_and_usable(pg: PgCluster, pg_db: str) -> None:
    assert pg.psql("select current_database()", dbname=pg_db) == f"{pg_db}\n"
    pg.psql(
        "create extension pg_stat_statements;"
        "create table t (id int primary key, v text);"
        "insert into t values (1, 'a'), (2, 'b');",
        dbname=pg_db,
    )
    assert pg.psql("select count(*) from t", dbname=pg_db) == "2\n"
    with psycopg.connect(pg.dsn(pg_db)) as conn:
        row = conn.execute("select count(*) from pg_stat_statements").fetchone()
        assert row is not None and row[0] > 0


@pytest.mark.postgres
def test_psql_errors_raise(pg: PgCluster) -> None:
    with pytest.raises(RuntimeError, match="psql failed"):
        pg.psql("select * from no_such_table")


@pytest.mark.postgres
def test_tcp_password_auth(pg: PgCluster, pg_db: str) -> None:
    pg.create_role("smoke_app", "s3cret-pw")
    try:
        dsn = pg.dsn(pg_db, user="smoke_app", tcp=True)
        assert "password" not in dsn
        assert "127.0.0.1" in dsn
        with psycopg.connect(dsn, password="s3cret-pw") as conn:
            row = conn.execute(
                "select current_user, inet_server_addr()::text, "
                "(select rolsuper from pg_roles where rolname = current_user), "
                "(select rolcreatedb from pg_roles where rolname = current_user)"
            ).fetchone()
        assert row == ("smoke_app", "127.0.0.1/32", False, True)

        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn, password="wrong-pw").close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, password="").close()
        # The superuser has no password, so TCP login as postgres is refused too.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn(pg_db, tcp=True), password="anything").close()
    finally:
        pg.drop_role("smoke_app")


@pytest.mark.postgres
def test_drop_database(pg: PgCluster) -> None:
    pg.create_database("smoke_drop_me")
    with psycopg.connect(pg.dsn("smoke_drop_me")):
        # An open connection must not block the drop (WITH (FORCE)).
        pg.drop_database("smoke_drop_me")
    assert pg.psql("select count(*) from pg_database where datname = 'smoke_drop_me'") == "0\n"


# --------------------------------------------------------------------------- gpg


def _encrypt(home: GpgKey, src: Path, dst: Path) -> None:
    gpg(home.gnupghome, ["--yes", "--encrypt", "-r", home.fingerprint, "-o", str(dst), str(src)])


def test_gpg_key_without_passphrase(gpg_home: GpgKey, tmp_path: Path) -> None:
    assert len(gpg_home.fingerprint) == 40
    assert gpg_home.passphrase is None
    assert gpg_home.gnupghome.stat().st_mode & 0o777 == 0o700
    assert len(str(gpg_home.gnupghome)) < 40

    src = tmp_path / "plain.bin"
    src.write_bytes(PLAINTEXT)
    enc = tmp_path / "plain.bin.gpg"
    _encrypt(gpg_home, src, enc)
    assert enc.read_bytes() != PLAINTEXT

    out = gpg(gpg_home.gnupghome, ["--decrypt", str(enc)]).stdout
    assert out == PLAINTEXT


def test_gpg_key_algorithms(gpg_home: GpgKey) -> None:
    out = gpg(gpg_home.gnupghome, ["--with-colons", "--list-keys", gpg_home.fingerprint])
    lines = [ln.split(":") for ln in out.stdout.decode().splitlines()]
    pub = next(f for f in lines if f[0] == "pub")
    sub = next(f for f in lines if f[0] == "sub")
    assert pub[3] == "22" and pub[16] == "ed25519"  # EdDSA
    assert sub[3] == "18" and sub[16] == "cv25519"  # ECDH
    assert "e" in sub[11]


def test_gpg_protected_key(gpg_home_protected: GpgKey, tmp_path: Path) -> None:
    key = gpg_home_protected
    assert key.passphrase
    src = tmp_path / "plain.bin"
    src.write_bytes(PLAINTEXT)
    enc = tmp_path / "plain.bin.gpg"
    _encrypt(key, src, enc)

    loopback = ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
    with pytest.raises(GpgError):
        gpg(key.gnupghome, [*loopback, "--decrypt", str(enc)], input="wrong passphrase\n")

    out = gpg(key.gnupghome, [*loopback, "--decrypt", str(enc)], input=key.passphrase + "\n")
    assert out.stdout == PLAINTEXT

    # gpg-agent must not have cached the passphrase: wrong/absent one still fails,
    # also after restarting the agent.
    with pytest.raises(GpgError):
        gpg(key.gnupghome, [*loopback, "--decrypt", str(enc)], input="wrong passphrase\n")
    with pytest.raises(GpgError):
        gpg(key.gnupghome, ["--decrypt", str(enc)])
    kill_agent(key.gnupghome)
    out = gpg(key.gnupghome, [*loopback, "--decrypt", str(enc)], input=key.passphrase + "\n")
    assert out.stdout == PLAINTEXT


def test_public_only_home(gpg_home_protected: GpgKey, tmp_path: Path) -> None:
    key = gpg_home_protected
    backup_host = public_only_home(key)
    try:
        assert backup_host.gnupghome != key.gnupghome
        assert not backup_host.has_secret
        secrets = gpg(backup_host.gnupghome, ["--with-colons", "--list-secret-keys"])
        assert b"sec:" not in secrets.stdout

        src = tmp_path / "db.dump"
        src.write_bytes(PLAINTEXT)
        enc = tmp_path / "db.dump.gpg"
        _encrypt(backup_host, src, enc)  # no --trust-model needed

        with pytest.raises(GpgError):
            gpg(backup_host.gnupghome, ["--decrypt", str(enc)])

        assert key.passphrase is not None
        out = gpg(
            key.gnupghome,
            ["--pinentry-mode", "loopback", "--passphrase-fd", "0", "--decrypt", str(enc)],
            input=key.passphrase + "\n",
        )
        assert out.stdout == PLAINTEXT
    finally:
        cleanup_home(backup_host.gnupghome)
