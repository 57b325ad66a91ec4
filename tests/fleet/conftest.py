"""A bucket on the S3 server on 127.0.0.1 that several hosts wrote to, built once per
module: under prefix `good`, two healthy hosts (one whose index was deleted); under
prefix `fleet`, a shrinking host, a stale one and one whose index was altered."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from fleet_support import (
    Host,
    World,
    files_target,
    history,
    notes_db,
    offsite,
    sqlite_target,
    write_synthetic_host,
)
from moto.server import ThreadedMotoServer

from pyops.identity import create_key, load_key


def _host(world: World, name: str, prefix: str, targets: str) -> Host:
    host = Host(name, world.home / name, offsite(world.url, world.bucket, prefix) + targets)
    host.write()
    shutil.copy(host.key_file, world.keys / f"{name}.key")
    world.hosts[name] = host
    return host


def _random_tree(path: Path, size: int) -> Path:
    """A directory holding `size` incompressible bytes."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / "noise.bin").write_bytes(os.urandom(size))
    return path


@pytest.fixture(scope="module")
def world(
    s3_server: tuple[ThreadedMotoServer, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    _, url = s3_server
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    home = tmp_path_factory.mktemp("fleet")
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    w = World(url, bucket, client, home, keys)

    # prefix "good": web-1 (two targets, drilled) and web-3 (its index deleted)
    web1 = _host(
        w,
        "web-1",
        "good",
        sqlite_target("notes", notes_db(home / "data1" / "app.db"))
        + files_target("media", _random_tree(home / "data1" / "media", 20_000)),
    )
    web1.ok("backup")
    web1.ok("drill")
    web3 = _host(w, "web-3", "good", sqlite_target("notes", notes_db(home / "data3" / "app.db")))
    web3.ok("backup")
    client.delete_object(Bucket=bucket, Key="good/web-3/index.json")

    # prefix "fleet": web-2 shrinks, web-4 is stale, web-5's index was altered
    media = home / "data2" / "media"
    web2 = _host(w, "web-2", "fleet", files_target("media", _random_tree(media, 200_000)))
    web2.ok("backup")
    time.sleep(1.1)
    web2.ok("backup")
    time.sleep(1.1)
    _random_tree(media, 5_000)  # most of the data gone
    web2.ok("backup")
    web2.ok("drill")

    stale_key = w.keys / "web-4.key"
    create_key(stale_key)
    now = datetime.now(UTC)
    write_synthetic_host(
        w.store("fleet/web-4/"),
        "web-4",
        load_key(stale_key),
        {"notes": history(now - timedelta(days=5), 60, 50_000)},
        {"notes": [(now - timedelta(days=100), True, 12.5)]},
        now - timedelta(days=5),
    )

    web5 = _host(w, "web-5", "fleet", sqlite_target("notes", notes_db(home / "data5" / "app.db")))
    web5.ok("backup")
    web5.ok("drill")
    index = json.loads(w.get("fleet/web-5/index.json"))
    index["targets"]["notes"]["tiers"]["daily"]["newest"]["size"] += 1  # MAC kept: altered
    client.put_object(Bucket=bucket, Key="fleet/web-5/index.json", Body=json.dumps(index))
    yield w
