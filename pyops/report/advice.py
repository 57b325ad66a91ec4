"""Recommendations: the advice of every other section in one list, most severe
first, each with the SQL (or setting) that addresses it."""

from __future__ import annotations

from pyops.report.context import Probe
from pyops.report.model import SEVERITY_ORDER, Advice, Column, Section, Table

# sections whose findings carry advice, in the order recommendations are listed
# within one severity
SOURCES = (
    "wraparound",
    "integrity",
    "blocking",
    "long-running",
    "connections",
    "duplicate-indexes",
    "missing-indexes",
    "n-plus-one",
    "bloat",
    "unused-indexes",
    "cache",
    "queries",
)
# the same object flagged by two sections: the first named here speaks for both
# (a duplicate index is also unused; pg_stat_statements absent is said once)
SUPERSEDES = {"unused-indexes": "duplicate-indexes", "n-plus-one": "queries"}


def _new_indexes(probe: Probe) -> set[str]:
    """Indexes created for a table that missing-indexes flagged: unused only because
    they are new, not a reason to drop what was just recommended."""
    section = probe.section("missing-indexes")
    if section.error is not None:
        return set()
    return {r["index"] for r in section.table("indexed").rows}


def recommendations(probe: Probe) -> Section:
    gathered: list[Advice] = []
    failed = []
    by_section: dict[str, set[str]] = {}
    for name in SOURCES:
        section = probe.section(name)
        if section.error is not None:
            failed.append(name)
            gathered.append(
                Advice(
                    "info",
                    f"section {name} could not be read: {section.error}; run the report "
                    "again later",
                    "",
                    object=name,
                    section=name,
                )
            )
            continue
        by_section[name] = {a.object for a in section.advice}
        gathered += [
            Advice(a.severity, a.finding, a.sql, a.object, section=name) for a in section.advice
        ]
    kept = [
        a
        for a in gathered
        if not (a.section in SUPERSEDES and a.object in by_section.get(SUPERSEDES[a.section], ()))
        and not (a.section == "unused-indexes" and a.object in _new_indexes(probe))
    ]
    kept.sort(key=lambda a: (SEVERITY_ORDER[a.severity], SOURCES.index(a.section)))
    counts = {s: sum(a.severity == s for a in kept) for s in SEVERITY_ORDER}
    return Section(
        "recommendations",
        "Recommendations",
        facts=counts,
        tables=[
            Table(
                "recommendations",
                "what to change, most severe first",
                (
                    Column("severity", "severity"),
                    Column("section", "section"),
                    Column("finding", "finding"),
                    Column("sql", "SQL / setting"),
                ),
                [a.as_dict() for a in kept],
                empty="nothing to recommend",
            )
        ],
    )
