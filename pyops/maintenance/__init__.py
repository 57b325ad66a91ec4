"""Database maintenance: what every backend shares.

A run is a list of steps; each step is one operation on one object (a table, an
index, a rule, a database) with a status, a duration, details and the exact SQL it
ran (or, with --dry-run, would run). A step that fails or times out never stops the
steps after it: the backends catch per step, the action decides the exit code.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Status = Literal["ok", "skipped", "timeout", "failed"]

# the order they run in: checks first (a corrupt database is not written to), then
# deletes, then the vacuum that reclaims what they left, then reports of the result
POSTGRES_OPERATIONS = (
    "amcheck",
    "bloat",
    "cleanup",
    "vacuum",
    "analyze",
    "reindex",
    "matviews",
    "stats",
)
SQLITE_OPERATIONS = (
    "integrity",
    "cleanup",
    "vacuum",
    "analyze",
    "optimize",
    "checkpoint",
    "stats",
)
OPERATIONS = {"postgres": POSTGRES_OPERATIONS, "sqlite": SQLITE_OPERATIONS}
ALL_OPERATIONS = tuple(dict.fromkeys((*POSTGRES_OPERATIONS, *SQLITE_OPERATIONS)))
CHECKS = frozenset({"amcheck", "integrity"})
WRITES = frozenset(
    {"cleanup", "vacuum", "analyze", "reindex", "matviews", "optimize", "checkpoint"}
)


@dataclass
class Step:
    target: str
    operation: str
    object: str
    status: Status = "ok"
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    sql: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "operation": self.operation,
            "object": self.object,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "details": self.details,
            "sql": self.sql,
        }

    @property
    def corrupt(self) -> bool:
        return bool(self.details.get("corruption"))


class StepFailed(Exception):
    """Ends one step as failed, with a message for the operator; other steps go on."""


class StepTimeout(Exception):
    """Ends one step as timed out (a lock was not granted in time)."""


@dataclass
class Journal:
    """Every step of a run, and every statement in the order it ran (or would run)."""

    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    statements: list[dict[str, str]] = field(default_factory=list)

    def note(self, step: Step | None, target: str, text: str) -> None:
        """Record a statement pyops runs (or would run) for `step` (None: session setup)."""
        if step is not None:
            step.sql.append(text)
        self.statements.append(
            {"target": target, "operation": step.operation if step else "session", "sql": text}
        )

    def skip(self, target: str, operation: str, obj: str, why: str, **details: Any) -> Step:
        step = Step(target, operation, obj, "skipped", details={"note": why, **details})
        self.steps.append(step)
        return step

    @contextlib.contextmanager
    def step(
        self,
        target: str,
        operation: str,
        obj: str,
        classify: Callable[[Exception], Status | None],
    ) -> Iterator[Step]:
        """Time one step. StepFailed/StepTimeout end it; `classify` maps a driver's error
        to "timeout" or "failed" (None: not ours, re-raise)."""
        step = Step(target, operation, obj)
        t0 = time.monotonic()
        try:
            yield step
        except StepTimeout as exc:
            step.status = "timeout"
            step.details["error"] = str(exc)
        except StepFailed as exc:
            step.status = "failed"
            step.details["error"] = str(exc)
        except Exception as exc:
            status = classify(exc)
            if status is None:
                raise
            step.status = status
            step.details["error"] = first_line(str(exc)) or type(exc).__name__
        finally:
            step.duration_s = time.monotonic() - t0
            self.steps.append(step)
            if step.status in ("timeout", "failed"):
                # timeouts are summed up by the command; each failure is worth a line
                log.log(
                    logging.WARNING if step.status == "failed" else logging.INFO,
                    "%s %s %s: %s: %s",
                    target,
                    operation,
                    obj,
                    step.status,
                    step.details.get("error", ""),
                )


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def ratio(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0
