"""Helpers for the maintenance tests: configs and JSON runs of the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import run_pyops, write_config
from fixtures.pgcluster import PgCluster

MakeConfig = Callable[[str], Path]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    def make(body: str) -> Path:
        return write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)

    return make


def pg_target(pg: PgCluster, db: str, name: str = "app-db") -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "postgres"\ndsn = "{pg.dsn(db)}"\n'


def sqlite_target(path: Path, name: str = "app-sqlite") -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "sqlite"\npath = "{path}"\n'


def maintain(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run `pyops maintenance ARGS --format json`; the parsed document (or {})."""
    proc = run_pyops(config, "maintenance", *args, "--format", "json", timeout=120)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc, doc


def steps(doc: dict[str, Any], operation: str, obj: str | None = None) -> list[dict[str, Any]]:
    return [
        s
        for s in doc["steps"]
        if s["operation"] == operation and (obj is None or s["object"] == obj)
    ]


def one(doc: dict[str, Any], operation: str, obj: str) -> dict[str, Any]:
    found = steps(doc, operation, obj)
    assert len(found) == 1, (operation, obj, doc["steps"])
    return found[0]


def value(pg: PgCluster, db: str, query: str) -> Any:
    with pg.connect(db) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Statistics reach pg_stat_* when a backend reports them, a moment after it ends."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
