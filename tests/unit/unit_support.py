"""What the catalog, manifest and fsutil tests share: a manifest as the backup writes
it, and the pids of a dead and of a live process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pyops.manifest import backup_id

WHEN = datetime(2026, 11, 23, 2, 0, 0, tzinfo=UTC)


def raw_manifest(
    target: str = "app-db",
    tier: str = "daily",
    when: datetime = WHEN,
    ext: str = "pgdump.zst.gpg",
    **extra: Any,
) -> dict[str, Any]:
    """A manifest as JSON data, the way the backup writes it."""
    bid = backup_id(target, tier, when)
    fields: dict[str, Any] = {
        "id": bid,
        "target": target,
        "type": "postgres",
        "tier": tier,
        "host": "web-1",
        "started_at": when.isoformat(),
        "finished_at": (when + timedelta(seconds=42)).isoformat(),
        "duration_s": 42.0,
        "pyops_version": "0.1.0",
        "tools": {"pg_dump": "pg_dump (PostgreSQL) 16.4", "zstd": "v1.5.5"},
        "source": {"database": "app", "server_version": "16.4", "size": 123456},
        "format": "custom",
        "compression": {"algorithm": "zstd", "level": 3},
        "encryption": {"mode": "gpg-public", "recipients": ["ABCDEF0123456789"]},
        "artifact": {"name": f"{bid}.{ext}", "bytes": 2048, "sha256": "ab" * 32},
        "content": {"tables": {"public.items": 401}},
    }
    fields.update(extra)
    return fields


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(name="live_pid")
def live_pid_fixture() -> Iterator[int]:
    """The pid of another process that runs for the whole test."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
