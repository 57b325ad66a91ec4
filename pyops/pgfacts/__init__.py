"""PostgreSQL facts shared by backup, `health`, `db report` and `maintenance`: one
session type (pgfacts.session), one query per fact (pgfacts.server), one bloat
estimator (pgfacts.bloat), and the thresholds both `health` and `db report` judge
them by, read from [health].

A fact computed here is computed one way: the wraparound horizon counts
multixacts as well as transaction ids, a session "runs" since its statement
started (active) or its transaction began (idle in transaction), and bloat is the
space the live rows would not need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pyops.config import HealthConfig

# transaction ids and multixact ids both wrap at 2^31: PostgreSQL stops assigning
# them (refuses writes) as the oldest unfrozen one nears that age
XID_LIMIT = 2**31

# user relations, for queries over pg_class c JOIN pg_namespace n: not the system
# schemas, TOAST tables or temporary tables (of any session)
USER_RELATIONS = """
  n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp)'
  AND c.relpersistence <> 't'
"""

Level = Literal["ok", "warning", "critical"]


@dataclass(frozen=True)
class Thresholds:
    """Where a fact becomes a warning or critical, for `health` and `db report` alike."""

    connections_warn_percent: float = 80.0
    connections_critical_percent: float = 95.0
    wraparound_warn_percent: float = 50.0
    wraparound_critical_percent: float = 75.0
    long_running_seconds: float = 300.0
    long_running_critical_seconds: float = 3600.0
    blocking_critical_seconds: float = 300.0

    @classmethod
    def from_health(cls, health: HealthConfig) -> Thresholds:
        return cls(
            connections_warn_percent=health.connections_warn_percent,
            connections_critical_percent=health.connections_critical_percent,
            wraparound_warn_percent=health.wraparound_warn_percent,
            wraparound_critical_percent=health.wraparound_critical_percent,
            long_running_seconds=health.long_running_seconds,
            long_running_critical_seconds=health.long_running_critical_seconds,
            blocking_critical_seconds=health.blocking_critical_seconds,
        )


def level(value: float, warn: float, critical: float) -> Level:
    if value >= critical:
        return "critical"
    if value >= warn:
        return "warning"
    return "ok"


def short(query: str | None, width: int = 80) -> str:
    """A statement on one line (runs of whitespace made one space), cut to `width`."""
    return re.sub(r"\s+", " ", query or "")[:width]
