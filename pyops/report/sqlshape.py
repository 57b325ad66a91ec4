"""Reading normalized statements from pg_stat_statements: which tables they name,
which columns they look up with `col = $n`, and how a per-row lookup becomes one
batched query. Pure text work on the normalized query; no I/O.

This is a heuristic, not a SQL parser: it is used to point at candidates (a
missing index's column, an N+1 loop) that the report then checks against the
catalog (the column must exist in the table).
"""

from __future__ import annotations

import re

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"(?:{_IDENT}\s*\.\s*)*{_IDENT}"
_WHERE = re.compile(r"\bWHERE\b", re.IGNORECASE)
# `col = $1`, `t.col = $2`, `"Col" = $3`; not `col = ANY($1)` (already batched)
_EQ_PARAM = re.compile(rf"(?<![\w$.\"])({_QUALIFIED})\s*=\s*\$(\d+)(?![\d(])")
_FROM = re.compile(rf"\bFROM\s+(?:ONLY\s+)?({_QUALIFIED})", re.IGNORECASE)
_PARTS = re.compile(_IDENT)
_SELECT = re.compile(r"^\s*(?:/\*.*?\*/\s*)*SELECT\b", re.IGNORECASE | re.DOTALL)
_BATCHED = re.compile(r"\b(?:IN\s*\(|ANY\s*\()", re.IGNORECASE)
_AFTER_DOT = re.compile(r"\.\s*$")
_KEYWORDS = {"and", "or", "not", "where", "on", "select", "set"}


def unquote(ident: str) -> str:
    """How PostgreSQL names an identifier: quoted kept as written, else lower case."""
    if ident.startswith('"') and ident.endswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def split_qualified(text: str) -> list[str]:
    return [unquote(p) for p in _PARTS.findall(text)]


def equality_columns(query: str) -> list[str]:
    """Columns compared to a parameter (`col = $n`) after the first WHERE, in order,
    without their table qualifier. Only the WHERE part: `SET col = $1` of an UPDATE
    is an assignment, not a lookup."""
    match = _WHERE.search(query)
    if not match:
        return []
    found = []
    for m in _EQ_PARAM.finditer(query, match.end()):
        name = split_qualified(m.group(1))[-1]
        if name not in _KEYWORDS and name not in found:
            found.append(name)
    return found


def mentions(query: str, schema: str, table: str) -> bool:
    """Does the statement name this table (matched by name in the query text)?

    A schema qualifier, when written, must be the table's schema."""
    if table.lower() not in query.lower():
        return False  # the common case, without a regex scan
    pattern = rf"(?:({_IDENT})\s*\.\s*)?({_IDENT})"
    for m in re.finditer(pattern, query):
        if _AFTER_DOT.search(query, max(0, m.start() - 40), m.start()):
            continue  # the tail of a longer qualified name (a.b.c)
        qualifier = unquote(m.group(1)) if m.group(1) is not None else None
        if qualifier == table:
            return True  # table.column
        if unquote(m.group(2)) == table and qualifier in (None, schema):
            return True
    return False


def from_table(query: str) -> tuple[str | None, str] | None:
    """(schema or None, table) of the first FROM item."""
    m = _FROM.search(query)
    if not m:
        return None
    parts = split_qualified(m.group(1))
    if len(parts) == 1:
        return None, parts[0]
    return parts[-2], parts[-1]


def single_row_lookup(query: str) -> tuple[str | None, str, str] | None:
    """(schema, table, column) when the statement is a SELECT that looks rows up by
    `col = $n`: the shape an N+1 loop runs once per parent row."""
    if not _SELECT.match(query):
        return None
    table = from_table(query)
    columns = equality_columns(query)
    if table is None or not columns:
        return None
    where = _WHERE.search(query)
    if where and _BATCHED.search(query, where.end()):
        return None
    if table[1].startswith("pg_") or table[0] in ("pg_catalog", "information_schema"):
        return None  # drivers' and ORMs' catalog look-ups
    return table[0], table[1], columns[0]


def batched(query: str, column: str) -> str:
    """The statement rewritten to fetch every key at once: `col = $1` -> `col = ANY($1)`
    (psycopg and most drivers pass a list as an array)."""
    where = _WHERE.search(query)
    if not where:
        return query
    for m in _EQ_PARAM.finditer(query, where.end()):
        if split_qualified(m.group(1))[-1] == column:
            return f"{query[: m.start()]}{m.group(1)} = ANY(${m.group(2)}){query[m.end() :]}"
    return query


def one_line(query: str, width: int = 0) -> str:
    text = " ".join(query.split())
    if width and len(text) > width:
        return text[: width - 1] + "…"
    return text
