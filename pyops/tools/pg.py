"""pg_dump / pg_restore / psql command lines. The connection string never holds a
password (config rejects it); libpq finds one in the child's environment or .pgpass."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyops.execute import Stage

FORMAT_FLAGS = {"custom": "c", "plain": "p", "directory": "d", "tar": "t"}
EXTENSIONS = {"custom": "pgdump", "plain": "sql", "directory": "pgdir.tar", "tar": "pgtar"}


def program(bin_dir: Path | None, name: str) -> str:
    return str(bin_dir / name) if bin_dir else name


def pg_dump(
    bin_dir: Path | None,
    conninfo: str,
    fmt: str,
    *,
    env: Mapping[str, str],
    snapshot: str | None = None,
    jobs: int = 1,
    directory: Path | None = None,
    lock_wait_ms: int | None = None,
) -> Stage:
    """`lock_wait_ms`: give up on a table lock not granted within it (milliseconds, the
    unit every server version accepts) instead of waiting forever."""
    argv = (
        program(bin_dir, "pg_dump"),
        "--no-password",
        f"--format={FORMAT_FLAGS[fmt]}",
        *(("--compress=0",) if fmt in ("custom", "directory") else ()),
        *((f"--snapshot={snapshot}",) if snapshot else ()),
        *((f"--lock-wait-timeout={lock_wait_ms}",) if lock_wait_ms else ()),
        *((f"--jobs={jobs}",) if fmt == "directory" and jobs > 1 else ()),
        *((f"--file={directory}",) if fmt == "directory" and directory else ()),
        f"--dbname={conninfo}",
    )
    return Stage("pg_dump", argv, env=env)


def pg_restore(
    bin_dir: Path | None,
    conninfo: str | None,
    *,
    env: Mapping[str, str],
    jobs: int = 1,
    source: Path | None = None,
) -> Stage:
    """Restore into `conninfo`, or with conninfo None read everything to /dev/null
    (the deep check: `--list` only reads the table of contents)."""
    target = (f"--dbname={conninfo}", "--exit-on-error") if conninfo else ("--file=/dev/null",)
    argv = (
        program(bin_dir, "pg_restore"),
        "--no-password",
        *target,
        *((f"--jobs={jobs}",) if jobs > 1 else ()),
        *((str(source),) if source else ()),
    )
    return Stage("pg_restore", argv, env=env)


def psql_script(bin_dir: Path | None, conninfo: str, *, env: Mapping[str, str]) -> Stage:
    """Replay a plain SQL dump from stdin, stopping at the first error."""
    argv = (
        program(bin_dir, "psql"),
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={conninfo}",
    )
    return Stage("psql", argv, env=env)


def version(bin_dir: Path | None, name: str = "pg_dump") -> Stage:
    return Stage(name, (program(bin_dir, name), "--version"))
