"""Faults in the backup pipeline itself: a stage killed, the disk filling up, pyops
killed, a second run while one holds the lock, the clock going backwards. The real
CLI against real tar, zstd and gpg; nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fault_support import (
    Repo,
    descendants,
    files_target,
    incompressible_dir,
    kill_child_when_reading,
    said,
    wait_for,
    zstd,
)
from fixtures.tmpfs import small_tmpfs

TARGET = "media"


def digest_tree(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def assert_clean_failure(repo: Repo, before: dict[str, str], older: list[str]) -> None:
    """Nothing of the failed run is left; the older backups are byte-identical."""
    assert repo.temp_files() == [], repo.files()
    assert digest_tree(repo.files()) == before, "repository changed by a failed run"
    assert repo.listed() == older
    repo.verify_all()


@pytest.mark.parametrize("stage", ["zstd", "gpg"])
def test_stage_sigkilled_mid_stream(
    repo: Repo, sym_crypto: str, tmp_path: Path, stage: str
) -> None:
    data = incompressible_dir(tmp_path / "data", 1)
    repo.write(files_target(TARGET, [data]) + sym_crypto)
    older = repo.backup(TARGET)
    before = digest_tree(repo.files())
    incompressible_dir(data, 40)

    proc = repo.popen("backup", "--target", TARGET, "--no-prune")
    kill_child_when_reading(proc, stage)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, f"{out}\n{err}"
    assert stage in err and "SIGKILL" in err, err
    last = repo.history()[0]
    assert last["command"] == "backup" and last["result"] == "failed", last
    assert f"{stage} was killed by SIGKILL" in last["backups"][0]["error"], last
    assert_clean_failure(repo, before, [older])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs (root only), unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "8m", "0700") as mnt:
        yield mnt


def test_disk_full_mid_write(repo: Repo, small_fs: Path, tmp_path: Path) -> None:
    data = incompressible_dir(tmp_path / "data", 1)
    repo.write(files_target(TARGET, [data]) + zstd(), repo=small_fs / "repo")
    older = repo.backup(TARGET)
    before = digest_tree(repo.files())
    incompressible_dir(data, 20)

    proc = repo.run("backup", "--target", TARGET, "--no-prune")

    assert proc.returncode == 1, said(proc)
    assert "disk full" in proc.stderr, said(proc)
    assert_clean_failure(repo, before, [older])


def test_pyops_sigkilled_then_next_run_cleans_up(repo: Repo, tmp_path: Path) -> None:
    data = incompressible_dir(tmp_path / "data", 1)
    repo.write(files_target(TARGET, [data]) + zstd())
    older = repo.backup(TARGET)
    incompressible_dir(data, 40)

    proc = repo.popen("backup", "--target", TARGET, "--no-prune")

    def growing() -> list[Path]:
        assert proc.poll() is None, proc.communicate()
        return [p for p in repo.temp_files() if p.stat().st_size > 1 << 20]

    wait_for(growing, 60, "a temp artifact over 1 MB")
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not any(Path(f"/proc/{k}").exists() for k in kids), 30, "children to exit")

    assert repo.temp_files(), "the kill left no temp file: the test did not hit mid-write"
    assert repo.listed() == [older], "a half backup was listed"
    repo.ok("verify", "--all")

    newer = repo.backup(TARGET, "--no-prune")

    assert repo.temp_files() == [], repo.files()
    assert repo.scratch_entries() == []
    assert repo.listed() == [newer, older]
    assert {p.name.split(".manifest")[0] for p in repo.manifests()} == {newer, older}
    repo.verify_all()


def test_prune_during_backup_waits_then_refuses(repo: Repo, tmp_path: Path) -> None:
    data = incompressible_dir(tmp_path / "data", 1)
    # gzip -6 on random bytes runs at ~25 MB/s: the backup holds the lock for seconds
    slow = '[compression]\nalgorithm = "gzip"\nlevel = 6\n'
    body = files_target(TARGET, [data]) + slow + "[retention]\ndaily = 1\n"
    repo.write(body, lock_wait_seconds=0.5)
    first = repo.backup(TARGET)
    incompressible_dir(data, 48)

    proc = repo.popen("backup", "--target", TARGET, "--no-prune")
    wait_for(lambda: proc.poll() is None and repo.temp_files(), 60, "backup writing")
    t0 = time.monotonic()
    pruned = repo.run("prune")
    waited = time.monotonic() - t0
    still_running = proc.poll() is None
    out, err = proc.communicate(timeout=120)

    assert still_running, "backup ended before prune gave up: the race was not exercised"
    assert pruned.returncode == 1, said(pruned)
    assert "another pyops run holds" in pruned.stderr and "lock" in pruned.stderr, said(pruned)
    assert waited >= 0.45, f"prune gave up after {waited:.2f}s without waiting"
    assert proc.returncode == 0, f"{out}\n{err}"
    listed = repo.listed()
    assert len(listed) == 2 and first in listed, listed
    repo.verify_all()


def future_copy(repo: Repo, backup_id: str, ahead: timedelta) -> str:
    """A consistent copy of a real backup dated `ahead` in the future."""
    tier_dir = repo.path / TARGET / "daily"
    manifest = json.loads((tier_dir / f"{backup_id}.manifest.json").read_text())
    when = datetime.now(UTC).replace(microsecond=0) + ahead
    new_id = f"{TARGET}.daily.{when:%Y%m%dT%H%M%SZ}"
    old_name = manifest["artifact"]["name"]
    new_name = old_name.replace(backup_id, new_id)
    shutil.copy2(tier_dir / old_name, tier_dir / new_name)
    manifest.update(
        id=new_id,
        started_at=when.isoformat(),
        finished_at=(when + timedelta(seconds=1)).isoformat(),
    )
    manifest["artifact"]["name"] = new_name
    (tier_dir / f"{new_id}.manifest.json").write_text(json.dumps(manifest, indent=2))
    return new_id


def test_clock_backwards_refused_and_future_backup_not_pruned(repo: Repo, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text(uuid.uuid4().hex)
    repo.write(files_target(TARGET, [data]) + zstd() + "[retention]\ndaily = 1\n")
    real = repo.backup(TARGET, "--tier", "daily", "--no-prune")
    future = future_copy(repo, real, timedelta(days=2))
    before = digest_tree(repo.files())

    refused = repo.run("backup", "--target", TARGET, "--tier", "daily")

    assert refused.returncode == 1, said(refused)
    assert "clock" in refused.stderr and future in refused.stderr, said(refused)
    assert digest_tree(repo.files()) == before
    pruned = repo.run("prune", "--target", TARGET)
    assert pruned.returncode == 0, said(pruned)
    assert future in repo.listed(), "prune deleted the future-dated (newest) backup"
    repo.ok("verify", future)
