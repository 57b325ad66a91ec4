"""Reading normalized statements from pg_stat_statements: which tables they name,
which columns they look up with `col = $n`, and how a per-row lookup becomes one
batched query that keeps its meaning for N keys. Pure text work on the normalized
query; no I/O.

This is a heuristic, not a SQL parser: it is used to point at candidates (a
missing index's column, an N+1 loop) that the report then checks against the
catalog (the column must exist in the table), or, for a batched rewrite, PREPAREs on
the server before showing it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

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


def one_line(query: str, width: int = 0) -> str:
    text = " ".join(query.split())
    if width and len(text) > width:
        return text[: width - 1] + "…"
    return text


# --- batching an N+1 statement ---------------------------------------------------------
#
# A small lexer, not a parser: enough to find the top-level clauses of one SELECT, its
# `col = $n` comparisons and their casts, and to splice a rewrite into the text as
# written. Whatever it builds, the report PREPAREs on the server before showing it.

_LEX = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line>--[^\n]*)
  | (?P<param>\$\d+)
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?\$(?P=tag)\$)
  | (?P<string>[Ee]'(?:[^'\\]|''|\\.)*'|(?:[BbXxNn]|[Uu]&)?'(?:[^']|'')*')
  | (?P<quoted>(?:[Uu]&)?"(?:[^"]|"")+")
  | (?P<word>[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[Ee][+-]?\d+)?)
  | (?P<cast>::)
  | (?P<op>[-+*/<>=~!@#%^&|`?]+)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_OPEN, _CLOSE = "([", ")]"
# top-level words that start a clause of a SELECT
_CLAUSES = frozenset(
    {"select", "from", "where", "group", "having", "window", "order", "limit", "offset"}
    | {"fetch", "for", "into", "union", "intersect", "except"}
)
_AFTER_WHERE = _CLAUSES - {"select", "from", "where", "into"}
# clauses that act on a call's whole result: batched with `= ANY`, they would act on
# all keys' rows together
_PER_CALL = (
    ("limit", "LIMIT"),
    ("offset", "OFFSET"),
    ("fetch", "FETCH"),
    ("group", "GROUP BY"),
    ("having", "HAVING"),
    ("union", "UNION"),
    ("intersect", "INTERSECT"),
    ("except", "EXCEPT"),
)
# words that may follow a type name in a cast: double precision, character varying,
# timestamp with time zone
_TYPE_WORDS = frozenset({"precision", "varying", "with", "without", "time", "zone"})
# aggregates that a GROUP BY of the key turns into one result per key; over no rows at
# all, count gives 0 and every other one NULL
GROUPABLE = frozenset(
    {"count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every"}
    | {"string_agg", "array_agg", "json_agg", "jsonb_agg"}
)
_KEY_ALIASES = ("keys", "batch_keys", "pyops_keys")

Form = Literal["any", "grouped", "lateral"]


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted, param, string, dollar, number, cast, op, punct
    text: str
    start: int
    end: int
    depth: int  # brackets around it; "(" and ")" count at their outer depth

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words

    @property
    def name(self) -> bool:
        return self.kind in ("word", "quoted")


def tokens(query: str) -> list[Token]:
    """The statement's tokens, without comments and white space."""
    out: list[Token] = []
    pos, depth = 0, 0
    while pos < len(query):
        if query.startswith("/*", pos):  # block comments nest
            level, pos = 1, pos + 2
            while pos < len(query) and level:
                step = query[pos : pos + 2]
                level += 1 if step == "/*" else -1 if step == "*/" else 0
                pos += 2 if step in ("/*", "*/") else 1
            continue
        m = _LEX.match(query, pos)
        assert m is not None and m.lastgroup is not None  # `.` matches anything
        kind = "dollar" if m.lastgroup == "tag" else m.lastgroup
        if kind not in ("space", "line"):
            text = m.group()
            if kind == "punct" and text in _CLOSE:
                depth = max(0, depth - 1)
            out.append(Token(kind, text, m.start(), m.end(), depth))
            if kind == "punct" and text in _OPEN:
                depth += 1
        pos = m.end()
    return out


@dataclass(frozen=True)
class Shape:
    """One SELECT: its tokens and, per clause, the index of its top-level first word."""

    tokens: list[Token]
    clauses: dict[str, int]

    @property
    def where_end(self) -> int:
        where = self.clauses.get("where")
        if where is None:
            return len(self.tokens)
        later = [i for name, i in self.clauses.items() if name in _AFTER_WHERE and i > where]
        return min(later, default=len(self.tokens))

    def select_list(self) -> list[Token]:
        """The select list's tokens (after DISTINCT/ALL), up to FROM."""
        first = self.clauses.get("select", 0) + 1
        if self.distinct or (first < len(self.tokens) and self.tokens[first].is_word("all")):
            first += 1
        return self.tokens[first : self.clauses.get("from", len(self.tokens))]

    @property
    def distinct(self) -> bool:
        first = self.clauses.get("select", 0) + 1
        return first < len(self.tokens) and self.tokens[first].is_word("distinct")

    @property
    def star(self) -> bool:
        """`SELECT *`: every column of the FROM items, the key's too."""
        select = self.select_list()
        return len(select) == 1 and select[0].text == "*"

    def calls(self) -> set[str]:
        """Names called (`name(`), as PostgreSQL spells them, without a schema."""
        return {
            unquote(t.text) for t, after in pairwise(self.tokens) if t.name and after.text == "("
        }

    def uses(self, param: int) -> int:
        return sum(t.kind == "param" and t.text == f"${param}" for t in self.tokens)


def shape(query: str) -> Shape:
    toks = tokens(query)
    clauses: dict[str, int] = {}
    for i, t in enumerate(toks):
        word = t.text.lower()
        if t.depth or t.kind != "word" or word not in _CLAUSES or word in clauses:
            continue
        prev = toks[i - 1] if i else None
        if word == "from" and prev is not None and prev.is_word("distinct"):
            continue  # IS [NOT] DISTINCT FROM
        if word == "group" and prev is not None and prev.is_word("within"):
            continue  # an ordered-set aggregate's WITHIN GROUP
        clauses[word] = i
    return Shape(toks, clauses)


def function_names(query: str) -> list[str]:
    """Names the statement calls: the report asks the catalog which are aggregates."""
    return sorted(shape(query).calls())


@dataclass(frozen=True)
class Candidate:
    """A `col = $n` comparison after WHERE: `$n` may be what varies between calls."""

    column: str  # as PostgreSQL names it
    written: str  # the column reference as written: "o"."customer_id"
    name: str  # its last part as written: "customer_id"
    param: int
    start: int  # text span of `$n` and its cast
    end: int
    cast: str | None  # the cast's type as written: text, varchar(3)
    conjunct: bool  # AND-ed into the top-level WHERE, where `= ANY` keeps its meaning


def _cast_end(toks: list[Token], i: int) -> int:
    """Index after the type of a cast whose `::` is at i (i itself when there is none):
    a name, possibly qualified and of several words (`double precision`, `timestamp(3)
    with time zone`), a type modifier, array brackets."""
    if i + 1 >= len(toks) or toks[i].kind != "cast" or not toks[i + 1].name:
        return i
    j = i + 2
    while j + 1 < len(toks) and toks[j].text == "." and toks[j + 1].name:
        j += 2
    while j < len(toks):
        if toks[j].is_word(*_TYPE_WORDS):
            j += 1
        elif toks[j].text == "(":
            depth = toks[j].depth
            j += 1
            while j < len(toks) and not (toks[j].text == ")" and toks[j].depth == depth):
                j += 1
            j += 1
        else:
            break
    while j < len(toks) and toks[j].text == "[":
        while j < len(toks) and toks[j].text != "]":
            j += 1
        j += 1
    return min(j, len(toks))


def candidates(query: str) -> list[Candidate]:
    """Every `col = $n[::type]` after the first WHERE, one per parameter, in order: the
    parameters that may be the key an N+1 loop varies."""
    s = shape(query)
    toks = s.tokens
    where = next((i for i, t in enumerate(toks) if t.is_word("where")), None)
    if where is None:
        return []
    top, top_end = s.clauses.get("where"), s.where_end
    # OR (or BETWEEN's AND) at the top of WHERE: `col = $n` is not a plain AND term
    mixed = top is None or any(
        t.depth == 0 and t.is_word("or", "between") for t in toks[top + 1 : top_end]
    )
    found: list[Candidate] = []
    for i in range(where + 3, len(toks)):
        t = toks[i]
        if t.kind != "param" or toks[i - 1].kind != "op" or toks[i - 1].text != "=":
            continue
        if not toks[i - 2].name:
            continue
        first = i - 2
        while first >= 2 and toks[first - 1].text == "." and toks[first - 2].name:
            first -= 2
        column, param = unquote(toks[i - 2].text), int(t.text[1:])
        if column in _KEYWORDS or any(c.param == param for c in found):
            continue
        after = _cast_end(toks, i + 1)
        last = toks[after - 1] if after > i + 1 else t
        conjunct = (
            not mixed
            and top is not None
            and t.depth == 0
            and first > top
            and (first - 1 == top or toks[first - 1].is_word("and"))
            and (after == top_end or (after < top_end and toks[after].is_word("and")))
        )
        found.append(
            Candidate(
                column=column,
                written=query[toks[first].start : toks[i - 2].end],
                name=toks[i - 2].text,
                param=param,
                start=t.start,
                end=last.end,
                cast=query[toks[i + 2].start : last.end] if after > i + 1 else None,
                conjunct=conjunct,
            )
        )
    return found


@dataclass(frozen=True)
class Rewrite:
    """The statement batched over one parameter, now an array of keys."""

    form: Form  # any: `= ANY`; grouped: `= ANY` + GROUP BY the key; lateral: per key
    sql: str
    note: str  # what it returns, and what the application must do


def _splice(query: str, edits: list[tuple[int, int, str]]) -> str:
    out = query
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _closing(toks: list[Token], i: int) -> int:
    """Index of the bracket that closes the one at i."""
    depth = toks[i].depth
    j = i + 1
    while j < len(toks) and not (toks[j].text in _CLOSE and toks[j].depth == depth):
        j += 1
    return j


def _aggregated(s: Shape, aggregates: Collection[str]) -> bool:
    """Does the statement call an aggregate as one (not as a window function)?"""
    toks = s.tokens
    for i, t in enumerate(toks[:-1]):
        if not (t.name and toks[i + 1].text == "(" and unquote(t.text) in aggregates):
            continue
        after = _closing(toks, i + 1) + 1
        if after + 1 < len(toks) and toks[after].is_word("filter") and toks[after + 1].text == "(":
            after = _closing(toks, after + 1) + 1
        if not (after < len(toks) and toks[after].is_word("over")):
            return True
    return False


def per_call(query: str, c: Candidate, aggregates: Collection[str]) -> list[str]:
    """What one call does to its own rows that `col = ANY(...)` over all keys would do
    to all keys' rows together (so the simple form would change the results)."""
    s = shape(query)
    found = [what for clause, what in _PER_CALL if clause in s.clauses]
    if s.distinct:
        found.append("DISTINCT")
    if any(t.is_word("over") for t in s.tokens):
        found.append("window functions")
    if _aggregated(s, aggregates):
        found.append("aggregates")
    if not c.conjunct:
        found.append(f"the conditions around `{c.written} = ${c.param}`")
    if s.uses(c.param) > 1:
        found.append(f"the other uses of ${c.param}")
    return found


def _groupable(s: Shape, aggregates: Collection[str]) -> bool:
    """The select list is only calls of the known aggregates (each with an optional
    FILTER and alias): one row per call, which a GROUP BY of the key keeps per key."""
    items: list[list[Token]] = [[]]
    for t in s.select_list():
        if t.text == "," and t.depth == 0:
            items.append([])
        else:
            items[-1].append(t)
    for item in items:
        if len(item) < 3 or item[1].text != "(":
            return False
        name = unquote(item[0].text)
        if name not in GROUPABLE or name not in aggregates:
            return False
        closing = [k for k, t in enumerate(item) if t.text == ")" and t.depth == 0]
        rest = item[closing[0] + 1 :]
        if rest and rest[0].is_word("filter"):
            closing = [k for k, t in enumerate(rest) if t.text == ")" and t.depth == 0]
            rest = rest[closing[0] + 1 :] if closing else rest
        if rest and rest[0].is_word("as"):
            rest = rest[1:]
        if len(rest) > 1 or (rest and not rest[0].name):
            return False
    return True


def _any(query: str, s: Shape, c: Candidate, key_type: str, grouped: bool) -> str:
    """`col = $n::t` -> `col = ANY($n::t[])`, the key first in the select list (unless
    `*` has it), and GROUP BY the key for aggregates."""
    edits = [(c.start, c.end, f"ANY(${c.param}::{c.cast or key_type}[])")]
    if grouped or not s.star:
        at = s.select_list()[0].start
        edits.append((at, at, f"{c.written}, "))
    if grouped:
        edits.append((s.tokens[-1].end, s.tokens[-1].end, f" GROUP BY {c.written}"))
    return _splice(query, edits)


def _lateral(query: str, s: Shape, c: Candidate, key_type: str) -> str:
    """The statement as it is, run once per key: `$n` becomes the key's column."""
    names = {unquote(t.text) for t in s.tokens if t.name}
    alias = next((a for a in _KEY_ALIASES if a not in names), f"pyops_keys_{c.param}")
    ref = f"{alias}.{c.name}"
    inner = _splice(
        query[: s.tokens[-1].end],  # a trailing -- comment would swallow the parenthesis
        [(t.start, t.end, ref) for t in s.tokens if t.kind == "param" and t.text == f"${c.param}"],
    )
    head = f"SELECT {ref}, batched.* FROM unnest(${c.param}::{key_type}[]) AS {alias}({c.name})"  # noqa: S608
    return f"{head} CROSS JOIN LATERAL ({inner}) AS batched"


def rewrites(query: str, c: Candidate, key_type: str, aggregates: Collection[str]) -> list[Rewrite]:
    """The statement batched over `$n` (now an array of `key_type`), in the order to try
    them: `= ANY` when one call's rows are a plain slice of all keys' rows; GROUP BY the
    key when the statement is aggregates only; otherwise the statement run once per key
    inside one query (LATERAL), which keeps LIMIT, DISTINCT, aggregates and window
    functions per key. Each returns the key with every row. `aggregates`: the names
    the statement calls that are aggregate functions (the catalog says which)."""
    s = shape(query)
    if not s.tokens or "select" not in s.clauses or "from" not in s.clauses or "into" in s.clauses:
        return []
    acting = per_call(query, c, aggregates)
    key = f"the key ({c.written}) comes first in each row"
    out = []
    if not acting:
        out.append(
            Rewrite(
                "any",
                _any(query, s, c, key_type, grouped=False),
                "the rows of all keys at once, "
                + ("each with its key (SELECT * has it)" if s.star else key)
                + "; pass each key once",
            )
        )
    elif acting == ["aggregates"] and "order" not in s.clauses and _groupable(s, aggregates):
        out.append(
            Rewrite(
                "grouped",
                _any(query, s, c, key_type, grouped=True),
                f"one row per key that has rows: {key}; a key without rows gets no row (its "
                "single call returns count 0, any other aggregate NULL); pass each key once",
            )
        )
    kept = (
        f"keeps per key what acts on a call's rows ({', '.join(acting)})"
        if acting
        else ("returns per key what its call returned")
    )
    out.append(
        Rewrite(
            "lateral",
            _lateral(query, s, c, key_type),
            f"{kept}: the statement runs once per key inside one query (CROSS JOIN LATERAL); {key}",
        )
    )
    return out
