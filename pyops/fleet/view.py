"""What `pyops fleet` shows: a host as read from the bucket (`HostRead`), and the
judged views of hosts, targets and tiers, with their JSON form. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyops.health.result import CODE, Status, worst

STATUSES: tuple[Status, ...] = ("ok", "warning", "critical", "unknown")


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def age_text(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def seconds_text(value: float) -> str:
    """A duration (an RTO) as people read it."""
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


@dataclass
class HostRead:
    """What the bucket says about one host (pyops/actions/fleet.py fills it in)."""

    host: str
    source: str = "index"  # index | manifests | none (unreadable)
    index: str = "missing"  # authenticated | unauthenticated | refused | unsupported | missing
    authenticated: bool = False  # what is shown was authenticated with the host's key
    reason: str = ""  # why the index was not used
    written_at: str | None = None
    event: str | None = None
    retention: dict[str, int] | None = None
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # TARGET entries
    error: str | None = None  # the host could not be read


@dataclass(frozen=True)
class Problem:
    status: Status  # "ok": a note, not a problem
    text: str


@dataclass
class TierView:
    tier: str
    status: Status
    judged: bool
    limit_hours: float
    age_hours: float | None = None  # of the newest backup of this tier or a longer one
    newest: dict[str, Any] | None = None  # this tier's own newest
    count: int = 0
    offsite_count: int | None = None
    median: float | None = None  # of the sizes before the newest
    ratio: float | None = None  # newest / median
    shrinking: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "judged": self.judged,
            "age_hours": rounded(self.age_hours),
            "limit_hours": self.limit_hours,
            "newest": self.newest,
            "count": self.count,
            "offsite_count": self.offsite_count,
            "median_bytes": rounded(self.median),
            "size_ratio": rounded(self.ratio),
            "shrinking": self.shrinking,
        }


@dataclass
class TargetView:
    target: str
    type: str
    status: Status
    newest: dict[str, Any] | None
    tiers: list[TierView]
    drill: dict[str, Any]
    problems: list[Problem]
    refused: int = 0  # manifests refused
    unauthenticated: int = 0  # backups without a MAC
    sizes: list[list[int]] = field(default_factory=list)  # [epoch, bytes] (html only)
    rto: list[list[float]] = field(default_factory=list)  # [epoch, rto_s, ok] (html only)

    def newest_tier(self) -> TierView | None:
        """The tier of the newest backup: its size trend is the target's."""
        tier = self.newest["tier"] if self.newest else None
        return next((t for t in self.tiers if t.tier == tier), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "type": self.type,
            "status": self.status,
            "newest": self.newest,
            "tiers": {t.tier: t.as_dict() for t in self.tiers},
            "drill": self.drill,
            "refused": self.refused,
            "unauthenticated": self.unauthenticated,
            "problems": [{"status": p.status, "text": p.text} for p in self.problems],
        }


@dataclass
class HostView:
    host: str
    status: Status
    source: str
    index: str
    authenticated: bool
    problems: list[Problem]
    targets: list[TargetView]
    written_at: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "source": self.source,
            "index": self.index,
            "authenticated": self.authenticated,
            "index_written_at": self.written_at,
            "error": self.error,
            "problems": [{"status": p.status, "text": p.text} for p in self.problems],
            "targets": [t.as_dict() for t in self.targets],
        }


@dataclass
class FleetView:
    """The fleet: its hosts' statuses tallied as they come (`add`), and the hosts
    themselves unless the caller streams them out (JSON: memory stays flat)."""

    bucket: str
    prefix: str
    generated_at: datetime
    hosts: list[HostView] = field(default_factory=list)
    error: str | None = None  # the bucket could not be listed
    tally: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    targets: int = 0

    def add(self, host: HostView, keep: bool = True) -> None:
        self.tally[host.status] += 1
        self.targets += len(host.targets)
        if keep:
            self.hosts.append(host)

    @property
    def status(self) -> Status:
        """The worst host's; unknown when the bucket could not be listed or held no host."""
        statuses: list[Status] = [s for s in STATUSES if self.tally[s]]
        if self.error or not statuses:
            statuses.append("unknown")
        return worst(statuses)

    @property
    def exit_code(self) -> int:
        return CODE[self.status]

    def counts(self) -> dict[str, int]:
        return {"hosts": sum(self.tally.values()), "targets": self.targets, **self.tally}

    def as_dict(self, hosts: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"hosts": [h.as_dict() for h in self.hosts]} if hosts else {}
        out.update(
            bucket=self.bucket,
            prefix=self.prefix,
            generated_at=self.generated_at.isoformat(),
            status=self.status,
            exit_code=self.exit_code,
            summary=self.counts(),
            error=self.error,
        )
        return out
