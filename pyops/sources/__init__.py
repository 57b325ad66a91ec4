"""Data sources: postgres, sqlite, files. Each module offers the same functions,
dispatched by target type:

- ``extension(target)``: the innermost file-name layer (``pgdump``, ``sqlite3``, ``tar``)
- ``dump(target, scratch)``: a context manager yielding a `Dump`
- ``deep_check(manifest, chunks, decoders, scratch)``: decode fully, check structure
  and content facts against the manifest
- ``plan(target, into)``: what a restore would do, refusing what would lose data
- ``restore(target, manifest, chunks, decoders, into, stamp, scratch, jobs)``: restore
  beside the live data and check it, returning a `Staged` whose commit swaps it in
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pyops.errors import PyopsError
from pyops.execute import Stage


@dataclass
class Dump:
    """How to produce one dump stream, and the facts that go with it."""

    format: str
    source: dict[str, Any]
    tools: dict[str, str]
    stages: list[Stage] = field(default_factory=list)  # write the dump to stdout
    input_path: Path | None = None  # or: a finished file to stream
    estimate: Callable[[], int | None] = lambda: None  # expected raw bytes, for progress
    progress_pid_stage: int | None = 0  # which stage's written bytes measure progress
    content: Callable[[], dict[str, Any]] = lambda: {}  # facts, once the stream succeeded
    # kept beside the artifact, encoded like it (pyops.attachments): kind -> JSON data
    attachments: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RestorePlan:
    """What a restore will do, for the operator's preview."""

    destination: str
    overwrites: bool
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore, beyond where: pg_restore's parallelism and selection, and the
    backup's saved roles and database state (PostgreSQL; None: the backup has none)."""

    jobs: int = 1
    no_owner: bool = False
    no_acl: bool = False
    tables: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    globals: dict[str, Any] | None = None

    @property
    def partial(self) -> bool:
        """Only some tables or schemas: the database's own state is not the point."""
        return bool(self.tables or self.schemas)

    def pg_restore_flags(self) -> tuple[str, ...]:
        return (
            *(("--no-owner",) if self.no_owner else ()),
            *(("--no-acl",) if self.no_acl else ()),
            *(f"--schema={s}" for s in self.schemas),
            *(f"--table={t}" for t in self.tables),
        )


@dataclass
class Staged:
    """A restored copy waiting beside the live data. The caller commits it only after
    the artifact's checksum has been confirmed."""

    commit: Callable[[], str]
    discard: Callable[[], None]


def module(kind: str) -> ModuleType:
    """The source module for a target type (imported on first use)."""
    return importlib.import_module(f"pyops.sources.{kind}")


def compare_content(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Differences between manifest content facts and what a check observed."""
    problems = []
    exp_tables = expected.get("tables", {})
    got_tables = got.get("tables", {})
    for name in sorted(set(exp_tables) | set(got_tables)):
        if name not in got_tables:
            problems.append(f"table {name} missing")
        elif name not in exp_tables:
            problems.append(f"table {name} not in manifest")
        elif exp_tables[name] != got_tables[name]:
            problems.append(
                f"table {name}: {got_tables[name]} rows, manifest says {exp_tables[name]}"
            )
    for key in ("files", "bytes"):
        if key in expected and expected[key] != got.get(key):
            problems.append(f"{key}: {got.get(key)}, manifest says {expected[key]}")
    return problems


def aside(path: Path, stamp: str) -> Path:
    """Where the live copy goes during an in-place restore: never onto an earlier one."""
    candidate = path.with_name(f"{path.name}.pre-restore-{stamp}")
    n = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.name}.pre-restore-{stamp}-{n}")
        n += 1
    return candidate


def take_over_metadata(live: Path, restored: Path) -> None:
    """The restored copy gets the live one's mode and owner, so the application can
    still open it after the swap."""
    import os

    st = live.stat()
    if restored.is_symlink():  # never hand a link's target the live copy's owner
        raise PyopsError(f"{restored} is a symlink: not taking over the live copy's owner")
    os.chmod(restored, st.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(restored, st.st_uid, st.st_gid, follow_symlinks=False)
