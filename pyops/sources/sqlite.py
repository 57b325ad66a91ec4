"""SQLite: an online snapshot through SQLite's backup API (never a raw copy of a
live file), streamed through the encoders, restored beside the live file and
renamed into place after `integrity_check`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pyops import stream
from pyops.config import SqliteTarget
from pyops.errors import PyopsError, VerifyFailed
from pyops.execute import Stage
from pyops.fsutil import fsync_dir
from pyops.manifest import Manifest
from pyops.sources import (
    Dump,
    RestoreOptions,
    RestorePlan,
    Staged,
    aside,
    compare_content,
    take_over_metadata,
)

EXTENSION = "sqlite3"


def extension(target: SqliteTarget) -> str:
    return EXTENSION


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Read one of pyops' own copies (snapshot, staged restore). immutable: no locks
    and no -wal/-shm files appear beside it; nothing else writes these copies."""
    return sqlite3.connect(f"file:{quote_uri(path)}?immutable=1", uri=True)


def quote_uri(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path))


def snapshot(source: Path, dest: Path) -> None:
    """Copy a live database consistently (WAL included) into `dest` (0600)."""
    if not source.is_file():
        raise PyopsError(f"SQLite database {source} does not exist: check the target's path")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{quote_uri(source)}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # one step: a single read transaction, so one consistent state
        finally:
            dst.close()
            src.close()
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
    except sqlite3.Error as exc:
        raise PyopsError(f"SQLite snapshot of {source} failed: {exc}") from None


def row_counts(path: Path) -> dict[str, int]:
    conn = _connect_ro(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        query = "SELECT count(*) FROM {}"  # identifiers quoted by quote()
        return {n: conn.execute(query.format(quote(n))).fetchone()[0] for n in names}
    finally:
        conn.close()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def integrity(path: Path) -> list[str]:
    """Problems `PRAGMA integrity_check` reports (empty when the file is sound)."""
    try:
        conn = _connect_ro(path)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


@contextlib.contextmanager
def dump(target: SqliteTarget, scratch: Path) -> Iterator[Dump]:
    copy = scratch / "snapshot.sqlite3"
    snapshot(target.path, copy)
    counts = row_counts(copy)
    size = copy.stat().st_size
    yield Dump(
        format="sqlite3",
        source={"path": str(target.path), "size": size, "sqlite_version": sqlite3.sqlite_version},
        tools={"sqlite": sqlite3.sqlite_version},
        input_path=copy,
        estimate=lambda: size,
        progress_pid_stage=None,
        content=lambda: {"tables": counts},
    )


def _write(decoded: IO[bytes], dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while chunk := decoded.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:  # os.write names no file: say which one (disk full, ...)
        raise OSError(exc.errno, exc.strerror, str(dest)) from exc
    finally:
        os.close(fd)


def check_file(path: Path, manifest: Manifest) -> dict[str, Any]:
    problems = integrity(path)
    if problems:
        raise VerifyFailed(f"{manifest.id}: integrity_check failed: {'; '.join(problems[:3])}")
    got = {"tables": row_counts(path)}
    diff = compare_content(manifest.content, got)
    if diff:
        raise VerifyFailed(f"{manifest.id}: content differs from manifest: {'; '.join(diff[:5])}")
    return got


def deep_check(
    manifest: Manifest, chunks: Iterable[bytes], decoders: list[Stage], scratch: Path
) -> dict[str, Any]:
    copy = scratch / "check.sqlite3"
    with stream.decoded(chunks, decoders) as decoded:
        _write(decoded, copy)
    return check_file(copy, manifest)


def plan(
    target: SqliteTarget,
    into: str | None,
    manifest: Manifest | None = None,
    options: RestoreOptions | None = None,
) -> RestorePlan:
    dest = Path(into) if into else target.path
    if into and dest.exists():
        raise PyopsError(f"--into {dest} exists: choose a new path (nothing was changed)")
    return RestorePlan(
        destination=str(dest),
        overwrites=not into and dest.exists(),
        notes=[]
        if into
        else ["stop the application first: the live file and its -wal/-shm are moved aside"],
    )


def restore(
    target: SqliteTarget,
    manifest: Manifest,
    chunks: Iterable[bytes],
    decoders: list[Stage],
    into: str | None,
    stamp: str,
    scratch: Path,
    jobs: int,
    options: RestoreOptions | None = None,
) -> Staged:
    """Write beside the destination and check it; commit renames it into place."""
    dest = Path(into) if into else target.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(f".{dest.name}.pyops-restore-{stamp}")
    try:
        with stream.decoded(chunks, decoders) as decoded:
            _write(decoded, staged)
        check_file(staged, manifest)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return Staged(
        commit=lambda: _swap(staged, dest, stamp),
        discard=lambda: staged.unlink(missing_ok=True),
    )


def _swap(staged: Path, dest: Path, stamp: str) -> str:
    """Move the live file (and its WAL companions) aside, then the restored one in."""
    moved = []
    if dest.exists():
        take_over_metadata(dest, staged)
    base = aside(dest, stamp)
    for suffix in ("", "-wal", "-shm"):
        live = dest.with_name(dest.name + suffix)
        if live.exists():
            moved_to = base.with_name(base.name + suffix)
            os.replace(live, moved_to)
            moved.append(moved_to.name)
    os.replace(staged, dest)
    fsync_dir(dest.parent)
    return f"restored {dest}" + (f"; previous kept as {moved[0]}" if moved else "")
