"""SQLite maintenance: vacuum, analyze, optimize, integrity, checkpoint, cleanup, stats.

The connection is autocommit (VACUUM cannot run in a transaction; each cleanup batch
commits on its own) and waits at most `busy_timeout` for another process's lock,
then the step ends as "timeout". It never creates a missing file, and --dry-run
opens the file read-only.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyops.config import CleanupRule, SqliteTarget
from pyops.config_rules import split_table_name
from pyops.errors import PyopsError
from pyops.maintenance import Journal, Status, Step, StepFailed, StepTimeout

BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def classify(exc: Exception) -> Status | None:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if (code is not None and code & 0xFF in BUSY) or "locked" in str(exc):
            return "timeout"
        return "failed"
    return None


@dataclass
class Session:
    target: SqliteTarget
    conn: sqlite3.Connection
    journal: Journal

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def dry_run(self) -> bool:
        return self.journal.dry_run

    @contextlib.contextmanager
    def step(self, operation: str, obj: str) -> Iterator[Step]:
        with self.journal.step(self.name, operation, obj, classify) as step:
            yield step

    def run(self, step: Step, stmt: str) -> sqlite3.Cursor | None:
        """A statement that changes something; with --dry-run only recorded."""
        self.journal.note(step, self.name, stmt + ";")
        return None if self.dry_run else self.conn.execute(stmt)

    def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(query, params).fetchall()

    def value(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def logical_bytes(self) -> int:
        return int(self.value("PRAGMA page_count")) * int(self.value("PRAGMA page_size"))


@contextlib.contextmanager
def open_session(target: SqliteTarget, journal: Journal, busy_s: float) -> Iterator[Session]:
    path = target.path
    if not path.is_file():
        raise PyopsError(
            f"target {target.name}: SQLite database {path} does not exist: check the path"
        )
    mode = "ro" if journal.dry_run else "rw"
    try:
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode={mode}",
            uri=True,
            isolation_level=None,
            timeout=busy_s,
        )
    except sqlite3.Error as exc:
        raise PyopsError(f"target {target.name}: cannot open {path}: {exc}") from None
    try:
        setting = f"PRAGMA busy_timeout = {max(1, round(busy_s * 1000))}"
        journal.note(None, target.name, setting + ";")
        conn.execute(setting)
        yield Session(target, conn, journal)
    finally:
        conn.close()


def integrity(s: Session) -> None:
    """integrity_check and foreign_key_check; any finding is corruption (a failure)."""
    for check in ("integrity_check", "foreign_key_check"):
        with s.step("integrity", check) as step:
            stmt = f"PRAGMA {check}"
            s.journal.note(step, s.name, stmt + ";")
            if s.dry_run:
                continue
            try:
                found = s.rows(stmt)
            except sqlite3.DatabaseError as exc:
                if classify(exc) == "timeout":
                    raise
                step.details["corruption"] = [str(exc)]
                raise StepFailed(
                    f"{s.target.path}: {exc}: restore from a verified backup"
                ) from None
            if check == "integrity_check":
                problems = [str(r[0]) for r in found if r[0] != "ok"]
            else:
                problems = [
                    f"{table} rowid {rowid}: no matching row in {parent} (constraint {fk})"
                    for table, rowid, parent, fk in found
                ]
            if problems:
                step.details["corruption"] = problems[:50]
                raise StepFailed(f"{len(problems)} problem(s), first: {problems[0]}")


def vacuum(s: Session) -> None:
    with s.step("vacuum", "database") as step:
        before = s.logical_bytes()
        step.details.update(bytes_before=before, free_pages=int(s.value("PRAGMA freelist_count")))
        if s.run(step, "VACUUM") is not None:
            after = s.logical_bytes()
            step.details.update(bytes_after=after, reclaimed_bytes=max(0, before - after))


def simple(s: Session, operation: str, stmt: str) -> None:
    with s.step(operation, "database") as step:
        s.run(step, stmt)


def checkpoint(s: Session) -> None:
    """wal_checkpoint(TRUNCATE): copy the WAL into the database and cut it to 0 bytes.
    Readers or writers still busy after busy_timeout make it "timeout"."""
    with s.step("checkpoint", "database") as step:
        mode = str(s.value("PRAGMA journal_mode")).lower()
        if mode != "wal":
            step.status = "skipped"
            step.details["note"] = f"journal_mode is {mode}: there is no WAL to checkpoint"
            return
        wal = Path(f"{s.target.path}-wal")
        step.details["wal_bytes_before"] = wal.stat().st_size if wal.exists() else 0
        cur = s.run(step, "PRAGMA wal_checkpoint(TRUNCATE)")
        if cur is None:
            return
        busy, log_frames, done = cur.fetchone()
        step.details.update(
            wal_frames=log_frames,
            frames_checkpointed=done,
            wal_bytes_after=wal.stat().st_size if wal.exists() else 0,
        )
        if busy:
            raise StepTimeout("other connections kept the WAL busy; it was not fully checkpointed")


def _pk(s: Session, table: str) -> list[str]:
    cols = s.rows("SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0", (table,))
    return [str(name) for name, _ in sorted(cols, key=lambda r: r[1])]


def batch_statement(table: str, where: str, batch_size: int, key: list[str]) -> str:
    """DELETE the first `batch_size` matching rows, by primary key or rowid."""
    t = quote(table)
    cols = ", ".join(quote(c) for c in key) if key else "rowid"
    lhs = f"({cols})" if len(key) > 1 else cols
    return (
        f"DELETE FROM {t} WHERE {lhs} IN "  # noqa: S608 - identifiers quoted, where is config
        f"(SELECT {cols} FROM {t} WHERE ({where}) LIMIT {int(batch_size)})"
    )


def cleanup(s: Session, rules: list[tuple[int, CleanupRule]]) -> None:
    for index, rule in rules:
        key = f"maintenance.cleanup[{index}].table"
        schema, name = split_table_name(rule.table, key)
        with s.step("cleanup", rule.table) as step:
            found = s.rows(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE",
                (name,),
            )
            if schema not in (None, "main") or not found:
                raise StepFailed(f"table {rule.table!r} not found in {s.target.path}: fix {key}")
            table = str(found[0][0])
            step.object = table
            pk = _pk(s, table)
            stmt = batch_statement(table, rule.where, rule.batch_size, pk)
            step.details.update(
                where=rule.where, batch_size=rule.batch_size, key=pk or ["rowid"], rows_deleted=0
            )
            if s.dry_run:
                count = f"SELECT count(*) FROM {quote(table)} WHERE ({rule.where})"  # noqa: S608
                step.details["matching_rows"] = int(s.value(count))
                s.run(step, stmt)
                continue
            s.journal.note(step, s.name, stmt + ";")  # once: repeated until a batch is short
            batches = 0
            while True:
                deleted = max(s.conn.execute(stmt).rowcount, 0)
                batches += 1
                step.details["rows_deleted"] += deleted
                step.details["batches"] = batches
                if deleted < rule.batch_size:
                    break


def stats(s: Session) -> None:
    """File, WAL and free-page sizes, then bytes (tables with their indexes, from dbstat
    when SQLite has it) and row counts (sqlite_stat1 estimates after ANALYZE, else exact)."""
    path = s.target.path
    with s.step("stats", "database") as step:
        wal = Path(f"{path}-wal")
        page_size = int(s.value("PRAGMA page_size"))
        step.details.update(
            kind="database",
            file_bytes=path.stat().st_size,
            wal_bytes=wal.stat().st_size if wal.exists() else 0,
            page_size=page_size,
            page_count=int(s.value("PRAGMA page_count")),
            free_bytes=int(s.value("PRAGMA freelist_count")) * page_size,
            journal_mode=str(s.value("PRAGMA journal_mode")),
        )
    names = [
        (str(n), str(t), str(k))
        for n, t, k in s.rows(
            "SELECT name, tbl_name, type FROM sqlite_schema WHERE type IN ('table', 'index')"
        )
    ]
    owner = {name: table for name, table, _ in names}
    sizes: dict[str, int] = {}
    try:
        for name, size in s.rows("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(str(name), str(name))
            sizes[table] = sizes.get(table, 0) + int(size)
    except sqlite3.OperationalError:
        sizes = {}  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
    estimates: dict[str, int] = {}
    with contextlib.suppress(sqlite3.OperationalError):  # no sqlite_stat1 before ANALYZE
        for tbl, stat in s.rows("SELECT tbl, stat FROM sqlite_stat1"):
            estimates.setdefault(str(tbl), int(str(stat).split()[0]))
    for name, _table, kind in names:
        if kind != "table" or name.startswith("sqlite_"):
            continue
        with s.step("stats", name) as step:
            if name in estimates:
                rows, exact = estimates[name], False
            else:
                rows, exact = int(s.value(f"SELECT count(*) FROM {quote(name)}")), True  # noqa: S608
            step.details.update(kind="table", bytes=sizes.get(name), rows=rows, rows_exact=exact)
