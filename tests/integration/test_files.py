"""File-tree targets end to end: awkward names, links, modes, excludes, restore."""

# the fixture tree needs group/other permission bits
# ruff: noqa: S103

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest
from integration_helpers import (
    CommandFailed,
    Pyops,
    compression,
    files_target,
    output,
    tree_snapshot,
    two_runs_in_one_second,
)

SPACE = b"with space.txt"
NEWLINE = b"new\nline.txt"
NOT_UTF8 = b"caf\xe9.bin"
NOT_UTF8_DIR = b"dir\xfe"


def _write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def build_tree(top: Path) -> None:
    """A tree with the names and kinds a real application directory has, and worse."""
    t = os.fsencode(top)
    os.makedirs(os.path.join(t, b"sub dir", b"nested", b"deeper"))
    os.makedirs(os.path.join(t, NOT_UTF8_DIR))
    os.makedirs(os.path.join(t, b"private"))
    _write(os.path.join(t, b"plain.txt"), b"hello\n")
    _write(os.path.join(t, SPACE), b"spaces are fine\n")
    _write(os.path.join(t, NEWLINE), b"a newline in the name\n", 0o600)
    _write(os.path.join(t, NOT_UTF8), os.urandom(3000), 0o640)
    _write(os.path.join(t, NOT_UTF8_DIR, b"inside \xff\xfe"), b"bytes all the way\n")
    _write(os.path.join(t, b"empty"), b"", 0o600)
    _write(os.path.join(t, b"run.sh"), b"#!/bin/sh\necho hi\n", 0o755)
    _write(os.path.join(t, b"sub dir", b"nested", b"deeper", b"deep.dat"), os.urandom(70_000))
    _write(os.path.join(t, b"sub dir", b"nested", b"n.txt"), b"nested\n", 0o640)
    _write(os.path.join(t, b"private", b"secret"), b"s3cr3t\n", 0o600)
    os.symlink(b"plain.txt", os.path.join(t, b"link-to-plain"))
    os.symlink(b"../../plain.txt", os.path.join(t, b"sub dir", b"nested", b"up"))
    os.symlink(b"no-such-file", os.path.join(t, b"dangling"))
    # excluded by the target's "*.tmp"
    _write(os.path.join(t, b"junk.tmp"), b"excluded\n")
    _write(os.path.join(t, b"sub dir", b"nested", b"also.tmp"), b"excluded too\n")
    os.chmod(os.path.join(t, b"private"), 0o750)
    os.chmod(os.path.join(t, b"sub dir"), 0o711)


def without_excluded(
    snap: dict[bytes, tuple[str, int, bytes]],
) -> dict[bytes, tuple[str, int, bytes]]:
    return {k: v for k, v in snap.items() if not k.endswith(b".tmp")}


def tally(snap: dict[bytes, tuple[str, int, bytes]]) -> dict[str, int]:
    files = [v for v in snap.values() if v[0] == "file"]
    return {"files": len(files), "bytes": sum(len(v[2]) for v in files)}


def test_round_trip_into_a_new_directory(pyops: Pyops) -> None:
    src = pyops.root / "app-media"
    src.mkdir()
    build_tree(src)
    src.chmod(0o750)
    pyops.write(compression("zstd") + files_target("media", [src], ["*.tmp"]))
    original = tree_snapshot(src)
    expected = without_excluded(original)
    file_mtimes = {
        rel: int(os.lstat(os.path.join(os.fsencode(src), rel)).st_mtime)
        for rel, (kind, _, _) in expected.items()
        if kind == "file"
    }

    bid = pyops.backup("media")

    manifest = pyops.manifest(bid)
    assert pyops.artifact(bid).name == f"{bid}.tar.zst"
    assert manifest["content"] == tally(expected)
    assert manifest["content"]["files"] == 10
    assert manifest["source"]["paths"] == [str(src)]
    pyops.ok("verify", "--deep", bid)

    dest = pyops.root / "restore-here"
    proc = pyops.ok("restore", bid, "--into", str(dest), "--yes")
    assert "10 files" in proc.stdout

    restored = dest / src.relative_to("/")
    assert tree_snapshot(restored) == expected
    assert restored.stat().st_mode & 0o7777 == 0o750
    for rel, mtime in file_mtimes.items():
        assert int(os.lstat(os.path.join(os.fsencode(restored), rel)).st_mtime) == mtime
    # nothing but the restored tree below the destination
    top = dest / src.relative_to("/").parts[0]
    assert [p.name for p in dest.iterdir()] == [top.name]
    # the source was not touched, and no safety backup for a restore into a new path
    assert tree_snapshot(src) == original
    assert not (pyops.repo / "media" / "pre-restore").exists()


def test_into_a_non_empty_directory_is_refused(pyops: Pyops) -> None:
    src = pyops.root / "data"
    src.mkdir()
    (src / "a").write_text("a\n")
    pyops.write(compression("gzip") + files_target("data", [src]))
    bid = pyops.backup("data")
    dest = pyops.root / "occupied"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine\n")

    proc = pyops.run("restore", bid, "--into", str(dest), "--yes")

    assert proc.returncode == 1, output(proc)
    assert str(dest) in proc.stderr
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "mine\n"


def mutate(top: Path) -> None:
    t = os.fsencode(top)
    _write(os.path.join(t, b"plain.txt"), b"changed after the backup\n")
    os.unlink(os.path.join(t, SPACE))
    _write(os.path.join(t, b"new since backup"), b"new\n")
    os.chmod(os.path.join(t, b"run.sh"), 0o700)


def test_in_place_restore_of_two_paths(pyops: Pyops) -> None:
    media = pyops.root / "srv" / "media"
    conf = pyops.root / "etc" / "app"
    media.mkdir(parents=True)
    conf.mkdir(parents=True)
    build_tree(media)
    (conf / "app.conf").write_text("workers = 4\n")
    (conf / "conf.d").mkdir()
    (conf / "conf.d" / "extra.conf").write_text("debug = false\n")
    pyops.write(compression("zstd") + files_target("site", [media, conf], ["*.tmp"]))
    media_at_backup = tree_snapshot(media)
    conf_at_backup = tree_snapshot(conf)

    bid = pyops.backup("site")
    assert pyops.manifest(bid)["content"] == {
        "files": tally(without_excluded(media_at_backup))["files"] + 2,
        "bytes": tally(without_excluded(media_at_backup))["bytes"] + 12 + 14,
    }

    mutate(media)
    (conf / "app.conf").write_text("workers = 64\n")
    (conf / "conf.d" / "extra.conf").unlink()
    media_live = tree_snapshot(media)
    conf_live = tree_snapshot(conf)

    proc = pyops.run("restore", bid, "--yes")
    assert proc.returncode == 0, output(proc)

    assert tree_snapshot(media) == without_excluded(media_at_backup)
    assert tree_snapshot(conf) == conf_at_backup
    kept = re.search(r"previous kept as (.+)$", proc.stdout.strip())
    assert kept, output(proc)
    media_kept = sorted((pyops.root / "srv").glob("media.pre-restore-*"))
    conf_kept = sorted((pyops.root / "etc").glob("app.pre-restore-*"))
    assert len(media_kept) == 1 and len(conf_kept) == 1
    assert media_kept[0].name.split("pre-restore-")[1] == conf_kept[0].name.split("pre-restore-")[1]
    assert tree_snapshot(media_kept[0]) == media_live
    assert tree_snapshot(conf_kept[0]) == conf_live
    assert str(media_kept[0]) in kept.group(1) and str(conf_kept[0]) in kept.group(1)
    # no staging directories left beside the live paths
    assert sorted(p.name for p in (pyops.root / "srv").iterdir()) == [
        "media",
        media_kept[0].name,
    ]
    assert sorted(p.name for p in (pyops.root / "etc").iterdir()) == ["app", conf_kept[0].name]

    safety = pyops.listed("--tier", "pre-restore")
    assert len(safety) == 1
    safety_manifest = pyops.manifest(safety[0]["id"])
    live_tally = tally(without_excluded(media_live))
    assert safety_manifest["content"] == {
        "files": live_tally["files"] + 1,
        "bytes": live_tally["bytes"] + len("workers = 64\n"),
    }
    pyops.ok("verify", "--deep", safety[0]["id"])


def test_a_single_file_path_round_trips_in_place(pyops: Pyops) -> None:
    conf = pyops.root / "nginx.conf"
    conf.write_text("server {}\n")
    conf.chmod(0o640)
    pyops.write(compression("none") + files_target("conf", [conf]))
    bid = pyops.backup("conf")
    assert pyops.manifest(bid)["content"] == {"files": 1, "bytes": 10}
    pyops.ok("verify", "--deep", bid)
    conf.write_text("broken\n")

    proc = pyops.run("restore", bid, "--yes")

    assert proc.returncode == 0, output(proc)
    assert conf.read_text() == "server {}\n"
    assert conf.stat().st_mode & 0o777 == 0o640
    kept = list(pyops.root.glob("nginx.conf.pre-restore-*"))
    assert len(kept) == 1 and kept[0].read_text() == "broken\n"


def test_manifest_counts_match_what_tar_archived(pyops: Pyops) -> None:
    """The content facts are the regular files tar wrote (links and excluded files are
    not counted), checked independently by reading the artifact with tarfile."""
    src = pyops.root / "tree"
    src.mkdir()
    build_tree(src)
    os.link(src / "plain.txt", src / "hardlinked.txt")
    pyops.write(compression("none") + files_target("tree", [src], ["*.tmp"]))

    bid = pyops.backup("tree")

    with tarfile.open(pyops.artifact(bid), encoding="utf-8", errors="surrogateescape") as tar:
        members = tar.getmembers()
    regular = [m for m in members if m.isreg()]
    assert any(m.islnk() for m in members)
    assert not any(m.name.endswith(".tmp") for m in members)
    expected = {"files": len(regular), "bytes": sum(m.size for m in regular)}
    assert pyops.manifest(bid)["content"] == expected
    snap = without_excluded(tree_snapshot(src))
    assert expected["files"] == tally(snap)["files"] - 1  # the hard link is not a second file


def test_two_quick_in_place_restores(pyops: Pyops) -> None:
    src = pyops.root / "data"
    src.mkdir()
    (src / "f").write_text("backed up\n")
    pyops.write(compression("none") + files_target("data", [src]))
    bid = pyops.backup("data")
    for attempt in range(3):
        (src / "f").write_text(f"live {attempt}\n")
        live = tree_snapshot(src)
        runs = two_runs_in_one_second(pyops, "restore", bid, "--yes", "--no-safety-backup")
        if all(r.returncode != 0 for r in runs):
            raise CommandFailed("\n".join(output(r) for r in runs))
        stamps = [
            m.group(1)
            for r in runs
            if (m := re.search(r"previous kept as \S+\.pre-restore-(\d{8}T\d{6}Z)", r.stdout))
        ]
        if len(stamps) < 2 or stamps[0] == stamps[1]:
            break
    else:
        pytest.skip("could not get two restores into the same second")
    assert [r.returncode for r in runs] == [0, 0], "\n".join(output(r) for r in runs)
    assert not list(pyops.root.glob(".data.pyops-restore-*"))
    kept = [tree_snapshot(p) for p in pyops.root.glob("data.pre-restore-*")]
    assert live in kept
