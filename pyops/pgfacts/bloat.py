"""Bloat: the one estimate `db report` and `maintenance` both give, from statistics
alone: no extension, no full scan, no lock held long.

The method is the well-known one (ioguix/pgsql-bloat-estimation): from pg_stats'
average column widths, work out how many pages the live rows would need if packed
at the fillfactor, and call the rest wasted. Like pgstattuple's dead tuples plus
free space, that counts the room VACUUM made reusable but did not give back; a
dead-tuple share alone misses it and reads 0% after every VACUUM. It is an
estimate: TOASTed values, alignment padding between columns and very recent
writes blur it. Without column statistics (the table was never analyzed) the
dead-tuple share of the size is used instead, and the result says which method
it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pyops.pgfacts import USER_RELATIONS

PAGE_HEADER = 24  # PageHeaderData
ITEM_ID = 4  # line pointer per tuple
HEAP_TUPLE_HEADER = 23  # HeapTupleHeaderData, before alignment
INDEX_TUPLE_HEADER = 8  # IndexTupleData
BTREE_SPECIAL = 16  # BTPageOpaqueData
MAXALIGN = 8


def align(n: float, to: int = MAXALIGN) -> int:
    return int(math.ceil(n / to) * to)


@dataclass(frozen=True)
class Estimate:
    wasted_bytes: int | None
    method: str  # "pg_stats", "dead_tuples" or "unavailable"

    def ratio(self, actual_bytes: int) -> float | None:
        if self.wasted_bytes is None or actual_bytes <= 0:
            return None
        return round(self.wasted_bytes / actual_bytes, 4)


def heap_pages(
    rows: float,
    data_width: float,
    ncols: int,
    has_nulls: bool,
    block_size: int = 8192,
    fillfactor: int = 100,
) -> int:
    """Pages `rows` heap tuples of `data_width` bytes need when packed at `fillfactor`."""
    header = align(HEAP_TUPLE_HEADER + (math.ceil(ncols / 8) if has_nulls else 0))
    tuple_bytes = header + align(data_width) + ITEM_ID
    usable = (block_size - PAGE_HEADER) * fillfactor / 100
    per_page = max(1, int(usable // tuple_bytes))
    return math.ceil(max(rows, 0) / per_page)


def btree_pages(rows: float, key_width: float, block_size: int = 8192, fillfactor: int = 90) -> int:
    """Pages a freshly built btree over `rows` keys of `key_width` bytes needs: leaves at
    the fillfactor, inner pages above them, and the metapage."""
    tuple_bytes = align(INDEX_TUPLE_HEADER + key_width) + ITEM_ID
    usable = (block_size - PAGE_HEADER - BTREE_SPECIAL) * fillfactor / 100
    per_page = max(1, int(usable // tuple_bytes))
    leaves = math.ceil(max(rows, 0) / per_page)
    inner = 0
    level = leaves
    while level > 1:
        level = math.ceil(level / per_page)
        inner += level
    return 1 + max(leaves, 1) + inner


def from_pages(actual_bytes: int, expected_pages: int, block_size: int = 8192) -> Estimate:
    return Estimate(max(0, actual_bytes - expected_pages * block_size), "pg_stats")


def from_dead_tuples(actual_bytes: int, live: int, dead: int) -> Estimate:
    total = live + dead
    if total <= 0:
        return Estimate(None, "unavailable")
    return Estimate(int(actual_bytes * dead / total), "dead_tuples")


def table(
    actual_bytes: int,
    live: int,
    dead: int,
    stats: tuple[float, int, bool] | None,
    block_size: int = 8192,
    fillfactor: int = 100,
) -> Estimate:
    """`stats`: (sum of average column widths, column count, any nulls), or None when
    pg_stats does not cover every column. The larger of the two estimates wins: right
    after mass updates the statistics still describe the old, smaller table."""
    dead_based = from_dead_tuples(actual_bytes, live, dead)
    if stats is None:
        return dead_based
    width, ncols, nulls = stats
    pages = heap_pages(live, width, ncols, nulls, block_size, fillfactor)
    packed = from_pages(actual_bytes, pages, block_size)
    if dead_based.wasted_bytes is not None and dead_based.wasted_bytes > (packed.wasted_bytes or 0):
        return dead_based
    return packed


def index(
    actual_bytes: int,
    rows: int,
    key_width: float | None,
    block_size: int = 8192,
    fillfactor: int = 90,
) -> Estimate:
    """A btree over plain columns with statistics; anything else has no estimate."""
    if key_width is None:
        return Estimate(None, "unavailable")
    return from_pages(
        actual_bytes, btree_pages(rows, key_width, block_size, fillfactor), block_size
    )


# --- the statistics the estimate needs ---------------------------------------------------

FILLFACTOR = """coalesce((SELECT option_value::int FROM pg_options_to_table({rel}.reloptions)
                WHERE option_name = 'fillfactor'), {default})"""

# per user table and matview: columns, columns with statistics, their summed average
# width, whether any is ever null, and the fillfactor
TABLE_WIDTHS = f"""
SELECT c.oid,
       (SELECT count(*) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       s.columns, s.width, s.nulls, {FILLFACTOR.format(rel="c", default=100)}
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN (SELECT schemaname, tablename, count(*) AS columns,
                  sum((1 - null_frac) * avg_width) AS width, bool_or(null_frac > 0) AS nulls
           FROM pg_stats WHERE NOT inherited GROUP BY 1, 2) s
       ON s.schemaname = n.nspname AND s.tablename = c.relname
WHERE c.relkind IN ('r', 'm') AND {USER_RELATIONS}
"""  # noqa: S608 - built from constants

# per btree-able index: name, table, access method, plain (no expression or
# predicate), key columns, those with statistics, their width, and the fillfactor
INDEX_WIDTHS = f"""
SELECT ci.oid, ci.relname, i.indrelid, am.amname,
       i.indexprs IS NULL AND i.indpred IS NULL, i.indnatts,
       (SELECT count(*) FROM pg_attribute a JOIN pg_stats s
          ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname
             AND NOT s.inherited
        WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)),
       (SELECT sum((1 - s.null_frac) * s.avg_width) FROM pg_attribute a JOIN pg_stats s
          ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname
             AND NOT s.inherited
        WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)),
       {FILLFACTOR.format(rel="ci", default=90)}
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_am am ON am.oid = ci.relam
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE ci.relkind = 'i' AND {USER_RELATIONS}
ORDER BY ci.relname
"""  # noqa: S608 - built from constants


@dataclass(frozen=True)
class Widths:
    """One TABLE_WIDTHS row: what `table()` needs beyond sizes and tuple counts."""

    stats: tuple[float, int, bool] | None
    fillfactor: int = 100

    @classmethod
    def from_row(cls, row: Any) -> Widths:
        """`row`: TABLE_WIDTHS without its oid, or None (nothing known)."""
        if row is None:
            return cls(None)
        ncols, covered, width, nulls, fillfactor = row
        ncols = int(ncols or 0)
        full = covered is not None and width is not None and int(covered) >= ncols
        stats = (float(width), ncols, bool(nulls)) if full else None
        return cls(stats, int(fillfactor or 100))


BLOCK_SIZE = "SELECT current_setting('block_size')::int"


def widths_by_oid(rows: list[Any]) -> dict[int, Widths]:
    """TABLE_WIDTHS rows (a catalog query: no locks on user tables) by table oid."""
    return {int(r[0]): Widths.from_row(r[1:]) for r in rows}


def estimate_table(
    actual_bytes: int, live: int, dead: int, widths: Widths, block_size: int = 8192
) -> Estimate:
    """The estimate for a table's main fork of `actual_bytes` (pg_relation_size)."""
    return table(actual_bytes, live, dead, widths.stats, block_size, widths.fillfactor)
