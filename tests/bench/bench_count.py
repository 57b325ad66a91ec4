"""The cold-cache cost of the backup's exact row count (part of `make bench`).

Every PostgreSQL backup counts each table's rows in its snapshot, for the drill to
compare. Read from the heap, that is a second read of the database beside pg_dump's;
while the database fits in the page cache the second read is nearly free, so the
cluster is put in a memory cgroup smaller than the database (the page cache its
backends fill is charged to it), and the page cache is dropped before each run.

Measured, each from a cold cache, as seconds and bytes read from disk:
  pg_dump alone                  pg_dump -Fc -Z0 > /dev/null
  count, heap                    count(*) of every table, sequential scans (before)
  count, as the backup does now  pyops.pgfacts.server.count_rows(cheap=True)
  backup, raw pipeline           pg_dump | zstd | gpg > f
  backup, pyops                  pyops backup

Needs root (to drop caches and make the cgroup); without it, says so and skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from fixtures.pgcluster import PgCluster

from pyops.pgfacts import server

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")


def disk_read_bytes() -> int:
    """Bytes read from every whole disk (not partitions, loop or RAM devices)."""
    total = 0
    for dev in Path("/sys/block").iterdir():
        if dev.name.startswith(("loop", "ram", "zram")):
            continue
        fields = (dev / "stat").read_text().split()
        total += int(fields[2]) * 512  # sectors read
    return total


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _own_cgroup_dir() -> Path | None:
    """Where a child memory cgroup can be made: v1's memory hierarchy or v2."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and CGROUP_V1.is_dir():
            return CGROUP_V1 / path.lstrip("/")
        if controllers == "" and (CGROUP_V2 / "cgroup.controllers").exists():
            return CGROUP_V2 / path.lstrip("/")
    return None


def cluster_pids(pg: PgCluster) -> list[int]:
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True
    ).stdout.split()
    return [postmaster, *map(int, children)]


class Limited:
    """The cluster in a memory cgroup; `cold()` restarts it there with every cache
    empty: PostgreSQL's shared buffers (a restart) and the page cache (dropped)."""

    def __init__(self, pg: PgCluster, group: Path, home: Path) -> None:
        self.pg, self.group, self.home = pg, group, home

    def enter(self) -> None:
        for pid in cluster_pids(self.pg):
            (self.group / "cgroup.procs").write_text(str(pid))

    def leave(self) -> None:
        for pid in (self.group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                self.home.write_text(pid)

    def cold(self, fn: Callable[[], None]) -> tuple[float, int]:
        """(seconds, bytes read from disk) of fn from empty caches."""
        self.pg.psql("CHECKPOINT")
        self.leave()
        self.pg.stop(remove=False)
        self.pg._start()  # the fixture's own restart, for a bench
        self.enter()
        drop_caches()
        before = disk_read_bytes()
        t0 = time.monotonic()
        fn()
        return time.monotonic() - t0, disk_read_bytes() - before


@contextlib.contextmanager
def memory_limited(pg: PgCluster, limit: int) -> Iterator[Limited | str]:
    """The cluster's processes (and the backends they start later) in a memory cgroup
    of `limit` bytes; yields why not when that cannot be done here."""
    parent = _own_cgroup_dir()
    if os.geteuid() != 0 or parent is None:
        yield "needs root and a memory cgroup"
        return
    group = parent / f"pyops-bench-{os.getpid()}"
    try:
        group.mkdir()
        v1 = (group / "memory.limit_in_bytes").exists()
        (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(limit))
        limited = Limited(pg, group, parent / "cgroup.procs")
        limited.enter()
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield f"could not make a memory cgroup: {exc}"
        return
    try:
        yield limited
    finally:
        limited.leave()
        with contextlib.suppress(OSError):
            group.rmdir()


def _count(pg: PgCluster, db: str, cheap: bool) -> None:
    with psycopg.connect(pg.dsn(db), autocommit=False) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        names = [(s, t) for s, t, _ in server.tables(conn)]
        server.count_rows(conn, names, cheap=cheap)


def measure(
    pg: PgCluster,
    db: str,
    database_bytes: int,
    raw_backup: Callable[[], None],
    pyops_backup: Callable[[], None],
    env: dict[str, str],
) -> dict[str, Any]:
    # shared_buffers (128 MiB here) is charged to the cgroup too
    limit = max(256 << 20, database_bytes // 4)
    if database_bytes < 2 * limit:
        return {"skipped": f"the database is not larger than twice {limit >> 20} MiB"}
    with memory_limited(pg, limit) as limited:
        if isinstance(limited, str):
            return {"skipped": limited}
        runs: dict[str, Callable[[], None]] = {
            "pg_dump alone": lambda: subprocess.run(
                ["pg_dump", "-Fc", "-Z0", "--no-sync", "-f", "/dev/null", "-d", pg.dsn(db)],
                check=True,
                env=env,
            ),
            "count, heap (before)": lambda: _count(pg, db, cheap=False),
            "count, as the backup does now": lambda: _count(pg, db, cheap=True),
            "backup, raw pipeline": raw_backup,
            "backup, pyops": pyops_backup,
        }
        out = {}
        for name, fn in runs.items():
            seconds, read = limited.cold(fn)
            out[name] = {"s": round(seconds, 3), "read_mib": round(read / 2**20, 1)}
            time.sleep(1.1)  # backups are one per second per target
    return {"memory_limit_mib": limit >> 20, "runs": out}


def rows(result: dict[str, Any], size: str) -> list[str]:
    """Markdown rows: | database | measured | seconds | MiB read from disk |"""
    if "skipped" in result:
        return [f"| {size} | cold-cache count | skipped: {result['skipped']} | |"]
    lines = []
    for name, r in result["runs"].items():
        lines.append(f"| {size} | {name} | {r['s']} | {r['read_mib']} |")
    return lines
