"""Fixtures for the fault tests (helpers live in fault_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import PASSPHRASE, Repo, symmetric, zstd
from fixtures.gpgkeys import cleanup_home, make_gnupghome


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def sym_crypto(tmp_path: Path) -> Iterator[str]:
    """zstd + gpg-symmetric config sections (passphrase in a 0600 file)."""
    home = make_gnupghome()
    pw = tmp_path / "passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    try:
        yield zstd() + symmetric(pw, home)
    finally:
        cleanup_home(home)
