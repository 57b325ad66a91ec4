"""`make bench-fleet`: what `pyops fleet` costs on a large bucket (not a timed test).

Starts the S3 server on 127.0.0.1 (moto, as the tests do) with a counter in front of
it, and writes straight through the store and the catalog, host by host: the
repository identity, the manifests of the backups retention keeps (7 daily, 5
weekly, 12 monthly per target) and the host's index carrying a year of size history
and of monthly drills, each sealed with the host's own key. A few hosts get no index
(listed from their manifests), some are stale and some shrink, so every rule runs.
Artifacts are not written: the fleet never reads them.

Then runs the real CLI, `pyops fleet --format json --keys-dir ...`, on a small and a
large prefix, and reports wall time, peak RSS of the pyops process (VmHWM) and the
S3 requests it made, by kind. Target: 500 hosts x 5 targets in under 10 s, memory
flat. BENCH_ARGS="--hosts 500 --small 50 --targets 5".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "fleet"))

import boto3  # noqa: E402
from benchtools import run_watched  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402
from fixtures.s3 import CREDS  # noqa: E402
from fleet_support import history, write_synthetic_host  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402

from pyops.config import OffsiteConfig  # noqa: E402
from pyops.identity import create_key, load_key  # noqa: E402
from pyops.storage import check_key  # noqa: E402
from pyops.storage.s3 import S3Store  # noqa: E402

PYOPS = str(Path(sys.executable).parent / "pyops")
BUCKET = "pyops-fleet-bench"


class CountingS3:
    """moto's S3 server on 127.0.0.1, counting the requests it serves by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            query = environ.get("QUERY_STRING", "")
            kind = f"{environ['REQUEST_METHOD']} {'list' if 'list-type' in query else 'object'}"
            with self.lock:
                self.counts[kind] += 1
            return app(environ, start_response)

        self.server = make_server(
            "127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> dict[str, int]:
        with self.lock:
            out = dict(self.counts)
            self.counts.clear()
        return out


class BackendStore:
    """Writes straight into the in-process S3 server's memory what a PUT would store
    (the catalog and the index module write through it as through any store): the
    bucket is built in seconds instead of minutes of HTTP round trips."""

    def __init__(self, root: str) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.root = root
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def describe(self) -> str:
        return f"moto:{BUCKET}/{self.root}"

    def put_bytes(self, key: str, data: bytes) -> None:
        self.backend.put_object(BUCKET, self.root + check_key(key), data)


def build(
    s3: CountingS3, prefix: str, hosts: int, targets: int, keys: Path, now: datetime, http: bool
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        region_name="us-east-1",
        config=BotoConfig(max_pool_connections=32, s3={"addressing_style": "path"}),
    )
    config = OffsiteConfig(bucket=BUCKET, endpoint_url=s3.url, region="us-east-1")

    def one(i: int) -> None:
        host = f"host-{i:04d}"
        key_file = keys / f"{host}.key"
        if not key_file.exists():
            create_key(key_file)
        written = now - timedelta(days=3) if i % 50 == 7 else now  # stale hosts
        points = {}
        for t in range(targets):
            series = history(written, 365, 40_000_000 + 1_000_000 * t, growth=0.002)
            if i % 40 == 3 and t == 0:  # the newest backup lost most of its data
                tier, when, size = series[-1]
                series[-1] = (tier, when, size // 4)
            points[f"app-{t}"] = series
        drills = {
            name: [
                (written - timedelta(days=30 * m), m != 5, 60.0 + 3 * m) for m in range(12, 0, -1)
            ]
            for name in points
        }
        root = f"{prefix}/{host}/"
        store: Any = S3Store(config, root, client=client) if http else BackendStore(root)
        write_synthetic_host(
            store, host, load_key(key_file), points, drills, written, index=i % 100 != 42
        )

    with ThreadPoolExecutor(max_workers=16 if http else 1) as pool:
        list(pool.map(one, range(hosts)))


def run_fleet(argv: list[str], env: dict[str, str]) -> tuple[float, int, int, bytes]:
    """(seconds, VmHWM of the pyops process in KiB, exit code, stdout)."""
    seconds, peak, code, stdout, stderr = run_watched(argv, env, stdout=subprocess.PIPE)
    if code not in (0, 1, 2, 3):
        raise SystemExit(f"pyops fleet failed ({code}): {stderr.decode()[-2000:]}")
    return seconds, peak, code, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--small", type=int, default=50, help="hosts of the small prefix")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--through-http", action="store_true", help="build the bucket with real PUTs (slow)"
    )
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(CREDS)
    s3 = CountingS3()
    boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    now = datetime.now(UTC)
    results: dict[str, Any] = {
        "when": now.isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "targets_per_host": args.targets,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="pyops-fleet-bench-") as tmp:
        home = Path(tmp)
        keys = home / "keys"
        keys.mkdir(mode=0o700)
        env = {**os.environ}
        for prefix, hosts in (("small", args.small), ("large", args.hosts)):
            t0 = time.monotonic()
            build(s3, prefix, hosts, args.targets, keys, now, args.through_http)
            written = s3.take()
            print(
                f"built {prefix}: {hosts} hosts x {args.targets} targets in "
                f"{time.monotonic() - t0:.0f} s ({sum(written.values())} requests)",
                flush=True,
            )
            config = home / f"{prefix}.toml"
            config.write_text(
                f'[repository]\npath = "{home / "repo"}"\n\n[offsite]\nbucket = "{BUCKET}"\n'
                f'endpoint_url = "{s3.url}"\nregion = "us-east-1"\nprefix = "{prefix}"\n'
            )
            config.chmod(0o600)
            argv = [PYOPS, "--config", str(config), "fleet", "--keys-dir", str(keys)]
            runs = []
            for _ in range(args.runs):
                seconds, rss, code, out = run_fleet([*argv, "--format", "json"], env)
                requests = s3.take()
                runs.append(
                    {
                        "seconds": round(seconds, 2),
                        "peak_rss_kib": rss,
                        "exit": code,
                        "requests": requests,
                    }
                )
            doc = json.loads(out)
            html_s, html_rss, _, page = run_fleet([*argv, "--format", "html"], env)
            s3.take()
            best = min(runs, key=lambda r: r["seconds"])
            results["runs"][prefix] = {
                "hosts": hosts,
                "json": runs,
                "summary": doc["summary"],
                "json_bytes": len(out),
                "html": {
                    "seconds": round(html_s, 2),
                    "peak_rss_kib": html_rss,
                    "bytes": len(page),
                },
            }
            print(
                f"pyops fleet --format json, {hosts} hosts: best {best['seconds']:.2f} s of "
                f"{args.runs}, peak RSS {best['peak_rss_kib'] / 1024:.0f} MiB, "
                f"{sum(best['requests'].values())} S3 requests {best['requests']}, "
                f"exit {best['exit']}, {doc['summary']}",
                flush=True,
            )
            print(
                f"pyops fleet --format html, {hosts} hosts: {html_s:.2f} s, peak RSS "
                f"{html_rss / 1024:.0f} MiB, {len(page) / 1e6:.1f} MB page",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
