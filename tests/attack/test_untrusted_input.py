"""Issue 9, row by row, as an attacker would try it: the repository and the bucket are
untrusted input, and so are a neighbour's config and the file modes around pyops.

Each test drives the installed `pyops` (a real subprocess, a real config, real
sqlite3, tar, zstd) against a real S3 server (moto on 127.0.0.1), plays the
attacker with only the access the issue names (writing the bucket with boto3,
writing files into the repository, a second config, chmod), and shows two things:
pyops refuses, with a message that names the problem, and nothing outside the
repository was written or deleted (the file tree around it, and the very file the
attack aimed at, are snapshotted before and compared after).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import run_pyops
from fixtures.s3 import S3

HOST = "web1"  # the same [repository] host in every config: the worst case of row 5
ROOT = f"pyops/{HOST}/"  # <prefix>/<host>/ in the bucket
STAMP = "%Y%m%dT%H%M%SZ"


# --- helpers ---------------------------------------------------------------------


def toml(value: str | Path) -> str:
    return json.dumps(str(value))


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """Everything a run said, for assertion messages."""
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def make_key(path: Path) -> Path:
    """A repository key as `pyops init` writes one: 64 hex chars in a 0600 file."""
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def notes_db(path: Path, marker: str, rows: int = 50) -> Path:
    """A small SQLite database whose every row says whose it is (`marker`)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany(
        "INSERT INTO notes (body) VALUES (?)", [(f"{marker} {i}",) for i in range(rows)]
    )
    conn.commit()
    conn.close()
    return path


def notes_in(path: Path) -> tuple[int, set[str]]:
    """(row count, markers) of a restored database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        bodies = [r[0] for r in conn.execute("SELECT body FROM notes")]
    finally:
        conn.close()
    return len(bodies), {b.split()[0] for b in bodies}


def snapshot(top: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int, bytes]]:
    """Every entry below `top` (symlinks not followed), except the top-level names in
    `skip`: kind, mode, and a file's bytes or a link's target."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == top:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("symlink", 0, os.fsencode(os.readlink(full)))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, Path(full).read_bytes())
    return out


def backup_files(repo: Path) -> dict[str, tuple[str, int, bytes]]:
    """The repository's backups: its tree without the state dir, the lock and the
    identity (which a run may create or rewrite)."""
    return snapshot(repo, skip=(".pyops", ".lock", "repository.json"))


def bucket(s3: S3) -> dict[str, str]:
    """Every object in the bucket with its ETag."""
    found = s3.client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in found}


def get_json(s3: S3, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    )
    return data


def put_json(s3: S3, key: str, data: dict[str, Any]) -> None:
    body = json.dumps(data, indent=2, sort_keys=True).encode()
    sha = hashlib.sha256(body).hexdigest()
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=body, Metadata={"sha256": sha})


def started_of(backup_id: str) -> str:
    """The start time a backup id implies, as a manifest records it."""
    stamp = backup_id.split(".")[2]
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC).isoformat()


def later(backup_id: str, days: int) -> str:
    """The id of a backup of the same target and tier `days` later."""
    target, tier, stamp = backup_id.split(".")
    when = datetime.strptime(stamp, STAMP).replace(tzinfo=UTC) + timedelta(days=days)
    return f"{target}.{tier}.{when.strftime(STAMP)}"


def relabel(manifest: dict[str, Any], new_id: str, **artifact: Any) -> dict[str, Any]:
    """A copy of `manifest` claiming to be backup `new_id` (what a forger starts from):
    id, times and artifact name follow the new id; `artifact` overrides the rest."""
    ext = manifest["artifact"]["name"][len(manifest["id"]) + 1 :]
    forged: dict[str, Any] = json.loads(json.dumps(manifest))
    started = started_of(new_id)
    forged.update(id=new_id, started_at=started, finished_at=started)
    forged["artifact"] = {**manifest["artifact"], "name": f"{new_id}.{ext}", **artifact}
    return forged


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@dataclass
class Site:
    """One config and its repository, driven through the real CLI."""

    root: Path
    repo: Path

    @property
    def config(self) -> Path:
        return self.root / "pyops.toml"

    def write(
        self,
        body: str,
        *,
        key_file: Path | None = None,
        state_dir: Path | None = None,
        lock_wait: float = 2,
    ) -> Site:
        head = f"[repository]\npath = {toml(self.repo)}\nhost = {toml(HOST)}\n"
        head += f"lock_wait_seconds = {lock_wait}\n"
        if key_file is not None:
            head += f"key_file = {toml(key_file)}\n"
        if state_dir is not None:
            head += f"state_dir = {toml(state_dir)}\n"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"{head}\n{body}\n")
        self.config.chmod(0o600)
        return self

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, f"pyops {' '.join(args)}: {said(proc)}"
        return proc

    def backup(self, target: str, *extra: str) -> str:
        proc = self.ok("backup", "--target", target, "--format", "json", *extra)
        rows = json.loads(proc.stdout)["backups"]
        assert len(rows) == 1 and rows[0]["ok"], said(proc)
        return str(rows[0]["id"])

    def listing(self, *extra: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok("list", "--format", "json", *extra).stdout)
        return data

    def manifest_path(self, backup_id: str, place: str | None = None) -> Path:
        target, tier, _ = backup_id.split(".")
        return self.repo / (place or f"{target}/{tier}") / f"{backup_id}.manifest.json"

    def manifest(self, backup_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path(backup_id).read_text())
        return data


def zstd() -> str:
    return '[compression]\nalgorithm = "zstd"\nlevel = 1\nthreads = 1\n'


def sqlite_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = {toml(name)}\ntype = "sqlite"\npath = {toml(path)}\n'


def files_target(name: str, paths: list[Path]) -> str:
    listed = ", ".join(toml(p) for p in paths)
    return f'[[targets]]\nname = {toml(name)}\ntype = "files"\npaths = [{listed}]\n'


def refused_keys(listing: dict[str, Any]) -> dict[str, str]:
    return {r["key"]: r["reason"] for r in listing["refused"]}


# --- row 1: a forged artifact.name in the bucket ------------------------------------


def test_row1_bucket_manifest_naming_a_path_outside_is_never_followed(
    tmp_path: Path, s3: S3
) -> None:
    """No repository key: the shape check alone stops it. The forged manifests are
    newer than the genuine backup, so `--latest` and the drill's timer would pick them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    target_file = victim / "passwd"
    target_file.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + s3.config() + sqlite_target("notes", notes_db(tmp_path / "app.db", "A"))
    )
    genuine = site.backup("notes")
    manifest = get_json(s3, f"{ROOT}notes/daily/{genuine}.manifest.json")

    payload = b"attacker:x:0:0::/:/bin/sh\n"
    evil = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    names = {
        later(genuine, 1): str(target_file),  # absolute
        later(genuine, 2): "../../../victim/passwd",  # climbs out of <repo>/notes/daily
        later(genuine, 3): f"{later(genuine, 3)}.sqlite3.zst/../../../../victim/passwd",
    }
    forged_keys = []
    for forged_id, name in names.items():
        forged = relabel(manifest, forged_id, name=name, **evil)
        key = f"{ROOT}notes/daily/{forged_id}.manifest.json"
        put_json(s3, key, forged)
        forged_keys.append(key)
        s3.client.put_object(Bucket=s3.bucket, Key=f"{ROOT}notes/daily/{name}", Body=payload)
    outside = snapshot(tmp_path, skip=("repo",))

    listed = refused_keys(site.listing("--remote"))
    for key in forged_keys:
        short = key.removeprefix(ROOT)
        assert short in listed, listed
        assert "artifact.name" in listed[short], listed
    assert [b["id"] for b in site.listing("--remote")["backups"]] == [genuine]

    for forged_id in names:  # named explicitly: refused, naming why
        out = tmp_path / f"out-{forged_id}.db"
        proc = site.run("restore", "--remote", forged_id, "--into", str(out), "--yes")
        assert proc.returncode == 1, said(proc)
        assert forged_id in proc.stderr and "artifact.name" in proc.stderr, said(proc)
        assert "not used" in proc.stderr, said(proc)
        assert not out.exists()

    # --latest and the drill skip them, say so, and use the genuine backup
    out = tmp_path / "out-latest.db"
    proc = site.run(
        "restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes"
    )
    assert proc.returncode == 0, said(proc)
    assert genuine in proc.stderr, said(proc)
    for key in forged_keys:
        assert key.removeprefix(ROOT) in proc.stderr, said(proc)
    assert notes_in(out) == (50, {"A"})
    drill = site.run("drill", "--remote")
    assert drill.returncode == 0, said(drill)
    assert genuine in drill.stdout and forged_keys[0].removeprefix(ROOT) in drill.stderr
    verify = site.run("verify", "--remote")
    assert verify.returncode == 1, said(verify)
    assert all(k.removeprefix(ROOT) in verify.stdout for k in forged_keys), said(verify)

    assert target_file.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"
    after = snapshot(tmp_path, skip=("repo", out.name))
    assert after == outside
    # and nothing of the attacker's was copied into the repository either
    assert not [p for p in site.repo.rglob("*") if p.is_file() and p.read_bytes() == payload]


# --- row 2: a manifest planted in the repository -----------------------------------


def test_row2_manifests_planted_in_the_repository_are_never_counted_or_deleted_through(
    tmp_path: Path,
) -> None:
    """No repository key (the shape and place checks alone). Planted: a manifest of
    `media` in another directory, one whose artifact.name climbs out, a tier directory
    that is a symlink to a victim directory holding files shaped like pyops leftovers,
    and an artifact that is a symlink to the victim file."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.txt").write_text("alpha\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    shadow = victim / "shadow"
    shadow.write_bytes(b"root:$6$secret:19000:0:99999:7:::\n")
    (victim / "media.monthly.20200101T000000Z.tar.zst").write_bytes(b"operator's file")
    (victim / f"media.monthly.20200102T000000Z.tar.zst.tmp-{dead_pid()}").write_bytes(b"also")
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + "[retention]\ndaily = 1\n" + files_target("media", [media])
    )
    first = site.backup("media")
    genuine = site.manifest(first)

    def plant(backup_id: str, place: str, **artifact: Any) -> str:
        forged = relabel(genuine, backup_id, **artifact)
        path = site.manifest_path(backup_id, place)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(forged))
        return str(path.relative_to(site.repo))

    aimed = plant("media.daily.20200101T000000Z", "anything/daily", name=str(shadow))
    elsewhere = plant("media.daily.20200104T000000Z", "anything/daily")  # a valid shape
    climbing = plant("media.daily.20200102T000000Z", "media/daily", name="../../../victim/shadow")
    linked_id = "media.daily.20200103T000000Z"
    plant(linked_id, "media/daily")
    (site.repo / f"media/daily/{linked_id}.tar.zst").symlink_to(shadow)
    (site.repo / "media/monthly").symlink_to(victim, target_is_directory=True)
    outside = snapshot(tmp_path, skip=("repo",))

    listed = refused_keys(site.listing())
    assert "artifact.name" in listed[aimed], listed
    assert "lies in anything/daily" in listed[elsewhere], listed
    assert "artifact.name" in listed[climbing], listed

    # the next backup prunes daily to 1: the planted ones are not counted, not deleted
    second = site.backup("media")
    proc = site.run("prune", "--format", "json")
    assert proc.returncode == 0, said(proc)
    assert climbing in proc.stderr and "not counted, not deleted" in proc.stderr, said(proc)
    ids = [b["id"] for b in site.listing()["backups"]]
    assert ids == [second], ids
    assert all((site.repo / k).exists() for k in (aimed, elsewhere, climbing))

    verify = site.run("verify", "--all")
    assert verify.returncode == 1, said(verify)
    assert all(k in verify.stdout for k in (aimed, elsewhere, climbing)), said(verify)
    assert f"{second}: ok" in verify.stdout, said(verify)

    assert shadow.read_bytes() == b"root:$6$secret:19000:0:99999:7:::\n"
    assert snapshot(tmp_path, skip=("repo",)) == outside


# --- row 3: a files backup of other paths than the config's ------------------------


def test_row3_files_backup_of_other_paths_is_refused_in_place(tmp_path: Path) -> None:
    site_dir = tmp_path / "srv"
    old, new = site_dir / "old-site", site_dir / "new-site"
    for path, text in ((old, "old"), (new, "new")):
        path.mkdir(parents=True)
        (path / "index.html").write_text(f"<h1>{text}</h1>\n")
    site = Site(tmp_path, tmp_path / "repo").write(zstd() + files_target("media", [old]))
    backup_id = site.backup("media")
    site.write(zstd() + files_target("media", [new]))  # the config changed since
    before_srv = snapshot(site_dir)
    before_repo = backup_files(site.repo)

    proc = site.run("restore", "--latest", "--target", "media", "--yes")
    assert proc.returncode == 1, said(proc)
    for text in (backup_id, str(old), str(new), "--into", "refusing to restore in place"):
        assert text in proc.stderr, said(proc)
    assert snapshot(site_dir) == before_srv
    assert backup_files(site.repo) == before_repo  # not even a safety backup
    assert site.listing("--tier", "pre-restore")["backups"] == []

    into = tmp_path / "restored"
    site.ok("restore", "--latest", "--target", "media", "--into", str(into), "--yes")
    assert [p.read_text() for p in into.rglob("index.html")] == ["<h1>old</h1>\n"]
    assert snapshot(site_dir) == before_srv


# --- row 4: the newest backup replaced by an older one, relabelled -----------------


def replace_newest_with_older(s3: S3, older: str, newest: str) -> str:
    """What someone who can write the bucket (but holds no key) does: the newest
    backup's object becomes the older one's bytes, its manifest the older one's,
    relabelled with the newest's id, times and name. Returns the manifest key."""
    old_manifest = get_json(s3, f"{ROOT}notes/daily/{older}.manifest.json")
    new_manifest = get_json(s3, f"{ROOT}notes/daily/{newest}.manifest.json")
    forged = relabel(old_manifest, newest)
    forged["started_at"] = new_manifest["started_at"]
    forged["finished_at"] = new_manifest["finished_at"]
    s3.client.copy_object(
        Bucket=s3.bucket,
        Key=f"{ROOT}notes/daily/{forged['artifact']['name']}",
        CopySource={
            "Bucket": s3.bucket,
            "Key": f"{ROOT}notes/daily/{old_manifest['artifact']['name']}",
        },
        Metadata={"sha256": old_manifest["artifact"]["sha256"]},
        MetadataDirective="REPLACE",
    )
    key = f"{ROOT}notes/daily/{newest}.manifest.json"
    put_json(s3, key, forged)  # keeps the older one's MAC (or none): the forger has no key
    return key


def two_backups(site: Site, db: Path) -> tuple[str, str]:
    older = site.backup("notes")
    notes_db(db, "new", rows=25)
    newest = site.backup("notes")
    return older, newest


def test_row4_relabelled_backup_is_refused_with_a_key_also_on_a_fresh_dr_host(
    tmp_path: Path, s3: S3
) -> None:
    db = notes_db(tmp_path / "app.db", "old")
    key_file = tmp_path / "keys" / "repository.key"
    key_file.parent.mkdir(mode=0o700)
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + s3.config() + sqlite_target("notes", db), key_file=key_file
    )
    init = site.ok("init", "--new-key")
    assert key_file.stat().st_mode & 0o777 == 0o600, said(init)
    older, newest = two_backups(site, db)
    key = replace_newest_with_older(s3, older, newest)
    short = key.removeprefix(ROOT)
    outside = snapshot(tmp_path, skip=("repo",))

    check = site.run("sync", "--check")  # the host that holds the true manifests
    assert check.returncode == 1, said(check)
    assert short in check.stdout and "MAC does not match" in check.stdout, said(check)
    verify = site.run("verify", "--remote", "--deep")
    assert verify.returncode == 1, said(verify)
    assert short in verify.stdout and "MAC does not match" in verify.stdout, said(verify)

    shutil.rmtree(site.repo)  # a new host: the same config and key, an empty repository
    listed = site.listing("--remote")
    assert "MAC does not match" in refused_keys(listed)[short], listed
    assert [b["id"] for b in listed["backups"]] == [older]
    verify = site.run("verify", "--remote", "--deep")
    assert verify.returncode == 1 and short in verify.stdout, said(verify)

    out = tmp_path / "out.db"
    proc = site.run("restore", "--remote", newest, "--into", str(out), "--yes")
    assert proc.returncode == 1, said(proc)
    assert short in proc.stderr and "forged or altered" in proc.stderr, said(proc)
    assert not out.exists()
    # --latest does not take the forged one as the newest: it names it, and restores
    # the older backup under its own (older) name
    proc = site.run(
        "restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes"
    )
    assert proc.returncode == 0, said(proc)
    assert short in proc.stderr and "not used" in proc.stderr, said(proc)
    assert f"backup:      {older}" in proc.stderr, said(proc)
    assert notes_in(out) == (50, {"old"})
    assert snapshot(tmp_path, skip=("repo", out.name)) == outside


def test_row4_without_a_key_the_host_with_the_true_manifests_notices(
    tmp_path: Path, s3: S3
) -> None:
    db = notes_db(tmp_path / "app.db", "old")
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + s3.config() + sqlite_target("notes", db)
    )
    older, newest = two_backups(site, db)
    replace_newest_with_older(s3, older, newest)
    before = backup_files(site.repo)

    check = site.run("sync", "--check")
    assert check.returncode == 1, said(check)
    assert f"{newest}: the bucket's manifest differs from the local one" in check.stdout, said(
        check
    )
    verify = site.run("verify", "--remote")
    assert verify.returncode == 1, said(verify)
    assert f"{newest}: FAILED" in verify.stdout and "differs" in verify.stdout, said(verify)
    assert backup_files(site.repo) == before


# --- row 5: a second repository under the same bucket, prefix and host --------------


def wait_past(backup_id: str) -> None:
    """Sleep until the wall clock is past the second of `backup_id` (so the next
    backup, in another repository, does not get the same id)."""
    stamp = datetime.strptime(backup_id.split(".")[2], STAMP).replace(tzinfo=UTC)
    while datetime.now(UTC) < stamp + timedelta(seconds=1):
        time.sleep(0.05)


def neighbours(tmp_path: Path, s3: S3, keys: str) -> tuple[Site, Site]:
    """Configs A and B on one machine: separate repositories and sources, the same
    bucket, prefix and host. `keys`: "none", "shared" (one admin, one key file) or
    "own" (a key each)."""
    body = zstd() + s3.config() + "[retention]\ndaily = 1\n"
    shared = make_key(tmp_path / "repository.key") if keys == "shared" else None
    sites = []
    for name in ("a", "b"):
        key = make_key(tmp_path / f"{name}.key") if keys == "own" else shared
        site = Site(tmp_path / name, tmp_path / name / "repo")
        db = notes_db(tmp_path / f"{name}.db", name.upper())
        sites.append(site.write(body + sqlite_target("notes", db), key_file=key))
    return sites[0], sites[1]


def repository_id(site: Site) -> str:
    return str(json.loads((site.repo / "repository.json").read_text())["repository_id"])


@pytest.mark.parametrize("keys", ["none", "shared", "own"])
def test_row5_a_second_repository_starting_under_a_used_prefix_is_refused(
    tmp_path: Path, s3: S3, keys: str
) -> None:
    """B is new (its repository empty) and starts after A has backed up: its upload
    must be refused, naming A's repository, whatever the keys."""
    a, b = neighbours(tmp_path, s3, keys)
    a_id = a.backup("notes")
    theirs = repository_id(a)
    before = bucket(s3)
    wait_past(a_id)

    proc = b.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    assert "another repository" in proc.stderr and theirs in proc.stderr, said(proc)
    assert "set [repository] host" in proc.stderr, said(proc)
    assert bucket(s3) == before
    assert not (b.repo / "repository.json").exists() or repository_id(b) != theirs

    listed = a.listing("--remote")
    assert [x["id"] for x in listed["backups"]] == [a_id], listed
    prune = a.ok("prune", "--remote")
    assert bucket(s3) == before, said(prune)
    out = tmp_path / "restored-a.db"
    a.ok("restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes")
    assert notes_in(out) == (50, {"A"})


def test_row5_foreign_backups_under_the_prefix_are_never_pruned_or_restored(
    tmp_path: Path, s3: S3
) -> None:
    """B has its own identity (made before A first wrote the bucket); its upload is
    refused, and B's backups that reach the prefix anyway (copied by hand, or from
    before repositories had identities) are foreign to A: not counted by A's prune,
    not restored by A's --latest."""
    a, b = neighbours(tmp_path, s3, "shared")  # one key: MACs pass, the ids differ
    b.ok("init")
    a_id = a.backup("notes")
    ours = repository_id(a)
    before = bucket(s3)
    wait_past(a_id)

    proc = b.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    assert "another repository" in proc.stderr and ours in proc.stderr, said(proc)
    assert "set [repository] host" in proc.stderr, said(proc)
    assert bucket(s3) == before
    b_id = json.loads(proc.stdout)["backups"][0]["id"]
    assert b_id != a_id
    assert [x["id"] for x in b.listing()["backups"]] == [b_id]  # B's local backup is kept

    b_manifest = b.manifest(b_id)
    for name in (f"{b_id}.manifest.json", b_manifest["artifact"]["name"]):
        data = (b.repo / "notes" / "daily" / name).read_bytes()
        s3.client.put_object(
            Bucket=s3.bucket,
            Key=f"{ROOT}notes/daily/{name}",
            Body=data,
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )
    mixed = bucket(s3)
    listed = a.listing("--remote")
    assert [x["id"] for x in listed["backups"]] == [a_id]
    assert [f["key"] for f in listed["foreign"]] == [f"notes/daily/{b_id}.manifest.json"]

    prune = a.run("prune", "--remote", "--format", "json")  # daily = 1, and B's is newer
    assert prune.returncode == 0, said(prune)
    assert [(r["id"], r["keep"]) for r in json.loads(prune.stdout)["backups"]] == [(a_id, True)]
    assert "foreign backups" in prune.stderr and "not touched" in prune.stderr, said(prune)
    assert bucket(s3) == mixed

    shutil.rmtree(a.repo)  # A's disaster: a new host, A's config and key, the bucket
    out = tmp_path / "restored-a.db"
    proc = a.run(
        "restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes"
    )
    assert proc.returncode == 0, said(proc)
    assert f"backup:      {a_id}" in proc.stderr, said(proc)
    assert notes_in(out) == (50, {"A"})
    assert bucket(s3) == mixed
    assert [x["id"] for x in b.listing()["backups"]] == [b_id]


def test_row5_a_dr_host_adopts_the_identity_in_the_bucket_and_carries_on(
    tmp_path: Path, s3: S3
) -> None:
    """The other side of row 5: a new host with A's config and key and an empty
    repository is A (no extra step): after `restore --remote` it keeps backing up
    into the same prefix, and what it fetched is its own, not foreign."""
    db = notes_db(tmp_path / "app.db", "A")
    key_file = make_key(tmp_path / "repository.key")
    site = Site(tmp_path, tmp_path / "repo")
    site.write(zstd() + s3.config() + sqlite_target("notes", db), key_file=key_file)
    first = site.backup("notes")
    ours = repository_id(site)

    shutil.rmtree(site.repo)  # the disaster
    out = tmp_path / "restored.db"
    site.ok("restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes")
    assert notes_in(out) == (50, {"A"})
    assert (site.repo / "repository.json").exists(), "the adopted identity was not recorded"
    assert repository_id(site) == ours

    proc = site.run("backup", "--format", "json")  # the new host carries on
    assert proc.returncode == 0, said(proc)
    second = json.loads(proc.stdout)["backups"][0]
    assert second["offsite"], said(proc)
    listed = site.listing()
    assert [x["id"] for x in listed["backups"]] == [second["id"], first], listed
    assert listed["foreign"] == [] and listed["refused"] == [], listed


# --- row 6: a second config on the same repository ---------------------------------


@contextlib.contextmanager
def held_lock(repo: Path, holder: str) -> Iterator[None]:
    """`<repo>/.lock` held by "run A" (this test process)."""
    fd = os.open(repo / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())
        yield
    finally:
        os.close(fd)


def test_row6_the_lock_is_in_the_repository_and_a_live_runs_temp_file_survives(
    tmp_path: Path,
) -> None:
    db = notes_db(tmp_path / "app.db", "A")
    repo = tmp_path / "repo"
    a = Site(tmp_path / "a", repo)
    a.write(zstd() + sqlite_target("notes", db), state_dir=tmp_path / "state-a", lock_wait=1)
    b = Site(tmp_path / "b", repo)
    b.write(zstd() + sqlite_target("notes", db), state_dir=tmp_path / "state-b", lock_wait=1)
    first = a.backup("notes")

    run_a = subprocess.Popen(["sleep", "60"])  # A, mid-backup
    try:
        in_flight = (
            repo / "notes" / "daily" / f"notes.daily.29990101T000000Z.sqlite3.zst.tmp-{run_a.pid}"
        )
        in_flight.write_bytes(b"A is still writing this")
        with held_lock(repo, f"pid {run_a.pid}: backup"):
            before = backup_files(repo)
            for args in (("backup",), ("prune",), ("verify",)):
                t0 = time.monotonic()
                proc = b.run(*args)
                assert proc.returncode == 1, said(proc)
                assert f"another pyops run holds {repo}/.lock" in proc.stderr, said(proc)
                assert f"pid {run_a.pid}: backup" in proc.stderr, said(proc)
                assert time.monotonic() - t0 >= 0.9
            assert backup_files(repo) == before
            assert not (tmp_path / "state-b" / ".lock").exists()
        # A released the lock but its process still runs: its temp file is not a leftover
        second = b.backup("notes")
        assert in_flight.read_bytes() == b"A is still writing this"
    finally:
        run_a.kill()
        run_a.wait()
    third = b.backup("notes")  # now A is dead: the sweep may take it
    assert not in_flight.exists()
    assert [x["id"] for x in b.listing()["backups"]] == [third, second, first]


# --- row 7: another tool's multipart uploads under the same prefix ------------------


def start_upload(s3: S3, key: str) -> str:
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    s3.client.upload_part(
        Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"part one"
    )
    return str(upload["UploadId"])


def uploads(s3: S3) -> set[str]:
    found = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    return {u["Key"] for u in found}


def test_row7_sync_aborts_only_its_own_stale_uploads(tmp_path: Path, s3: S3) -> None:
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + s3.config() + sqlite_target("notes", notes_db(tmp_path / "app.db", "A"))
    )
    backup_id = site.backup("notes", "--no-offsite")
    # (moto reports every multipart upload as initiated in 2010: all of them are "stale")
    ours = f"{ROOT}notes/daily/notes.daily.20200101T000000Z.sqlite3.zst"
    theirs = {
        f"{ROOT}other-tool/blob.bin",  # another tool under the same prefix
        f"{ROOT}notes/daily/notes.daily.20200101T000000Z.sqlite3.zst.part",  # not our shape
        f"{ROOT}notes/daily/notes.tar",
        "pyops/web2/notes/daily/notes.daily.20200101T000000Z.sqlite3.zst",  # another host
    }
    for key in {ours, *theirs}:
        start_upload(s3, key)

    proc = site.run("sync", "--format", "json")
    assert proc.returncode == 0, said(proc)
    result = json.loads(proc.stdout)
    assert result["uploaded"] == [backup_id] and result["aborted_uploads"] == 1, said(proc)
    assert uploads(s3) == theirs


class RefusesMultipartListing:
    """An S3 endpoint in front of moto that answers ListMultipartUploads with 501
    NotImplemented, as some S3-compatible stores do (a policy without that permission
    answers 403 the same way); every other request goes through unchanged."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.refused: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RefusesMultipartListing:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def forward(self) -> None:
                data = self.body()
                query = urllib.parse.parse_qs(
                    urllib.parse.urlsplit(self.path).query, keep_blank_values=True
                )
                if self.command == "GET" and "uploads" in query:
                    proxy.refused.append(self.path)
                    error = (
                        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented'
                        b"</Code><Message>ListMultipartUploads is not implemented</Message>"
                        b"</Error>"
                    )
                    self.send_response(501)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                skip = {"expect", "connection", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                headers["Content-Length"] = str(len(data))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=data, headers=headers)
                    answer = conn.getresponse()
                    payload = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() in ("connection", "transfer-encoding", "content-length"):
                        continue
                    self.send_header(name, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        return Handler


def test_row7_a_store_that_cannot_list_multipart_uploads_still_gets_the_upload(
    tmp_path: Path, s3: S3
) -> None:
    with RefusesMultipartListing(s3.url) as store:
        via = S3(s3.server, store.url, s3.bucket, s3.client)
        site = Site(tmp_path, tmp_path / "repo").write(
            zstd() + via.config() + sqlite_target("notes", notes_db(tmp_path / "app.db", "A"))
        )
        backup_id = site.backup("notes", "--no-offsite")
        proc = site.run("sync", "--format", "json")
        assert store.refused, "pyops never asked for the multipart uploads"
        assert proc.returncode == 0, said(proc)
        assert json.loads(proc.stdout)["uploaded"] == [backup_id], said(proc)
        assert "could not list dangling multipart uploads" in proc.stderr, said(proc)
        check = site.run("sync", "--check")
        assert check.returncode == 0, said(check)
    manifest = f"{ROOT}notes/daily/{backup_id}.manifest.json"
    assert manifest in bucket(s3)


# --- row 8: unsafe file modes, as root -----------------------------------------------


def unsafe_config(tmp_path: Path) -> tuple[Site, Path, str]:
    site = Site(tmp_path, tmp_path / "repo").write(sqlite_target("notes", tmp_path / "app.db"))
    site.config.chmod(0o666)
    return site, site.config, "chmod 0600"


def unsafe_passphrase(tmp_path: Path) -> tuple[Site, Path, str]:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o644)
    body = (
        f'[encryption]\nmode = "gpg-symmetric"\npassphrase_file = {toml(passphrase)}\n\n'
        + sqlite_target("notes", tmp_path / "app.db")
    )
    return Site(tmp_path, tmp_path / "repo").write(body), passphrase, "chmod 0600"


def unsafe_repository(tmp_path: Path) -> tuple[Site, Path, str]:
    real = tmp_path / "disk" / "backups"
    real.mkdir(parents=True)
    real.chmod(0o777)
    link = tmp_path / "repo"
    link.symlink_to(real, target_is_directory=True)
    return (
        Site(tmp_path, link).write(sqlite_target("notes", tmp_path / "app.db")),
        real,
        "chmod 0700",
    )


def unsafe_key(tmp_path: Path) -> tuple[Site, Path, str]:
    key = make_key(tmp_path / "repository.key")
    key.chmod(0o644)
    site = Site(tmp_path, tmp_path / "repo")
    return site.write(sqlite_target("notes", tmp_path / "app.db"), key_file=key), key, "chmod 0600"


UNSAFE = {
    "world-writable config": (unsafe_config, None),
    "world-readable passphrase file": (unsafe_passphrase, "encryption.passphrase_file"),
    "world-writable repository through a symlink": (unsafe_repository, "repository.path"),
    "world-readable repository key": (unsafe_key, "repository.key_file"),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="pyops refuses unsafe modes as root")
@pytest.mark.parametrize("case", list(UNSAFE))
def test_row8_unsafe_modes_are_refused_as_root(tmp_path: Path, case: str) -> None:
    make, key = UNSAFE[case]
    notes_db(tmp_path / "app.db", "A")
    site, path, fix = make(tmp_path)
    key = key or str(site.config)
    outside = snapshot(tmp_path)
    for args in (("config", "check"), ("backup",)):
        proc = site.run(*args)
        assert proc.returncode == 2, said(proc)
        assert f"config: {key}: {path} is" in proc.stderr, said(proc)
        assert f"fix: {fix} {path}" in proc.stderr, said(proc)
    assert snapshot(tmp_path) == outside  # no repository, no backup, nothing


@pytest.mark.skipif(os.geteuid() != 0, reason="pyops refuses unsafe modes as root")
def test_row8_a_private_repository_under_sticky_tmp_is_fine(tmp_path: Path) -> None:
    assert os.stat("/tmp").st_mode & 0o1777 == 0o1777
    repo = Path(tempfile.mkdtemp(prefix="pyops-attack-", dir="/tmp"))  # 0700
    try:
        site = Site(tmp_path, repo).write(
            zstd() + sqlite_target("notes", notes_db(tmp_path / "app.db", "A"))
        )
        check = site.ok("config", "check")
        assert "unsafe" not in check.stderr, said(check)
        site.backup("notes")
    finally:
        shutil.rmtree(repo)


# --- the repository key lost, and an empty --into -----------------------------------


def test_a_lost_key_stops_every_command_until_the_operator_says_so_loudly(tmp_path: Path) -> None:
    key_file = make_key(tmp_path / "repository.key")
    site = Site(tmp_path, tmp_path / "repo").write(
        zstd() + sqlite_target("notes", notes_db(tmp_path / "app.db", "A")), key_file=key_file
    )
    backup_id = site.backup("notes")
    key_file.unlink()  # the key is lost; the gpg key (if any) and the repository are not
    before = backup_files(site.repo)
    out = tmp_path / "out.db"

    for args in (
        ("list",),
        ("config", "check"),
        ("restore", "--latest", "--target", "notes", "--into", str(out), "--yes"),
    ):
        proc = site.run(*args)
        assert proc.returncode == 2, said(proc)
        assert f"repository.key_file: {key_file} does not exist" in proc.stderr, said(proc)
        assert "--allow-unauthenticated" in proc.stderr, said(proc)
    assert not out.exists()

    proc = site.run(
        "restore", "--latest", "--target", "notes", "--into", str(out), "--yes",
        "--allow-unauthenticated",
    )  # fmt: skip
    assert proc.returncode == 0, said(proc)
    assert f"REPOSITORY KEY {key_file} IS MISSING" in proc.stderr, said(proc)
    assert "NOT authenticated" in proc.stderr, said(proc)
    assert backup_id in proc.stderr, said(proc)
    assert notes_in(out) == (50, {"A"})
    assert backup_files(site.repo) == before


def test_an_empty_into_changes_nothing(tmp_path: Path) -> None:
    db = notes_db(tmp_path / "app.db", "A")
    site = Site(tmp_path, tmp_path / "repo").write(zstd() + sqlite_target("notes", db))
    site.backup("notes")
    outside = snapshot(tmp_path)
    proc = site.run("restore", "--latest", "--target", "notes", "--into", "", "--yes")
    assert proc.returncode == 2, said(proc)
    assert "--into" in proc.stderr and "empty" in proc.stderr, said(proc)
    assert snapshot(tmp_path) == outside
