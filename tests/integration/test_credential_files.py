"""Credentials as files, through the real CLI: `password_file` (and systemd's `%d/NAME`
resolved in $CREDENTIALS_DIRECTORY) against the throwaway cluster's TCP port with a
scram password; the S3 key files against moto on 127.0.0.1 with IAM authentication
on; `pyops --version`; shell completion. Nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.cli import PYOPS, write_config
from fixtures.pgcluster import PgCluster
from fixtures.s3 import S3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # the /proc watcher
from e2e_support import ProcWatcher, drop_databases

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the mode checks refuse as root only")


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def pyops_env(**extra: str) -> dict[str, str]:
    """Our environment without AWS keys or a credentials directory, plus `extra`."""
    drop = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "CREDENTIALS_DIRECTORY"}
    return {**env, **extra}


def run(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYOPS, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env or pyops_env(),
        timeout=180,
        check=False,
    )


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def pg_config(tmp_path: Path, dsn: str, password_line: str) -> Path:
    body = (
        '[compression]\nalgorithm = "zstd"\nlevel = 1\nthreads = 1\n\n'
        f'[[targets]]\nname = "app-db"\ntype = "postgres"\ndsn = {json.dumps(dsn)}\n'
        f"{password_line}\n"
    )
    return write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)


def backups_in(repo: Path) -> list[Path]:
    return sorted(repo.glob("*/*/*.manifest.json")) if repo.exists() else []


# --- PostgreSQL: password_file --------------------------------------------------------


@pytest.fixture
def role_db(pg: PgCluster) -> Iterator[tuple[str, str, str]]:
    """(role, password, database): a LOGIN role with a scram password owning a database
    with 40,000 rows (pg_dump runs long enough for the /proc watcher to see it)."""
    role, password = f"r_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    db = f"t_{uuid.uuid4().hex[:12]}"
    pg.create_role(role, password)
    pg.create_database(db, owner=role)
    pg.psql(
        f"""SET ROLE "{role}";
        CREATE TABLE filler (id int PRIMARY KEY, v text);
        INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 40000) g;""",
        dbname=db,
    )
    try:
        yield role, password, db
    finally:
        drop_databases(pg, db)
        pg.drop_role(role)


def count_rows(pg: PgCluster, db: str) -> int:
    return int(pg.psql("SELECT count(*) FROM filler", dbname=db).strip())


def test_password_file_backs_up_and_restores_never_on_argv_or_in_logs(
    pg: PgCluster, role_db: tuple[str, str, str], tmp_path: Path
) -> None:
    role, password, db = role_db
    pwfile = secret_file(tmp_path / "secrets" / "app-db.password", password)
    config = pg_config(
        tmp_path, pg.dsn(db, user=role, tcp=True), f"password_file = {json.dumps(str(pwfile))}"
    )
    argv = [PYOPS, "--config", str(config), "-v"]  # -v: every command line is logged
    with ProcWatcher([password], password) as backup_watch:
        backup = backup_watch.run([*argv, "backup"], pyops_env())
    assert backup.returncode == 0, said(backup)
    into = f"{db}_into"
    with ProcWatcher([password], password) as restore_watch:
        restore = restore_watch.run(
            [*argv, "restore", "--latest", "--into", into, "--yes"], pyops_env()
        )
    assert restore.returncode == 0, said(restore)
    assert count_rows(pg, into) == 40000

    for watch, proc, tool in (
        (backup_watch, backup, "pg_dump"),
        (restore_watch, restore, "pg_restore"),
    ):
        assert watch.argv_leaks == [], watch.argv_leaks
        assert tool in watch.tools_seen(), (watch.tools_seen(), watch.samples)
        assert tool in watch.holders(), watch.sightings  # it reached libpq by environment
        assert not [s for s in watch.sightings if s.tool == "zstd" and s.secret_in_env]
        assert password not in proc.stdout + proc.stderr
    secret_file(pwfile, "not-the-password")
    rejected = run(config, "backup")
    assert rejected.returncode == 1, said(rejected)
    assert f"password rejected for {role}@127.0.0.1" in rejected.stderr
    assert f"check password_file ({pwfile}), ~/.pgpass or PGPASSFILE" in rejected.stderr
    leaked = [
        p
        for p in (tmp_path / "repo").rglob("*")
        if p.is_file() and password.encode() in p.read_bytes()
    ]
    assert leaked == []


def test_a_systemd_credential_is_read_from_credentials_directory(
    pg: PgCluster, role_db: tuple[str, str, str], tmp_path: Path
) -> None:
    """`%d/NAME`: $CREDENTIALS_DIRECTORY/NAME, as a unit with LoadCredential= sees it;
    backup, health, db report and maintenance all reach the database with it."""
    role, password, db = role_db
    name = f"pyops-test-{uuid.uuid4().hex[:8]}.password"  # not in /etc/credstore
    creds = tmp_path / "credentials"
    secret_file(creds / name, password, mode=0o400)  # as systemd leaves it
    config = pg_config(tmp_path, pg.dsn(db, user=role, tcp=True), f'password_file = "%d/{name}"')
    under_unit = pyops_env(CREDENTIALS_DIRECTORY=str(creds))

    backup = run(config, "backup", env=under_unit)
    assert backup.returncode == 0, said(backup)
    health = run(config, "health", "--check", "database", env=under_unit)
    assert health.returncode == 0, said(health)
    report = run(config, "db", "report", "--section", "connections", env=under_unit)
    assert report.returncode == 0, said(report)
    maintenance = run(config, "maintenance", "--operation", "analyze", env=under_unit)
    assert maintenance.returncode == 0, said(maintenance)
    for proc in (backup, health, report, maintenance):
        assert password not in proc.stdout + proc.stderr
    made = backups_in(tmp_path / "repo")
    assert len(made) == 1

    # outside a unit: %d/ means the credential store, where it is not: exit 2, nothing made
    outside = run(config, "backup")
    assert outside.returncode == 2, said(outside)
    assert f"targets.app-db.password_file: %d/{name} (" in outside.stderr
    assert "$CREDENTIALS_DIRECTORY is not set" in outside.stderr
    restore = run(config, "restore", "--latest", "--into", f"{db}_into", "--yes")
    assert restore.returncode == 2, said(restore)
    assert f"targets.app-db.password_file: %d/{name} (" in restore.stderr
    assert f"{db}_into" not in pg.psql("SELECT datname FROM pg_database")
    # in a unit that did not load it
    (creds / name).unlink()
    unloaded = run(config, "backup", env=under_unit)
    assert unloaded.returncode == 2, said(unloaded)
    assert f"%d/{name} ({creds / name}): no such file" in unloaded.stderr
    assert "LoadCredential=" in unloaded.stderr
    assert backups_in(tmp_path / "repo") == made


def test_password_env_and_password_file_together_is_exit_2(tmp_path: Path) -> None:
    pwfile = secret_file(tmp_path / "pw", "x")
    config = pg_config(
        tmp_path,
        "postgresql://app@127.0.0.1:9/app",
        f'password_env = "APP_DB_PASSWORD"\npassword_file = {json.dumps(str(pwfile))}',
    )
    for args in (("config", "check"), ("backup",)):
        proc = run(config, *args)
        assert proc.returncode == 2, said(proc)
        assert (
            "targets[0].password_file: set password_env (APP_DB_PASSWORD) or password_file, "
            "not both" in proc.stderr
        )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "cannot read: Is a directory"),
        ("empty", "the first line is empty"),
    ],
)
def test_a_password_file_that_cannot_be_had_is_named_before_anything_changes(
    tmp_path: Path, kind: str, message: str
) -> None:
    path = tmp_path / "secrets" / "app-db.password"
    path.parent.mkdir(mode=0o700)
    if kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "empty":
        secret_file(path, "")
    # the server is never asked: the file is read first
    config = pg_config(
        tmp_path, "postgresql://app@127.0.0.1:9/app", f"password_file = {json.dumps(str(path))}"
    )
    proc = run(config, "backup")
    assert proc.returncode == 2, said(proc)
    assert f"config: targets.app-db.password_file: {path}: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert backups_in(tmp_path / "repo") == []


@root_only
def test_unsafe_password_files_are_refused_as_root(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "secrets" / "app-db.password", "x", mode=0o644)
    config = pg_config(
        tmp_path, "postgresql://app@127.0.0.1:9/app", f"password_file = {json.dumps(str(path))}"
    )
    readable = run(config, "backup")
    assert readable.returncode == 2, said(readable)
    assert (
        f"targets.app-db.password_file: {path} is readable by others (0o644): refusing to "
        f"run as root; fix: chmod 0600 {path}"
    ) in readable.stderr
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    foreign = run(config, "backup")
    assert foreign.returncode == 2, said(foreign)
    assert f"{path} is owned by uid {NOBODY}" in foreign.stderr
    # root:<service group> 0640, as install.sh leaves secrets: fine
    os.chown(path, 0, 0)
    path.chmod(0o640)
    check = run(config, "config", "check")
    assert check.returncode == 0, said(check)
    assert "password_file" not in check.stderr
    # a credential is judged where it is read from
    creds = tmp_path / "credentials"
    secret_file(creds / "app-db.password", "x", mode=0o604)
    config = pg_config(
        tmp_path, "postgresql://app@127.0.0.1:9/app", 'password_file = "%d/app-db.password"'
    )
    loose = run(config, "backup", env=pyops_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert loose.returncode == 2, said(loose)
    assert f"{creds / 'app-db.password'} is readable by others" in loose.stderr
    assert backups_in(tmp_path / "repo") == []


# --- S3: access_key_id_file, secret_access_key_file -------------------------------------


@pytest.fixture
def s3_auth(s3: S3) -> Iterator[tuple[S3, str, str]]:
    """(s3, key id, secret): an IAM user allowed s3:* on moto, then IAM authentication on
    (every request must be signed with a key moto issued), off again afterwards."""
    import boto3

    iam_client: Any = boto3.client("iam", endpoint_url=s3.url, region_name="us-east-1")
    user = f"pyops-{uuid.uuid4().hex[:8]}"
    iam_client.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam_client.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam_client.create_access_key(UserName=user)["AccessKey"]
    requests.post(f"{s3.url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield s3, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        requests.post(f"{s3.url}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def s3_config(
    tmp_path: Path, s3: S3, id_file: Path | str | None, secret_file_: Path | str | None
) -> Path:
    source = tmp_path / "notes.sqlite3"
    if not source.exists():
        import sqlite3

        conn = sqlite3.connect(source)
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?)", [(f"note {i}",) for i in range(100)])
        conn.commit()
        conn.close()
    keys = ""
    if id_file is not None:
        keys += f"access_key_id_file = {json.dumps(str(id_file))}\n"
    if secret_file_ is not None:
        keys += f"secret_access_key_file = {json.dumps(str(secret_file_))}\n"
    body = (
        f"{s3.config(extra=keys)}\n"
        f'[[targets]]\nname = "notes"\ntype = "sqlite"\npath = "{source}"\n'
    )
    return write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)


def test_s3_keys_from_files_upload_and_a_wrong_key_fails_clearly(
    s3_auth: tuple[S3, str, str], tmp_path: Path
) -> None:
    s3, key_id, secret = s3_auth
    id_file = secret_file(tmp_path / "secrets" / "s3-key-id", key_id)
    secret_path = secret_file(tmp_path / "secrets" / "s3-secret", secret)
    config = s3_config(tmp_path, s3, id_file, secret_path)

    backup = run(config, "-v", "backup", "--format", "json")  # no AWS_* in its environment
    assert backup.returncode == 0, said(backup)
    result = json.loads(backup.stdout)["backups"][0]
    assert result["ok"] and result["offsite"], result
    assert secret not in backup.stdout + backup.stderr
    listed = run(config, "list", "--remote", "--format", "json")
    assert listed.returncode == 0, said(listed)
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == [result["id"]]

    secret_file(secret_path, "not-the-secret")
    wrong_secret = run(config, "list", "--remote")
    assert wrong_secret.returncode == 1, said(wrong_secret)
    assert (
        "SignatureDoesNotMatch" in wrong_secret.stderr and "Check your key" in wrong_secret.stderr
    )
    secret_file(secret_path, secret)
    secret_file(id_file, "AKIANOSUCHKEY0000000")
    wrong_id = run(config, "list", "--remote")
    assert wrong_id.returncode == 1, said(wrong_id)
    assert "InvalidAccessKeyId" in wrong_id.stderr
    assert "Traceback" not in wrong_id.stderr + wrong_secret.stderr


def test_s3_key_files_both_or_neither(s3: S3, tmp_path: Path) -> None:
    only_id = s3_config(tmp_path, s3, tmp_path / "id", None)
    proc = run(only_id, "config", "check")
    assert proc.returncode == 2, said(proc)
    assert (
        "config: offsite.secret_access_key_file: set together with offsite.access_key_id_file"
        in proc.stderr
    )
    only_secret = s3_config(tmp_path, s3, None, "%d/s3-secret")
    proc = run(only_secret, "backup")
    assert proc.returncode == 2, said(proc)
    assert "config: offsite.access_key_id_file: set together with" in proc.stderr
    relative = s3_config(tmp_path, s3, "keys/id", "%d/s3-secret")
    proc = run(relative, "config", "check")
    assert proc.returncode == 2, said(proc)
    assert "offsite.access_key_id_file: must be an absolute path or %d/NAME" in proc.stderr


@root_only
def test_an_unsafe_s3_key_file_is_refused_as_root(s3: S3, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    secret_file(creds / "s3-key-id", "id")
    secret_file(creds / "s3-secret", "secret", mode=0o644)
    config = s3_config(tmp_path, s3, "%d/s3-key-id", "%d/s3-secret")
    proc = run(config, "list", env=pyops_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert proc.returncode == 2, said(proc)
    assert (
        f"offsite.secret_access_key_file: {creds / 's3-secret'} is readable by others"
        in proc.stderr
    )


# --- pyops --version, completion ---------------------------------------------------------


def test_version_names_the_config_and_every_tool_and_never_fails(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tar", "gpg"):
        (bin_dir / tool).symlink_to(
            subprocess.run(
                ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    hanging = bin_dir / "zstd"
    hanging.write_text("#!/bin/sh\nexec /bin/sleep 60\n")
    hanging.chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir)}
    env.pop("PYOPS_CONFIG", None)
    config = tmp_path / "nowhere.toml"
    t0 = time.monotonic()
    proc = subprocess.run(
        [PYOPS, "--version", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, said(proc)
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"pyops, version \S+", lines[0]), lines
    assert f"config {config} (from --config; not found)" in lines
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {"pg_dump", "psql", "gpg", "zstd", "tar", "sqlite3"}, lines
    assert re.match(r"tar\s+\d+\.\d+\s+" + re.escape(str(bin_dir / "tar")), rows["tar"]), rows
    assert re.match(r"gpg\s+\d+\.\d+\.\d+\s", rows["gpg"]), rows
    assert re.match(r"sqlite3\s+not found$", rows["sqlite3"]), rows
    assert "no answer" in rows["zstd"], rows
    assert elapsed < 15, f"--version took {elapsed:.1f}s: the probes must not wait in turn"

    env_config = subprocess.run(
        [PYOPS, "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYOPS_CONFIG": str(config)},
        timeout=60,
        check=False,
    )
    assert env_config.returncode == 0, said(env_config)
    assert f"config {config} (from $PYOPS_CONFIG; not found)" in env_config.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _pyops_completion pyops"),
        ("zsh", "#compdef pyops"),
        ("fish", "complete --no-files --command pyops"),
    ],
)
def test_completion_scripts_are_generated(shell: str, marker: str) -> None:
    proc = subprocess.run(
        [PYOPS],
        capture_output=True,
        text=True,
        env={**os.environ, "_PYOPS_COMPLETE": f"{shell}_source"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, said(proc)
    assert marker in proc.stdout


def test_bash_completion_completes_commands_and_options() -> None:
    script = subprocess.run(
        [PYOPS],
        capture_output=True,
        text=True,
        env={**os.environ, "_PYOPS_COMPLETE": "bash_source"},
        timeout=60,
        check=True,
    ).stdout
    venv_bin = str(Path(PYOPS).parent)
    probe = (
        f"{script}\n"
        'say() { _pyops_completion pyops; echo "${COMPREPLY[*]}"; }\n'
        "COMP_WORDS=(pyops ba); COMP_CWORD=1; say\n"
        "COMP_WORDS=(pyops restore --no-); COMP_CWORD=2; say\n"
    )
    proc = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, said(proc)
    commands, options = proc.stdout.splitlines()
    assert commands.split() == ["backup"]
    assert {"--no-owner", "--no-acl", "--no-safety-backup"} <= set(options.split())


def test_install_sh_installs_completion_for_bash_zsh_and_fish(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "install.sh"), "--dry-run", "--prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, said(proc)
    share = f"{tmp_path}/usr/local/share"
    for shell, path in (
        ("bash", f"{share}/bash-completion/completions/pyops"),
        ("zsh", f"{share}/zsh/site-functions/_pyops"),
        ("fish", f"{share}/fish/vendor_completions.d/pyops.fish"),
    ):
        assert (
            f"+ _PYOPS_COMPLETE={shell}_source {tmp_path}/opt/pyops/bin/pyops > {path}"
            in proc.stdout
        ), proc.stdout
    assert not (tmp_path / "usr").exists()  # a dry run writes nothing
