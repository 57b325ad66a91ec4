"""Recommendations: the advice of every other section in one list, most severe
first, each with the SQL (or setting) that addresses it.

And how advice SQL that takes a lock is written (`ddl()`): `SET lock_timeout` first,
so a statement queued behind a long transaction gives up instead of stalling every
session queued behind it, and before each statement a comment saying what it locks,
what that blocks and for how long.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from psycopg import sql

from pyops.report.context import Probe
from pyops.report.model import SEVERITY_ORDER, Advice, Column, Section, Table

LOCK_TIMEOUT = "5s"
SET_LOCK_TIMEOUT = f"SET lock_timeout = '{LOCK_TIMEOUT}';"


@dataclass(frozen=True)
class Step:
    """One statement of advice and what it locks (see the phrases below)."""

    statement: sql.Composable
    locks: str


def ddl(probe: Probe, *steps: Step, preface: str = "") -> str:
    """The statements, `lock_timeout` set first, each after a comment on its locks.
    `preface` (already SQL, e.g. a query to run first) comes before all of it."""
    lines = [*preface.splitlines(), SET_LOCK_TIMEOUT]
    for step in steps:
        if step.locks:
            lines.append(comment(step.locks))
        lines.append(probe.sql(step.statement))
    return "\n".join(lines)


def comment(text: str) -> str:
    """Text as SQL comment lines."""
    return "\n".join(textwrap.wrap(text, 96, initial_indent="-- ", subsequent_indent="-- "))


NAMEDATALEN = 64


def _object_name(name1: str, name2: str, label: str) -> str:
    """PostgreSQL's makeObjectName: name1_name2_label within NAMEDATALEN - 1 bytes,
    the longer of name1 and name2 shortened first."""
    avail = NAMEDATALEN - 1 - (1 + len(label.encode()) if label else 0) - (1 if name2 else 0)
    a, b = name1.encode(), name2.encode()
    n1, n2 = len(a), len(b)
    while n1 + n2 > avail:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    parts = [a[:n1].decode(errors="ignore"), b[:n2].decode(errors="ignore") if name2 else ""]
    return "_".join(x for x in (*parts, label) if x)


def choose_name(probe: Probe, schema: str, name1: str, name2: str, label: str) -> str:
    """The name PostgreSQL would choose for a new index (`table_col_idx`, then
    `table_col_idx1`, ...), free in `schema`, so advice can name what it creates."""
    attempt = 0
    while True:
        name = _object_name(name1, name2, f"{label}{attempt or ''}")
        taken = probe.one(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        )
        if taken is None:
            return name
        attempt += 1


# What each kind of statement locks, blocks, and for how long: the phrases the
# advice comments and docs/db-report.md use.


def locks_create_concurrently(table: str, index: str) -> str:
    return (
        f"locks: SHARE UPDATE EXCLUSIVE on {table} for the whole build (reads and writes go "
        "on; VACUUM, ANALYZE and other DDL on it wait). It first waits for transactions "
        "writing the table and for any older snapshot. Stopped by lock_timeout it leaves the "
        f"INVALID index {index}: DROP INDEX CONCURRENTLY it and run this again"
    )


def locks_create_partitioned(table: str) -> str:
    return (
        f"locks: SHARE on {table} and each of its partitions for the whole build (reads go "
        "on, writes wait): a partitioned table cannot be indexed CONCURRENTLY at once; "
        "build each partition's index CONCURRENTLY and ATTACH it to avoid that"
    )


def locks_drop_concurrently(table: str) -> str:
    return (
        f"locks: SHARE UPDATE EXCLUSIVE on {table} and the index; waits for every "
        "transaction using the table to end, then drops it (reads and writes go on)"
    )


def locks_validate(table: str, referenced: str | None = None) -> str:
    also = f", and ROW SHARE on {referenced}," if referenced else ""
    return (
        f"locks: SHARE UPDATE EXCLUSIVE on {table}{also} for a full scan of {table} (reads "
        "and writes go on; VACUUM and DDL on it wait)"
    )


def locks_brief_exclusive(table: str, what: str) -> str:
    return (
        f"locks: ACCESS EXCLUSIVE on {table}, briefly ({what}): every read and write there "
        "waits for that moment, and while it waits for the lock, so does every session "
        "queued behind it"
    )


def locks_rewrite(table: str, what: str) -> str:
    return (
        f"locks: ACCESS EXCLUSIVE on {table} for the whole {what}: no reads or writes of "
        "it until done, a time that grows with its size. Plan a maintenance window"
    )


def locks_sequence(sequence: str) -> str:
    return (
        f"locks: SHARE ROW EXCLUSIVE on {sequence}, briefly: nextval() (every insert that "
        "takes a value from it) waits for that moment"
    )


def locks_vacuum(table: str) -> str:
    return (
        f"locks: SHARE UPDATE EXCLUSIVE on {table} for the whole pass (reads and writes go "
        "on; DDL and another VACUUM of it wait)"
    )


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
