"""The three faces of a health report: aligned text, one JSON document, Prometheus."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pyops import metrics
from pyops.health.result import Result, exit_code, order, score, worst


@dataclass
class Report:
    results: list[Result]
    skipped: dict[str, str] = field(default_factory=dict)
    timestamp: float = 0.0

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)

    @property
    def score(self) -> int:
        return score(self.results)

    @property
    def status(self) -> str:
        return worst([r.status for r in self.results]) if self.results else "unknown"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "score": self.score,
            "checks": [r.as_dict() for r in order(self.results)],
            "not_configured": [{"name": k, "why": v} for k, v in self.skipped.items()],
        }


def text(report: Report) -> str:
    rows = order(report.results)
    width = max((len(r.name) for r in rows), default=0)
    lines = [f"{r.status.upper():<8}  {r.name:<{width}}  {r.message}" for r in rows]
    if report.skipped:
        lines.append(f"not configured (not run): {', '.join(report.skipped)}")
    counts = ", ".join(
        f"{sum(r.status == s for r in rows)} {s}"
        for s in ("ok", "warning", "critical", "unknown")
        if any(r.status == s for r in rows)
    )
    lines.append(f"score {report.score}/100 ({counts or 'no checks'})")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str)


def prometheus(report: Report) -> str:
    families = metrics.health_families(
        report.results, report.score, report.exit_code, report.timestamp
    )
    return "\n".join(metrics.render(families))
