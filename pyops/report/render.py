"""The report as text (aligned tables, one block per section) and as one JSON
document keyed by target, then section."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pyops.progress import human
from pyops.report.model import Column, Section, Table
from pyops.report.sqlshape import one_line

QUERY_WIDTH = 70
NUMERIC = {"int", "bytes", "percent", "seconds", "ms", "float"}


def cell(column: Column, value: Any) -> str:
    if value is None or value == "":
        return "-"
    kind = column.kind
    if kind == "bytes":
        return human(float(value))
    if kind == "percent":
        return f"{float(value) * 100:.1f}%"
    if kind == "seconds":
        return f"{float(value):.0f} s"
    if kind == "ms":
        return f"{float(value):.1f} ms"
    if kind == "float":
        return f"{float(value):.2f}"
    if kind == "time" and isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if kind == "query":
        return one_line(str(value), QUERY_WIDTH)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _fact(key: str, value: Any) -> str:
    if value is None:
        shown = "-"
    elif key.endswith("_ratio") and isinstance(value, float):
        shown = f"{value * 100:.2f}%"
    elif key.endswith("_bytes") and isinstance(value, int | float):
        shown = human(float(value))
    elif isinstance(value, datetime):
        shown = value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    else:
        shown = str(value)
    return f"{key} {shown}"


def table_text(table: Table) -> list[str]:
    lines = [f"{table.title}:"]
    if not table.rows:
        return [*lines, f"  ({table.empty})"]
    cells = [[cell(c, row.get(c.key)) for c in table.columns] for row in table.rows]
    headers = [c.header for c in table.columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = []
        for i, (c, v) in enumerate(zip(table.columns, values, strict=True)):
            last = i == len(values) - 1
            if c.kind in NUMERIC:
                out.append(v.rjust(widths[i]))
            else:
                out.append(v if last else v.ljust(widths[i]))
        return ("  " + "  ".join(out)).rstrip()

    lines.append(line(headers))
    lines += [line(r) for r in cells]
    return lines


def recommendations_text(table: Table) -> list[str]:
    if not table.rows:
        return [f"  ({table.empty})"]
    lines = []
    width = len(str(len(table.rows)))
    for i, r in enumerate(table.rows, 1):
        lines.append(f"  {i:>{width}}. {r['severity'].upper():<8} [{r['section']}] {r['finding']}")
        pad = " " * (width + 4)
        lines += [f"  {pad}{sql_line}" for sql_line in str(r["sql"]).splitlines()]
    return lines


def section_text(section: Section) -> list[str]:
    lines = [f"-- {section.name}: {section.title} --"]
    if section.error is not None:
        return [*lines, f"  error: {section.error}"]
    if section.name == "recommendations":
        facts = ", ".join(f"{v} {k}" for k, v in section.facts.items())
        return [*lines, f"  {facts}", *recommendations_text(section.tables[0])]
    if section.facts:
        lines.append("  " + "  ".join(_fact(k, v) for k, v in section.facts.items()))
    for table in section.tables:
        lines += ["  " + t for t in table_text(table)]
    lines += [f"  note: {n}" for n in section.notes]
    return lines


def text(results: Mapping[str, Any]) -> str:
    """`results`: target name -> TargetReport (see actions.report)."""
    out: list[str] = []
    for name, report in results.items():
        header = f"== {name}"
        if report.where:
            header += f": {report.where}"
        if report.server_version:
            header += f" (PostgreSQL {report.server_version})"
        out.append(header + " ==")
        if report.error:
            out += [f"  error: {report.error}", ""]
            continue
        for section in report.sections.values():
            out += [*section_text(section), ""]
    return "\n".join(out).rstrip()


def document(results: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: (
            {"error": report.error}
            if report.error
            else {key: section.as_dict() for key, section in report.sections.items()}
        )
        for name, report in results.items()
    }
