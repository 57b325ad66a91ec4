"""GFS retention rules, simulated over weeks of runs; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pyops.actions.backup import resolve_tier
from pyops.retention import Item, Policy, apply, undersized

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # the 1st, and a Sunday
POLICY = Policy(daily=7, weekly=5, monthly=12)


def simulate(days: int, policy: Policy = POLICY) -> list[Item]:
    """Run `--tier auto` once a day for `days`, pruning the written tier after each run."""
    kept: list[Item] = []
    for day in range(days):
        now = T0 + timedelta(days=day)
        tier = resolve_tier("auto", now)
        kept.append(Item(f"db.{tier}.{day}", "db", tier, now))
        decisions = apply(kept, policy, now, tiers=[tier])
        kept = [d.item for d in decisions if d.keep]
    return kept


def test_auto_tier_calendar() -> None:
    assert resolve_tier("auto", datetime(2026, 12, 1, tzinfo=UTC)) == "monthly"
    assert resolve_tier("auto", datetime(2026, 11, 29, tzinfo=UTC)) == "weekly"  # Sunday
    assert resolve_tier("auto", datetime(2026, 11, 24, tzinfo=UTC)) == "daily"
    assert resolve_tier("weekly", datetime(2026, 11, 24, tzinfo=UTC)) == "weekly"


def test_a_season_of_daily_runs_leaves_exactly_the_table() -> None:
    kept = simulate(200)
    by_tier: dict[str, list[Item]] = {}
    for item in kept:
        by_tier.setdefault(item.tier, []).append(item)
    assert len(by_tier["daily"]) == 7
    assert len(by_tier["weekly"]) == 5
    assert len(by_tier["monthly"]) == 7  # Nov..May: fewer than 12 months have passed
    assert max(i.started for i in kept) == T0 + timedelta(days=199)
    assert max(i.started for i in by_tier["daily"]) == T0 + timedelta(days=199)


def test_newest_backup_survives_zero_retention() -> None:
    items = [Item(f"db.daily.{i}", "db", "daily", T0 + timedelta(days=i)) for i in range(3)]
    decisions = apply(items, Policy(daily=0, weekly=0, monthly=0), T0 + timedelta(days=3))
    kept = [d.item.id for d in decisions if d.keep]
    assert kept == ["db.daily.2"]
    assert "never pruned" in decisions[0].reason


def test_newest_is_per_target_and_across_tiers() -> None:
    items = [
        Item("a.monthly.0", "a", "monthly", T0),
        Item("a.daily.1", "a", "daily", T0 + timedelta(days=1)),
        Item("b.daily.0", "b", "daily", T0),
    ]
    decisions = {d.item.id: d for d in apply(items, Policy(0, 0, 0), T0 + timedelta(days=2))}
    assert decisions["a.daily.1"].keep and decisions["b.daily.0"].keep
    assert not decisions["a.monthly.0"].keep


def test_pre_restore_kept_seven_days() -> None:
    now = T0 + timedelta(days=30)
    items = [
        Item("db.daily.x", "db", "daily", now),
        Item("db.pre-restore.young", "db", "pre-restore", now - timedelta(days=6)),
        Item("db.pre-restore.old", "db", "pre-restore", now - timedelta(days=8)),
    ]
    got = {d.item.id: d.keep for d in apply(items, POLICY, now)}
    assert got == {"db.daily.x": True, "db.pre-restore.young": True, "db.pre-restore.old": False}


def test_other_tiers_untouched_when_limited() -> None:
    items = [Item(f"db.weekly.{i}", "db", "weekly", T0 + timedelta(days=i)) for i in range(9)]
    items.append(Item("db.daily.n", "db", "daily", T0 + timedelta(days=20)))
    decisions = apply(items, Policy(0, 0, 0), T0 + timedelta(days=21), tiers=["daily"])
    assert all(d.keep for d in decisions)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["daily", "weekly", "monthly", "pre-restore"]),
            st.integers(min_value=0, max_value=10_000),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_invariants(spec: list[tuple[str, str, int]], d: int, w: int, m: int) -> None:
    items = [
        Item(f"{t}.{tier}.{n}.{i}", t, tier, T0 + timedelta(hours=n))
        for i, (t, tier, n) in enumerate(spec)
    ]
    policy = Policy(d, w, m)
    decisions = apply(items, policy, T0 + timedelta(hours=10_001))
    assert len(decisions) == len(items)
    for target in {i.target for i in items}:
        mine = [x for x in decisions if x.item.target == target]
        newest = max(mine, key=lambda x: (x.item.started, x.item.id))
        assert newest.keep  # the newest of a target is never pruned
        for tier, n in (("daily", d), ("weekly", w), ("monthly", m)):
            kept = [x for x in mine if x.item.tier == tier and x.keep and x is not newest]
            assert len(kept) <= n
            # nothing newer is deleted while something older of the tier is kept
            deleted = [x for x in mine if x.item.tier == tier and not x.keep]
            if kept and deleted:
                assert min(k.item.started for k in kept) >= max(x.item.started for x in deleted)


# --- row 16 of issue 10: a run of bad (tiny) backups never pushes the good ones out ----


def sized(day: int, size: int, accepted: bool = False) -> Item:
    return Item(f"db.daily.{day:03d}", "db", "daily", T0 + timedelta(days=day), size, accepted)


SMALL = Policy(daily=3, weekly=5, monthly=12, min_size_ratio=0.5)


def kept_ids(items: list[Item], policy: Policy = SMALL) -> list[str]:
    now = max(i.started for i in items)
    return [d.item.id for d in apply(items, policy, now, tiers=["daily"]) if d.keep]


def test_tiny_backups_are_kept_and_do_not_count() -> None:
    good = [sized(d, 1000 + d) for d in range(5)]
    bad = [sized(d, 10) for d in range(5, 12)]  # a week of dumps of an empty database
    kept = kept_ids(good + bad)
    # the three newest good ones survive, and every bad one is kept (flagged)
    assert kept == sorted([i.id for i in bad] + [i.id for i in good[-3:]], reverse=True)
    decisions = {d.item.id: d for d in apply(good + bad, SMALL, bad[-1].started, ["daily"])}
    assert "not counted" in decisions[bad[0].id].reason
    assert "pyops prune --accept" in decisions[bad[0].id].reason


def test_a_normal_backup_after_the_tiny_ones_ends_the_exception() -> None:
    items = [sized(d, 1000) for d in range(5)] + [sized(5, 10), sized(6, 1001)]
    kept = kept_ids(items)
    assert kept == [sized(6, 0).id, sized(5, 0).id, sized(4, 0).id]


def test_an_accepted_size_becomes_the_new_normal() -> None:
    items = [sized(d, 1000) for d in range(5)] + [sized(5, 10, accepted=True)]
    items += [sized(d, 11) for d in range(6, 9)]
    assert kept_ids(items) == [sized(8, 0).id, sized(7, 0).id, sized(6, 0).id]


def test_the_size_rule_is_off_without_a_ratio() -> None:
    items = [sized(d, 1000) for d in range(5)] + [sized(d, 10) for d in range(5, 9)]
    plain = Policy(daily=3, weekly=5, monthly=12)
    assert kept_ids(items, plain) == [sized(d, 0).id for d in (8, 7, 6)]


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=40))
def test_the_newest_normal_backups_always_survive(sizes: list[int]) -> None:
    items = [sized(d, s) for d, s in enumerate(sizes)]
    kept = set(kept_ids(items))
    flagged = undersized(items, SMALL.min_size_ratio)
    normal = [i for i in reversed(items) if i.id not in flagged]
    assert {i.id for i in normal[: SMALL.daily]} <= kept
    assert set(flagged) <= kept
