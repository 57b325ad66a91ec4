"""What a health check returns, how results combine, and the exit code and score.

Statuses follow Nagios: ok 0, warning 1, critical 2, unknown 3. For "the worst
wins" they rank ok < unknown < warning < critical (as check_multi does): an
unknown never hides a warning, and a critical always shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warning", "critical", "unknown"]
CODE: dict[Status, int] = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
RANK: dict[Status, int] = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
POINTS: dict[Status, float] = {"ok": 1.0, "warning": 0.5, "unknown": 0.5, "critical": 0.0}


@dataclass
class Result:
    """One check's verdict. `metrics` keys are `<subject>.<measure>` or `<measure>`."""

    name: str
    status: Status
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "metrics": self.metrics,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class Part:
    """One subject of a check (a target, a URL, a path) before they are combined."""

    status: Status
    text: str
    metrics: dict[str, float] = field(default_factory=dict)


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=RANK.__getitem__, default="ok")


def combine(name: str, parts: list[Part], empty: str = "nothing to check") -> Result:
    """Worst status wins; the message names the problems first, then the rest."""
    if not parts:
        return Result(name, "unknown", empty)
    ordered = sorted(parts, key=lambda p: -RANK[p.status])
    metrics: dict[str, float] = {}
    for part in parts:
        metrics.update(part.metrics)
    return Result(
        name, worst([p.status for p in parts]), "; ".join(p.text for p in ordered), metrics
    )


def exit_code(results: list[Result]) -> int:
    return CODE[worst([r.status for r in results])] if results else CODE["unknown"]


def score(results: list[Result]) -> int:
    """100 x the mean of points per check (ok 1, warning 0.5, unknown 0.5, critical 0),
    rounded down; any critical caps it at 49 so "mostly fine" never hides one."""
    if not results:
        return 0
    value = int(100 * sum(POINTS[r.status] for r in results) / len(results))
    if any(r.status == "critical" for r in results):
        value = min(value, 49)
    return value


def order(results: list[Result]) -> list[Result]:
    """Worst first, then by name: what needs attention is on top."""
    return sorted(results, key=lambda r: (-RANK[r.status], r.name))
