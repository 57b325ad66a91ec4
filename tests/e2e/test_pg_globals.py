"""The roles and database state every PostgreSQL backup keeps beside its dump: written,
encrypted, checked by verify, refused when altered, and honest about passwords it
could not read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from e2e_support import Repo, compression, describe, encryption_public, pg_target
from fixtures.gpgkeys import GpgKey
from fixtures.pgcluster import PgCluster

from pyops.errors import PyopsError
from pyops.manifest import Manifest
from pyops.sources import postgres

TARGET = "app-db"


def decrypted(path: Path, gpg_home: GpgKey) -> dict[str, object]:
    import subprocess

    raw = subprocess.run(
        ["gpg", "--homedir", str(gpg_home.gnupghome), "--batch", "--quiet", "--decrypt", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    plain = subprocess.run(["zstd", "-d", "-c"], input=raw, capture_output=True, check=True)
    data: dict[str, object] = json.loads(plain.stdout)
    return data


def test_a_backup_keeps_roles_and_database_state_encrypted(
    pg: PgCluster, src_db: str, repo: Repo, gpg_home: GpgKey, pg_role: tuple[str, str]
) -> None:
    role, _ = pg_role
    pg.psql(
        f"ALTER DATABASE {src_db} OWNER TO {role};"
        f"ALTER DATABASE {src_db} SET search_path = app, public;"
        f"REVOKE CONNECT ON DATABASE {src_db} FROM PUBLIC;"
        f"COMMENT ON DATABASE {src_db} IS 'kept';"
    )
    repo.write(
        compression("zstd", 1)
        + encryption_public([gpg_home.fingerprint], gpg_home.gnupghome, None)
        + pg_target(TARGET, pg.dsn(src_db))
    )
    repo.ok("backup")
    (m,) = repo.manifests()
    entry = m["attachments"]["globals"]
    assert entry["name"] == f"{m['id']}.globals.json.zst.gpg"
    path = Path(m["_dir"]) / entry["name"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"search_path" not in path.read_bytes()  # encrypted
    data = decrypted(path, gpg_home)
    db = data["database"]
    assert isinstance(db, dict)
    assert db["owner"] == role and db["comment"] == "kept"
    assert db["settings"] == ["search_path=app, public"]
    assert {"grantee": "PUBLIC", "privilege": "CONNECT", "grantable": False} not in db["acl"]
    roles = {r["name"]: r for r in data["roles"]}  # type: ignore[union-attr]
    assert roles[role]["password"].startswith("SCRAM-SHA-256$")  # a superuser backed up
    assert data["passwords"] is True and "notes" not in entry

    verified = repo.json("verify", "--deep")["results"]
    assert [r["ok"] for r in verified] == [True]

    # an altered attachment fails verify, naming it, and is never restored from
    data_ = bytearray(path.read_bytes())
    data_[-1] ^= 0xFF  # always a different byte
    path.write_bytes(bytes(data_))
    proc = repo.run("verify")
    assert proc.returncode == 1, describe(proc)
    assert "attachment globals" in proc.stdout + proc.stderr
    proc = repo.run("restore", "--latest", "--target", TARGET, "--into", f"{src_db}_x", "--yes")
    assert proc.returncode == 1, describe(proc)
    assert "attachment" in proc.stderr
    assert f"{src_db}_x" not in pg.psql("SELECT datname FROM pg_database")


def test_a_backup_role_that_may_not_read_password_hashes_says_so(
    pg: PgCluster, src_db: str, repo: Repo, pg_role: tuple[str, str]
) -> None:
    role, password = pg_role
    pg.psql(f"ALTER DATABASE {src_db} OWNER TO {role}")
    repo.write(
        compression("none")
        + pg_target(TARGET, pg.dsn(src_db, user=role, tcp=True), password_env="PW")
    )
    repo.env = {"PW": password}
    repo.ok("backup")
    (m,) = repo.manifests()
    entry = m["attachments"]["globals"]
    assert any("passwords were not saved" in n for n in entry["notes"])
    data = json.loads((Path(m["_dir"]) / entry["name"]).read_bytes())
    assert data["passwords"] is False
    assert all(r["password"] is None for r in data["roles"])
    assert password not in json.dumps(data)


def test_pg_restore_older_than_the_dump_is_named_before_anything(pg: PgCluster) -> None:
    newest = postgres.newest_client()
    manifest = Manifest.parse(
        json.dumps(
            {
                "id": "a.daily.20260101T000000Z",
                "target": "a",
                "type": "postgres",
                "tier": "daily",
                "host": "h",
                "started_at": "2026-01-01T00:00:00+00:00",
                "finished_at": "2026-01-01T00:00:01+00:00",
                "duration_s": 1.0,
                "pyops_version": "0",
                "tools": {"pg_dump": "pg_dump (PostgreSQL) 99.1"},
                "source": {},
                "format": "custom",
                "compression": {"algorithm": "none"},
                "encryption": {"mode": "none"},
                "artifact": {
                    "name": "a.daily.20260101T000000Z.pgdump",
                    "bytes": 1,
                    "sha256": "a" * 64,
                },
            }
        ).encode(),
        "test",
    )
    with pytest.raises(PyopsError, match=r"written by pg_dump 99 .*install postgresql-client-99"):
        postgres.check_client(manifest)
    assert postgres.check_client(None) == newest
    assert os.access(str(newest / "pg_restore") if newest else "/usr/bin/pg_restore", os.X_OK)
