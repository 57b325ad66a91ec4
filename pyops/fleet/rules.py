"""The fleet's rules: what one host's index (or, without one, its manifests) says,
judged against the [health] thresholds at one moment. Pure: no I/O.

Per target and tier (daily, weekly, monthly; a tier the host keeps none of, by its
[retention], is not judged):
- fresh while the newest backup of the tier, or of a longer one (a weekly backup is
  also a fresh daily one), is younger than the tier's limit; else critical. A tier
  never written is fine while the target's first backup is younger than the limit
  (health's backup_freshness rule);
- shrinking (warning) when the newest backup is below `backup_size_min_ratio` x the
  median of the RECENT before it (health's backup_size rule).
Per target: no complete backup at all (critical); the newest not in the bucket, a
backup with warnings, backups without a MAC (warning); refused manifests
(critical); never drilled, the last drill failed, or the last successful one older
than `drill_max_age_days` (warning; unknown without an index: no finding).
Per host: the index refused (critical: forged or altered); unauthenticated, the
fleet holding no key for the host (warning, unless --allow-unauthenticated); the
host unreadable (unknown). The worst status wins, as in `health`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyops.config import HealthConfig
from pyops.fleet.view import (
    HostRead,
    HostView,
    Problem,
    TargetView,
    TierView,
    age_text,
    rounded,
)
from pyops.health.result import Status, worst
from pyops.progress import human
from pyops.retention import RECENT, below_median

TIERS = ("daily", "weekly", "monthly")
SERIES_POINTS = 120  # points kept per chart


@dataclass(frozen=True)
class Limits:
    max_age_hours: dict[str, float]
    drill_max_age_days: float
    size_min_ratio: float
    allow_unauthenticated: bool = False


def limits(cfg: HealthConfig, allow_unauthenticated: bool = False) -> Limits:
    return Limits(
        {
            "daily": cfg.backup_max_age_hours,
            "weekly": cfg.weekly_max_age_days * 24,
            "monthly": cfg.monthly_max_age_days * 24,
        },
        cfg.drill_max_age_days,
        cfg.backup_size_min_ratio,
        allow_unauthenticated,
    )


# --- judging ---------------------------------------------------------------------------


def _hours(now: datetime, when: str) -> float:
    return (now - datetime.fromisoformat(when)).total_seconds() / 3600


def _tier_view(
    tier: str,
    body: dict[str, Any],
    covering: dict[str, Any] | None,
    judged: bool,
    first_hours: float | None,
    now: datetime,
    lim: Limits,
    problems: list[Problem],
) -> TierView:
    limit = lim.max_age_hours[tier]
    view = TierView(tier, "ok", judged, limit, newest=body.get("newest"))
    view.count = int(body.get("count", 0))
    view.offsite_count = body.get("offsite_count")
    statuses: list[Status] = []
    if covering is not None:
        view.age_hours = _hours(now, covering["time"])
        if judged and view.age_hours > limit:
            statuses.append("critical")
            problems.append(
                Problem(
                    "critical",
                    f"{tier}: newest backup {covering['id']} is {age_text(view.age_hours)} old "
                    f"(limit {age_text(limit)}): stale",
                )
            )
    elif judged and first_hours is not None and first_hours >= limit:
        statuses.append("critical")
        problems.append(
            Problem(
                "critical",
                f"no {tier} backup yet (first backup {age_text(first_hours)} ago, "
                f"limit {age_text(limit)})",
            )
        )
    sizes = [int(s) for _, s in body.get("sizes", [])]
    if len(sizes) >= 2:
        newest, previous = sizes[-1], sizes[-1 - RECENT : -1]
        view.median = float(statistics.median(previous))
        view.ratio = newest / view.median if view.median else None
        if judged and below_median(newest, previous, lim.size_min_ratio) is not None:
            view.shrinking = True
            statuses.append("warning")
            problems.append(
                Problem(
                    "warning",
                    f"{tier}: newest backup is {human(newest)}, below {lim.size_min_ratio:g} x "
                    f"the median {human(view.median)} of the {len(previous)} before it: "
                    "shrinking (check the source lost no data)",
                )
            )
    newest_entry = body.get("newest") or {}
    if judged and newest_entry.get("warnings"):
        w = newest_entry["warnings"]
        statuses.append("warning")
        problems.append(
            Problem("warning", f"{newest_entry['id']}: {len(w)} warning(s), e.g. {w[0]}")
        )
    view.status = worst(statuses)
    return view


def _drill(
    entry: dict[str, Any], known: bool, now: datetime, lim: Limits
) -> tuple[dict[str, Any], list[Problem]]:
    drill = entry.get("drill") or {}
    last, last_ok = drill.get("last"), drill.get("last_ok")
    out: dict[str, Any] = {
        "known": known,
        "last_time": last["time"] if last else None,
        "last_ok": last["ok"] if last else None,
        "rto_s": last["rto_s"] if last else None,
        "backup": last["backup"] if last else None,
        "error": (last["error"] or None) if last else None,
        "last_success": last_ok,
        "success_age_days": rounded(_hours(now, last_ok) / 24) if last_ok else None,
    }
    out["status"] = "ok" if known else "unknown"
    if not known:
        return out, []
    if last is None:
        out["status"] = "warning"
        return out, [Problem("warning", "never drilled (run `pyops drill`)")]
    problems = []
    if not last["ok"]:
        ago = age_text(_hours(now, last["time"]))
        problems.append(Problem("warning", f"the last drill ({ago} ago) failed: {last['error']}"))
    if last_ok is None:
        problems.append(Problem("warning", "never drilled successfully"))
    elif out["success_age_days"] > lim.drill_max_age_days:
        problems.append(
            Problem(
                "warning",
                f"last successful drill {out['success_age_days']:.0f} days ago "
                f"(limit {lim.drill_max_age_days:g}; run `pyops drill`)",
            )
        )
    out["status"] = worst([p.status for p in problems])
    return out, problems


def _series(entry: dict[str, Any]) -> tuple[list[list[int]], list[list[float]]]:
    points: dict[int, int] = {}
    for body in entry.get("tiers", {}).values():
        points.update({int(t): int(s) for t, s in body.get("sizes", [])})
    sizes = [[t, points[t]] for t in sorted(points)]
    if len(sizes) > SERIES_POINTS:  # evenly thinned, the newest kept
        step = len(sizes) / SERIES_POINTS
        sizes = [sizes[int(i * step)] for i in range(SERIES_POINTS - 1)] + [sizes[-1]]
    rto = [[float(v) for v in p] for p in (entry.get("drill") or {}).get("history", [])]
    return sizes, rto[-SERIES_POINTS:]


def judge_target(
    name: str,
    entry: dict[str, Any],
    retention: dict[str, int] | None,
    now: datetime,
    lim: Limits,
    drills_known: bool = True,
    series: bool = False,
) -> TargetView:
    tiers_in: dict[str, Any] = entry.get("tiers", {})
    newest = {t: b["newest"] for t, b in tiers_in.items() if t in TIERS and b.get("newest")}
    problems: list[Problem] = []
    times = [_hours(now, n["time"]) for n in newest.values()]
    times += [(now.timestamp() - t) / 3600 for b in tiers_in.values() for t, _ in b["sizes"][:1]]
    first_hours = max(times) if times else None
    tiers = []
    for i, tier in enumerate(TIERS):
        judged = bool(newest) and (
            retention.get(tier, 0) > 0 if retention is not None else tier in newest or i == 0
        )
        covering = [n for t, n in newest.items() if TIERS.index(t) >= i]
        latest = (
            max(covering, key=lambda n: datetime.fromisoformat(n["time"])) if covering else None
        )
        body = tiers_in.get(tier, {"count": 0, "sizes": []})
        tiers.append(_tier_view(tier, body, latest, judged, first_hours, now, lim, problems))
    overall = None
    if newest:
        tier, top = max(newest.items(), key=lambda kv: datetime.fromisoformat(kv[1]["time"]))
        overall = {**top, "tier": tier, "age_hours": rounded(_hours(now, top["time"]))}
        if top.get("offsite") is False:
            problems.append(Problem("warning", f"newest backup {top['id']} is not in the bucket"))
    else:
        problems.append(Problem("critical", "no complete backup"))
    warnings = [str(w) for w in entry.get("warnings", [])]
    refused, unauthenticated = int(entry.get("refused", 0)), int(entry.get("unauthenticated", 0))
    if refused:
        example = f": {warnings[0]}" if warnings else ""
        problems.append(
            Problem(
                "critical", f"{refused} manifest(s) refused (forged, altered or malformed){example}"
            )
        )
    else:
        problems += [Problem("warning", w) for w in warnings[:5]]
    if unauthenticated:
        problems.append(
            Problem("warning", f"{unauthenticated} backup(s) used without a MAC (unauthenticated)")
        )
    drill, drill_problems = _drill(entry, drills_known, now, lim)
    problems += drill_problems
    view = TargetView(
        name,
        str(entry.get("type", "unknown")),
        worst([p.status for p in problems]),
        overall,
        tiers,
        drill,
        problems,
        refused,
        unauthenticated,
    )
    if series:
        view.sizes, view.rto = _series(entry)
    return view


def judge_host(read: HostRead, now: datetime, lim: Limits, series: bool = False) -> HostView:
    problems: list[Problem] = []
    if read.error:
        problems.append(Problem("unknown", f"cannot read the host's objects: {read.error}"))
    if read.index == "refused":
        problems.append(
            Problem("critical", f"index refused ({read.reason}): listed from its manifests")
        )
    elif read.index == "unsupported":
        problems.append(
            Problem("warning", f"index not read ({read.reason}): listed from its manifests")
        )
    elif read.index == "missing" and read.source == "manifests":
        problems.append(
            Problem(
                "ok",
                "no index (older pyops, or it was never written): listed from its "
                "manifests; drills unknown",
            )
        )
    if not read.error and not read.authenticated:
        problems.append(
            Problem(
                "ok" if lim.allow_unauthenticated else "warning",
                "unauthenticated: no key for this host (--keys-dir DIR/<host>.key), so what "
                "it shows is not proven to come from it",
            )
        )
    targets = [
        judge_target(name, entry, read.retention, now, lim, read.source == "index", series)
        for name, entry in sorted(read.targets.items())
    ]
    if not targets and not read.error:
        problems.append(Problem("critical", "no complete backup of any target"))
    statuses = [p.status for p in problems] + [t.status for t in targets]
    return HostView(
        read.host,
        worst(statuses),
        read.source,
        read.index,
        read.authenticated,
        problems,
        targets,
        read.written_at,
        read.error,
    )
