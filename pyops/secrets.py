"""The secrets pyops takes from its environment: each postgres target's `password_env`
variable and the AWS keys.

pyops itself uses them: libpq gets PGPASSWORD in the environment of the one child that
connects (Stage.env), boto3 talks to S3 in-process. No other child may inherit them
(zstd, gpg, tar, a credential helper). So the CLI calls `withhold` once at start-up:
the variables leave os.environ (and plumbum's copy of it), `get` still reads them, and
`environment` hands them back, by name, to a child that is pyops again (the
scheduler's jobs).

Importing this module changes nothing; in-process users of pyops (tests, scripts)
keep their environment unless they call `withhold` themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from pyops.config import Config, PostgresTarget

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
