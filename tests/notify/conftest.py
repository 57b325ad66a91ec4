"""Fixtures for the notification tests (helpers live in notify_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_support import Receiver, Site, receiver


@pytest.fixture
def web() -> Iterator[Receiver]:
    with receiver() as rec:
        yield rec


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)
