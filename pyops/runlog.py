"""The run log: one JSON line per command run, in the state dir. `history` reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pyops.fsutil import make_private_dir


def append(state_dir: Path, record: dict[str, Any]) -> None:
    make_private_dir(state_dir)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    fd = os.open(state_dir / "runs.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(state_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Newest first. A torn last line (a run killed mid-write) is skipped."""
    path = state_dir / "runs.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    records.reverse()
    return records[:limit] if limit else records
