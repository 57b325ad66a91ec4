"""pyops.secrets for files: the first line, `%d/NAME` resolution, the messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pyops import config, secrets
from pyops.errors import ConfigError
from pyops.sources import postgres


def target(**changes: object) -> config.PostgresTarget:
    base = config.PostgresTarget(name="app-db", type="postgres", dsn="dbname=app")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"  spaced pw \nsecond line\n", "  spaced pw "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_the_secret_is_the_first_line_without_its_newline(
    tmp_path: Path, data: bytes, value: str
) -> None:
    assert secrets.read(write(tmp_path / "pw", data), "k") == value


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\nsecond\n", "the first line is empty"), (b"\xff\xfe\n", "not UTF-8 text")],
)
def test_an_unusable_file_is_named_never_quoted(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "pw", data)
    with pytest.raises(ConfigError) as caught:
        secrets.read(path, "targets.app-db.password_file")
    assert str(caught.value).startswith(f"config: targets.app-db.password_file: {path}: {message}")
    assert caught.value.key == "targets.app-db.password_file"


def test_credential_paths_resolve_in_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secrets.credential_name(Path("%d/app-db.password")) == "app-db.password"
    assert secrets.credential_name(Path("/etc/pyops/pw")) is None
    assert secrets.credential_name(Path("%dx/pw")) is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert secrets.resolve(Path("%d/pw")) == tmp_path / "pw"
    assert secrets.resolve(Path("/etc/pyops/pw")) == Path("/etc/pyops/pw")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.setattr(secrets.os, "geteuid", lambda: 0)
    assert secrets.resolve(Path("%d/pw")) == Path("/etc/credstore/pw")
    monkeypatch.setattr(secrets.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert secrets.resolve(Path("%d/pw")) == tmp_path / "cfg" / "credstore" / "pw"
    assert secrets.credstore(system=True) == Path("/etc/credstore")


def test_child_env_carries_the_file_password_as_pgpassword(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", b"from-a-file\n")
    assert postgres.child_env(target(password_file=path))["PGPASSWORD"] == "from-a-file"
    assert "PGPASSWORD" not in postgres.child_env(target())
    assert secrets.password_source(target(password_file=path)) == f"check password_file ({path})"
    with pytest.raises(ConfigError, match="password_env or password_file, not both"):
        secrets.password(target(password_file=path, password_env="X"))


def test_s3_keys_both_or_neither(tmp_path: Path) -> None:
    key_id = write(tmp_path / "id", b"AKIAEXAMPLE\n")
    secret = write(tmp_path / "secret", b"s3cret\n")
    offsite = config.OffsiteConfig()
    assert secrets.s3_keys(offsite) is None
    both = dataclasses.replace(offsite, access_key_id_file=key_id, secret_access_key_file=secret)
    assert secrets.s3_keys(both) == ("AKIAEXAMPLE", "s3cret")
    with pytest.raises(ConfigError) as caught:
        secrets.s3_keys(dataclasses.replace(offsite, access_key_id_file=key_id))
    assert caught.value.key == "offsite.secret_access_key_file"


def test_children_start_without_the_roles_timeouts_and_keep_the_dsns_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    options = postgres.child_env(target())["PGOPTIONS"]
    assert "-c statement_timeout=0" in options
    assert "-c idle_in_transaction_session_timeout=0" in options
    assert postgres.child_conninfo(target()) == "dbname=app"  # PGOPTIONS reaches libpq
    # options in the dsn hide PGOPTIONS: the child's limits join them there
    own = target(dsn="dbname=app options='-c search_path=app'")
    info = conninfo_to_dict(postgres.child_conninfo(own, "other"))
    assert info["dbname"] == "other"
    assert str(info["options"]).startswith("-c search_path=app -c lock_timeout=")
    assert "-c statement_timeout=0" in str(info["options"])
