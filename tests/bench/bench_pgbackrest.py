"""When to move from dumps to pgBackRest: restore time per GB of both, on one database.

Not a timed test (minutes of I/O): `.venv/bin/python tests/bench/bench_pgbackrest.py
--small-mb 250 --size-mb 1000`. One throwaway cluster archiving its WAL with the real pgBackRest
(tests/pgbackrest/pgbr_support.py), durable like a production server (fsync,
full_page_writes and synchronous_commit on), holding the benchmark database of
tests/bench/bench.py (pgbench tables plus a table of random text). A pyops config with
both targets on it: a postgres target (custom format, zstd -3) and a pgbackrest target
(lz4, process-max = the cores). Per run:

  dump          pyops backup; pyops restore --into (serial) and --jobs N; pyops drill
  pgbackrest    pyops backup --tier monthly (a full backup); pyops drill: pgbackrest
                restore + WAL replay until promoted (the time to a running server),
                then the drill's checks (row counts, pg_amcheck)

At two sizes (`--small-mb`, `--size-mb`), one after the other. Prints and writes
(bench-results/bench-pgbackrest.{json,md}) the medians, the seconds per extra GiB
between the two sizes (fixed costs such as start-up and the end-of-recovery
checkpoint cancel out), and the largest database each restore brings back within a
few RTOs, extrapolated linearly (a dump restore grows a little faster: index builds
are n log n; pgBackRest's WAL replay grows with the writes since the backup, not
with the size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "pgbackrest"))

from bench import build_database  # noqa: E402
from fixtures.pgcluster import start_cluster  # noqa: E402
from pgbr_support import Archiving, setup_archiving  # noqa: E402

PYOPS = str(Path(sys.executable).parent / "pyops")
GIB = 2**30
RTOS_MIN = (15, 60, 240)


def pyops(config: Path, *args: str) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [PYOPS, "--config", str(config), "-q", *args, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"pyops {' '.join(args)} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return seconds, json.loads(proc.stdout) if proc.stdout.strip() else {}


def restore(config: Path, into: str, jobs: int) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [
            *(PYOPS, "--config", str(config), "-q", "restore", "--latest", "--target", "dump"),
            *("--into", into, "--yes", "--jobs", str(jobs)),
        ],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - t0


def measure(archiving: Archiving, size_mb: int, runs: int, jobs: int, work: Path) -> dict[str, Any]:
    """One database of `size_mb`, the only one in the cluster besides `postgres`."""
    pg = archiving.pg
    db = f"bench_{size_mb}"
    db_bytes = build_database(pg, db, size_mb)
    archiving.switch_wal_and_wait(timeout=600)
    config = archiving.pyops_config(
        work / f"pyops-{size_mb}.toml",
        work / f"repo-{size_mb}",
        f'[compression]\nalgorithm = "zstd"\nlevel = 3\nthreads = 0\n\n[retention]\ndaily = 1\n\n'
        f'[[targets]]\nname = "dump"\ntype = "postgres"\ndsn = "{pg.dsn(db)}"\n',
    )
    samples: dict[str, list[float]] = {k: [] for k in STEPS}
    cluster_bytes = 0
    for n in range(runs):
        seconds, _ = pyops(config, "backup", "--target", "dump", "--tier", "daily")
        samples["dump_backup"].append(seconds)
        for key, j in (("dump_restore", 1), ("dump_restore_jobs", jobs)):
            into = f"r_{n}_{j}"
            samples[key].append(restore(config, into, j))
            pg.drop_database(into)
        _, drilled = pyops(config, "drill", "--target", "dump")
        samples["dump_drill_rto"].append(drilled["drills"][0]["rto_s"])

        seconds, _ = pyops(config, "backup", "--target", "pgb", "--tier", "monthly")
        samples["pgbackrest_backup"].append(seconds)
        _, drilled = pyops(config, "drill", "--target", "pgb")
        d = drilled["drills"][0]
        cluster_bytes = int(d["bytes"])
        samples["pgbackrest_restore"].append(d["restore_s"])
        samples["pgbackrest_recovery"].append(d["cluster_s"])
        samples["pgbackrest_to_running"].append(d["restore_s"] + d["cluster_s"])
        samples["pgbackrest_drill_rto"].append(d["rto_s"])
        time.sleep(1.1)  # one backup per second per target
    pg.drop_database(db)
    return {
        "database_bytes": db_bytes,
        "cluster_bytes": cluster_bytes,
        "runs": runs,
        "jobs": jobs,
        "median_s": {k: round(statistics.median(v), 3) for k, v in samples.items()},
        "samples_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }


STEPS = {
    "dump_backup": ("dump", "pyops backup"),
    "dump_restore": ("dump", "pyops restore --into (serial)"),
    "dump_restore_jobs": ("dump", "pyops restore --into --jobs N"),
    "dump_drill_rto": ("dump", "pyops drill (RTO: restore + row counts)"),
    "pgbackrest_backup": ("pgBackRest", "pyops backup --tier monthly (full)"),
    "pgbackrest_restore": ("pgBackRest", "pgbackrest restore"),
    "pgbackrest_recovery": ("pgBackRest", "recovery until promoted"),
    "pgbackrest_to_running": ("pgBackRest", "restore + recovery (a running server)"),
    "pgbackrest_drill_rto": ("pgBackRest", "pyops drill (RTO: + row counts, pg_amcheck)"),
}
RATES = {  # compared: the time until the application has a database again
    "dump_restore": "database_bytes",
    "dump_restore_jobs": "database_bytes",
    "pgbackrest_to_running": "cluster_bytes",
}


def rates(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Seconds per GiB between the two sizes (the slope: fixed costs cancel out), the
    fixed cost it leaves, and the largest database each restore brings back within a
    few RTOs: (RTO - fixed) / slope."""
    out: dict[str, Any] = {"s_per_gib": {}, "fixed_s": {}, "max_gib_within_rto": {}}
    for key in STEPS:
        size = RATES.get(key, "cluster_bytes" if key.startswith("pgb") else "database_bytes")
        dx = (large[size] - small[size]) / GIB
        slope = (large["median_s"][key] - small["median_s"][key]) / dx
        out["s_per_gib"][key] = round(slope, 1)
        out["fixed_s"][key] = round(large["median_s"][key] - slope * large[size] / GIB, 1)
    for rto in RTOS_MIN:
        out["max_gib_within_rto"][f"{rto} min"] = {
            key: round((rto * 60 - max(0.0, out["fixed_s"][key])) / out["s_per_gib"][key], 1)
            if out["s_per_gib"][key] > 0
            else None
            for key in RATES
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    small, large, r = report["small"], report["large"], report["rates"]
    lines = [
        f"Run {report['date']} on {report['machine']}; {large['runs']} run(s) per size, "
        f"medians in seconds; --jobs {large['jobs']}. Cluster sizes (what pgBackRest "
        f"restores): {small['cluster_bytes'] / GIB:.2f} and {large['cluster_bytes'] / GIB:.2f} "
        "GiB.",
        "",
        f"| engine | step | {small['database_bytes'] / GIB:.2f} GiB database "
        f"| {large['database_bytes'] / GIB:.2f} GiB database | s per extra GiB | fixed s |",
        "|---|---|---|---|---|---|",
    ]
    for key, (engine, step) in STEPS.items():
        lines.append(
            f"| {engine} | {step} | {small['median_s'][key]} | {large['median_s'][key]} "
            f"| {r['s_per_gib'][key]} | {r['fixed_s'][key]} |"
        )
    lines += ["", "| RTO | dump, serial | dump, --jobs | pgBackRest |", "|---|---|---|---|"]
    for rto, sizes in r["max_gib_within_rto"].items():
        lines.append(
            f"| {rto} | {sizes['dump_restore']} GiB | {sizes['dump_restore_jobs']} GiB "
            f"| {sizes['pgbackrest_to_running']} GiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="the larger database")
    parser.add_argument("--small-mb", type=int, default=250, help="the smaller database")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    pg = start_cluster()
    try:
        archiving = setup_archiving(pg, {"process-max": str(os.cpu_count() or 2)})
        pg.psql(  # durable, like production: the dump restore pays for it too
            "ALTER SYSTEM SET fsync = on; ALTER SYSTEM SET full_page_writes = on; "
            "ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf()"
        )
        with tempfile.TemporaryDirectory(prefix="pyops-bench-pgbackrest-") as tmp:
            small = measure(archiving, args.small_mb, args.runs, args.jobs, Path(tmp))
            large = measure(archiving, args.size_mb, args.runs, args.jobs, Path(tmp))
    finally:
        pg.stop()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM",
        "small": small,
        "large": large,
        "rates": rates(small, large),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-pgbackrest.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "bench-pgbackrest.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
