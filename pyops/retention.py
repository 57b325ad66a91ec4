"""GFS retention as a pure function: complete backups in, keep/delete with a reason out.

No I/O here. Rules, in order of precedence:
1. the newest complete backup of a target is never deleted, whatever the counts;
2. a daily/weekly/monthly backup far smaller than the median of the tier's recent
   normal ones (below `min_size_ratio` x; e.g. a dump of the new, empty database on a
   disaster-recovery host) is kept and flagged, and does not count toward the tier's
   N, until a normal-size backup follows or the operator accepts it: a run of bad
   backups never pushes the good ones out;
3. daily/weekly/monthly: the newest N of the tier are kept (N from [retention]);
4. pre-restore safety backups are kept `pre_restore_days` days.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

RECENT = 5  # how many earlier normal-size backups make "the recent median"


@dataclass(frozen=True)
class Item:
    id: str
    target: str
    tier: str
    started: datetime
    size: int = 0
    accepted: bool = False  # the operator said this size is right (`prune --accept`)


@dataclass(frozen=True)
class Policy:
    daily: int
    weekly: int
    monthly: int
    pre_restore_days: int = 7
    min_size_ratio: float = 0.0  # 0: no size rule

    def count(self, tier: str) -> int:
        return int(getattr(self, tier))


@dataclass(frozen=True)
class Decision:
    item: Item
    keep: bool
    reason: str


def below_median(size: int, previous: Sequence[int], ratio: float) -> float | None:
    """The median of `previous` when `size` is below `ratio` x it (the size-anomaly rule
    `health` reports and retention honours), else None."""
    if ratio <= 0 or not previous:
        return None
    median = float(statistics.median(previous))
    return median if size < ratio * median else None


def undersized(items: Sequence[Item], ratio: float) -> dict[str, str]:
    """Items that do not count toward retention, with why: far below the median of
    the RECENT normal-size backups before them in their target and tier, not accepted,
    and not followed by a normal-size one."""
    out: dict[str, str] = {}
    series: dict[tuple[str, str], list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.started, i.id)):
        if item.tier != "pre-restore":
            series.setdefault((item.target, item.tier), []).append(item)
    for run in series.values():
        normal: list[int] = []
        suspects: dict[str, str] = {}
        for item in run:
            if item.accepted:  # the operator says this size is right: the new baseline
                normal = [item.size]
                suspects.clear()
                continue
            median = below_median(item.size, normal[-RECENT:], ratio)
            if median is None:
                normal.append(item.size)
                suspects.clear()  # a normal-size backup followed: those count again
            else:
                suspects[item.id] = (
                    f"{item.size} bytes, below {ratio:g} x the median {median:.0f} of the "
                    f"tier's recent backups: kept and not counted until a normal-size backup "
                    f"follows (or `pyops prune --accept {item.id}`)"
                )
        out.update(suspects)
    return out


def apply(
    items: Sequence[Item], policy: Policy, now: datetime, tiers: Sequence[str] | None = None
) -> list[Decision]:
    """Decide every item (newest first). `tiers` limits what may be deleted; items of
    other tiers are kept with the reason 'tier not pruned in this run'."""
    decisions: list[Decision] = []
    newest: dict[str, Item] = {}
    for item in sorted(items, key=lambda i: (i.started, i.id), reverse=True):
        newest.setdefault(item.target, item)
    suspect = undersized(items, policy.min_size_ratio)
    seen: dict[tuple[str, str], int] = {}
    for item in sorted(items, key=lambda i: (i.started, i.id), reverse=True):
        if item.id in suspect:
            note = "newest backup of the target; " if newest[item.target] is item else ""
            decisions.append(Decision(item, True, note + suspect[item.id]))
            continue
        rank = seen.get((item.target, item.tier), 0) + 1
        seen[(item.target, item.tier)] = rank
        if newest[item.target] is item:
            decisions.append(Decision(item, True, "newest backup of the target: never pruned"))
        elif tiers is not None and item.tier not in tiers:
            decisions.append(Decision(item, True, "tier not pruned in this run"))
        elif item.tier == "pre-restore":
            limit = timedelta(days=policy.pre_restore_days)
            young = now - item.started < limit
            reason = f"pre-restore, {'younger' if young else 'older'} than {limit.days} days"
            decisions.append(Decision(item, young, reason))
        else:
            keep_n = policy.count(item.tier)
            keep = rank <= keep_n
            reason = (
                f"{item.tier} #{rank} of the newest {keep_n}"
                if keep
                else f"{item.tier} #{rank}, beyond the newest {keep_n}"
            )
            decisions.append(Decision(item, keep, reason))
    return decisions
