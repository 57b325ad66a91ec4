"""The App handed to every action: config, clock, repository paths, output mode."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyops import execute
from pyops.catalog import make_private_dir
from pyops.codec import Codec
from pyops.config import Config, PostgresTarget
from pyops.lock import repository_lock

log = logging.getLogger(__name__)
# pyops itself talks to S3; no child (pg_dump, gpg, zstd, ...) needs these
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    config: Config
    clock: Callable[[], datetime] = utcnow
    interactive: bool = field(default_factory=lambda: sys.stderr.isatty())

    def hide_secrets_from_children(self) -> None:
        """For the pyops process (the CLI): no child inherits a target's password
        variable or the AWS keys; the one that needs a password gets PGPASSWORD in its
        own environment. Not done for in-process use, where the environment is not ours."""
        execute.hide_from_children(
            [t.password_env for t in self.config.targets if isinstance(t, PostgresTarget)]
            + list(AWS_SECRETS)
        )

    @property
    def repo(self) -> Path:
        return self.config.repository.path

    @property
    def state(self) -> Path:
        return self.config.repository.state

    @property
    def codec(self) -> Codec:
        return Codec(self.config.compression, self.config.encryption)

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """The repository lock. Holding it, any scratch left in the state dir belongs to
        a run that died (possibly plaintext): it is removed first."""
        with repository_lock(self.state, self.config.repository.lock_wait_seconds, what):
            stale = self.state / "scratch"
            if stale.is_dir():
                for leftover in stale.iterdir():
                    log.warning("removing scratch of an interrupted run: %s", leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
            yield

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A private (0700) scratch dir inside the repository, removed afterwards."""
        base = make_private_dir(self.state / "scratch")
        path = base / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
