"""Damaged backups: every layer (zstd, gpg, SQLite, tar) must be caught by `verify`.

The "bad when written" cases truncate an artifact and rewrite its manifest's size and
sha256 to match, as if the backup had been broken before the manifest was made: the
checksum then agrees, and only `verify --deep` (decoding the whole stream) can tell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.gpgkeys import cleanup_home, make_gnupghome
from integration_helpers import (
    Pyops,
    files_target,
    output,
    passphrase_file,
    sqlite_target,
)


@dataclass(frozen=True)
class Layer:
    name: str
    target: str
    body: str  # config body; {root} and {gnupghome} are filled in
    ext: str
    says: tuple[str, ...]  # what the deep failure must mention (any of)


LAYERS = {
    "zstd": Layer(
        "zstd",
        "db",
        '[compression]\nalgorithm = "zstd"\n' + sqlite_target("db", Path("{root}/db.sqlite3")),
        "sqlite3.zst",
        ("zstd",),
    ),
    "gpg": Layer(
        "gpg",
        "db",
        '[compression]\nalgorithm = "none"\n'
        '[encryption]\nmode = "gpg-symmetric"\ngnupghome = "{gnupghome}"\n'
        'passphrase_file = "{root}/passphrase"\n' + sqlite_target("db", Path("{root}/db.sqlite3")),
        "sqlite3.gpg",
        ("gpg",),
    ),
    "sqlite": Layer(
        "sqlite",
        "db",
        '[compression]\nalgorithm = "none"\n' + sqlite_target("db", Path("{root}/db.sqlite3")),
        "sqlite3",
        ("integrity_check", "malformed", "content differs"),
    ),
    "tar": Layer(
        "tar",
        "tree",
        '[compression]\nalgorithm = "none"\n' + files_target("tree", [Path("{root}/tree")]),
        "tar",
        ("truncated", "damaged", "unreadable"),
    ),
}


def make_sources(root: Path) -> None:
    """Sources big enough that 10% of the artifact is far more than any padding."""
    conn = sqlite3.connect(root / "db.sqlite3")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.executemany(
        "INSERT INTO blobs(data) VALUES (?)", [(os.urandom(1500),) for _ in range(200)]
    )
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i}",) for i in range(500)])
    conn.commit()
    conn.close()
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(12):
        (tree / "sub" / f"f{i}.bin").write_bytes(os.urandom(25_000))
    (tree / "readme.txt").write_text("hello\n")


@dataclass(frozen=True)
class Built:
    """One complete backup per layer in a template directory; tests work on copies."""

    template: Path
    gnupghome: Path
    ids: dict[str, str]

    def copy(self, layer: Layer, dest: Path) -> tuple[Pyops, str]:
        src = self.template / layer.name
        shutil.copytree(src, dest, symlinks=True)
        env = Pyops(root=dest, repo=dest / "repo", config=dest / "pyops.toml")
        env.write(layer.body.format(root=dest, gnupghome=self.gnupghome))
        return env, self.ids[layer.name]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    template = tmp_path_factory.mktemp("layers")
    gnupghome = make_gnupghome()
    try:
        ids = {}
        for layer in LAYERS.values():
            root = template / layer.name
            root.mkdir()
            make_sources(root)
            passphrase_file(root)
            env = Pyops(root=root, repo=root / "repo", config=root / "pyops.toml")
            env.write(layer.body.format(root=root, gnupghome=gnupghome))
            bid = env.backup(layer.target)
            assert env.artifact(bid).name == f"{bid}.{layer.ext}"
            ids[layer.name] = bid
        yield Built(template, gnupghome, ids)
    finally:
        cleanup_home(gnupghome)


def plant_truncated(env: Pyops, bid: str, fraction: float, n: int) -> str:
    """A copy of backup `bid`, under a new id, whose artifact was cut to `fraction` of
    its size before its manifest was written: size and sha256 agree with the damage,
    as for a backup that was already bad when it was made."""
    target, tier, _ = bid.split(".")
    new_id = f"{target}.{tier}.2020010{n}T000000Z"
    data = env.artifact(bid).read_bytes()
    cut = data[: int(len(data) * fraction)]
    manifest = env.manifest(bid)
    name = manifest["artifact"]["name"].replace(bid, new_id)
    (env.tier_dir(bid) / name).write_bytes(cut)
    manifest["id"] = new_id
    manifest["started_at"] = f"2020-01-0{n}T00:00:00+00:00"
    manifest["artifact"] = {
        "name": name,
        "bytes": len(cut),
        "sha256": hashlib.sha256(cut).hexdigest(),
    }
    env.save_manifest(new_id, manifest)
    return new_id


FRACTIONS = (0.1, 0.5, 0.9)


@pytest.mark.parametrize("layer", list(LAYERS.values()), ids=list(LAYERS))
def test_truncated_when_written_is_caught_by_deep_verify(
    built: Built, tmp_path: Path, layer: Layer
) -> None:
    env, sound = built.copy(layer, tmp_path / "w")
    cut = {f: plant_truncated(env, sound, f, n) for n, f in enumerate(FRACTIONS, start=1)}

    plain = env.run("verify", sound, *cut.values())
    assert plain.returncode == 0, "checksums agree, so plain verify passes:\n" + output(plain)

    deep = env.run("verify", "--deep", sound, *cut.values())
    assert deep.returncode == 1, output(deep)
    lines = dict(line.split(": ", 1) for line in deep.stdout.splitlines())
    assert lines[sound] == "ok (deep)", output(deep)
    for fraction, bid in cut.items():
        assert lines[bid].startswith("FAILED"), f"{fraction:.0%}: {output(deep)}"
        assert any(word in lines[bid] for word in layer.says), f"{fraction:.0%}: {output(deep)}"

    # a restore of one refuses too, and leaves nothing at the destination
    dest = tmp_path / "restored"
    restore = env.run("restore", cut[0.5], "--into", str(dest), "--yes")
    assert restore.returncode == 1, output(restore)
    assert not dest.exists() or not any(dest.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in (["w"], ["restored", "w"])


@pytest.mark.parametrize("layer", list(LAYERS.values()), ids=list(LAYERS))
def test_one_flipped_byte_fails_the_checksum(built: Built, tmp_path: Path, layer: Layer) -> None:
    env, bid = built.copy(layer, tmp_path / "w")
    artifact = env.artifact(bid)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    proc = env.run("verify", bid)

    assert proc.returncode == 1, output(proc)
    assert bid in proc.stdout
    assert "sha256" in proc.stdout


def test_a_missing_artifact_fails_verify(built: Built, tmp_path: Path) -> None:
    env, bid = built.copy(LAYERS["zstd"], tmp_path / "w")
    env.artifact(bid).unlink()

    proc = env.run("verify", bid)

    assert proc.returncode == 1, output(proc)
    assert bid in proc.stdout
    assert "missing" in proc.stdout
    deep = env.run("verify", "--deep", "--all")
    assert deep.returncode == 1, output(deep)


def test_a_manifest_with_a_wrong_row_count_fails_deep_verify(built: Built, tmp_path: Path) -> None:
    env, bid = built.copy(LAYERS["zstd"], tmp_path / "w")
    manifest = env.manifest(bid)
    assert manifest["content"]["tables"] == {"blobs": 200, "notes": 500}
    manifest["content"]["tables"]["notes"] = 499
    env.save_manifest(bid, manifest)

    assert env.run("verify", bid).returncode == 0  # the artifact itself is intact

    proc = env.run("verify", "--deep", bid)
    assert proc.returncode == 1, output(proc)
    assert bid in proc.stdout
    assert "notes" in proc.stdout


def test_a_manifest_with_a_wrong_file_count_fails_deep_verify(built: Built, tmp_path: Path) -> None:
    env, bid = built.copy(LAYERS["tar"], tmp_path / "w")
    manifest = env.manifest(bid)
    assert manifest["content"]["files"] == 13
    manifest["content"]["files"] = 14
    env.save_manifest(bid, manifest)

    proc = env.run("verify", "--deep", bid)

    assert proc.returncode == 1, output(proc)
    assert bid in proc.stdout
    assert "files" in proc.stdout
