"""`make bench`: what pyops costs over the shell pipeline it wraps.

Builds a PostgreSQL database in a throwaway cluster (pgbench tables plus a table of
random text, so compression is realistic), then runs, alternating, the raw shell
pipelines and pyops with the same settings:

  backup          pg_dump -Fc -Z0 | zstd -3 -T0 | gpg -e      vs  pyops backup
  restore         gpg -d | zstd -d | pg_restore -d            vs  pyops restore --into
  restore -jN     gpg -d | zstd -d > f; pg_restore -jN f      vs  pyops restore --into --jobs N

Reports medians, the ratio pyops/raw, and pyops' own peak RSS (the Python process,
VmHWM, not its children) at two database sizes. Writes JSON and Markdown.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench_count  # noqa: E402
import bench_files  # noqa: E402
import bench_offsite  # noqa: E402
import bench_peers  # noqa: E402
from benchtools import as_installed, run_watched  # noqa: E402
from fixtures.gpgkeys import cleanup_home, generate_key  # noqa: E402
from fixtures.pgcluster import PgCluster, start_cluster  # noqa: E402

PYOPS = str(Path(sys.executable).parent / "pyops")


def sh(script: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, env=env)


def settle(pg: PgCluster) -> None:
    """Each timed run starts with nothing left to write: the previous restore's gigabyte
    would otherwise be checkpointed during the next one (whichever side runs second)."""
    pg.psql("CHECKPOINT")
    os.sync()


def peak_rss_kib(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run argv; return (seconds, the process's own VmHWM in KiB, children excluded)."""
    seconds, peak, code, _, err = run_watched(argv, env)
    if code != 0:
        raise SystemExit(f"{argv} failed: {err.decode()[-2000:]}")
    return seconds, peak


ALL_VISIBLE = (
    "SELECT bool_and(relallvisible >= relpages) FROM pg_class"
    " WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
)


def build_database(pg: PgCluster, name: str, size_mb: int) -> int:
    pg.create_database(name)
    scale = max(1, int(size_mb * 0.6 / 15))  # pgbench: ~15 MB per scale unit
    subprocess.run(
        [
            str(pg.bindir / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            str(pg.host),
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            name,
        ],
        check=True,
        capture_output=True,
    )
    rows = int(size_mb * 0.4 * 1024 * 1024 / 180)
    pg.psql(
        "CREATE TABLE notes AS SELECT g AS id, md5(random()::text) || ' ' || "
        "md5(random()::text) || ' lorem ipsum dolor sit amet ' || md5(g::text) || "
        "repeat(chr(65 + (g % 26)), 40) AS body FROM generate_series(1, "
        f"{rows}) g; ALTER TABLE notes ADD PRIMARY KEY (id);",
        dbname=name,
    )
    # as an application's database is between autovacuum runs: vacuumed, statistics
    # current (this cluster commits asynchronously, and VACUUM marks pages all-visible
    # only once the WAL writer has flushed the inserting commits: vacuum until it has)
    for _ in range(100):
        pg.psql("VACUUM ANALYZE", dbname=name)
        if pg.psql(ALL_VISIBLE, dbname=name).strip() == "t":
            break
        time.sleep(0.2)
    return int(pg.psql(f"SELECT pg_database_size('{name}')", dbname=name).strip())


def config(path: Path, repo: Path, pg: PgCluster, db: str, key: Any) -> Path:
    path.write_text(
        f'[repository]\npath = "{repo}"\n\n[compression]\nalgorithm = "zstd"\nlevel = 3\n'
        f'threads = 0\n\n[encryption]\nmode = "gpg-public"\nrecipients = ["{key.email}"]\n'
        f'gnupghome = "{key.gnupghome}"\n\n[retention]\ndaily = 1\n\n'
        f'[[targets]]\nname = "bench"\ntype = "postgres"\ndsn = "{pg.dsn(db)}"\nformat = "custom"\n'
    )
    return path


def measure(
    size_mb: int, runs: int, jobs: int, work: Path, pg: PgCluster, key: Any, cold_count: bool
) -> dict[str, Any]:
    db = f"bench_{size_mb}"
    size = build_database(pg, db, size_mb)
    env = as_installed({**os.environ, **pg.env(db), "GNUPGHOME": str(key.gnupghome)})
    cfg = config(work / f"pyops-{size_mb}.toml", work / f"repo-{size_mb}", pg, db, key)
    raw_file = work / "raw.pgdump.zst.gpg"
    gpg_e = f"gpg --batch --trust-model always --compress-algo none -e -r {key.email}"
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "backup_raw",
            "backup_pyops",
            "restore_raw",
            "restore_pyops",
            "restore_jobs_raw",
            "restore_jobs_pyops",
        )
    }
    peers = bench_peers.available(pg, db, work, env)
    results.update({f"peer:{name}": [] for name in peers})
    rss: list[int] = []
    n = [0]

    def fresh() -> str:
        n[0] += 1
        return f"r_{size_mb}_{n[0]}"

    def timed(fn: Callable[[], None]) -> float:
        settle(pg)
        t0 = time.monotonic()
        fn()
        return time.monotonic() - t0

    for _ in range(runs):
        results["backup_raw"].append(
            timed(
                lambda: sh(
                    f"pg_dump -Fc -Z0 -d '{pg.dsn(db)}' | zstd -q -3 -T0 | {gpg_e} > {raw_file}",
                    env,
                )
            )
        )
        settle(pg)
        seconds, peak = peak_rss_kib([PYOPS, "--config", str(cfg), "-q", "backup"], env)
        results["backup_pyops"].append(seconds)
        rss.append(peak)
        time.sleep(1.1)  # backups are one per second per target
        for name, peer in list(peers.items()):
            try:
                results[f"peer:{name}"].append(timed(peer))
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                print(f"bench: {name} failed, left out: {exc}", file=sys.stderr)
                bench_peers.broken[name] = str(exc).splitlines()[0]
                del peers[name], results[f"peer:{name}"]

        target = fresh()
        results["restore_raw"].append(
            timed(
                lambda t=target: sh(
                    f"createdb {t} && gpg --batch -q -d {raw_file} | zstd -q -d | "
                    f"pg_restore --exit-on-error -d {t}",
                    env,
                )
            )
        )
        target = fresh()
        settle(pg)
        seconds, peak = peak_rss_kib(
            [
                PYOPS,
                "--config",
                str(cfg),
                "-q",
                "restore",
                "--latest",
                "--target",
                "bench",
                "--into",
                target,
                "--yes",
            ],
            env,
        )
        results["restore_pyops"].append(seconds)
        rss.append(peak)

        target = fresh()
        scratch = work / "plain.pgdump"
        results["restore_jobs_raw"].append(
            timed(
                lambda t=target, scratch=scratch: sh(
                    f"createdb {t} && gpg --batch -q -d {raw_file} | zstd -q -d > {scratch} && "
                    f"pg_restore --exit-on-error -j {jobs} -d {t} {scratch}; rm -f {scratch}",
                    env,
                )
            )
        )
        target = fresh()
        settle(pg)
        seconds, peak = peak_rss_kib(
            [
                PYOPS,
                "--config",
                str(cfg),
                "-q",
                "restore",
                "--latest",
                "--target",
                "bench",
                "--into",
                target,
                "--yes",
                "--jobs",
                str(jobs),
            ],
            env,
        )
        results["restore_jobs_pyops"].append(seconds)
        rss.append(peak)
        pg.psql("SELECT 1")  # keep the cluster honest
        for i in range(n[0] - 3, n[0] + 1):
            pg.drop_database(f"r_{size_mb}_{i}")

    counting: dict[str, Any] = {}
    if cold_count:
        counting = bench_count.measure(
            pg,
            db,
            size,
            lambda: sh(
                f"pg_dump -Fc -Z0 -d '{pg.dsn(db)}' | zstd -q -3 -T0 | {gpg_e} > {raw_file}", env
            ),
            lambda: sh(f"{PYOPS} --config {cfg} -q backup", env),
            env,
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "peers": {
            k.removeprefix("peer:"): round(v, 3) for k, v in med.items() if k.startswith("peer:")
        },
        "cold_count": counting,
        "peers_left_out": dict(bench_peers.broken),
        "size_mb_requested": size_mb,
        "database_bytes": size,
        "runs": runs,
        "jobs": jobs,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio": {
            "backup": round(med["backup_pyops"] / med["backup_raw"], 3),
            "restore": round(med["restore_pyops"] / med["restore_raw"], 3),
            "restore_jobs": round(med["restore_jobs_pyops"] / med["restore_jobs_raw"], 3),
        },
        "pyops_peak_rss_mib": round(max(rss) / 1024, 1),
        "samples_s": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Run {report['date']} on {report['machine']}.",
        "",
        "| database | op | raw median s | pyops median s | pyops/raw | pyops peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["sizes"]:
        m = r["median_s"]
        size = f"{r['database_bytes'] / 2**20:.0f} MiB"
        for op, raw, ours, ratio in (
            ("backup", "backup_raw", "backup_pyops", "backup"),
            ("restore (serial)", "restore_raw", "restore_pyops", "restore"),
            (f"restore -j{r['jobs']}", "restore_jobs_raw", "restore_jobs_pyops", "restore_jobs"),
        ):
            lines.append(
                f"| {size} | {op} | {m[raw]} | {m[ours]} | {r['ratio'][ratio]} "
                f"| {r['pyops_peak_rss_mib']} MiB |"
            )
        for peer, why in r.get("peers_left_out", {}).items():
            lines.append(f"| {size} | backup: {peer} | | left out: {why} | | |")
        for peer, seconds in r["peers"].items():
            lines.append(
                f"| {size} | backup: {peer} | {m['backup_raw']} | {seconds} (peer) "
                f"| {round(seconds / m['backup_raw'], 3)} | |"
            )
    for r in report["sizes"]:
        if r["cold_count"]:
            size = f"{r['database_bytes'] / 2**20:.0f} MiB"
            limit = r["cold_count"].get("memory_limit_mib")
            lines += [
                "",
                f"Cold cache, the cluster limited to {limit} MiB of memory (cgroup):",
                "",
                "| database | run | seconds | MiB read from disk |",
                "|---|---|---|---|",
                *bench_count.rows(r["cold_count"], size),
            ]
    if report.get("files"):
        lines += [
            "",
            "Files target, extracting into tmpfs:",
            "",
            "| data | op | raw median s | pyops median s | pyops/raw | goal |",
            "|---|---|---|---|---|---|",
            *bench_files.rows(report["files"]),
        ]
    if report.get("offsite"):
        lines += [
            "",
            "Backup with offsite, the S3 server on 127.0.0.1 behind max_upload_rate:",
            "",
            "| data | op | alone median s | pyops median s | ratio | note |",
            "|---|---|---|---|---|---|",
            *bench_offsite.rows(report["offsite"]),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="the larger database")
    parser.add_argument("--small-mb", type=int, default=250, help="the smaller database")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--files", type=int, default=50_000, help="files target: 0 skips it")
    parser.add_argument("--offsite-mb", type=int, default=300, help="upload overlap: 0 skips it")
    args = parser.parse_args()
    pg = start_cluster()
    key = generate_key()
    try:
        with tempfile.TemporaryDirectory(prefix="pyops-bench-") as tmp:
            work = Path(tmp)
            sizes = [
                measure(s, args.runs, args.jobs, work, pg, key, cold_count=s == args.size_mb)
                for s in (args.small_mb, args.size_mb)
            ]
    finally:
        pg.stop()
        cleanup_home(key.gnupghome)
    files: dict[str, Any] = {}
    if args.files:
        with tempfile.TemporaryDirectory(prefix="pyops-bench-files-", dir=bench_files.TMPFS) as tmp:
            files = bench_files.measure(Path(tmp), args.files, args.runs)
    offsite: dict[str, Any] = {}
    if args.offsite_mb:
        with tempfile.TemporaryDirectory(prefix="pyops-bench-offsite-") as tmp:
            offsite = bench_offsite.measure(Path(tmp), args.offsite_mb, args.runs, 0)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}",
        "sizes": sizes,
        "files": files,
        "offsite": offsite,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
