"""The secrets pyops takes from its environment (each postgres target's `password_env`
variable and the AWS keys) or from files (`password_file`, `[offsite]
access_key_id_file` / `secret_access_key_file`).

pyops itself uses them: libpq gets PGPASSWORD in the environment of the one child that
connects (Stage.env), boto3 talks to S3 in-process. No other child may inherit them
(zstd, gpg, tar, a credential helper). So the CLI calls `withhold` once at start-up:
the variables leave os.environ (and plumbum's copy of it), `get` still reads them, and
`environment` hands them back, by name, to a child that is pyops again (the
scheduler's jobs).

A file's secret is its first line (the newline stripped), read when it is needed and
never logged. A path written `%d/NAME` is a systemd credential (systemd's own
specifier for the credentials directory): `$CREDENTIALS_DIRECTORY/NAME` in a unit
with `LoadCredential=NAME:...`, else `/etc/credstore/NAME`, where the rendered units
load it from (so root's hand-run `pyops restore` reads the same file).

Importing this module changes nothing; in-process users of pyops (tests, scripts)
keep their environment unless they call `withhold` themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyops.config import Config, OffsiteConfig, PostgresTarget
from pyops.errors import ConfigError

AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_withheld: dict[str, str] = {}


def passwords(config: Config) -> list[str]:
    """The variables named by the postgres targets' `password_env`."""
    return [
        t.password_env for t in config.targets if isinstance(t, PostgresTarget) and t.password_env
    ]


def names(config: Config) -> list[str]:
    """Every variable this config makes a secret."""
    return [*passwords(config), *AWS_KEYS]


def withhold(names: Iterable[str]) -> None:
    """Move the variables out of the environment every child inherits (ours, plumbum's,
    python-gnupg's); `get` still reads them."""
    for name in names:
        if name and name in os.environ:
            _withheld[name] = os.environ.pop(name)
    if "plumbum" in sys.modules:
        from plumbum import local

        for name in _withheld:
            if name in local.env:
                del local.env[name]


def get(name: str) -> str | None:
    """A secret's value, withheld or not; None when the variable is not set."""
    return _withheld.get(name, os.environ.get(name))


def environment(names: Iterable[str]) -> dict[str, str]:
    """The environment for a child that is pyops itself: ours, plus the named secrets
    (the set ones; none of the others)."""
    env = dict(os.environ)
    for name in names:
        value = get(name)
        if value is not None:
            env[name] = value
    return env


# --- secrets in files -----------------------------------------------------------

CREDENTIAL = "%d"  # systemd's specifier for $CREDENTIALS_DIRECTORY (systemd.unit(5))
CREDSTORE = Path("/etc/credstore")  # systemd's recommended place for credential files
MAX_LINE = 64 << 10


@dataclass(frozen=True)
class SecretFile:
    key: str  # the config key naming it: targets.app-db.password_file
    path: Path  # as written: an absolute path, or %d/NAME


def credential_name(path: Path) -> str | None:
    """NAME of a path written `%d/NAME`; None for an ordinary path."""
    head, _, name = str(path).partition("/")
    return name if head == CREDENTIAL else None


def credstore(system: bool | None = None) -> Path:
    """Where a credential lives on the host: /etc/credstore for system units (and root),
    $XDG_CONFIG_HOME/credstore for a user's own units (a user manager cannot read
    /etc's). `system`: default, whether we run as root."""
    if os.geteuid() == 0 if system is None else system:
        return CREDSTORE
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "credstore"


def resolve(path: Path) -> Path:
    """The file to read: `%d/NAME` in $CREDENTIALS_DIRECTORY (a unit's LoadCredential=),
    else in the credential store; any other path as it is."""
    name = credential_name(path)
    if name is None:
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / name if directory else credstore() / name


def files(config: Config) -> list[SecretFile]:
    """Every secret file the config names."""
    out = [
        SecretFile(f"targets.{t.name}.password_file", t.password_file)
        for t in config.targets
        if isinstance(t, PostgresTarget) and t.password_file is not None
    ]
    offsite = config.offsite
    for name in ("access_key_id_file", "secret_access_key_file"):
        path = getattr(offsite, name)
        if path is not None:
            out.append(SecretFile(f"offsite.{name}", path))
    if config.notify.urls_file is not None:  # Apprise URLs holding tokens
        out.append(SecretFile("notify.urls_file", config.notify.urls_file))
    return out


def read(path: Path, key: str) -> str:
    """The secret in a file: its first line without the newline. ConfigError names the
    key and the path when it cannot be had; the value itself is never in a message."""
    real = resolve(path)
    shown = f"{path} ({real})" if real != path else str(path)
    try:
        with open(real, "rb") as f:
            line = f.readline(MAX_LINE)
    except FileNotFoundError:
        raise ConfigError(key, f"{shown}: no such file{_credential_hint(path)}") from None
    except OSError as exc:
        raise ConfigError(
            key, f"{shown}: cannot read: {exc.strerror or exc}{_credential_hint(path)}"
        ) from None
    try:
        value = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(key, f"{shown}: not UTF-8 text") from None
    if not value:
        raise ConfigError(key, f"{shown}: the first line is empty (it holds the secret)")
    return value


def _credential_hint(path: Path) -> str:
    if credential_name(path) is None:
        return ""
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return (
            " (a systemd credential: is it loaded? LoadCredential= in the unit: "
            "re-render with `pyops systemd install`)"
        )
    return (
        " ($CREDENTIALS_DIRECTORY is not set: outside a unit with LoadCredential=, "
        f"%d/ means {credstore()}; see docs/systemd.md)"
    )


def password(target: PostgresTarget) -> str | None:
    """A postgres target's password, from `password_file` or `password_env`; None when
    libpq finds its own (.pgpass, PGPASSFILE, peer)."""
    if target.password_file is not None and target.password_env:
        raise ConfigError(
            f"targets.{target.name}.password_file", "set password_env or password_file, not both"
        )
    if target.password_file is not None:
        return read(target.password_file, f"targets.{target.name}.password_file")
    if not target.password_env:
        return None
    value = get(target.password_env)
    if value is None:
        raise ConfigError(
            f"targets.{target.name}.password_env",
            f"environment variable {target.password_env} is not set",
        )
    return value


def password_source(target: PostgresTarget) -> str:
    """Where the password came from, for "password rejected" messages."""
    if target.password_file is not None:
        return f"check password_file ({target.password_file})"
    if target.password_env:
        return f"check {target.password_env}"
    return "set password_env or password_file"


def s3_keys(offsite: OffsiteConfig) -> tuple[str, str] | None:
    """(access key id, secret access key) from `access_key_id_file` and
    `secret_access_key_file`; None when neither is set (boto3's own chain)."""
    id_file, secret_file = offsite.access_key_id_file, offsite.secret_access_key_file
    if id_file is None and secret_file is None:
        return None
    if id_file is None or secret_file is None:
        missing = "access_key_id_file" if id_file is None else "secret_access_key_file"
        other = "secret_access_key_file" if id_file is None else "access_key_id_file"
        raise ConfigError(f"offsite.{missing}", f"set together with offsite.{other}")
    return (
        read(id_file, "offsite.access_key_id_file"),
        read(secret_file, "offsite.secret_access_key_file"),
    )
