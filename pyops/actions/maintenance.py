"""`pyops maintenance`: run the chosen operations on each target, one step at a time.

Operations run in a fixed order per target type (maintenance.POSTGRES_OPERATIONS,
SQLITE_OPERATIONS): checks first, and when a check finds corruption the operations
that write are skipped on that target. A step that fails or times out never stops
the others; a target that cannot be reached gets one failed "connect" step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyops.app import App
from pyops.config import (
    CleanupRule,
    MaintenanceConfig,
    PostgresTarget,
    SqliteTarget,
    Target,
)
from pyops.errors import ConfigError, PyopsError
from pyops.maintenance import (
    CHECKS,
    OPERATIONS,
    WRITES,
    Journal,
    Status,
    Step,
    first_line,
    pgcheck,
    pgsession,
)
from pyops.maintenance import cleanup as pgcleanup
from pyops.maintenance import postgres as pgops
from pyops.maintenance import sqlite as sqliteops


@dataclass
class Report:
    dry_run: bool
    steps: list[Step]
    statements: list[dict[str, str]]

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0

    def summary(self) -> dict[str, int]:
        return {k: self.count(k) for k in ("ok", "skipped", "timeout", "failed")}

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "summary": self.summary(),
            "steps": [s.as_dict() for s in self.steps],
            "sql": [s["sql"] for s in self.statements],
        }


def run(
    app: App, targets: Sequence[Target], operations: Sequence[str] | None, dry_run: bool
) -> Report:
    """`operations` None: every operation that applies to each target's type."""
    config = app.config.maintenance
    journal = Journal(dry_run)
    for target in targets:
        if target.type in ("files", "pgbackrest"):
            journal.skip(
                target.name, "-", "", f"maintenance does not apply to {target.type} targets"
            )
            continue
        applies = OPERATIONS[target.type]
        wanted = list(applies) if operations is None else [op for op in applies if op in operations]
        for op in operations or ():
            if op not in applies:
                journal.skip(target.name, op, "", f"{op} does not apply to {target.type} targets")
        if not wanted:
            continue
        rules = [(i, r) for i, r in enumerate(config.cleanup) if r.target == target.name]
        if isinstance(target, PostgresTarget):
            _postgres(target, wanted, rules, journal, config)
        elif isinstance(target, SqliteTarget):
            _sqlite(target, wanted, rules, journal, config)
    return Report(dry_run, journal.steps, journal.statements)


def _each(
    target: Target,
    wanted: list[str],
    rules: list[tuple[int, CleanupRule]],
    journal: Journal,
    dispatch: dict[str, Callable[[], None]],
    classify: Callable[[Exception], Status | None],
) -> None:
    corrupt = False
    for op in wanted:
        if op in WRITES and corrupt:
            journal.skip(
                target.name, op, "", "a check found corruption: not writing to this database"
            )
            continue
        if op == "cleanup" and not rules:
            journal.skip(target.name, op, "", "no [[maintenance.cleanup]] rules for this target")
            continue
        first = len(journal.steps)
        try:
            dispatch[op]()
        except Exception as exc:  # a planning read failed: outside any one object's step
            status = classify(exc)
            if status is None:
                raise
            journal.steps.append(
                Step(target.name, op, "", status, details={"error": first_line(str(exc))})
            )
        if op in CHECKS:
            corrupt = corrupt or any(s.corrupt for s in journal.steps[first:])


def _connect_failed(journal: Journal, target: Target, exc: PyopsError) -> None:
    journal.steps.append(Step(target.name, "connect", "", "failed", details={"error": str(exc)}))


def _postgres(
    target: PostgresTarget,
    wanted: list[str],
    rules: list[tuple[int, CleanupRule]],
    journal: Journal,
    config: MaintenanceConfig,
) -> None:
    with contextlib.ExitStack() as stack:
        try:
            opened = pgsession.open_session(target, journal, config.lock_timeout_seconds)
            session = stack.enter_context(opened)
        except ConfigError:
            raise  # e.g. password_env unset: exit 2 naming the key
        except PyopsError as exc:
            _connect_failed(journal, target, exc)
            return
        dispatch: dict[str, Callable[[], None]] = {
            "amcheck": lambda: pgcheck.amcheck(session),
            "bloat": lambda: pgcheck.bloat_report(session),
            "cleanup": lambda: pgcleanup.cleanup(session, rules),
            "vacuum": lambda: pgops.vacuum(session, config.vacuum_min_dead_ratio),
            "analyze": lambda: pgops.analyze(session),
            "reindex": lambda: pgops.reindex(session),
            "matviews": lambda: pgops.matviews(session),
            "stats": lambda: pgcheck.stats(session),
        }
        _each(target, wanted, rules, journal, dispatch, pgsession.classify)


def _sqlite(
    target: SqliteTarget,
    wanted: list[str],
    rules: list[tuple[int, CleanupRule]],
    journal: Journal,
    config: MaintenanceConfig,
) -> None:
    with contextlib.ExitStack() as stack:
        try:
            s = stack.enter_context(
                sqliteops.open_session(target, journal, config.lock_timeout_seconds)
            )
        except PyopsError as exc:
            _connect_failed(journal, target, exc)
            return
        dispatch: dict[str, Callable[[], None]] = {
            "integrity": lambda: sqliteops.integrity(s),
            "cleanup": lambda: sqliteops.cleanup(s, rules),
            "vacuum": lambda: sqliteops.vacuum(s),
            "analyze": lambda: sqliteops.simple(s, "analyze", "ANALYZE"),
            "optimize": lambda: sqliteops.simple(s, "optimize", "PRAGMA optimize"),
            "checkpoint": lambda: sqliteops.checkpoint(s),
            "stats": lambda: sqliteops.stats(s),
        }
        _each(target, wanted, rules, journal, dispatch, sqliteops.classify)
