"""pg_dump / pg_restore / psql command lines. The connection string never holds a
password (config rejects it); libpq finds one in the child's environment or .pgpass.

`container`: the tool runs inside that container (`<engine> exec -i -e PGPASSWORD
<container> pg_dump ...`, pyops.tools.container); `bin_dir` and the connection
string are then the container's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from pyops.execute import Stage
from pyops.tools.container import Exec, inside

if TYPE_CHECKING:
    from pyops.config import PostgresTarget

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
    exclude_table_data: Sequence[str] = (),
    enable_row_security: bool = False,
    container: Exec | None = None,
) -> Stage:
    """`lock_wait_ms`: give up on a table lock not granted within it (milliseconds, the
    unit every server version accepts) instead of waiting forever.
    `exclude_table_data`: pg_dump table patterns whose rows are left out (schema kept).
    `enable_row_security`: dump tables whose policies apply to the role, under them
    (without it pg_dump refuses such a table)."""
    argv = (
        program(bin_dir, "pg_dump"),
        "--no-password",
        f"--format={FORMAT_FLAGS[fmt]}",
        *(("--compress=0",) if fmt in ("custom", "directory") else ()),
        *((f"--snapshot={snapshot}",) if snapshot else ()),
        *((f"--lock-wait-timeout={lock_wait_ms}",) if lock_wait_ms else ()),
        *(f"--exclude-table-data={pattern}" for pattern in exclude_table_data),
        *(("--enable-row-security",) if enable_row_security else ()),
        *((f"--jobs={jobs}",) if fmt == "directory" and jobs > 1 else ()),
        *((f"--file={directory}",) if fmt == "directory" and directory else ()),
        f"--dbname={conninfo}",
    )
    return inside(Stage("pg_dump", argv, env=env), container)


class DumpOptions(TypedDict):
    exclude_table_data: tuple[str, ...]
    enable_row_security: bool


def dump_options(target: PostgresTarget) -> DumpOptions:
    """The pg_dump arguments a target's own keys decide (`pg_dump(..., **options)`)."""
    return DumpOptions(
        exclude_table_data=tuple(target.exclude_table_data),
        enable_row_security=target.enable_row_security,
    )


def pg_restore(
    bin_dir: Path | None,
    conninfo: str | None,
    *,
    env: Mapping[str, str],
    jobs: int = 1,
    source: Path | None = None,
    flags: Sequence[str] = (),
    container: Exec | None = None,
) -> Stage:
    """Restore into `conninfo`, or with conninfo None read everything to /dev/null
    (the deep check: `--list` only reads the table of contents). `flags`: selection
    and ownership options (--table, --schema, --no-owner, --no-acl)."""
    target = (f"--dbname={conninfo}", "--exit-on-error") if conninfo else ("--file=/dev/null",)
    argv = (
        program(bin_dir, "pg_restore"),
        "--no-password",
        *target,
        *flags,
        *((f"--jobs={jobs}",) if jobs > 1 else ()),
        *((str(source),) if source else ()),
    )
    return inside(Stage("pg_restore", argv, env=env), container)


def psql_script(
    bin_dir: Path | None,
    conninfo: str,
    *,
    env: Mapping[str, str],
    container: Exec | None = None,
) -> Stage:
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
    return inside(Stage("psql", argv, env=env), container)


def version(bin_dir: Path | None, name: str = "pg_dump", container: Exec | None = None) -> Stage:
    return inside(Stage(name, (program(bin_dir, name), "--version")), container)
