"""What the fleet tests (and tests/bench/fleet_bench.py) share: hosts that back up
through the real CLI into one bucket, synthetic hosts written straight through the
catalog and the index module (a stale host, a year of history), and a PNG reader for
the screenshot check."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fixtures.cli import run_pyops

from pyops import fleetindex
from pyops.catalog import INDEX_KEY, Catalog
from pyops.config import OffsiteConfig
from pyops.identity import IDENTITY_KEY, create_key, new_identity
from pyops.manifest import Manifest, backup_id
from pyops.storage import Store
from pyops.storage.s3 import S3Store


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def offsite(url: str, bucket: str, prefix: str) -> str:
    return (
        f'[offsite]\nbucket = "{bucket}"\nendpoint_url = "{url}"\nregion = "us-east-1"\n'
        f'prefix = "{prefix}"\nstorage_class = "STANDARD"\n'
    )


@dataclass
class Host:
    """One host's config, repository and key, backing up into the shared bucket."""

    name: str
    home: Path
    body: str

    @property
    def config(self) -> Path:
        return self.home / "pyops.toml"

    @property
    def key_file(self) -> Path:
        return self.home / "repository.key"

    def write(self) -> Host:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.key_file.exists():
            create_key(self.key_file)
        self.config.write_text(
            f'[repository]\npath = "{self.home / "repo"}"\nhost = "{self.name}"\n'
            f'key_file = "{self.key_file}"\nlock_wait_seconds = 5\n\n'
            f'[compression]\nalgorithm = "zstd"\n\n{self.body}\n'
        )
        self.config.chmod(0o600)
        return self

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, timeout=120)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, said(proc)
        return proc


def sqlite_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "sqlite"\npath = "{path}"\n'


def files_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = "{name}"\ntype = "files"\npaths = ["{path}"]\n'


def notes_db(path: Path, rows: int = 200) -> Path:
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def fleet_config(home: Path, url: str, bucket: str, prefix: str, extra: str = "") -> Path:
    """The fleet machine's config: the bucket (read only) and [health] thresholds."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "fleet.toml"
    path.write_text(
        f'[repository]\npath = "{home / "unused-repo"}"\n\n{offsite(url, bucket, prefix)}\n{extra}'
    )
    path.chmod(0o600)
    return path


@dataclass
class World:
    url: str
    bucket: str
    client: Any
    home: Path
    keys: Path
    hosts: dict[str, Host] = field(default_factory=dict)

    def config(self, prefix: str, extra: str = "") -> Path:
        return fleet_config(self.home / f"fleet-{prefix}", self.url, self.bucket, prefix, extra)

    def fleet(self, prefix: str, *args: str, keys: bool = True) -> subprocess.CompletedProcess[str]:
        more = ("--keys-dir", str(self.keys)) if keys else ()
        return run_pyops(self.config(prefix), "fleet", *more, *args, timeout=120)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def store(self, root: str) -> S3Store:
        config = OffsiteConfig(bucket=self.bucket, endpoint_url=self.url, region="us-east-1")
        return S3Store(config, root)


# --- synthetic hosts, written straight into a store ------------------------------------


def manifest(target: str, tier: str, when: datetime, size: int, host: str) -> Manifest:
    bid = backup_id(target, tier, when)
    return Manifest(
        id=bid,
        target=target,
        type="sqlite",
        tier=tier,
        host=host,
        started_at=when.isoformat(),
        finished_at=(when + timedelta(seconds=30)).isoformat(),
        duration_s=30.0,
        pyops_version="0.1.0",
        tools={"sqlite3": "3.40.1", "zstd": "v1.5.4"},
        source={"path": "/srv/app.db"},
        format="sqlite",
        compression={"algorithm": "zstd", "level": 3},
        encryption={"mode": "none"},
        artifact={"name": f"{bid}.sqlite3.zst", "bytes": size, "sha256": "ab" * 32},
    )


RETENTION = {"daily": 7, "weekly": 5, "monthly": 12}


def history(
    now: datetime, days: int, size: int, growth: float = 0.0
) -> list[tuple[str, datetime, int]]:
    """(tier, time, bytes) of a daily schedule over `days` (weekly on Sundays, monthly
    on the 1st, as `--tier auto`), oldest first, growing `growth` a day."""
    out = []
    for d in range(days, -1, -1):
        when = (now - timedelta(days=d)).replace(hour=2, minute=0, second=0, microsecond=0)
        if when > now:
            when -= timedelta(days=1)
        tier = "monthly" if when.day == 1 else "weekly" if when.weekday() == 6 else "daily"
        out.append((tier, when, int(size * (1 + growth) ** (days - d))))
    return out


def retained(points: list[tuple[str, datetime, int]]) -> list[tuple[str, datetime, int]]:
    """What GFS retention (RETENTION) keeps of a history: the newest N of each tier."""
    keep: list[tuple[str, datetime, int]] = []
    for tier, n in RETENTION.items():
        keep += [p for p in points if p[0] == tier][-n:]
    return sorted(keep, key=lambda p: p[1])


def write_synthetic_host(
    store: Store,
    host: str,
    key: bytes | None,
    targets: dict[str, list[tuple[str, datetime, int]]],
    drills: dict[str, list[tuple[datetime, bool, float]]],
    now: datetime,
    *,
    index: bool = True,
    manifests: bool = True,
) -> None:
    """A host as pyops would have left it in the bucket: its identity, the manifests of
    the backups retention keeps (no artifacts: the fleet never reads them) and its
    index with the whole size history and its drills."""
    identity = new_identity(host, key)
    store.put_bytes(IDENTITY_KEY, identity.to_json())
    catalog = Catalog(store, repository_id=identity.repository_id, key=key)
    entries: dict[str, Any] = {}
    for name, points in targets.items():
        kept = [manifest(name, tier, when, size, host) for tier, when, size in retained(points)]
        if manifests:
            for m in kept:
                catalog.write_manifest(m)
        previous = {"tiers": {}}  # the history the host carried forward
        for tier in fleetindex.TIERS:
            sizes = [[int(w.timestamp()), s] for t, w, s in points if t == tier]
            previous["tiers"][tier] = {"sizes": sizes}
        entry = fleetindex.target_entry(name, "sqlite", kept, {m.id for m in kept}, previous)
        entry["drill"] = fleetindex.drill_entry(
            [
                (when.isoformat(), {"ok": ok, "rto_s": rto, "backup": kept[-1].id})
                for when, ok, rto in drills.get(name, [])
            ]
        )
        entries[name] = entry
    if index:
        doc = fleetindex.document(
            host, identity.repository_id, now.isoformat(), "backup", RETENTION, entries
        )
        store.put_bytes(INDEX_KEY, fleetindex.seal(doc, key))


def load_index(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    assert isinstance(data, dict)
    return data


# --- the screenshot -------------------------------------------------------------------


def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA, non-interlaced PNG (what
    Chromium writes), decoded with zlib alone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    pixels = [
        (row[x * bpp], row[x * bpp + 1], row[x * bpp + 2]) for row in rows for x in range(width)
    ]
    return width, height, pixels


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None
