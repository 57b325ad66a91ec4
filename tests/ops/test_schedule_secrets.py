"""Issue 10 row 6: `pyops schedule run` withholds the database passwords and the AWS
keys from its own children, and hands each job exactly the ones its command needs.

The real scheduler runs a real backup job (the catch-up of a missed run) of a
PostgreSQL target whose password comes from `password_env`, over password (scram)
authentication, with an offsite copy in the (moto) bucket: the backup and its upload
only succeed if the job got both the password and the AWS keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config
from fixtures.pgcluster import PgCluster
from fixtures.s3 import CREDS, S3

from pyops import config as cfg
from pyops import secrets
from pyops.calendar import ALL_JOBS, BACKUP_AUTO, DRILL, HEALTH, MAINTENANCE
from pyops.scheduler import USES, job_secrets

PW_ENV = "PYOPS_SCHED_TEST_PASSWORD"
AWS = list(secrets.AWS_KEYS)


def _config(bucket: str = "") -> cfg.Config:
    data: dict[str, object] = {
        "targets": [
            {"name": "db", "type": "postgres", "dsn": "dbname=app", "password_env": "DB_PW"},
            {"name": "other", "type": "postgres", "dsn": "dbname=x", "password_env": "X_PW"},
            {"name": "nopw", "type": "postgres", "dsn": "dbname=y"},
            {"name": "media", "type": "files", "paths": ["/srv"]},
        ]
    }
    if bucket:
        data["offsite"] = {"bucket": bucket}
    return cfg.parse(data)


def test_every_job_says_which_secrets_it_uses() -> None:
    assert {job.args[0] for job in ALL_JOBS} <= set(USES)


def test_each_job_gets_exactly_the_secrets_its_command_needs() -> None:
    offsite = _config("bucket")
    assert job_secrets(BACKUP_AUTO, offsite) == ["DB_PW", "X_PW", *AWS]
    assert job_secrets(HEALTH, offsite) == ["DB_PW", "X_PW", *AWS]
    assert job_secrets(DRILL, offsite) == ["DB_PW", "X_PW", *AWS]
    assert job_secrets(MAINTENANCE, offsite) == ["DB_PW", "X_PW"]  # never the bucket
    assert job_secrets(BACKUP_AUTO, _config()) == ["DB_PW", "X_PW"]  # no bucket configured


def test_withheld_secrets_come_back_only_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_withheld", {})
    monkeypatch.setenv("DB_PW", "s3cret")
    monkeypatch.setenv("X_PW", "other")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("PYOPS_UNRELATED", "kept")
    secrets.withhold(["DB_PW", "X_PW", "AWS_SECRET_ACCESS_KEY", "NOT_SET"])
    try:
        assert "DB_PW" not in os.environ and secrets.get("DB_PW") == "s3cret"
        env = secrets.environment(["DB_PW", "NOT_SET"])
        assert env["DB_PW"] == "s3cret" and env["PYOPS_UNRELATED"] == "kept"
        assert "X_PW" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "NOT_SET" not in env
    finally:
        os.environ.update(secrets._withheld)  # monkeypatch then restores the originals


@pytest.fixture
def role_db(pg: PgCluster) -> Iterator[tuple[str, str, str]]:
    """(role, password, database): a database owned by a password-only role."""
    role, password = f"r_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    db = f"t_{uuid.uuid4().hex[:12]}"
    pg.create_role(role, password)
    pg.create_database(db, owner=role)
    pg.execute(
        f"SET ROLE {role}; CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g",
        dbname=db,
    )
    try:
        yield role, password, db
    finally:
        pg.drop_database(db)
        pg.drop_role(role)


def test_schedule_run_backs_up_a_password_env_target_with_its_offsite_copy(
    tmp_path: Path, pg: PgCluster, role_db: tuple[str, str, str], s3: S3
) -> None:
    role, password, db = role_db
    assert PW_ENV not in os.environ
    assert all(os.environ.get(k) == v for k, v in CREDS.items())  # the bucket's keys
    repo = tmp_path / "repo"
    dsn = pg.dsn(db, user=role, tcp=True)
    config = write_config(
        tmp_path / "pyops.toml",
        repo,
        f'[[targets]]\nname = "app-db"\ntype = "postgres"\ndsn = "{dsn}"\n'
        f'password_env = "{PW_ENV}"\n\n[compression]\nalgorithm = "zstd"\nlevel = 1\n\n'
        + s3.config(),
    )
    # the backup job last ran long ago: `schedule run` catches it up at start
    state = repo / ".pyops" / "schedule.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({BACKUP_AUTO.name: "2000-01-01T00:00:00+00:00"}))

    proc = subprocess.Popen(
        [PYOPS, "--config", str(config), "schedule", "run"],
        env={**os.environ, PW_ENV: password},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            last = json.loads(state.read_text()).get(BACKUP_AUTO.name, "")
            if not last.startswith("2000-"):
                break  # the job finished (the scheduler records it afterwards)
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert f"{BACKUP_AUTO.name} finished with exit code 0" in stderr, stderr
    assert "is not set" not in stderr and "credentials" not in stderr.lower(), stderr

    listed = run_pyops(config, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    backups = json.loads(listed.stdout)["backups"]
    assert [b["target"] for b in backups] == ["app-db"], backups
    assert any(backups[0]["id"] in key for key in s3.object_keys()), s3.object_keys()
