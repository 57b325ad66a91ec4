"""Restores that must refuse before touching anything: missing secret key, wrong
passphrase, and hostile tar archives placed in the repository like real backups."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures import tarcraft
from fixtures.gpgkeys import GpgKey, cleanup_home, public_only_home
from integration_helpers import (
    Pyops,
    all_paths,
    compression,
    files_target,
    make_sample_db,
    output,
    passphrase_file,
    row_counts,
    sqlite_dump,
    sqlite_target,
    tree_snapshot,
)


@pytest.fixture
def public_only(gpg_home: GpgKey) -> Iterator[GpgKey]:
    """A GNUPGHOME with only the public half of `gpg_home`'s key, like a backup host."""
    key = public_only_home(gpg_home)
    try:
        yield key
    finally:
        cleanup_home(key.gnupghome)


def state_of(root: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """Everything under `root` except the repository's own state directory."""
    return {k: v for k, v in tree_snapshot(root).items() if not k.startswith(b"repo/.pyops")}


def live_state(pyops: Pyops) -> dict[bytes, tuple[str, int, bytes]]:
    """Everything beside the repository: the live database, kept copies, staging files."""
    return {k: v for k, v in tree_snapshot(pyops.root).items() if not k.startswith(b"repo")}


def public_key_backup(pyops: Pyops, gpg_home: GpgKey, public_only: GpgKey) -> tuple[Path, str]:
    """A gpg-public backup made on a host that holds only the public key; the live
    database has changed since."""
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=100)
    pyops.write(
        compression("zstd")
        + f'[encryption]\nmode = "gpg-public"\nrecipients = ["{public_only.email}"]\n'
        f'gnupghome = "{public_only.gnupghome}"\n' + sqlite_target("app", db)
    )
    bid = pyops.backup("app")
    subprocess.run(
        ["sqlite3", str(db), "INSERT INTO users(name) VALUES ('after backup');"],
        check=True,
        timeout=60,
    )
    return db, bid


def test_gpg_public_restore_without_the_secret_key_fails_and_keeps_the_live_file(
    pyops: Pyops, gpg_home: GpgKey, public_only: GpgKey
) -> None:
    db, bid = public_key_backup(pyops, gpg_home, public_only)
    artifact = pyops.artifact(bid)
    assert artifact.name.endswith(".sqlite3.zst.gpg")
    assert pyops.manifest(bid)["encryption"] == {
        "mode": "gpg-public",
        "recipients": [gpg_home.fingerprint],
    }
    # the real key opens it, and there is zstd inside
    plain = subprocess.run(
        ["gpg", "--homedir", str(gpg_home.gnupghome), "--batch", "-d", str(artifact)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert plain.startswith(b"\x28\xb5\x2f\xfd")
    before = live_state(pyops)

    proc = pyops.run("restore", bid, "--yes")

    assert proc.returncode == 1, output(proc)
    assert bid in proc.stderr, output(proc)
    assert live_state(pyops) == before
    assert "after backup" in sqlite_dump(db)

    # the same restore with the secret key works: the failure was only about the key
    pyops.write(
        pyops.config.read_text()
        .split("\n\n", 1)[1]
        .replace(str(public_only.gnupghome), str(gpg_home.gnupghome))
    )
    dest = pyops.root / "with-key.sqlite3"
    pyops.ok("restore", bid, "--into", str(dest), "--yes")
    assert "after backup" not in sqlite_dump(dest)


def test_gpg_public_restore_without_the_secret_key_is_refused_before_anything(
    pyops: Pyops, gpg_home: GpgKey, public_only: GpgKey
) -> None:
    _, bid = public_key_backup(pyops, gpg_home, public_only)

    proc = pyops.run("restore", bid, "--yes")

    assert proc.returncode == 1, output(proc)
    assert not (pyops.repo / "app" / "pre-restore").exists(), output(proc)
    assert "secret key" in proc.stderr, output(proc)


def symmetric_backup_then_wrong_passphrase(pyops: Pyops, gnupghome: Path) -> tuple[Path, str]:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=100)
    secret = passphrase_file(pyops.root)
    pyops.write(
        compression("gzip") + f'[encryption]\nmode = "gpg-symmetric"\ngnupghome = "{gnupghome}"\n'
        f'passphrase_file = "{secret}"\n' + sqlite_target("app", db)
    )
    bid = pyops.backup("app")
    subprocess.run(["sqlite3", str(db), "DELETE FROM users;"], check=True, timeout=60)
    secret.write_text("not the passphrase\n")
    return db, bid


def test_gpg_symmetric_restore_with_a_wrong_passphrase_fails_and_keeps_the_live_file(
    pyops: Pyops, sym_gnupghome: Path
) -> None:
    db, bid = symmetric_backup_then_wrong_passphrase(pyops, sym_gnupghome)
    before = live_state(pyops)

    proc = pyops.run("restore", bid, "--yes")

    assert proc.returncode == 1, output(proc)
    assert bid in proc.stderr, output(proc)
    assert live_state(pyops) == before
    assert row_counts(db)["users"] == 0
    deep = pyops.run("verify", "--deep", bid)
    assert deep.returncode == 1, output(deep)
    assert f"{bid}: FAILED" in deep.stdout


def test_gpg_symmetric_restore_with_a_wrong_passphrase_is_refused_before_anything(
    pyops: Pyops, sym_gnupghome: Path
) -> None:
    _, bid = symmetric_backup_then_wrong_passphrase(pyops, sym_gnupghome)

    proc = pyops.run("restore", bid, "--yes")

    assert proc.returncode == 1, output(proc)
    assert not (pyops.repo / "app" / "pre-restore").exists(), output(proc)
    assert "wrong passphrase" in proc.stderr, output(proc)


# --- hostile archives ------------------------------------------------------------


def _file(name: str, data: bytes = b"payload\n") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1_700_000_000
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 1_700_000_000
    return info, None


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = 1_700_000_000
    return info, None


def hostile(root: str, outside: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes | None]]]:
    """Archives whose first members are legitimate and whose later ones escape."""
    start = [_dir(root), _file(f"{root}/index.html")]
    return {
        "dotdot": [*start, _file("../evil")],
        # climbs out of the root, out of any --into directory, into its parent
        "dotdot-in-root": [*start, _file(root + "/.." * (root.count("/") + 2) + "/evil")],
        "absolute": [*start, _file("/abs/x")],
        "absolute-in-root": [*start, _file(f"/{root}/x")],
        "symlink-absolute": [
            *start,
            _link(f"{root}/esc", str(outside), tarfile.SYMTYPE),
            _file(f"{root}/esc/pwned"),
        ],
        "symlink-relative": [
            *start,
            _link(f"{root}/esc", "../outside", tarfile.SYMTYPE),
            _file(f"{root}/esc/pwned"),
        ],
        "hardlink-absolute": [*start, _link(f"{root}/passwd", "/etc/passwd", tarfile.LNKTYPE)],
        "hardlink-relative": [*start, _link(f"{root}/passwd", "etc/passwd", tarfile.LNKTYPE)],
    }


def write_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@dataclass(frozen=True)
class Shape:
    """A manifest pyops really wrote for a files backup, to model planted ones on."""

    id: str
    artifact_name: str
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def real_files_manifest(tmp_path_factory: pytest.TempPathFactory) -> Shape:
    root = tmp_path_factory.mktemp("shape")
    media = root / "media"
    media.mkdir()
    (media / "index.html").write_text("<h1>real</h1>\n")
    env = Pyops(root=root, repo=root / "repo", config=root / "pyops.toml")
    env.write(compression("none") + files_target("media", [media]))
    bid = env.backup("media")
    return Shape(bid, env.artifact(bid).name, env.manifest(bid))


def plant(
    pyops: Pyops,
    shape: Shape,
    paths: list[Path],
    members: list[tuple[tarfile.TarInfo, bytes | None]] | bytes,
    n: int = 0,
) -> str:
    """Put `members` (or an archive crafted byte by byte) in the repository as a
    complete backup: artifact and a manifest of the shape pyops writes, with the
    correct size, sha256, source paths and content facts, so only the archive's
    members can give it away."""
    archive = members if isinstance(members, bytes) else write_tar(members)
    bid = shape.id if n == 0 else f"media.daily.2020010{n}T000000Z"
    directory = pyops.repo / "media" / "daily"
    directory.mkdir(parents=True, exist_ok=True)
    manifest = copy.deepcopy(shape.manifest)
    manifest["id"] = bid
    manifest["artifact"]["name"] = shape.artifact_name.replace(shape.id, bid)
    (directory / manifest["artifact"]["name"]).write_bytes(archive)
    manifest["artifact"]["bytes"] = len(archive)
    manifest["artifact"]["sha256"] = hashlib.sha256(archive).hexdigest()
    manifest["source"]["paths"] = [str(p) for p in paths]
    if not isinstance(members, bytes):
        regular = [info for info, _ in members if info.isreg()]
        manifest["content"] = {"files": len(regular), "bytes": sum(i.size for i in regular)}
    pyops.save_manifest(bid, manifest)
    return bid


ATTACKS = list(hostile("r", Path("/o")))
IN_PLACE_TOO = {"dotdot-in-root", "symlink-absolute", "hardlink-absolute"}


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_archive_is_refused(pyops: Pyops, real_files_manifest: Shape, attack: str) -> None:
    site = pyops.root / "site"
    media = site / "media"
    media.mkdir(parents=True)
    (media / "index.html").write_text("<h1>live</h1>\n")
    outside = site / "outside"
    outside.mkdir()
    pyops.write(compression("none") + files_target("media", [media]))
    members = hostile(str(media.relative_to("/")), outside)[attack]
    bid = plant(pyops, real_files_manifest, [media], members)

    everything_before = all_paths(pyops.root)
    passwd = os.stat("/etc/passwd")
    dest = pyops.root / "dest"

    proc = pyops.run("restore", bid, "--into", str(dest), "--yes")

    assert proc.returncode == 1, output(proc)
    assert "refused" in proc.stderr, output(proc)
    allowed = (
        os.fsencode(dest),
        os.fsencode(pyops.repo / ".pyops"),
        os.fsencode(pyops.repo / ".lock"),
    )
    new = {p for p in all_paths(pyops.root) - everything_before if not p.startswith(allowed)}
    assert new == set()
    assert list(outside.iterdir()) == []
    assert not Path("/abs/x").exists()
    assert not (pyops.root / "evil").exists() and not (site / "evil").exists()
    assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink
    for path in all_paths(dest) if dest.exists() else set():
        assert os.lstat(path).st_ino != passwd.st_ino

    if attack not in IN_PLACE_TOO:
        return
    # in place: refused as well, the live tree untouched, no staging left beside it
    live_before = tree_snapshot(site)
    in_place = pyops.run("restore", bid, "--yes", "--no-safety-backup")
    assert in_place.returncode == 1, output(in_place)
    assert tree_snapshot(site) == live_before
    assert sorted(p.name for p in site.iterdir()) == ["media", "outside"]


def test_hostile_archives_fail_deep_verify(pyops: Pyops, real_files_manifest: Shape) -> None:
    media = pyops.root / "media"
    media.mkdir()
    pyops.write(compression("none") + files_target("media", [media]))
    attacks = hostile(str(media.relative_to("/")), pyops.root / "outside")
    ids = {
        attack: plant(pyops, real_files_manifest, [media], members, n)
        for n, (attack, members) in enumerate(attacks.items(), start=1)
    }

    plain = pyops.run("verify", *ids.values())
    assert plain.returncode == 0, "the checksums are right:\n" + output(plain)

    deep = pyops.run("verify", "--deep", *ids.values())

    assert deep.returncode == 1, output(deep)
    lines = dict(line.split(": ", 1) for line in deep.stdout.splitlines())
    for attack, bid in ids.items():
        assert lines[bid].startswith("FAILED") and "refused" in lines[bid], (attack, output(deep))


# --- headers GNU tar could read differently from pyops ------------------------------


def header_attacks(root: Path, outside: Path) -> dict[str, bytes]:
    """Archives whose escaping member hides where only a parser that reads headers
    differently from GNU tar (the extractor behind pyops) would miss it."""
    r = os.fsencode(root.relative_to("/"))
    out = os.fsencode(outside)
    start = tarcraft.member(r, typeflag=b"5", mode=0o755) + tarcraft.member(
        r + b"/index.html", b"<h1>crafted</h1>\n"
    )
    hidden = tarcraft.header(out + b"/pwned", size=5) + b"owned".ljust(512, b"\0")
    sparse_map = b"1\n0\n4096\n".ljust(512, b"\0")
    return {
        "pax-path-escapes": tarcraft.archive(
            start, tarcraft.pax((b"path", out + b"/pwned")), tarcraft.member(r + b"/ok", b"x")
        ),
        "pax-keyword-with-nul": tarcraft.archive(
            start, tarcraft.pax((b"path\0x", out + b"/pwned")), tarcraft.member(r + b"/ok", b"x")
        ),
        "pax-size-hides-a-member": tarcraft.archive(
            start, tarcraft.pax((b"size", b"0")), tarcraft.member(r + b"/f", hidden)
        ),
        "symlink-with-data": tarcraft.archive(
            start, tarcraft.member(r + b"/l", hidden, b"2", linkname=b"index.html")
        ),
        "long-name-escapes": tarcraft.archive(
            start, tarcraft.long_name(r + b"/../../../" + out + b"/pwned"), tarcraft.member(b"x")
        ),
        "long-link-to-passwd": tarcraft.archive(
            start, tarcraft.long_name(b"/etc/passwd", b"K"), tarcraft.member(r + b"/p", b"", b"1")
        ),
        "bad-checksum": tarcraft.archive(
            start, tarcraft.member(out + b"/pwned", b"x", chksum=b"0000000\0")
        ),
        "sparse-map-claims-too-much": tarcraft.archive(
            start,
            tarcraft.pax(
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.realsize", b"4096"),
            ),
            tarcraft.member(r + b"/s", sparse_map + hidden),
        ),
    }


HEADER_ATTACKS = list(header_attacks(Path("/r"), Path("/o")))


@pytest.mark.parametrize("attack", HEADER_ATTACKS)
def test_crafted_headers_are_refused_by_restore_and_deep_verify(
    pyops: Pyops, real_files_manifest: Shape, attack: str
) -> None:
    site = pyops.root / "site"
    media = site / "media"
    media.mkdir(parents=True)
    (media / "index.html").write_text("<h1>live</h1>\n")
    outside = site / "outside"
    outside.mkdir()
    pyops.write(compression("none") + files_target("media", [media]))
    bid = plant(pyops, real_files_manifest, [media], header_attacks(media, outside)[attack])
    everything_before = all_paths(pyops.root)
    passwd = os.stat("/etc/passwd")
    dest = pyops.root / "dest"

    deep = pyops.run("verify", "--deep", bid)
    assert deep.returncode == 1 and "refused" in deep.stdout + deep.stderr, output(deep)

    proc = pyops.run("restore", bid, "--into", str(dest), "--yes")
    assert proc.returncode == 1 and "refused" in proc.stderr, output(proc)
    allowed = (
        os.fsencode(pyops.repo / ".pyops"),
        os.fsencode(pyops.repo / ".lock"),
    )
    new = {p for p in all_paths(pyops.root) - everything_before if not p.startswith(allowed)}
    assert new == set(), "nothing is left, not even in the destination"
    assert list(outside.iterdir()) == []
    assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink

    live_before = tree_snapshot(site)
    in_place = pyops.run("restore", bid, "--yes", "--no-safety-backup")
    assert in_place.returncode == 1 and "refused" in in_place.stderr, output(in_place)
    assert tree_snapshot(site) == live_before
    assert sorted(p.name for p in site.iterdir()) == ["media", "outside"]
