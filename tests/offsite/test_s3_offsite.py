"""Offsite copies against a real S3 protocol server (moto on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config
from fixtures.gpgkeys import kill_agent
from fixtures.s3 import S3


def sqlite_config(
    tmp_path: Path, s3: S3, source: Path, lock_days: int = 0, extra: str = ""
) -> Path:
    body = (
        f'[compression]\nalgorithm = "zstd"\n\n{s3.config(lock_days)}\n{extra}\n'
        f'[[targets]]\nname = "notes"\ntype = "sqlite"\npath = "{source}"\n'
    )
    return write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def test_upload_list_verify_restore_from_the_bucket_alone(
    tmp_path: Path, s3: S3, sqlite_source: Path
) -> None:
    config = sqlite_config(tmp_path, s3, sqlite_source)
    backup = json.loads(ok(run_pyops(config, "backup", "--format", "json")).stdout)
    backup_id = backup["backups"][0]["id"]
    assert backup["backups"][0]["offsite"] is True
    local = next((tmp_path / "repo").rglob("*.manifest.json"))
    host = json.loads(local.read_text())["host"]
    keys = [k for k in s3.object_keys() if not k.endswith("/index.json")]  # tests/fleet
    assert keys == [
        f"pyops/{host}/notes/daily/{backup_id}.manifest.json",
        f"pyops/{host}/notes/daily/{backup_id}.sqlite3.zst",
        f"pyops/{host}/repository.json",  # the repository's identity, beside its backups
    ]
    identity = json.loads((tmp_path / "repo" / "repository.json").read_text())
    remote_identity = s3.client.get_object(Bucket=s3.bucket, Key=keys[2])["Body"].read()
    assert json.loads(remote_identity)["repository_id"] == identity["repository_id"]
    # uploaded while written: its sha256 is a tag (S3 fixes metadata before it is known)
    tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key=keys[1])["TagSet"]
    assert {"Key": "sha256", "Value": json.loads(local.read_text())["artifact"]["sha256"]} in tags

    # the server is gone: no local repository at all
    shutil.rmtree(tmp_path / "repo")
    listed = json.loads(ok(run_pyops(config, "list", "--remote", "--format", "json")).stdout)
    assert [b["id"] for b in listed["backups"]] == [backup_id]
    ok(run_pyops(config, "verify", "--remote", "--deep"))
    restored = tmp_path / "restored.sqlite3"
    ok(
        run_pyops(
            config,
            "restore",
            "--remote",
            "--latest",
            "--target",
            "notes",
            "--into",
            str(restored),
            "--yes",
        )
    )
    conn = sqlite3.connect(restored)
    assert conn.execute("SELECT count(*), max(body) FROM notes").fetchone() == (500, "note 99")
    conn.close()


def test_remote_object_overwritten_is_detected(tmp_path: Path, s3: S3, sqlite_source: Path) -> None:
    config = sqlite_config(tmp_path, s3, sqlite_source)
    ok(run_pyops(config, "backup"))
    artifact = next(k for k in s3.object_keys() if k.endswith(".zst"))
    meta = s3.client.head_object(Bucket=s3.bucket, Key=artifact)["Metadata"]
    s3.client.put_object(Bucket=s3.bucket, Key=artifact, Body=b"not a backup", Metadata=meta)
    result = run_pyops(config, "verify", "--remote")
    assert result.returncode == 1
    assert "notes.daily." in result.stdout + result.stderr
    check = run_pyops(config, "sync", "--check")
    assert check.returncode == 1 and "bytes" in check.stdout
    # a fresh host (no local copy) refuses the altered object before restoring anything
    shutil.rmtree(tmp_path / "repo")
    restore = run_pyops(
        config,
        "restore",
        "--remote",
        "--latest",
        "--target",
        "notes",
        "--into",
        str(tmp_path / "r2.sqlite3"),
        "--yes",
    )
    assert restore.returncode == 1
    assert "does not match" in restore.stderr
    assert not (tmp_path / "r2.sqlite3").exists()


def test_unreachable_store_keeps_local_backup_and_sync_catches_up(
    tmp_path: Path, s3: S3, sqlite_source: Path
) -> None:
    dead = S3(s3.server, "http://127.0.0.1:9", s3.bucket, s3.client)  # nothing listens on 9
    config = sqlite_config(tmp_path, dead, sqlite_source)
    failed = run_pyops(config, "backup")
    assert failed.returncode == 1
    assert "cannot reach" in failed.stderr and "kept" in failed.stderr
    listed = json.loads(ok(run_pyops(config, "list", "--format", "json")).stdout)["backups"]
    assert len(listed) == 1 and listed[0]["offsite"] is False
    assert s3.object_keys() == []

    config = sqlite_config(tmp_path, s3, sqlite_source)  # the store is back
    synced = json.loads(ok(run_pyops(config, "sync", "--format", "json")).stdout)
    assert synced["uploaded"] == [listed[0]["id"]]
    again = json.loads(ok(run_pyops(config, "sync", "--format", "json")).stdout)
    assert again["uploaded"] == [] and again["present"] == [listed[0]["id"]]
    ok(run_pyops(config, "sync", "--check"))
    assert json.loads(ok(run_pyops(config, "list", "--format", "json")).stdout)["backups"][0][
        "offsite"
    ]


def test_retention_locally_and_in_the_bucket_with_object_lock(
    tmp_path: Path, s3: S3, sqlite_source: Path
) -> None:
    unlocked = sqlite_config(tmp_path, s3, sqlite_source, extra="[retention]\ndaily = 2\n")
    for _ in range(4):
        ok(run_pyops(unlocked, "backup", "--tier", "daily"))
    local = json.loads(ok(run_pyops(unlocked, "list", "--format", "json")).stdout)["backups"]
    remote = json.loads(ok(run_pyops(unlocked, "list", "--remote", "--format", "json")).stdout)
    assert len(local) == 2
    assert [b["id"] for b in remote["backups"]] == [b["id"] for b in local]
    assert len(s3.object_keys()) == 6  # artifact + manifest each, the identity, the index

    locked = sqlite_config(
        tmp_path, s3, sqlite_source, lock_days=1, extra="[retention]\ndaily = 1\n"
    )
    ok(run_pyops(locked, "backup", "--tier", "daily", "--no-prune"))
    ok(run_pyops(locked, "backup", "--tier", "daily", "--no-prune"))
    pruned = json.loads(ok(run_pyops(locked, "prune", "--remote", "--format", "json")).stdout)[
        "backups"
    ]
    skipped = [b for b in pruned if b["locked_until"]]
    deleted = [b for b in pruned if not b["keep"]]
    newest = pruned[0]
    assert newest["keep"] and "never pruned" in newest["reason"]
    assert len(skipped) == 1  # the older locked one: reported, not deleted, not an error
    assert len(deleted) == 2  # the two unlocked ones from before
    remote_after = json.loads(ok(run_pyops(locked, "list", "--remote", "--format", "json")).stdout)[
        "backups"
    ]
    assert len(remote_after) == 2
    local_pruned = json.loads(ok(run_pyops(locked, "prune", "--format", "json")).stdout)
    assert sum(1 for b in local_pruned["backups"] if b["keep"]) == 1


def test_large_artifact_goes_up_in_parts_with_flat_memory(tmp_path: Path, s3: S3) -> None:
    import os

    media = tmp_path / "media"
    media.mkdir()
    with open(media / "video.bin", "wb") as f:
        for _ in range(72):
            f.write(os.urandom(1 << 20))  # incompressible: the artifact stays ~72 MiB
    body = (
        f'[compression]\nalgorithm = "zstd"\nlevel = 1\n\n{s3.config()}\n'
        f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{media}"]\n'
    )
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)
    # pyops' own peak (VmHWM of the Python process), not zstd's or tar's
    proc = subprocess.Popen(
        [PYOPS, "--config", str(config), "backup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_kib = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        time.sleep(0.02)
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr
    assert peak_kib > 0
    artifact = next(k for k in s3.object_keys() if k.endswith(".tar.zst"))
    head = s3.client.head_object(Bucket=s3.bucket, Key=artifact)
    assert head["ContentLength"] >= 64 << 20
    assert head["ETag"].strip('"').endswith(tuple(f"-{n}" for n in range(2, 100)))  # multipart
    assert peak_kib < 100 * 1024, f"pyops peaked at {peak_kib} KiB"


@pytest.mark.parametrize("flag", ["--no-offsite"])
def test_no_offsite_flag_uploads_nothing(
    tmp_path: Path, s3: S3, sqlite_source: Path, flag: str
) -> None:
    config = sqlite_config(tmp_path, s3, sqlite_source)
    ok(run_pyops(config, "backup", flag))
    assert s3.object_keys() == []


def test_remote_deep_verify_of_an_encrypted_backup_checks_the_key_first(
    tmp_path: Path, s3: S3, sqlite_source: Path
) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    secret = tmp_path / "passphrase"
    secret.write_text("right horse battery staple\n")
    secret.chmod(0o600)
    extra = (
        f'[encryption]\nmode = "gpg-symmetric"\ngnupghome = "{home}"\n'
        f'passphrase_file = "{secret}"\n'
    )
    config = sqlite_config(tmp_path, s3, sqlite_source, extra=extra)
    try:
        ok(run_pyops(config, "backup"))
        shutil.rmtree(tmp_path / "repo")  # only the bucket has it
        ok(run_pyops(config, "verify", "--remote", "--deep"))
        secret.write_text("wrong\n")
        refused = run_pyops(config, "verify", "--remote", "--deep")
        assert refused.returncode == 1
        assert "wrong passphrase" in refused.stdout + refused.stderr
    finally:
        kill_agent(home)  # gpg started one for this home: leave nothing running
