"""Fixtures for the integration tests (helpers live in integration_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gpgkeys import cleanup_home, make_gnupghome
from integration_helpers import Pyops


@pytest.fixture
def pyops(tmp_path: Path) -> Pyops:
    """An empty repository and a config (targets added by the test with `write`)."""
    env = Pyops(root=tmp_path, repo=tmp_path / "repo", config=tmp_path / "pyops.toml")
    env.write("")
    return env


@pytest.fixture
def sym_gnupghome() -> Iterator[Path]:
    """An empty GNUPGHOME whose agent caches no passphrase (for gpg-symmetric)."""
    home = make_gnupghome()
    try:
        yield home
    finally:
        cleanup_home(home)
