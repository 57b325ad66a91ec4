"""What a files target costs over the tar pipeline it wraps, on many small files.

Not part of `make test`. Builds a tree of `--files` small files (0-4 KiB, 100 per
directory, two levels deep, some symlinks, hard links and empty directories) in
tmpfs (/dev/shm), configures pyops as an operator would (zstd -3, all cores, no
encryption), then runs, alternating, the shell pipeline and pyops:

  backup          tar -c | zstd -3 -T0 > f                 vs  pyops backup
  restore         zstd -d < artifact | tar -x (in tmpfs)   vs  pyops restore --into (in tmpfs)
  verify --deep   zstd -d < artifact | tar -t              vs  pyops verify --deep

The shell restores and lists pyops' own artifact, so both sides read the same bytes.
Reports medians and the ratio pyops/raw against the goals of issue 14:

  .venv/bin/python tests/bench/bench_files.py --files 50000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchtools import installed_env

PYOPS = str(Path(sys.executable).parent / "pyops")
TMPFS = Path("/dev/shm")
PER_DIR = 100
# issue 14: (factor, allowance for Python's start-up in seconds) per operation
GOALS = {"restore": (1.5, 0.3), "verify": (2.0, 0.3)}


def build_tree(top: Path, files: int, seed: int = 14) -> int:
    """`files` entries below `top`: regular files of 0-4 KiB, 1% symlinks, 0.5% hard
    links, and an empty directory every 50 directories. Returns the bytes written."""
    rng = random.Random(seed)
    total = 0
    made = 0
    d = 0
    while made < files:
        here = top / f"d{d // PER_DIR:03d}" / f"s{d % PER_DIR:03d}"
        here.mkdir(parents=True)
        if d % 50 == 49:
            (here / "empty").mkdir()
        for i in range(min(PER_DIR, files - made)):
            path = here / f"f{i:03d}.dat"
            roll = rng.random()
            if roll < 0.01 and i > 0:
                os.symlink(f"f{i - 1:03d}.dat", path)
            elif roll < 0.015 and i > 0 and not (here / f"f{i - 1:03d}.dat").is_symlink():
                os.link(here / f"f{i - 1:03d}.dat", path)  # (never a hard link to a symlink)
            else:
                size = rng.randrange(0, 4097)
                path.write_bytes(rng.randbytes(size // 2) + b"\0" * (size - size // 2))
                total += size
            made += 1
        d += 1
    return total


def sh(script: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True)


def pyops(cfg: Path, *args: str) -> None:
    env = installed_env(dict(os.environ))  # bytecode cached, as installed
    proc = subprocess.run(
        [PYOPS, "--config", str(cfg), "-q", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pyops {' '.join(args)} failed: {proc.stdout}\n{proc.stderr[-3000:]}")


def timed(fn: Callable[[], None]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def write_config(cfg: Path, repo: Path, tree: Path) -> None:
    cfg.write_text(
        f'[repository]\npath = "{repo}"\n\n[compression]\nalgorithm = "zstd"\nlevel = 3\n'
        'threads = 0\n\n[encryption]\nmode = "none"\n\n[retention]\ndaily = 100\n\n'
        f'[[targets]]\nname = "files"\ntype = "files"\npaths = ["{tree}"]\n'
    )


def measure(work: Path, files: int, runs: int) -> dict[str, Any]:
    """Medians (seconds) of `runs` alternating runs of each operation, raw and pyops.
    `work` must be in tmpfs for the extraction numbers to mean what the issue says."""
    tree = work / "tree"
    tree.mkdir(parents=True)
    data_bytes = build_tree(tree, files)
    repo = work / "repo"
    cfg = work / "pyops.toml"
    write_config(cfg, repo, tree)
    raw = work / "raw.tar.zst"
    rel = str(tree.relative_to("/"))
    samples: dict[str, list[float]] = {
        f"{op}_{who}": [] for op in ("backup", "restore", "verify") for who in ("raw", "pyops")
    }
    for _ in range(runs):
        samples["backup_raw"].append(
            timed(lambda: sh(f"tar -C / --format=posix -cf - {rel} | zstd -q -3 -T0 > {raw}"))
        )
        samples["backup_pyops"].append(timed(lambda: pyops(cfg, "backup", "--no-offsite")))
        time.sleep(1.1)  # backup ids are per second
    (artifact,) = sorted(repo.glob("files/*/*.tar.zst"))[-1:]
    for n in range(runs):
        dest = work / f"raw-{n}"
        dest.mkdir()
        samples["restore_raw"].append(
            timed(lambda d=dest: sh(f"zstd -q -d -c {artifact} | tar -x -C {d}"))
        )
        shutil.rmtree(dest)
        dest = work / f"pyops-{n}"
        samples["restore_pyops"].append(
            timed(
                lambda d=dest: pyops(
                    cfg, "restore", "--latest", "--target", "files", "--into", str(d), "--yes"
                )
            )
        )
        shutil.rmtree(dest)
        samples["verify_raw"].append(
            timed(lambda: sh(f"zstd -q -d -c {artifact} | tar -t > /dev/null"))
        )
        samples["verify_pyops"].append(
            timed(lambda: pyops(cfg, "verify", "--deep", "--target", "files"))
        )
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "files": files,
        "data_bytes": data_bytes,
        "artifact_bytes": artifact.stat().st_size,
        "runs": runs,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "samples_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }


def rows(result: dict[str, Any]) -> list[str]:
    """Markdown rows: | data | op | raw median s | pyops median s | ratio | goal and met? |"""
    m = result["median_s"]
    data = f"{result['files']:,} files, {result['data_bytes'] / 2**20:.0f} MiB"
    out = []
    for op, label, raw_name in (
        ("backup", "backup", "tar -c \\| zstd"),
        ("restore", "restore (tmpfs)", "zstd -d \\| tar -x"),
        ("verify", "verify --deep", "zstd -d \\| tar -t"),
    ):
        raw, ours = m[f"{op}_raw"], m[f"{op}_pyops"]
        ratio = round(ours / raw, 2) if raw else float("inf")
        if op in GOALS:
            factor, allowance = GOALS[op]
            limit = factor * raw + allowance
            met = "met" if ours <= limit else "NOT met"
            goal = f"<= {factor}x {raw_name} + {allowance} s = {limit:.2f} s: {met}"
        else:
            goal = f"(no goal; vs {raw_name})"
        out.append(f"| {data} | {label} | {raw} | {ours} | {ratio} | {goal} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not TMPFS.is_dir():
        raise SystemExit(f"{TMPFS} (tmpfs) is needed: the issue measures extraction into tmpfs")
    work = Path(tempfile.mkdtemp(prefix="pyops-bench-files-", dir=TMPFS))
    try:
        result = measure(work, args.files, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| data | op | raw median s | pyops median s | pyops/raw | goal |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows(result)))
    print(f"\nsamples: {result['samples_s']}", file=sys.stderr)


if __name__ == "__main__":
    main()
