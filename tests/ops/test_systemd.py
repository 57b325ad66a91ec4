"""Rendered units pass systemd-analyze; the shipped systemd/ files are the renderer's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config

from pyops.calendar import ALL_JOBS
from pyops.commands.ops import shipped

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def render(tmp_path: Path) -> Path:
    (tmp_path / "app.sqlite3").touch()
    body = f'[[targets]]\nname = "db"\ntype = "sqlite"\npath = "{tmp_path}/app.sqlite3"\n'
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)
    dest = tmp_path / "units"
    result = run_pyops(config, "systemd", "render", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    return dest


@needs_analyze
def test_rendered_units_verify(tmp_path: Path) -> None:
    dest = render(tmp_path)
    names = sorted(p.name for p in dest.iterdir())
    assert "pyops-backup@.service" in names and "pyops-backup@auto.timer" in names
    assert {"pyops-maintenance.timer", "pyops-health.timer", "pyops-drill.timer"} <= set(names)
    # instantiate the templates, as systemd would, and verify everything together
    for template, instance in (("pyops-backup@.service", "daily"), ("pyops-failure@.service", "x")):
        text = (dest / template).read_text()
        (dest / template.replace("@.", f"@{instance}.")).write_text(text)
    units = [str(p) for p in dest.iterdir() if "@." not in p.name]
    result = subprocess.run(
        [str(ANALYZE), "verify", *units], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    backup = (dest / "pyops-backup@.service").read_text()
    assert f"ExecStart={PYOPS}" in backup or "ExecStart=/" in backup
    for line in (
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "IOSchedulingClass=idle",
        "OnFailure=pyops-failure@%n.service",
        "Type=oneshot",
    ):
        assert line in backup
    assert re.search(rf"ReadWritePaths=.*{re.escape(str(tmp_path / 'repo'))}", backup)


@needs_analyze
@pytest.mark.parametrize("job", ALL_JOBS, ids=lambda j: j.name)
def test_every_oncalendar_parses(job: object) -> None:
    spec = job.oncalendar  # type: ignore[attr-defined]
    result = subprocess.run(
        [str(ANALYZE), "calendar", spec], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Next elapse" in result.stdout


def test_timers_are_persistent_and_randomized() -> None:
    for name, text in shipped().items():
        if name.endswith(".timer"):
            assert "Persistent=true" in text
            assert "RandomizedDelaySec=" in text and "AccuracySec=" in text


def test_shipped_units_match_the_renderer() -> None:
    files = {p.name: p.read_text() for p in (ROOT / "systemd").iterdir()}
    assert files == shipped(), "systemd/ is stale: regenerate it (see docs/systemd.md)"


# --- secrets: LoadCredential= from the credential store, not an EnvironmentFile ----------

SERVICES = (
    "pyops-backup@.service",
    "pyops-maintenance.service",
    "pyops-health.service",
    "pyops-drill.service",
)


def render_with(tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None) -> Path:
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)
    dest = tmp_path / "units"
    result = run_pyops(config, "systemd", "render", "--dest", str(dest), *args, env=env)
    assert result.returncode == 0, result.stderr
    return dest


CREDENTIALS_BODY = """
[offsite]
bucket = "backups"
access_key_id_file = "%d/s3-key-id"
secret_access_key_file = "%d/s3-secret"

[[targets]]
name = "app-db"
type = "postgres"
dsn = "postgresql://app@127.0.0.1:5432/app"
password_file = "%d/app-db.password"
"""


@needs_analyze
def test_credentials_are_loaded_by_the_units_and_verify(tmp_path: Path) -> None:
    dest = render_with(tmp_path, CREDENTIALS_BODY)
    for name in SERVICES:
        text = (dest / name).read_text()
        assert "LoadCredential=app-db.password:/etc/credstore/app-db.password\n" in text
        assert "LoadCredential=s3-key-id:/etc/credstore/s3-key-id\n" in text
        assert "LoadCredential=s3-secret:/etc/credstore/s3-secret\n" in text
        assert "EnvironmentFile=" not in text, name  # every secret is a credential
    failure = (dest / "pyops-failure@.service").read_text()
    assert "LoadCredential=" not in failure and "EnvironmentFile=" not in failure
    text = (dest / "pyops-backup@.service").read_text()
    (dest / "pyops-backup@daily.service").write_text(text)
    (dest / "pyops-failure@x.service").write_text(failure)
    units = [str(p) for p in dest.iterdir() if "@." not in p.name]
    result = subprocess.run(
        [str(ANALYZE), "verify", *units], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_render_names_each_credential_and_where_it_goes(tmp_path: Path) -> None:
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", CREDENTIALS_BODY)
    result = run_pyops(config, "systemd", "render", "--dest", str(tmp_path / "units"))
    assert result.returncode == 0, result.stderr
    for name in ("app-db.password", "s3-key-id", "s3-secret"):
        assert (
            f"credential {name}: put the secret in /etc/credstore/{name} (one line, mode 0600)"
            in result.stdout
        ) or f"credential {name}: /etc/credstore/{name}\n" in result.stdout


def test_the_failure_unit_loads_the_notify_credential_only(tmp_path: Path) -> None:
    body = CREDENTIALS_BODY + '\n[notify]\nurls_file = "%d/notify-urls"\n'
    dest = render_with(tmp_path, body)
    failure = (dest / "pyops-failure@.service").read_text()
    assert "LoadCredential=notify-urls:/etc/credstore/notify-urls\n" in failure
    assert "app-db.password" not in failure and "s3-secret" not in failure
    backup = (dest / "pyops-backup@.service").read_text()
    assert "LoadCredential=notify-urls:/etc/credstore/notify-urls\n" in backup


def test_environment_secrets_keep_the_environment_file(tmp_path: Path) -> None:
    body = CREDENTIALS_BODY.replace(
        'password_file = "%d/app-db.password"', 'password_env = "APP_DB_PASSWORD"'
    )
    text = (render_with(tmp_path, body) / "pyops-backup@.service").read_text()
    assert "EnvironmentFile=-/etc/pyops/environment\n" in text
    assert "LoadCredential=s3-key-id:/etc/credstore/s3-key-id\n" in text
    assert "app-db.password" not in text


def test_install_user_sets_up_the_credential_store(tmp_path: Path) -> None:
    """`systemd install --user` writes the units with LoadCredential= from
    ~/.config/credstore, creates that directory 0700, and says what to put there. (No
    systemctl on PATH here: it then ends with exit 1, saying the units are written.)"""
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", CREDENTIALS_BODY)
    env = {"HOME": str(home), "PATH": str(tmp_path / "no-bin"), "XDG_CONFIG_HOME": ""}
    result = run_pyops(config, "systemd", "install", "--user", env=env)
    assert result.returncode == 1, result.stderr
    assert "systemctl not found: units written" in result.stderr
    store = home / ".config" / "credstore"
    assert store.is_dir() and (store.stat().st_mode & 0o777) == 0o700
    assert f"created {store} (0700)" in result.stdout
    assert f"credential s3-secret: put the secret in {store}/s3-secret" in result.stdout
    unit = (home / ".config/systemd/user/pyops-health.service").read_text()
    assert f"LoadCredential=app-db.password:{store}/app-db.password\n" in unit
    assert "User=" not in unit


def test_a_credential_name_must_be_a_credential_id(tmp_path: Path) -> None:
    body = CREDENTIALS_BODY.replace("%d/app-db.password", "%d/sub/app-db.password")
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)
    result = run_pyops(config, "config", "check")
    assert result.returncode == 2
    assert "targets[0].password_file: '%d/sub/app-db.password': a systemd credential" in (
        result.stderr
    )
