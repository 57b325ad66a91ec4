"""The host side: the index is rewritten after each backup, prune, sync and drill
(through the real CLI), carries its size history past retention, and a failure to
write it is a warning, never a failed backup."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fixtures.s3 import S3
from fleet_support import Host, notes_db, offsite, said, sqlite_target

from pyops import fleetindex
from pyops.identity import load_key


def index_of(s3: S3, host: Host) -> dict[str, Any]:
    raw = s3.client.get_object(Bucket=s3.bucket, Key=f"pyops/{host.name}/index.json")["Body"]
    data = raw.read()
    got = fleetindex.read(data, host.name, load_key(host.key_file))
    assert got.state == "authenticated", got.reason
    assert got.doc is not None
    return got.doc


def test_the_index_follows_backup_prune_sync_and_drill(tmp_path: Path, s3: S3) -> None:
    db = notes_db(tmp_path / "app.db")
    body = offsite(s3.url, s3.bucket, "pyops") + sqlite_target("notes", db)
    host = Host("app-1", tmp_path / "app-1", body).write()
    host.ok("backup", "--no-prune")
    first = index_of(s3, host)
    assert (first["event"], first["host"]) == ("backup", "app-1")
    assert first["retention"] == {"daily": 7, "weekly": 5, "monthly": 12}
    daily = first["targets"]["notes"]["tiers"]["daily"]
    assert daily["count"] == 1 and daily["offsite_count"] == 1 and len(daily["sizes"]) == 1
    assert daily["newest"]["offsite"] is True
    assert first["targets"]["notes"]["drill"] == {"last": None, "last_ok": None, "history": []}

    time.sleep(1.1)
    host.ok("backup", "--no-prune", "--no-offsite")  # not offsite: the index is left alone
    assert index_of(s3, host)["written_at"] == first["written_at"]
    host.body = body + "\n[retention]\ndaily = 1\n"
    host.write()
    host.ok("prune")
    pruned = index_of(s3, host)
    daily = pruned["targets"]["notes"]["tiers"]["daily"]
    assert pruned["event"] == "prune" and pruned["retention"]["daily"] == 1
    assert daily["count"] == 1 and daily["offsite_count"] == 1  # the bucket still has one
    assert daily["newest"]["offsite"] is False  # the newest was never uploaded
    assert len(daily["sizes"]) == 2  # the history outlives retention

    host.ok("sync")
    synced = index_of(s3, host)
    assert synced["event"] == "sync"
    assert synced["targets"]["notes"]["tiers"]["daily"]["newest"]["offsite"] is True

    host.ok("drill")
    host.ok("drill")
    drilled = index_of(s3, host)
    drill = drilled["targets"]["notes"]["drill"]
    assert drilled["event"] == "drill" and len(drill["history"]) == 2
    assert drill["last"]["ok"] is True and drill["last"]["rto_s"] > 0
    assert drill["last_ok"] == drill["last"]["time"]
    assert drill["last"]["backup"] == synced["targets"]["notes"]["tiers"]["daily"]["newest"]["id"]
    local = json.loads((host.home / "repo" / ".pyops" / "fleet-index.json").read_text())
    assert local["mac"] == drilled["mac"]  # the local copy the history is carried in


def test_an_index_that_cannot_be_written_is_a_warning_only(tmp_path: Path, s3: S3) -> None:
    db = notes_db(tmp_path / "app.db")
    host = Host(
        "app-2", tmp_path / "app-2", offsite(s3.url, s3.bucket, "pyops") + sqlite_target("n", db)
    ).write()
    blocker = host.home / "repo" / ".pyops" / "fleet-index.json"
    blocker.mkdir(parents=True)  # a directory where the local copy goes
    proc = host.run("backup", "--format", "json")
    assert proc.returncode == 0, said(proc)
    assert json.loads(proc.stdout)["backups"][0]["offsite"] is True
    assert "fleet index not written (the backup itself is not affected)" in proc.stderr
    keys = [k for k in s3.object_keys() if k.startswith("pyops/app-2/")]
    assert "pyops/app-2/index.json" not in keys and len(keys) == 3  # backup, manifest, identity
