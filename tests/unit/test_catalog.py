"""pyops.catalog: what counts as a complete backup, which manifests are used and which
refused (shape, place, repository, MAC), latest, write, delete, copy between stores,
and what is a leftover. Mostly on MemoryStore; on LocalStore where the file system
matters (temp files of live and dead processes, symlinks, deletion order)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import run_pyops, write_config
from unit_support import (  # noqa: F401 - live_pid_fixture: the live_pid fixture
    WHEN,
    dead_pid,
    live_pid_fixture,
    raw_manifest,
)

from pyops import manifest as mf
from pyops.catalog import (
    MANIFEST_SUFFIX,
    Backup,
    Catalog,
    Listing,
    Manifest,
    Refusal,
    copy,
    manifest_key,
)
from pyops.errors import PyopsError
from pyops.fsutil import make_private_dir
from pyops.manifest import backup_id, seal
from pyops.storage import StoreError, check_key
from pyops.storage.local import LocalStore
from pyops.storage.memory import MemoryStore

A = "app-db.daily.20261123T020000Z"
B = "app-db.daily.20261124T020000Z"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
REPO = "0123456789abcdef0123456789abcdef"
OTHER_REPO = "fedcba9876543210fedcba9876543210"
MAC_MISMATCH = "its MAC does not match the repository key: forged or altered"
NO_MAC = "unauthenticated (no MAC)"


def payload(bid: str, size: int = 4096) -> bytes:
    """The artifact bytes of a backup: distinct per backup."""
    seed = hashlib.sha256(bid.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def manifest(
    target: str = "app-db",
    tier: str = "daily",
    when: datetime = WHEN,
    ext: str = "pgdump.zst.gpg",
    size: int = 4096,
    **extra: Any,
) -> Manifest:
    bid = backup_id(target, tier, when)
    data = payload(bid, size)
    artifact = {
        "name": f"{bid}.{ext}",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return Manifest(**raw_manifest(target, tier, when, ext, **{"artifact": artifact, **extra}))


def catalog(
    store: Any = None,
    *,
    key: bytes | None = KEY,
    repository_id: str | None = REPO,
    allow_unauthenticated: bool = False,
) -> Catalog:
    return Catalog(
        MemoryStore() if store is None else store,
        repository_id=repository_id,
        key=key,
        allow_unauthenticated=allow_unauthenticated,
    )


def artifact_key(m: Manifest) -> str:
    return f"{m.target}/{m.tier}/{m.artifact_name}"


def add(cat: Catalog, m: Manifest, *, with_artifact: bool = True) -> Backup:
    """A backup as the backup action makes it: artifact first, then the sealed manifest."""
    if with_artifact:
        cat.store.put_bytes(artifact_key(m), payload(m.id, m.size))
    return cat.write_manifest(m)


def plant(cat: Catalog, key: str, data: bytes | Manifest) -> str:
    """Bytes written straight into the store, as whoever can write it could."""
    cat.store.put_bytes(key, data.to_json() if isinstance(data, Manifest) else data)
    return key


def sealed(m: Manifest, key: bytes = KEY, repository_id: str = REPO) -> Manifest:
    m.repository_id = repository_id
    return seal(key, m)


def ids(listing: Listing | list[Backup]) -> list[str]:
    backups = listing.backups if isinstance(listing, Listing) else listing
    return [b.id for b in backups]


def refused(listing: Listing) -> dict[str, str]:
    return {r.key: r.reason for r in listing.refused}


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# --------------------------------------------------------------------------- listing


def test_scan_is_newest_first_with_filters() -> None:
    cat = catalog()
    for m in [
        manifest("app-db", "daily", WHEN),
        manifest("app-db", "daily", WHEN + timedelta(days=1)),
        manifest("app-db", "weekly", WHEN - timedelta(days=3)),
        manifest("media", "daily", WHEN + timedelta(hours=1), ext="tar.zst"),
        manifest("app-db", "pre-restore", WHEN + timedelta(days=2)),
    ]:
        add(cat, m)

    listing = cat.scan()
    assert ids(listing) == [
        "app-db.pre-restore.20261125T020000Z",
        "app-db.daily.20261124T020000Z",
        "media.daily.20261123T030000Z",
        "app-db.daily.20261123T020000Z",
        "app-db.weekly.20261120T020000Z",
    ]
    assert listing.refused == [] and listing.foreign == []
    assert all(b.authenticated for b in listing.backups)
    assert ids(cat.scan("media")) == ["media.daily.20261123T030000Z"]
    assert ids(cat.scan("app-db", "daily")) == [B, A]
    assert ids(cat.scan(tier="weekly")) == ["app-db.weekly.20261120T020000Z"]
    assert ids(cat.scan(tier="pre-restore")) == ["app-db.pre-restore.20261125T020000Z"]
    assert ids(cat.backups("app-db", "daily")) == [B, A]
    assert cat.scan("nope").backups == []
    assert cat.scan("app-db", "monthly").backups == []


def test_target_filter_is_the_whole_name() -> None:
    cat = catalog()
    add(cat, manifest("app", "daily"))
    add(cat, manifest("app-db", "daily"))
    add(cat, manifest("app_db2", "daily"))
    assert ids(cat.scan("app")) == ["app.daily.20261123T020000Z"]
    assert ids(cat.scan("app-db")) == [A]


def test_same_start_time_orders_by_id() -> None:
    cat = catalog()
    add(cat, manifest("a", "daily", WHEN))
    add(cat, manifest("b", "daily", WHEN))
    assert ids(cat.scan()) == ["b.daily.20261123T020000Z", "a.daily.20261123T020000Z"]


def test_backup_keys_and_find() -> None:
    cat = catalog()
    b = add(cat, manifest())
    assert isinstance(b, Backup)
    assert b.id == A
    assert b.manifest_key == f"app-db/daily/{A}{MANIFEST_SUFFIX}" == manifest_key(A)
    assert b.artifact_key == f"app-db/daily/{A}.pgdump.zst.gpg"
    (listed,) = cat.scan().backups
    assert listed == cat.find(A)
    assert listed.manifest == b.manifest
    assert listed.authenticated


def test_artifact_path_is_local_only(tmp_path: Path) -> None:
    local = catalog(LocalStore(tmp_path / "repo"))
    b = add(local, manifest())
    assert (
        local.artifact_path(b) == tmp_path / "repo" / "app-db" / "daily" / b.manifest.artifact_name
    )
    assert local.artifact_path(b).read_bytes() == payload(A)
    mem = catalog()
    with pytest.raises(PyopsError, match="memory:memory is not a local repository"):
        mem.artifact_path(add(mem, manifest()))


@pytest.mark.parametrize("store", ["memory", "local"])
def test_chunks_head_and_manifest_bytes(tmp_path: Path, store: str) -> None:
    cat = catalog(MemoryStore() if store == "memory" else LocalStore(tmp_path))
    b = add(cat, manifest(size=3 * (1 << 20) + 17))
    assert b"".join(cat.chunks(b)) == payload(A, b.manifest.size)
    assert cat.head(b, 10) == payload(A, 10)
    assert cat.read_manifest_bytes(b) == b.manifest.to_json()


def test_listing_skips_what_is_not_ours(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    add(cat, manifest())
    # the state dir and hidden entries are never listed
    (repo / ".pyops" / "daily").mkdir(parents=True)
    (repo / ".pyops" / "daily" / f"x.daily.20261123T020000Z{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / ".daily").mkdir()
    (repo / "app-db" / ".daily" / f"{A}{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "daily" / f".{A}{MANIFEST_SUFFIX}").write_text("{")
    # files that are no manifest, or not at <target>/<tier>/<file>
    (repo / "README").write_text("hello")
    (repo / f"{A}{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / f"{A}{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "daily" / "sub").mkdir()
    (repo / "app-db" / "daily" / "sub" / f"{A}{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "daily" / "notes.txt").write_text("{")
    (repo / "app-db" / "daily" / f"{A}{MANIFEST_SUFFIX}.tmp-1").write_text("{")
    # a link in place of a manifest is not followed
    (repo / "app-db" / "daily" / f"{B}{MANIFEST_SUFFIX}").symlink_to(
        repo / "app-db" / "daily" / f"{A}{MANIFEST_SUFFIX}"
    )
    listing = cat.scan()
    assert ids(listing) == [A]
    assert listing.refused == []


def test_files_named_like_manifests_where_pyops_keeps_backups_are_refused(
    tmp_path: Path,
) -> None:
    # not silently skipped: something that looks like a manifest in pyops' place is
    # reported, so the operator sees it
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    add(cat, manifest())
    (repo / "app-db" / "hourly").mkdir()
    (repo / "app-db" / "hourly" / f"app-db.hourly.1{MANIFEST_SUFFIX}").write_text("{")
    (repo / "app-db" / "daily" / f"notes{MANIFEST_SUFFIX}").write_text("{")
    listing = cat.scan()
    assert ids(listing) == [A]
    assert set(refused(listing)) == {
        f"app-db/hourly/app-db.hourly.1{MANIFEST_SUFFIX}",
        f"app-db/daily/notes{MANIFEST_SUFFIX}",
    }


def test_listing_a_missing_or_empty_repository_is_empty(tmp_path: Path) -> None:
    assert catalog(LocalStore(tmp_path / "nowhere")).scan() == Listing()
    assert catalog().scan() == Listing()
    assert catalog().scan("app-db", "daily") == Listing()


def test_a_manifest_without_its_artifact_is_still_listed() -> None:
    # completeness is the manifest; a missing artifact is verify's business
    cat = catalog()
    add(cat, manifest(), with_artifact=False)
    assert ids(cat.scan()) == [A]


def test_an_artifact_without_its_manifest_is_not_a_backup() -> None:
    cat = catalog()
    m = manifest()
    cat.store.put_bytes(artifact_key(m), payload(A))
    assert cat.scan() == Listing()
    with pytest.raises(PyopsError, match=f"no complete backup {A} in memory:memory"):
        cat.find(A)


def test_find_missing_backup() -> None:
    cat = catalog()
    add(cat, manifest(when=WHEN + timedelta(days=1)))
    with pytest.raises(PyopsError, match=f"no complete backup {A} in memory:memory"):
        cat.find(A)
    with pytest.raises(PyopsError, match="not a backup id"):
        cat.find("app-db")
    with pytest.raises(PyopsError, match="not a backup id"):
        cat.find(f"../{A}")


# --------------------------------------------------------------------------- refused


def _bad_name(name: str) -> Manifest:
    m = manifest()
    m.artifact = {**m.artifact, "name": name}
    return sealed(m)


def _relabelled(field: str, value: Any) -> Manifest:
    m = sealed(manifest())
    setattr(m, field, value)
    return m


def _moved_to_b() -> Manifest:
    """A's sealed manifest relabelled as backup B: id, artifact name and time moved."""
    m = sealed(manifest())
    m.id = B
    m.artifact = {**m.artifact, "name": f"{B}.pgdump.zst.gpg"}
    m.started_at = (WHEN + timedelta(days=1)).isoformat()
    return m


def _json_without(field: str) -> bytes:
    raw = json.loads(sealed(manifest()).to_json())
    del raw[field]
    return json.dumps(raw).encode()


def _json_with(**changes: Any) -> bytes:
    raw = json.loads(sealed(manifest()).to_json())
    raw.update(changes)
    return json.dumps(raw).encode()


MANIFEST_A = f"app-db/daily/{A}{MANIFEST_SUFFIX}"
MANIFEST_B = f"app-db/daily/{B}{MANIFEST_SUFFIX}"

# (case, key, content, reason): content planted at key; key is where find(A or B) looks
REFUSED_EVERYWHERE: list[tuple[str, str, Any, str]] = [
    (
        "file name differs from its id",
        MANIFEST_B,
        lambda: sealed(manifest()),
        f"it names another backup ({A})",
    ),
    ("absolute artifact", MANIFEST_A, lambda: _bad_name(f"/etc/{A}.pgdump"), "artifact.name"),
    ("artifact with /", MANIFEST_A, lambda: _bad_name(f"sub/{A}.pgdump"), "artifact.name"),
    ("artifact with ..", MANIFEST_A, lambda: _bad_name(f"../{A}.pgdump"), "artifact.name"),
    ("artifact ..", MANIFEST_A, lambda: _bad_name(".."), "artifact.name"),
    ("artifact of another id", MANIFEST_A, lambda: _bad_name(f"{B}.pgdump"), "artifact.name"),
    ("artifact of unknown kind", MANIFEST_A, lambda: _bad_name(f"{A}.exe"), "artifact.name"),
    ("torn JSON", MANIFEST_A, lambda: b"{ torn", "not JSON"),
    ("empty file", MANIFEST_A, lambda: b"", "not JSON"),
    ("not UTF-8", MANIFEST_A, lambda: b"\xff\xfe\xfd", "not JSON"),
    ("JSON list", MANIFEST_A, lambda: b"[]", "not a JSON object"),
    ("wrong type", MANIFEST_A, lambda: _json_with(duration_s="42"), "duration_s has the wrong"),
    ("wrong type dict", MANIFEST_A, lambda: _json_with(tools=["x"]), "tools has the wrong type"),
    ("null id", MANIFEST_A, lambda: _json_with(id=None), "id has the wrong type"),
    ("missing field", MANIFEST_A, lambda: _json_without("artifact"), "artifact missing"),
    ("id not an id", MANIFEST_A, lambda: _json_with(id="app-db"), "is not a backup id"),
    ("unknown type", MANIFEST_A, lambda: _json_with(type="mysql"), "unknown type"),
    ("naive time", MANIFEST_A, lambda: _json_with(started_at="2026-11-23T02:00:00"), "time zone"),
    ("bad repository id", MANIFEST_A, lambda: _json_with(repository_id="x"), "malformed"),
]
WRONG_PLACE: list[tuple[str, str, Any, str]] = [
    (
        "wrong target directory",
        f"media/daily/{A}{MANIFEST_SUFFIX}",
        lambda: sealed(manifest()),
        "it says app-db/daily but lies in media/daily",
    ),
    (
        "wrong tier directory",
        f"app-db/weekly/{A}{MANIFEST_SUFFIX}",
        lambda: sealed(manifest()),
        "it says app-db/daily but lies in app-db/weekly",
    ),
    (
        "another target's manifest",
        f"app-db/daily/media.daily.20261123T020000Z{MANIFEST_SUFFIX}",
        lambda: sealed(manifest("media")),
        "lies in app-db/daily",
    ),
]


@pytest.mark.parametrize("key", [KEY, None], ids=["key", "no-key"])
@pytest.mark.parametrize(
    ("case", "where", "content", "why"),
    REFUSED_EVERYWHERE + WRONG_PLACE,
    ids=[c[0] for c in REFUSED_EVERYWHERE + WRONG_PLACE],
)
def test_a_bad_manifest_is_refused_with_a_reason(
    case: str, where: str, content: Any, why: str, key: bytes | None
) -> None:
    cat = catalog(key=key)
    good = add(cat, manifest("app-db", "monthly"))
    plant(cat, where, content())
    listing = cat.scan()
    assert ids(listing) == [good.id]
    assert list(refused(listing)) == [where]
    assert why in refused(listing)[where]
    assert listing.foreign == []
    assert all(where not in (b.manifest_key, b.artifact_key) for b in cat.backups())


@pytest.mark.parametrize(
    ("case", "where", "content", "why"),
    REFUSED_EVERYWHERE,
    ids=[c[0] for c in REFUSED_EVERYWHERE],
)
def test_find_of_a_bad_manifest_names_its_key(
    case: str, where: str, content: Any, why: str
) -> None:
    cat = catalog()
    plant(cat, where, content())
    wanted = A if where == MANIFEST_A else B
    with pytest.raises(PyopsError, match=r"memory:memory: app-db/daily/.*: not used") as info:
        cat.find(wanted)
    assert where in str(info.value)
    assert why in str(info.value)
    with pytest.raises(PyopsError, match="not used"):
        cat.find(wanted, foreign_ok=True)  # refused is not foreign


def test_a_torn_manifest_does_not_hide_the_others() -> None:
    cat = catalog()
    add(cat, manifest())
    b = add(cat, manifest(when=WHEN + timedelta(days=1)))
    plant(cat, b.manifest_key, b"{ torn")
    listing = cat.scan()
    assert ids(listing) == [A]
    assert list(refused(listing)) == [MANIFEST_B]
    assert cat.latest("app-db").id == A


def test_refusal_as_dict() -> None:
    assert Refusal("k", "why").as_dict() == {"key": "k", "reason": "why"}


# --------------------------------------------------------------------------- authenticity


def test_authentic_manifests_are_authenticated() -> None:
    cat = catalog()
    add(cat, manifest())
    (b,) = cat.backups()
    assert b.authenticated
    assert cat.find(A).authenticated


@pytest.mark.parametrize(
    ("case", "where", "forged"),
    [
        ("id", MANIFEST_B, lambda: _moved_to_b()),  # relabelled as another backup
        ("started_at", MANIFEST_A, lambda: _relabelled("started_at", "2027-01-01T00:00:00+00:00")),
        (
            "sha256",
            MANIFEST_A,
            lambda: _relabelled("artifact", {**manifest().artifact, "sha256": "cd" * 32}),
        ),
        ("bytes", MANIFEST_A, lambda: _relabelled("artifact", {**manifest().artifact, "bytes": 1})),
        ("encryption", MANIFEST_A, lambda: _relabelled("encryption", {"mode": "none"})),
        ("source", MANIFEST_A, lambda: _relabelled("source", {"paths": ["/etc"]})),
        ("repository_id", MANIFEST_A, lambda: _relabelled("repository_id", "")),
        ("other key", MANIFEST_A, lambda: sealed(manifest(), key=OTHER_KEY)),
        ("garbage mac", MANIFEST_A, lambda: _relabelled("mac", "hmac-sha256:" + "0" * 64)),
        ("mac prefix only", MANIFEST_A, lambda: _relabelled("mac", "hmac-sha256:")),
    ],
)
def test_a_manifest_edited_after_sealing_is_refused(case: str, where: str, forged: Any) -> None:
    for allow in (False, True):  # --allow-unauthenticated never lets a bad MAC through
        cat = catalog(allow_unauthenticated=allow)
        plant(cat, where, forged())
        listing = cat.scan()
        assert listing.backups == []
        assert refused(listing) == {where: MAC_MISMATCH}
        stem = where.split("/")[2][: -len(MANIFEST_SUFFIX)]
        with pytest.raises(PyopsError, match=f"{where}: its MAC does not match") as info:
            cat.find(stem)
        assert "not used" in str(info.value)


def test_relabelling_the_bytes_on_disk_is_refused(tmp_path: Path) -> None:
    cat = catalog(LocalStore(tmp_path))
    b = add(cat, manifest())
    path = tmp_path / b.manifest_key
    raw = json.loads(path.read_bytes())
    raw["artifact"]["sha256"] = "cd" * 32
    path.write_text(json.dumps(raw, indent=2))
    assert refused(cat.scan()) == {b.manifest_key: MAC_MISMATCH}


def test_a_manifest_without_mac_is_refused_when_there_is_a_key() -> None:
    cat = catalog()
    plant(cat, MANIFEST_A, sealed(manifest(), key=b""))  # no key: no MAC
    listing = cat.scan()
    assert listing.backups == []
    assert list(refused(listing)) == [MANIFEST_A]
    assert refused(listing)[MANIFEST_A].startswith(NO_MAC)
    assert "--allow-unauthenticated" in refused(listing)[MANIFEST_A]
    with pytest.raises(PyopsError, match=r"unauthenticated \(no MAC\)"):
        cat.find(A)


def test_allow_unauthenticated_uses_a_manifest_without_mac() -> None:
    cat = catalog(allow_unauthenticated=True)
    plant(cat, MANIFEST_A, sealed(manifest(), key=b""))
    add(cat, manifest(when=WHEN + timedelta(days=1)))
    listing = cat.scan()
    assert [(b.id, b.authenticated) for b in listing.backups] == [(B, True), (A, False)]
    assert listing.refused == []
    assert cat.find(A).authenticated is False


def test_without_a_key_every_valid_manifest_is_usable_and_unauthenticated() -> None:
    cat = catalog(key=None)
    plant(cat, MANIFEST_A, sealed(manifest(), key=KEY))
    plant(cat, MANIFEST_B, sealed(manifest(when=WHEN + timedelta(days=1)), key=b""))
    forged = sealed(manifest(when=WHEN + timedelta(days=2)), key=OTHER_KEY)
    plant(cat, manifest_key(forged.id), forged)
    listing = cat.scan()
    assert ids(listing) == [forged.id, B, A]
    assert {b.authenticated for b in listing.backups} == {False}
    assert listing.refused == []
    assert cat.find(A).authenticated is False


# --------------------------------------------------------------------------- repositories


def test_another_repositorys_manifest_is_foreign() -> None:
    cat = catalog()
    add(cat, manifest())
    theirs = sealed(manifest(when=WHEN + timedelta(days=1)), repository_id=OTHER_REPO)
    plant(cat, MANIFEST_B, theirs)
    listing = cat.scan()
    assert ids(listing) == [A]
    assert listing.refused == []
    assert listing.foreign == [Refusal(MANIFEST_B, f"belongs to repository {OTHER_REPO}")]
    assert cat.latest("app-db").id == A
    with pytest.raises(PyopsError, match=f"{MANIFEST_B}: belongs to repository {OTHER_REPO}"):
        cat.find(B)


def test_a_foreign_backup_named_by_its_id_is_read_with_foreign_ok() -> None:
    cat = catalog()
    plant(
        cat, MANIFEST_B, sealed(manifest(when=WHEN + timedelta(days=1)), repository_id=OTHER_REPO)
    )
    b = cat.find(B, foreign_ok=True)
    assert b.id == B
    assert b.authenticated
    assert b.manifest.repository_id == OTHER_REPO
    assert cat.repository_id == REPO  # the catalog is still this repository's
    assert cat.scan().foreign != []


def test_foreign_ok_still_checks_the_mac() -> None:
    cat = catalog()
    theirs = sealed(manifest(), repository_id=OTHER_REPO)
    theirs.started_at = "2027-01-01T00:00:00+00:00"
    plant(cat, MANIFEST_A, theirs)
    # altered: with a key, only an authentic manifest may say whose it is
    listing = cat.scan()
    assert listing.foreign == []
    assert [r.key for r in listing.refused] == [MANIFEST_A]
    with pytest.raises(PyopsError, match="MAC does not match"):
        cat.find(A, foreign_ok=True)
    assert cat.repository_id == REPO


def test_a_catalog_without_repository_id_has_nothing_foreign() -> None:
    cat = catalog(repository_id=None)
    plant(cat, MANIFEST_A, sealed(manifest(), repository_id=OTHER_REPO))
    listing = cat.scan()
    assert ids(listing) == [A]
    assert listing.foreign == []


def _legacy(m: Manifest) -> bytes:
    """A manifest as pyops wrote it before repository ids, keys and warnings."""
    raw = json.loads(m.to_json())
    for field in ("repository_id", "warnings", "mac"):
        del raw[field]
    return json.dumps(raw, indent=2, sort_keys=True).encode()


def test_legacy_manifests_are_read() -> None:
    keyless = catalog(key=None)
    plant(keyless, MANIFEST_A, _legacy(manifest()))
    (b,) = keyless.backups()
    assert b.id == A
    assert b.manifest.repository_id == ""
    assert not b.authenticated
    # with a key they are unauthenticated: refused, unless the operator allows them
    assert refused(catalog(keyless.store).scan())[MANIFEST_A].startswith(NO_MAC)
    allowed = catalog(keyless.store, allow_unauthenticated=True)
    assert ids(allowed.scan()) == [A]
    assert allowed.scan().foreign == []


def test_a_signed_manifest_without_repository_id_is_this_repositorys() -> None:
    # what `pyops init --new-key` makes of a verified old backup
    cat = catalog()
    plant(cat, MANIFEST_A, seal(KEY, manifest()))
    listing = cat.scan()
    assert [(b.id, b.authenticated) for b in listing.backups] == [(A, True)]
    assert listing.foreign == []


# --------------------------------------------------------------------------- writing


def test_write_manifest_seals_and_fills_the_repository_id() -> None:
    cat = catalog()
    m = manifest()
    assert m.repository_id == "" and m.mac == ""
    b = cat.write_manifest(m)
    assert b.authenticated
    assert b.manifest.repository_id == REPO
    assert mf.authentic(KEY, b.manifest)
    stored = cat.store.objects[b.manifest_key]  # type: ignore[attr-defined]
    assert stored == b.manifest.to_json()
    again = Manifest.parse(stored, "t")
    assert again == b.manifest
    assert cat.find(A) == Backup(again, True)


def test_write_manifest_without_a_key_is_unauthenticated() -> None:
    cat = catalog(key=None, repository_id=None)
    b = cat.write_manifest(manifest(mac="hmac-sha256:stale"))
    assert not b.authenticated
    assert b.manifest.mac == ""
    assert b.manifest.repository_id == ""
    assert cat.find(A) == b


def test_write_manifest_is_atomic_and_private_on_disk(tmp_path: Path) -> None:
    cat = catalog(LocalStore(tmp_path / "repo"))
    b = add(cat, manifest())
    path = tmp_path / "repo" / b.manifest_key
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "repo" / "app-db").stat().st_mode & 0o777 == 0o700
    assert files(tmp_path / "repo") == sorted([b.artifact_key, b.manifest_key])


def test_delete_removes_manifest_and_artifact() -> None:
    cat = catalog()
    b = add(cat, manifest())
    keep = add(cat, manifest(when=WHEN + timedelta(days=1)))
    cat.delete(b)
    assert sorted(cat.store.objects) == sorted([keep.manifest_key, keep.artifact_key])  # type: ignore[attr-defined]
    assert ids(cat.scan()) == [B]
    cat.delete(b)  # already gone: not an error


class ArtifactDeleteFails(MemoryStore):
    """A real MemoryStore whose deletes of anything but a manifest fail, as a bucket
    can refuse a delete (object lock, network): shows what was deleted before."""

    def delete(self, key: str) -> None:
        if not key.endswith(MANIFEST_SUFFIX):
            raise StoreError(f"{key}: refused")
        super().delete(key)


def test_delete_goes_manifest_first() -> None:
    # The artifact cannot be removed: the manifest is already gone, so what is left
    # is a leftover, never a backup without its artifact.
    cat = catalog(ArtifactDeleteFails())
    b = add(cat, manifest())
    with pytest.raises(StoreError, match="refused"):
        cat.delete(b)
    assert cat.store.stat(b.manifest_key) is None
    assert cat.store.stat(b.artifact_key) is not None
    assert cat.scan() == Listing()
    assert cat.leftovers("app-db") == [b.artifact_key]


def test_delete_on_disk(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    b = add(cat, manifest())
    cat.delete(b)
    assert files(repo) == []
    assert cat.leftovers("app-db") == []


# --------------------------------------------------------------------------- latest


def test_latest_skips_pre_restore() -> None:
    cat = catalog()
    add(cat, manifest("app-db", "daily", WHEN))
    add(cat, manifest("app-db", "pre-restore", WHEN + timedelta(days=1)))
    add(cat, manifest("media", "weekly", WHEN - timedelta(days=1), ext="tar"))
    listing = cat.scan()
    assert listing.backups[0].manifest.tier == "pre-restore"
    assert listing.latest().id == A  # type: ignore[union-attr]
    assert listing.latest("app-db").id == A  # type: ignore[union-attr]
    assert listing.latest("media").id == "media.weekly.20261122T020000Z"  # type: ignore[union-attr]
    assert listing.latest("nope") is None
    assert cat.latest("app-db").id == A


def test_latest_when_only_pre_restore_exists() -> None:
    cat = catalog()
    add(cat, manifest("app-db", "pre-restore"))
    assert cat.scan().latest("app-db") is None
    assert Listing().latest() is None
    with pytest.raises(PyopsError, match="no complete backup of app-db in memory:memory"):
        cat.latest("app-db")


def test_latest_ignores_refused_and_foreign_manifests() -> None:
    cat = catalog()
    add(cat, manifest())
    plant(cat, MANIFEST_B, _relabelled("started_at", (WHEN + timedelta(days=1)).isoformat()))
    later = sealed(manifest(when=WHEN + timedelta(days=2)), repository_id=OTHER_REPO)
    plant(cat, manifest_key(later.id), later)
    assert cat.latest("app-db").id == A


# --------------------------------------------------------------------------- copy


def mem_pair() -> tuple[Catalog, Catalog]:
    return catalog(MemoryStore("src")), catalog(MemoryStore("dst"))


def stores(kind: str, tmp_path: Path) -> tuple[Catalog, Catalog]:
    """(src, dst) of the kind `memory-memory`, `local-memory` or `memory-local`."""
    a, b = kind.split("-")
    src = catalog(LocalStore(tmp_path / "src") if a == "local" else MemoryStore("src"))
    dst = catalog(LocalStore(tmp_path / "dst") if b == "local" else MemoryStore("dst"))
    return src, dst


def dst_keys(cat: Catalog) -> list[str]:
    return sorted(i.key for i in cat.store.list())


KINDS = ["memory-memory", "local-memory", "memory-local"]


@pytest.mark.parametrize("kind", KINDS)
def test_copy_streams_the_artifact_then_the_manifest_byte_for_byte(
    tmp_path: Path, kind: str
) -> None:
    src, dst = stores(kind, tmp_path)
    b = add(src, manifest(size=3 * (1 << 20) + 5))
    seen: list[int] = []

    def progress(n: int) -> None:
        # the artifact is being sent: the manifest must not be there yet
        assert dst.store.stat(b.manifest_key) is None
        seen.append(n)

    assert copy(src, dst, b, progress) is True
    assert len(seen) >= 3  # streamed in chunks, not one read
    assert sum(seen) == b.manifest.size
    assert b"".join(dst.store.open_chunks(b.artifact_key)) == payload(A, b.manifest.size)
    assert dst.read_manifest_bytes(b) == src.read_manifest_bytes(b)
    assert dst_keys(dst) == sorted([b.artifact_key, b.manifest_key])
    (there,) = dst.scan().backups
    assert there == b
    assert there.authenticated


def test_copy_keeps_the_manifest_as_it_is_not_resealed() -> None:
    src = catalog(MemoryStore("src"))
    dst = catalog(MemoryStore("dst"), key=OTHER_KEY)
    b = add(src, manifest())
    copy(src, dst, b)
    assert dst.store.objects[b.manifest_key] == src.store.objects[b.manifest_key]  # type: ignore[attr-defined]
    assert refused(dst.scan()) == {b.manifest_key: MAC_MISMATCH}


@pytest.mark.parametrize("kind", KINDS)
def test_copy_of_a_corrupted_artifact_stores_nothing(tmp_path: Path, kind: str) -> None:
    src, dst = stores(kind, tmp_path)
    b = add(src, manifest(size=2 * (1 << 20) + 3))
    damaged = bytearray(payload(A, b.manifest.size))
    damaged[1 << 20] ^= 0xFF  # same size, one byte flipped
    src.store.put_bytes(b.artifact_key, bytes(damaged))
    with pytest.raises(PyopsError, match=f"{A}: copy to .*dst.* failed") as info:
        copy(src, dst, b)
    assert "sha256" in str(info.value)
    assert dst_keys(dst) == []
    if isinstance(dst.store, LocalStore):
        assert files(tmp_path / "dst") == []  # no temp file either


def test_copy_of_a_truncated_artifact_stores_nothing() -> None:
    src, dst = mem_pair()
    b = add(src, manifest())
    src.store.put_bytes(b.artifact_key, payload(A)[:100])
    with pytest.raises(PyopsError, match="failed"):
        copy(src, dst, b)
    assert dst_keys(dst) == []


@pytest.mark.parametrize("kind", KINDS)
def test_copy_of_a_missing_artifact_stores_nothing(tmp_path: Path, kind: str) -> None:
    src, dst = stores(kind, tmp_path)
    b = add(src, manifest(), with_artifact=False)
    with pytest.raises(PyopsError, match=f"{A}: artifact {b.artifact_key} is missing in"):
        copy(src, dst, b)
    assert dst_keys(dst) == []


@pytest.mark.parametrize("kind", ["memory-memory", "local-memory"])
def test_copy_skips_what_is_already_there(tmp_path: Path, kind: str) -> None:
    src, dst = stores(kind, tmp_path)
    b = add(src, manifest())
    assert copy(src, dst, b) is True
    seen: list[int] = []
    assert copy(src, dst, b, seen.append) is False
    assert seen == []
    # fresh: sent again, all of it
    assert copy(src, dst, b, seen.append, fresh=True) is True
    assert sum(seen) == b.manifest.size
    assert dst.read_manifest_bytes(b) == src.read_manifest_bytes(b)


def test_fresh_copy_reads_the_source_again() -> None:
    src, dst = mem_pair()
    b = add(src, manifest())
    copy(src, dst, b)
    src.store.put_bytes(b.artifact_key, payload(B))  # the source went bad since
    assert copy(src, dst, b) is False  # what dst holds still checks out
    with pytest.raises(PyopsError, match="failed"):
        copy(src, dst, b, fresh=True)
    assert dst.store.objects[b.artifact_key] == payload(A)  # type: ignore[attr-defined]


def test_copy_repairs_a_damaged_copy() -> None:
    src, dst = mem_pair()
    b = add(src, manifest())
    copy(src, dst, b)
    dst.store.put_bytes(b.artifact_key, b"x" * b.manifest.size)
    assert copy(src, dst, b) is True
    assert dst.store.objects[b.artifact_key] == payload(A)  # type: ignore[attr-defined]


def test_copy_finishes_an_interrupted_copy_without_resending_the_artifact() -> None:
    src, dst = mem_pair()
    b = add(src, manifest())
    dst.store.put_bytes(b.artifact_key, payload(A))  # artifact came, manifest did not
    seen: list[int] = []
    assert copy(src, dst, b, seen.append) is True
    assert seen == []
    assert dst.read_manifest_bytes(b) == src.read_manifest_bytes(b)


def test_copy_replaces_a_different_manifest() -> None:
    src, dst = mem_pair()
    b = add(src, manifest())
    copy(src, dst, b)
    plant(dst, b.manifest_key, b"{ torn")
    assert copy(src, dst, b) is True
    assert dst.read_manifest_bytes(b) == src.read_manifest_bytes(b)


def test_copy_back_from_memory_to_disk_is_a_local_backup(tmp_path: Path) -> None:
    remote = catalog(MemoryStore("bucket"))
    local = catalog(LocalStore(tmp_path / "repo"))
    b = add(remote, manifest())
    assert copy(remote, local, b, fresh=True) is True
    found = local.find(A)
    assert found == b
    assert local.artifact_path(found).read_bytes() == payload(A)
    assert local.leftovers("app-db") == []


# --------------------------------------------------------------------------- leftovers


def test_leftovers_of_dead_runs_but_never_of_live_ones(tmp_path: Path, live_pid: int) -> None:
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    done = add(cat, manifest())
    gone = dead_pid()
    dead = backup_id("app-db", "daily", WHEN + timedelta(days=1))
    running = backup_id("app-db", "daily", WHEN + timedelta(days=2))
    pre = backup_id("app-db", "pre-restore", WHEN)
    expected = {
        f"app-db/daily/{dead}.pgdump.zst.gpg.tmp-{gone}",  # artifact still being written
        f"app-db/daily/{dead}.pgdump.zst.gpg",  # renamed, but the manifest never came
        f"app-db/daily/{done.id}{MANIFEST_SUFFIX}.tmp-{gone}",  # temp manifest of a done one
        f"app-db/pre-restore/{pre}.pgdump.zst.gpg",
    }
    alive = [
        f"app-db/daily/{running}.pgdump.zst.gpg.tmp-{live_pid}",  # another process's run
        f"app-db/daily/{running}.sql.gz.tmp-{os.getpid()}",  # ours
        f"app-db/daily/{running}{MANIFEST_SUFFIX}.tmp-{live_pid}",
    ]
    not_ours = [
        "app-db/daily/README.txt",
        "app-db/daily/notes",
        "app-db/daily/app-db.daily.backup-copy",
        f"app-db/daily/{dead}.exe",  # not a layering pyops makes
        f"app-db/daily/{dead}.exe.tmp-{gone}",
        f"app-db/daily/README.tmp-{gone}",
        f"app-db/daily/{dead}.pgdump.old",
        f"app-db/hourly/{dead}.pgdump",  # not a tier pyops owns
        f"app-db/daily/sub/{dead}.pgdump",  # not where pyops writes
        f"media/daily/{backup_id('media', 'daily', WHEN)}.tar.zst",  # another target
    ]
    for key in [*expected, *alive, *not_ours]:
        (repo / key).parent.mkdir(parents=True, exist_ok=True)
        (repo / key).write_bytes(b"x")
    (repo / "app-db" / "daily" / ".hidden").write_bytes(b"x")

    found = cat.leftovers("app-db")
    assert set(found) == expected
    assert len(found) == len(expected)
    assert done.artifact_key not in found
    assert done.manifest_key not in found


def test_leftovers_keep_the_artifacts_of_refused_and_foreign_manifests() -> None:
    # a manifest the catalog will not use is not read, written or deleted through,
    # and neither is its artifact
    cat = catalog()
    forged = add(cat, manifest())
    plant(cat, forged.manifest_key, b"{ torn")
    theirs = sealed(manifest(when=WHEN + timedelta(days=1)), repository_id=OTHER_REPO)
    cat.store.put_bytes(artifact_key(theirs), payload(theirs.id))
    plant(cat, manifest_key(theirs.id), theirs)
    listing = cat.scan()
    assert listing.backups == [] and listing.refused and listing.foreign
    assert cat.leftovers("app-db") == []


def test_leftovers_on_memory_are_artifacts_without_manifest() -> None:
    cat = catalog()
    done = add(cat, manifest())
    orphan = manifest(when=WHEN + timedelta(days=1))
    cat.store.put_bytes(artifact_key(orphan), payload(B))
    assert cat.leftovers("app-db") == [artifact_key(orphan)]
    assert done.artifact_key not in cat.leftovers("app-db")


def test_leftovers_only_look_at_the_target(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    media = repo / "media" / "daily"
    media.mkdir(parents=True)
    (media / f"{backup_id('media', 'daily', WHEN)}.tar.zst").write_bytes(b"x")
    cat = catalog(LocalStore(repo))
    assert cat.leftovers("app-db") == []
    assert cat.leftovers("med") == []
    assert len(cat.leftovers("media")) == 1


def test_leftovers_of_an_empty_repository(tmp_path: Path) -> None:
    assert catalog(LocalStore(tmp_path / "repo")).leftovers("app-db") == []


def test_a_failed_copy_to_disk_leaves_no_leftover(tmp_path: Path) -> None:
    src = catalog(MemoryStore("bucket"))
    local = catalog(LocalStore(tmp_path / "repo"))
    b = add(src, manifest())
    src.store.put_bytes(b.artifact_key, payload(B))
    with pytest.raises(PyopsError):
        copy(src, local, b)
    assert local.leftovers("app-db") == []


def test_next_backup_removes_a_dead_runs_scratch(tmp_path: Path) -> None:
    live = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(live)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    repo = tmp_path / "repo"
    body = f'[[targets]]\nname = "app-sqlite"\ntype = "sqlite"\npath = "{live}"\n'
    config = write_config(tmp_path / "pyops.toml", repo, body)
    # what `kill -9` during `pyops backup` leaves
    dead = backup_id("app-sqlite", "daily", WHEN - timedelta(days=1))
    stale = make_private_dir(repo / ".pyops" / "scratch" / dead) / "snapshot.sqlite3"
    stale.write_bytes(live.read_bytes())
    (repo / "app-sqlite" / "daily").mkdir(parents=True)
    temp = repo / "app-sqlite" / "daily" / f"{dead}.sqlite3.zst.tmp-{dead_pid()}"
    temp.write_bytes(b"")
    orphan = repo / "app-sqlite" / "daily" / f"{dead}.sqlite3.zst"
    orphan.write_bytes(b"")

    result = run_pyops(config, "backup", "--no-prune")
    assert result.returncode == 0, result.stderr
    assert not temp.exists()
    assert not orphan.exists()
    assert not stale.exists(), "plaintext snapshot of a dead run still in the repository"


# --------------------------------------------------------------------------- robustness
#
# What a listing returns is input too: whoever can write the repository can put any
# name there. One odd file must be refused by key, not stop every listing.


def test_an_oversized_manifest_is_refused_not_fatal() -> None:
    cat = catalog()
    add(cat, manifest())
    plant(cat, MANIFEST_B, b" " * ((1 << 20) + 1))
    listing = cat.scan()
    assert ids(listing) == [A]
    assert MANIFEST_B in refused(listing)
    assert "larger than" in refused(listing)[MANIFEST_B]


@pytest.mark.parametrize(
    "where",
    [
        f"app db/daily/{A}{MANIFEST_SUFFIX}",  # a space in a directory name
        f"app-db/daily/-x{MANIFEST_SUFFIX}",  # a name no key may have
    ],
)
def test_a_manifest_at_an_unsafe_key_on_disk_is_refused_not_fatal(
    tmp_path: Path, where: str
) -> None:
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    add(cat, manifest())
    (repo / where).parent.mkdir(parents=True, exist_ok=True)
    (repo / where).write_bytes(sealed(manifest()).to_json())
    listing = cat.scan()
    assert ids(listing) == [A]
    assert list(refused(listing)) == [where]


def test_a_manifest_whose_id_has_an_impossible_date_is_refused() -> None:
    # parse_id refuses the id, so such a backup could never be deleted, copied or read
    # back by id: it must not be listed as one
    bid = "app-db.daily.20261399T000000Z"
    m = manifest()
    m.id = bid
    m.artifact = {**m.artifact, "name": f"{bid}.pgdump.zst.gpg"}
    cat = catalog()
    key = plant(cat, f"app-db/daily/{bid}{MANIFEST_SUFFIX}", sealed(m))
    listing = cat.scan()
    assert listing.backups == []
    assert list(refused(listing)) == [key]


def test_every_leftover_can_be_removed_through_the_store(tmp_path: Path) -> None:
    # The backup removes each leftover with store.delete before it starts: a key the
    # store refuses would fail every backup of the target from then on.
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    daily = repo / "app-db" / "daily"
    daily.mkdir(parents=True)
    (daily / "-x.daily.20261123T020000Z.tar").write_bytes(b"x")
    (daily / f"{A}.tar").write_bytes(b"x")
    found = cat.leftovers("app-db")
    assert f"app-db/daily/{A}.tar" in found
    for key in found:
        check_key(key)
        cat.store.delete(key)


def test_a_temp_file_with_an_impossible_pid_does_not_stop_the_sweep(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cat = catalog(LocalStore(repo))
    daily = repo / "app-db" / "daily"
    daily.mkdir(parents=True)
    (daily / f"{A}.tar.tmp-99999999999").write_bytes(b"x")
    (daily / f"{B}.tar").write_bytes(b"x")
    assert f"app-db/daily/{B}.tar" in cat.leftovers("app-db")


def test_store_errors_are_pyops_errors() -> None:
    assert issubclass(StoreError, PyopsError)


# --------------------------------------------------------------------------- attachments


def with_globals(m: Manifest, data: bytes = b'{"roles": []}') -> tuple[Manifest, bytes]:
    m.attachments = {
        "globals": {
            "name": f"{m.id}.globals.json.zst.gpg",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    }
    return m, data


def add_with_globals(cat: Catalog, m: Manifest) -> Backup:
    m, data = with_globals(m)
    cat.store.put_bytes(f"{m.target}/{m.tier}/{m.attachments['globals']['name']}", data)
    return add(cat, m)


def test_an_attachment_is_copied_before_the_manifest_and_checked() -> None:
    src, dst = mem_pair()
    b = add_with_globals(src, manifest())
    assert copy(src, dst, b) is True
    key = b.attachment_key("globals")
    assert dst_keys(dst) == sorted([b.artifact_key, key, b.manifest_key])
    assert copy(src, dst, b) is False  # all there: nothing sent again
    dst.store.delete(key)
    assert copy(src, dst, b) is True  # a missing attachment alone is sent
    src.store.put_bytes(key, b"altered")
    dst.store.delete(key)
    with pytest.raises(PyopsError, match="failed"):
        copy(src, dst, b)
    assert dst.store.stat(key) is None


def test_delete_removes_the_attachment_and_leftovers_know_it() -> None:
    cat = catalog()
    b = add_with_globals(cat, manifest())
    key = b.attachment_key("globals")
    cat.store.delete(b.manifest_key)  # a run that died before its manifest
    assert sorted(cat.leftovers("app-db")) == sorted([b.artifact_key, key])
    b = add_with_globals(cat, manifest())
    cat.delete(b)
    assert dst_keys(cat) == []


def test_an_attachment_entry_is_validated_and_covered_by_the_mac() -> None:
    cat = catalog()
    b = add_with_globals(cat, manifest())
    forged = Manifest.parse(cat.read_manifest_bytes(b), "x")
    forged.attachments["globals"]["sha256"] = "cd" * 32
    plant(cat, b.manifest_key, forged)
    assert refused(cat.scan()) == {b.manifest_key: MAC_MISMATCH}
    bad = manifest()
    bad.attachments = {"globals": {"name": "../../etc/passwd", "bytes": 1, "sha256": "ab" * 32}}
    plant(cat, b.manifest_key, sealed(bad))
    assert "attachments.globals.name" in refused(cat.scan())[b.manifest_key]
