"""Backup and upload overlap (issue 14): what a backup with offsite costs against the
dump alone and the upload alone.

Starts moto's S3 server on 127.0.0.1 (as the tests do), builds a files target of
`size_mb` of random (incompressible) data, and measures, alternating, the medians of:

  backup alone     pyops backup --no-offsite
  upload alone     pyops sync            (that backup, into an empty bucket)
  backup offsite   pyops backup          (the upload overlapping the dump)

with `[offsite] max_upload_rate` standing in for a small VPS uplink. The rate is
chosen (or given) so the upload alone takes about as long as the backup alone: the
hardest case for overlap, where sequential would cost twice either. Reported ratio:
backup offsite / max(backup alone, upload alone); the target is <= 1.10.

Not a test and not timed by the suite:
  .venv/bin/python tests/bench/bench_offsite.py --size-mb 300 --rate 50000000
(--rate 0: measure the backup alone first and match the rate to it.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import boto3  # noqa: E402
from fixtures.s3 import CREDS  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

PYOPS = str(Path(sys.executable).parent / "pyops")
MiB = 1 << 20


def make_data(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(0, size_mb, 16):
        (path / f"blob{i:05d}.bin").write_bytes(os.urandom(min(16, size_mb - i) * MiB))


LEVEL = 15  # zstd -15 -T1: a dump that takes CPU time, as pg_dump | zstd does on a small VPS


def write_config(work: Path, name: str, data: Path, url: str, bucket: str, rate: int) -> Path:
    path = work / f"{name}.toml"
    path.write_text(
        f'[repository]\npath = "{work / name}"\nhost = "bench"\n\n'
        f'[compression]\nalgorithm = "zstd"\nlevel = {LEVEL}\nthreads = 1\n\n'
        f'[offsite]\nbucket = "{bucket}"\nendpoint_url = "{url}"\nregion = "us-east-1"\n'
        f'storage_class = "STANDARD"\nsse = "none"\nmax_upload_rate = {rate}\n\n'
        f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{data}"]\n'
    )
    return path


def pyops(config: Path, *args: str, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    done = subprocess.run(
        [PYOPS, "--config", str(config), "-q", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"pyops {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def artifact_bytes(repo: Path) -> int:
    manifest = next(repo.rglob("*.manifest.json"))
    return int(json.loads(manifest.read_text())["artifact"]["bytes"])


def measure(work: Path, size_mb: int, runs: int, rate: int) -> dict[str, Any]:
    """Medians of backup alone, upload alone (sync) and backup with offsite, `runs`
    times each, alternating. `rate` <= 0: matched to the first backup alone."""
    env = {**os.environ, **CREDS}
    os.environ.update(CREDS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    data = work / "data"
    make_data(data, size_mb)
    times: dict[str, list[float]] = {"backup_alone": [], "upload_alone": [], "backup_offsite": []}
    size = 0
    try:
        for run in range(runs):
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=bucket)
            alone = write_config(work, f"alone{run}", data, url, bucket, max(rate, 0))
            times["backup_alone"].append(pyops(alone, "backup", "--no-offsite", env=env))
            size = artifact_bytes(work / f"alone{run}")
            if rate <= 0:  # the upload alone as long as the backup alone
                rate = max(1, int(size / times["backup_alone"][0]))
                alone = write_config(work, f"alone{run}", data, url, bucket, rate)
            times["upload_alone"].append(pyops(alone, "sync", env=env))
            empty_bucket(client, bucket)

            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=bucket)
            both = write_config(work, f"offsite{run}", data, url, bucket, rate)
            times["backup_offsite"].append(pyops(both, "backup", env=env))
            empty_bucket(client, bucket)
            for name in (f"alone{run}", f"offsite{run}"):
                subprocess.run(["rm", "-rf", str(work / name)], check=True)
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size_mb": size_mb,
        "artifact_bytes": size,
        "rate": rate,
        "runs": runs,
        "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio": round(med["backup_offsite"] / max(med["backup_alone"], med["upload_alone"]), 3),
    }


def rows(result: dict[str, Any]) -> list[str]:
    """Markdown rows: | data | op | alone median s | pyops median s | ratio | note |"""
    m = result["median_s"]
    what = f"files {result['size_mb']} MB"
    alone = max(m["backup_alone"], m["upload_alone"])
    ideal = result["artifact_bytes"] / result["rate"]
    rate_mb = result["rate"] / 1e6
    sequential = m["backup_alone"] + m["upload_alone"]
    return [
        f"| {what} | backup with offsite (upload overlaps the dump) | {alone:.2f} | "
        f"{m['backup_offsite']:.2f} | {result['ratio']:.2f} | vs max(backup --no-offsite "
        f"{m['backup_alone']:.2f} s, sync {m['upload_alone']:.2f} s); sequential would be "
        f"~{sequential:.2f} s; max_upload_rate {rate_mb:.1f} MB/s |",
        f"| {what} | sync (upload alone, throttled) | {ideal:.2f} | {m['upload_alone']:.2f} | "
        f"{m['upload_alone'] / ideal:.2f} | alone = artifact bytes / max_upload_rate |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=0, help="bytes/s; 0: match the backup")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyops-bench-offsite-") as tmp:
        result = measure(Path(tmp), args.size_mb, args.runs, args.rate)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("| data | op | alone median s | pyops median s | ratio | note |")
    print("|---|---|---|---|---|---|")
    for row in rows(result):
        print(row)


if __name__ == "__main__":
    main()
