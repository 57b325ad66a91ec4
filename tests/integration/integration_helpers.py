"""Helpers for the integration tests: a repository, a config and the real `pyops` CLI.

(A module of its own, not conftest.py: tests/ and tests/integration/ both hold a
conftest, so `import conftest` would be ambiguous.)

Everything here drives the installed `pyops` as a subprocess against real files,
real sqlite3, tar, zstd, gzip and gpg; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.cli import run_pyops, write_config

SYMMETRIC_PASSPHRASE = "integration test passphrase \u00e9 42"


def output(proc: subprocess.CompletedProcess[str]) -> str:
    """Everything the run said, for assertions and failure messages."""
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


class CommandFailed(Exception):
    """A pyops run a test relies on (not the behaviour under test) failed.

    Not an AssertionError, so `xfail(raises=AssertionError)` tests that document a
    bug still fail loudly when their setup breaks."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Pyops:
    """One repository and its config, driven through the real CLI."""

    root: Path
    repo: Path
    config: Path

    def write(self, body: str, lock_wait_seconds: float | None = None) -> None:
        """The config: the repository (lock wait 2 s unless told) plus `body`."""
        if lock_wait_seconds is None:
            write_config(self.config, self.repo, body)
        else:
            self.config.write_text(
                f'[repository]\npath = "{self.repo}"\n'
                f"lock_wait_seconds = {lock_wait_seconds}\n\n{body}\n"
            )

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=env, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        if proc.returncode != 0:
            raise CommandFailed(f"pyops {' '.join(args)}: {output(proc)}")
        return proc

    def backup(self, target: str, *extra: str) -> str:
        """Back up one target; returns the new backup id."""
        proc = self.ok("backup", "--target", target, "--format", "json", *extra)
        results = json.loads(proc.stdout)["backups"]
        if len(results) != 1 or not results[0]["ok"]:
            raise CommandFailed(output(proc))
        return str(results[0]["id"])

    def listed(self, *extra: str) -> list[dict[str, Any]]:
        proc = self.ok("list", "--format", "json", *extra)
        rows: list[dict[str, Any]] = json.loads(proc.stdout)["backups"]
        return rows

    def tier_dir(self, backup_id: str) -> Path:
        target, tier, _ = backup_id.split(".")
        return self.repo / target / tier

    def manifest_path(self, backup_id: str) -> Path:
        return self.tier_dir(backup_id) / f"{backup_id}.manifest.json"

    def manifest(self, backup_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path(backup_id).read_text())
        return data

    def save_manifest(self, backup_id: str, data: dict[str, Any]) -> None:
        self.manifest_path(backup_id).write_text(json.dumps(data, indent=2, sort_keys=True))

    def artifact(self, backup_id: str) -> Path:
        return self.tier_dir(backup_id) / str(self.manifest(backup_id)["artifact"]["name"])


def passphrase_file(directory: Path, text: str = SYMMETRIC_PASSPHRASE) -> Path:
    path = directory / "passphrase"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def sqlite_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "sqlite"\npath = "{path}"\n'


def files_target(name: str, paths: list[Path], exclude: list[str] | None = None) -> str:
    listed = ", ".join(json.dumps(str(p)) for p in paths)
    excl = ", ".join(json.dumps(e) for e in exclude or [])
    return f'[[targets]]\nname = "{name}"\ntype = "files"\npaths = [{listed}]\nexclude = [{excl}]\n'


def compression(algorithm: str, level: int | None = None) -> str:
    body = f'[compression]\nalgorithm = "{algorithm}"\n'
    if level is not None:
        body += f"level = {level}\n"
    return body


def make_sample_db(path: Path, rows: int = 500, wal: bool = False) -> None:
    """A small database with several tables, an index, a view, a trigger, blobs,
    NULLs and non-ASCII text."""
    conn = sqlite3.connect(path)
    try:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, bio TEXT);
            CREATE TABLE "odd name" (k TEXT PRIMARY KEY, v BLOB);
            CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
            CREATE INDEX users_name ON users(name);
            CREATE VIEW user_names AS SELECT name FROM users;
            CREATE TRIGGER users_audit AFTER INSERT ON users
                BEGIN INSERT INTO audit(what) VALUES ('insert ' || NEW.id); END;
            """
        )
        conn.executemany(
            "INSERT INTO users(name, bio) VALUES (?, ?)",
            [
                (f"user {i} \u00e9\u4e2d", None if i % 7 == 0 else "x" * (i % 50))
                for i in range(rows)
            ],
        )
        conn.executemany(
            'INSERT INTO "odd name"(k, v) VALUES (?, ?)',
            [(f"k{i}", os.urandom(64)) for i in range(rows // 5)],
        )
        conn.commit()
    finally:
        conn.close()


def row_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}
    finally:
        conn.close()


def sqlite_dump(path: Path) -> str:
    """The sqlite3 CLI's `.dump` of a database (opened read-only)."""
    proc = subprocess.run(
        ["sqlite3", "-readonly", str(path), ".dump"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def tree_snapshot(top: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """Every entry below `top` (bytes paths, relative): kind, permission bits, and the
    file's bytes or the symlink's target. Directories carry their mode only."""
    base = os.fsencode(top)
    out: dict[bytes, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            mode = st.st_mode & 0o7777
            if os.path.islink(full):
                out[rel] = ("symlink", 0, os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", mode, b"")
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", mode, f.read())
    return out


def all_paths(top: Path) -> set[bytes]:
    """Every path below `top`, as bytes (symlinks not followed)."""
    base = os.fsencode(top)
    found: set[bytes] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            found.add(os.path.join(dirpath, name))
    return found


def two_runs_in_one_second(pyops: Pyops, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """Start two identical pyops runs together just after a wall-clock second begins.
    The repository lock makes them take turns; starting both at once overlaps their
    interpreter start-up, so both usually finish within that second."""
    time.sleep(1.02 - (time.time() % 1.0))
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda _: pyops.run(*args), range(2)))
