"""Bloat estimates from statistics alone: no extension, no full scan, no lock held long.

The method is the well-known one (ioguix/pgsql-bloat-estimation): from pg_stats'
average column widths, work out how many pages the live rows would need if packed
at the fillfactor, and call the rest wasted. It is an estimate: TOASTed values,
alignment padding between columns and very recent writes blur it. Without column
statistics (the table was never analyzed) the dead-tuple share of the size is
used instead, and the result says which method it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
