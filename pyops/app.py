"""The App handed to every action: config, clock, repository paths, output mode."""

from __future__ import annotations

import contextlib
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


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    config: Config
    clock: Callable[[], datetime] = utcnow
    interactive: bool = field(default_factory=lambda: sys.stderr.isatty())

    def __post_init__(self) -> None:
        # children never inherit a target's password variable; the one that needs
        # it gets PGPASSWORD in its own environment
        execute.hide_from_children(
            t.password_env for t in self.config.targets if isinstance(t, PostgresTarget)
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

    def lock(self, what: str) -> contextlib.AbstractContextManager[None]:
        return repository_lock(self.state, self.config.repository.lock_wait_seconds, what)

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
