"""The sections of `pyops db report`, in the order the contract lists them, each
with the function that builds it."""

from __future__ import annotations

from collections.abc import Callable

from pyops.report import activity, advice, indexes, integrity, missing, overview, statements, tables
from pyops.report.context import Probe
from pyops.report.model import Section

BUILDERS: dict[str, Callable[[Probe], Section]] = {
    "connections": overview.connections,
    "size": overview.size,
    "tables": tables.tables,
    "indexes": indexes.indexes,
    "unused-indexes": indexes.unused,
    "duplicate-indexes": indexes.duplicates,
    "missing-indexes": missing.missing_indexes,
    "queries": statements.queries,
    "bloat": tables.bloat,
    "cache": overview.cache,
    "blocking": activity.blocking,
    "long-running": activity.long_running,
    "wraparound": overview.wraparound,
    "integrity": integrity.integrity,
    "n-plus-one": statements.n_plus_one,
    "recommendations": advice.recommendations,
}
SECTIONS: tuple[str, ...] = tuple(BUILDERS)


def build(probe: Probe, names: tuple[str, ...] | list[str]) -> dict[str, Section]:
    """The named sections (all when none are named), in the contract's order."""
    wanted = [n for n in SECTIONS if n in names] if names else list(SECTIONS)
    return {name: probe.section(name) for name in wanted}
