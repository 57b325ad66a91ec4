"""Configuration errors (exit 2, naming the key), `init`, and the repository lock."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.cli import run_pyops
from integration_helpers import Pyops, compression, make_sample_db, output, sqlite_target

BAD_CONFIGS: dict[str, tuple[str, str]] = {
    # name: (config after the [repository] table, what stderr must name)
    "unknown top-level key": ('colour = "blue"\n{repository}', "colour"),
    "unknown key in compression": (
        '{repository}\n[compression]\nalgorithm = "zstd"\nspeed = 3\n',
        "compression.speed",
    ),
    "wrong type": ('{repository}\n[compression]\nlevel = "high"\n', "compression.level"),
    "sqlite without path": (
        '{repository}\n[[targets]]\nname = "app"\ntype = "sqlite"\n',
        "targets[0].path",
    ),
    "unknown target type": (
        '{repository}\n[[targets]]\nname = "app"\ntype = "mysql"\ndsn = "x"\n',
        "targets[0].type",
    ),
    "gpg-public without recipients": (
        '{repository}\n[encryption]\nmode = "gpg-public"\n',
        "encryption.recipients",
    ),
    "dsn URI with a password": (
        '{repository}\n[[targets]]\nname = "pg"\ntype = "postgres"\n'
        'dsn = "postgresql://app:Hunter2Secret@127.0.0.1:5432/app"\n',
        "targets[0].dsn",
    ),
    "dsn key=value with a password": (
        '{repository}\n[[targets]]\nname = "pg"\ntype = "postgres"\n'
        "dsn = \"host=127.0.0.1 dbname=app user=app password='Hunter2Secret'\"\n",
        "targets[0].dsn",
    ),
    "duplicate target name": (
        '{repository}\n[[targets]]\nname = "app"\ntype = "sqlite"\npath = "/srv/a.db"\n'
        '[[targets]]\nname = "app"\ntype = "files"\npaths = ["/srv/media"]\n',
        "targets[1].name",
    ),
    "malformed TOML": ("{repository}\n[compression\nlevel = 3\n", "TOML"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, case: str) -> None:
    text, key = BAD_CONFIGS[case]
    config = tmp_path / "pyops.toml"
    repository = f'[repository]\npath = "{tmp_path / "repo"}"\n'
    config.write_text(text.format(repository=repository))

    proc = run_pyops(config, "config", "check")

    assert proc.returncode == 2, output(proc)
    assert key in proc.stderr, output(proc)
    assert proc.stdout == ""
    assert "Hunter2Secret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "malformed TOML":
        assert str(config) in proc.stderr and "line 4" in proc.stderr, output(proc)
    if case == "unknown top-level key":  # every command, not only `config check`
        backup = run_pyops(config, "backup")
        assert backup.returncode == 2, output(backup)
        assert key in backup.stderr
    assert not (tmp_path / "repo").exists()


def test_backup_of_an_unknown_target_exits_2(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=5)
    pyops.write(sqlite_target("app", db))

    proc = pyops.run("backup", "--target", "nope")

    assert proc.returncode == 2, output(proc)
    assert "nope" in proc.stderr and "app" in proc.stderr, output(proc)
    assert not (pyops.repo / "nope").exists()
    assert not (pyops.repo / "app").exists()


def test_init_writes_a_private_config_and_repository(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "pyops.toml"
    config.parent.mkdir()
    repo = tmp_path / "backups" / "pyops"

    proc = run_pyops(config, "init", "--path", str(repo))

    assert proc.returncode == 0, output(proc)
    assert config.stat().st_mode & 0o777 == 0o600
    assert repo.is_dir() and repo.stat().st_mode & 0o777 == 0o700
    check = run_pyops(config, "config", "check")
    assert check.returncode == 0, output(check)
    show = run_pyops(config, "config", "show", "--format", "json")
    assert show.returncode == 0, output(show)
    data = json.loads(show.stdout)
    assert data["repository"]["path"] == str(repo)
    assert data["compression"]["algorithm"] == "zstd"
    assert data["targets"] == []


# --- the repository lock -----------------------------------------------------------


@pytest.fixture
def held_lock(pyops: Pyops) -> Iterator[None]:
    """The repository lock, held by "another run" (this test process)."""
    pyops.repo.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(pyops.repo / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 1234: test")
        yield
    finally:
        os.close(fd)


def test_backup_gives_up_on_a_held_lock_naming_the_holder(pyops: Pyops, held_lock: None) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=5)
    pyops.write(sqlite_target("app", db), lock_wait_seconds=2)

    t0 = time.monotonic()
    proc = pyops.run("backup", timeout=30)
    elapsed = time.monotonic() - t0

    assert proc.returncode == 1, output(proc)
    assert "pid 1234: test" in proc.stderr, output(proc)
    assert 1.9 <= elapsed < 5, elapsed
    assert not (pyops.repo / "app").exists()


def test_concurrent_backups_serialise_and_every_backup_verifies(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=3000)
    pyops.write(compression("zstd") + sqlite_target("app", db), lock_wait_seconds=2)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: pyops.run("backup", "--format", "json"), range(2)))

    ok = [r for r in runs if r.returncode == 0]
    assert ok, "\n".join(output(r) for r in runs)
    for r in runs:
        assert r.returncode in (0, 1), output(r)
        if r.returncode == 1:  # a clean refusal, nothing half-done
            assert "another pyops run holds" in r.stderr, output(r)
    ids = [json.loads(r.stdout)["backups"][0]["id"] for r in ok]
    assert len(set(ids)) == len(ids)
    listed = pyops.listed()
    assert sorted(b["id"] for b in listed) == sorted(ids)
    tier = pyops.repo / "app" / "daily"
    assert not [p.name for p in tier.iterdir() if ".tmp-" in p.name]
    verify = pyops.run("verify", "--all", "--deep", "--format", "json")
    assert verify.returncode == 0, output(verify)
    results = json.loads(verify.stdout)["results"]
    assert sorted(r["id"] for r in results if r["ok"]) == sorted(ids)
