"""What a report section is made of: facts, tables, notes and advice.

Sections build these from catalog queries; the renderer and the JSON output only
read them, so a section never formats text itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
# how a cell is shown as text; JSON always carries the raw value
Kind = Literal["text", "int", "bytes", "percent", "seconds", "ms", "float", "time", "query"]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: Kind = "text"


@dataclass
class Table:
    """One list of rows; its key names it in the JSON document."""

    key: str
    title: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    empty: str = "none"


@dataclass(frozen=True)
class Advice:
    """A finding and the exact SQL (or setting) that addresses it.

    `object` names what the advice is about ("schema.name", a pid, a database), so
    advice from two sections about the same object can be told apart and tested."""

    severity: Severity
    finding: str
    sql: str
    object: str = ""
    section: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "section": self.section,
            "object": self.object,
            "finding": self.finding,
            "sql": self.sql,
        }


@dataclass
class Section:
    name: str
    title: str
    facts: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    error: str | None = None

    def table(self, key: str) -> Table:
        for t in self.tables:
            if t.key == key:
                return t
        raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "facts": self.facts}
        for t in self.tables:
            out[t.key] = t.rows
        out["notes"] = self.notes
        if self.error is not None:
            out["error"] = self.error
        return out
