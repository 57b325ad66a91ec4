"""GFS retention as a pure function: complete backups in, keep/delete with a reason out.

No I/O here. Rules, in order of precedence:
1. the newest complete backup of a target is never deleted, whatever the counts;
2. daily/weekly/monthly: the newest N of the tier are kept (N from [retention]);
3. pre-restore safety backups are kept `pre_restore_days` days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Item:
    id: str
    target: str
    tier: str
    started: datetime


@dataclass(frozen=True)
class Policy:
    daily: int
    weekly: int
    monthly: int
    pre_restore_days: int = 7

    def count(self, tier: str) -> int:
        return int(getattr(self, tier))


@dataclass(frozen=True)
class Decision:
    item: Item
    keep: bool
    reason: str


def apply(
    items: Sequence[Item], policy: Policy, now: datetime, tiers: Sequence[str] | None = None
) -> list[Decision]:
    """Decide every item (newest first). `tiers` limits what may be deleted; items of
    other tiers are kept with the reason 'tier not pruned in this run'."""
    decisions: list[Decision] = []
    newest: dict[str, Item] = {}
    for item in sorted(items, key=lambda i: (i.started, i.id), reverse=True):
        newest.setdefault(item.target, item)
    seen: dict[tuple[str, str], int] = {}
    for item in sorted(items, key=lambda i: (i.started, i.id), reverse=True):
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
