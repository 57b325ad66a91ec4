"""pyops.catalog: ids, manifests, what counts as a complete backup, and what is a leftover."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fixtures.cli import run_pyops, write_config

from pyops import catalog
from pyops.catalog import (
    MANIFEST_SUFFIX,
    TIERS,
    Backup,
    Manifest,
    backup_id,
    complete_backups,
    find,
    leftovers,
    make_private_dir,
    parse_id,
    write_atomic,
)
from pyops.errors import PyopsError

WHEN = datetime(2026, 11, 23, 2, 0, 0, tzinfo=UTC)


def manifest(
    target: str = "app-db",
    tier: str = "daily",
    when: datetime = WHEN,
    ext: str = "pgdump.zst.gpg",
    **extra: object,
) -> Manifest:
    bid = backup_id(target, tier, when)
    fields: dict[str, object] = {
        "id": bid,
        "target": target,
        "type": "postgres",
        "tier": tier,
        "host": "web-1",
        "started_at": when.isoformat(),
        "finished_at": (when + timedelta(seconds=42)).isoformat(),
        "duration_s": 42.0,
        "pyops_version": "0.1.0",
        "tools": {"pg_dump": "pg_dump (PostgreSQL) 16.4", "zstd": "v1.5.5"},
        "source": {"database": "app", "server_version": "16.4", "size": 123456},
        "format": "custom",
        "compression": {"algorithm": "zstd", "level": 3},
        "encryption": {"mode": "gpg-public", "recipients": ["ABCDEF0123456789"]},
        "artifact": {"name": f"{bid}.{ext}", "bytes": 2048, "sha256": "ab" * 32},
        "content": {"tables": {"public.items": 401}},
    }
    fields.update(extra)
    return Manifest(**fields)  # type: ignore[arg-type]


def store(repo: Path, m: Manifest, *, with_artifact: bool = True) -> Path:
    directory = catalog.tier_dir(repo, m.target, m.tier)
    directory.mkdir(parents=True, exist_ok=True)
    if with_artifact:
        (directory / m.artifact_name).write_bytes(b"x" * 16)
    path = directory / f"{m.id}{MANIFEST_SUFFIX}"
    path.write_bytes(m.to_json())
    return path


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("tier", TIERS)
def test_backup_id_round_trip(tier: str) -> None:
    bid = backup_id("app-db", tier, WHEN)
    assert bid == f"app-db.{tier}.20261123T020000Z"
    assert parse_id(bid) == ("app-db", tier, WHEN)


def test_backup_id_is_utc_whatever_the_input_zone() -> None:
    cet = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 23, 3, 0, 0, tzinfo=cet)
    assert backup_id("media", "weekly", local) == "media.weekly.20261123T020000Z"
    assert parse_id("media.weekly.20261123T020000Z")[2] == WHEN


def test_backup_id_drops_microseconds() -> None:
    assert catalog.stamp(WHEN.replace(microsecond=999_999)) == "20261123T020000Z"


@pytest.mark.parametrize("name", ["app_db", "A-1", "x"])
def test_target_names_allowed_by_config_round_trip(name: str) -> None:
    assert parse_id(backup_id(name, "monthly", WHEN))[0] == name


@pytest.mark.parametrize(
    "text",
    [
        "",
        "app-db",
        "app-db.daily",
        "app-db.hourly.20261123T020000Z",  # unknown tier
        "app-db.daily.2026-11-23T02:00:00Z",  # not the compact stamp
        "app-db.daily.20261123T020000",  # no Z
        "app-db.daily.20261123T0200Z",  # short time
        "app db.daily.20261123T020000Z",  # space in the target
        "app.db.daily.20261123T020000Z",  # dot in the target
        "app-db.daily.20261123T020000Z.pgdump.zst",  # a file name, not an id
        "app-db.daily.20261123T020000Z.manifest.json",
        "../app-db.daily.20261123T020000Z",
    ],
)
def test_bad_ids_are_rejected(text: str) -> None:
    with pytest.raises(PyopsError, match="not a backup id"):
        parse_id(text)


@pytest.mark.parametrize("text", ["app.daily.20261399T000000Z", "app.daily.20261123T250000Z"])
def test_impossible_stamps_are_rejected_as_bad_ids(text: str) -> None:
    with pytest.raises(PyopsError):
        parse_id(text)


# --------------------------------------------------------------------------- manifests


def test_manifest_json_round_trip() -> None:
    m = manifest()
    data = m.to_json()
    assert data.endswith(b"\n")
    raw = json.loads(data)
    assert list(raw) == sorted(raw)
    assert set(raw) == {
        "id",
        "target",
        "type",
        "tier",
        "host",
        "started_at",
        "finished_at",
        "duration_s",
        "pyops_version",
        "tools",
        "source",
        "format",
        "compression",
        "encryption",
        "artifact",
        "content",
    }
    again = Manifest.from_json(data, "test")
    assert again == m
    assert again.to_json() == data


def test_manifest_properties() -> None:
    m = manifest()
    assert m.started == WHEN
    assert m.artifact_name == "app-db.daily.20261123T020000Z.pgdump.zst.gpg"
    assert m.sha256 == "ab" * 32
    assert m.size == 2048
    assert m.encrypted is True
    assert manifest(encryption={"mode": "none"}).encrypted is False
    assert manifest(encryption={}).encrypted is False


def test_manifest_ignores_unknown_keys_and_defaults_content() -> None:
    raw = json.loads(manifest().to_json())
    raw["from_the_future"] = 1
    del raw["content"]
    m = Manifest.from_json(json.dumps(raw).encode(), "test")
    assert m.content == {}
    assert m.id == "app-db.daily.20261123T020000Z"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"null", b"[]", b'"text"', b'{"id": "x"}', b"\xff\xfe"],
)
def test_unreadable_manifest_is_an_error_naming_it(data: bytes) -> None:
    with pytest.raises(PyopsError, match=re.escape("unreadable manifest /r/x.manifest.json")):
        Manifest.from_json(data, "/r/x.manifest.json")


# --------------------------------------------------------------------------- listing


def test_complete_backups_newest_first_with_filters(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    stored = [
        manifest("app-db", "daily", WHEN),
        manifest("app-db", "daily", WHEN + timedelta(days=1)),
        manifest("app-db", "weekly", WHEN - timedelta(days=3)),
        manifest("media", "daily", WHEN + timedelta(hours=1), ext="tar.zst"),
        manifest("app-db", "pre-restore", WHEN + timedelta(days=2)),
    ]
    for m in stored:
        store(repo, m)

    ids = [b.id for b in complete_backups(repo)]
    assert ids == [
        "app-db.pre-restore.20261125T020000Z",
        "app-db.daily.20261124T020000Z",
        "media.daily.20261123T030000Z",
        "app-db.daily.20261123T020000Z",
        "app-db.weekly.20261120T020000Z",
    ]
    assert [b.id for b in complete_backups(repo, target="media")] == [
        "media.daily.20261123T030000Z"
    ]
    assert [b.id for b in complete_backups(repo, target="app-db", tier="daily")] == [
        "app-db.daily.20261124T020000Z",
        "app-db.daily.20261123T020000Z",
    ]
    assert [b.id for b in complete_backups(repo, tier="weekly")] == [
        "app-db.weekly.20261120T020000Z"
    ]
    assert complete_backups(repo, target="nope") == []


def test_same_start_time_orders_by_id(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    store(repo, manifest("a", "daily", WHEN))
    store(repo, manifest("b", "daily", WHEN))
    assert [b.id for b in complete_backups(repo)] == [
        "b.daily.20261123T020000Z",
        "a.daily.20261123T020000Z",
    ]


def test_backup_paths(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = store(repo, manifest())
    (b,) = complete_backups(repo)
    assert isinstance(b, Backup)
    assert b.manifest_path == path
    assert b.artifact_path == repo / "app-db" / "daily" / b.manifest.artifact_name
    assert find(repo, b.id) == b


def test_listing_skips_what_is_not_ours(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    store(repo, manifest())
    # the state dir, foreign tiers, foreign manifests, plain files
    (repo / ".pyops" / "daily").mkdir(parents=True)
    (repo / ".pyops" / "daily" / f"x.daily.20261123T020000Z{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "hourly").mkdir()
    (repo / "app-db" / "hourly" / f"app-db.hourly.1{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "daily" / f"notes{MANIFEST_SUFFIX}").write_text("{")
    (repo / "README").write_text("hello")
    assert [b.id for b in complete_backups(repo)] == ["app-db.daily.20261123T020000Z"]


def test_listing_a_missing_repository_is_empty(tmp_path: Path) -> None:
    assert complete_backups(tmp_path / "nowhere") == []


def test_a_manifest_without_its_artifact_is_still_listed(tmp_path: Path) -> None:
    # completeness is the manifest; a missing artifact is verify's business
    repo = tmp_path / "repo"
    store(repo, manifest(), with_artifact=False)
    assert len(complete_backups(repo)) == 1


def test_unreadable_manifest_fails_the_listing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    store(repo, manifest())
    path = store(repo, manifest(when=WHEN + timedelta(days=1)))
    path.write_text("{ torn")
    with pytest.raises(PyopsError, match="unreadable manifest"):
        complete_backups(repo)


def test_manifest_naming_another_backup_fails_the_listing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    path = store(repo, manifest())
    other = manifest(when=WHEN + timedelta(days=1))
    path.write_bytes(other.to_json())
    with pytest.raises(PyopsError, match="names another backup"):
        complete_backups(repo)


def test_find_missing_backup(tmp_path: Path) -> None:
    with pytest.raises(
        PyopsError, match=re.escape("no complete backup app-db.daily.20261123T020000Z")
    ):
        find(tmp_path, "app-db.daily.20261123T020000Z")
    with pytest.raises(PyopsError, match="not a backup id"):
        find(tmp_path, "app-db")


# --------------------------------------------------------------------------- leftovers


def test_leftovers_picks_temp_files_and_manifestless_artifacts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = manifest()
    store(repo, done)
    daily = repo / "app-db" / "daily"
    dead = backup_id("app-db", "daily", WHEN + timedelta(days=1))
    expected = {
        daily / f"{dead}.pgdump.zst.gpg.tmp-4242",  # artifact still being written
        daily / f"{dead}.pgdump.zst.gpg",  # renamed, but the manifest never came
        daily / f"{done.id}{MANIFEST_SUFFIX}.tmp-4242",  # a temp manifest of a done backup
    }
    pre = repo / "app-db" / "pre-restore"
    pre.mkdir()
    expected.add(pre / f"{backup_id('app-db', 'pre-restore', WHEN)}.pgdump.zst.gpg")
    foreign = [
        daily / "README.txt",
        daily / "notes",
        daily / "app-db.daily.backup-copy",
        daily / ".hidden",
    ]
    for path in [*expected, *foreign]:
        path.write_bytes(b"x")
    (repo / "app-db" / "hourly").mkdir()
    (repo / "app-db" / "hourly" / f"{dead}.pgdump").write_bytes(b"x")  # not a tier we own

    assert set(leftovers(repo, "app-db")) == expected
    # the complete backup and foreign files are never leftovers
    assert (daily / done.artifact_name) not in leftovers(repo, "app-db")


def test_leftovers_only_look_at_the_target(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    media = repo / "media" / "daily"
    media.mkdir(parents=True)
    (media / f"{backup_id('media', 'daily', WHEN)}.tar.zst").write_bytes(b"x")
    assert leftovers(repo, "app-db") == []
    assert len(leftovers(repo, "media")) == 1


def test_leftovers_of_an_empty_repository(tmp_path: Path) -> None:
    assert leftovers(tmp_path / "repo", "app-db") == []


def test_next_backup_removes_a_dead_runs_scratch(tmp_path: Path) -> None:
    live = tmp_path / "app.sqlite3"
    import sqlite3

    conn = sqlite3.connect(live)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    repo = tmp_path / "repo"
    body = f'[[targets]]\nname = "app-sqlite"\ntype = "sqlite"\npath = "{live}"\n'
    config = write_config(tmp_path / "pyops.toml", repo, body)
    # what `kill -9` during `pyops backup` leaves (reproduced for real, see the report)
    dead = backup_id("app-sqlite", "daily", WHEN - timedelta(days=1))
    stale = make_private_dir(repo / ".pyops" / "scratch" / dead) / "snapshot.sqlite3"
    stale.write_bytes(live.read_bytes())
    (repo / "app-sqlite" / "daily").mkdir(parents=True)
    temp = repo / "app-sqlite" / "daily" / f"{dead}.sqlite3.zst.tmp-99999"
    temp.write_bytes(b"")

    result = run_pyops(config, "backup", "--no-prune")
    assert result.returncode == 0, result.stderr
    assert not temp.exists()  # this part works
    assert not stale.exists(), "plaintext snapshot of a dead run still in the repository"


# --------------------------------------------------------------------------- files


def test_write_atomic_leaves_a_0600_file_and_no_temp(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / f"x{MANIFEST_SUFFIX}"
    write_atomic(path, b'{"a": 1}\n')
    assert path.read_bytes() == b'{"a": 1}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [path.name]


def test_write_atomic_replaces_the_old_file(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"old and longer than the new content")
    os.chmod(path, 0o644)
    old_inode = path.stat().st_ino
    write_atomic(path, b"new")
    assert path.stat().st_ino != old_inode  # renamed over, never rewritten in place
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["m.json"]


def test_make_private_dir_is_0700_at_every_level(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        deep = make_private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert deep == tmp_path / "a" / "b" / "c"
    for path in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert make_private_dir(deep) == deep  # idempotent
