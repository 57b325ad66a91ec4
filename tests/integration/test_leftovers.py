"""What dead runs leave behind is never a backup, and the next backup removes it;
files pyops did not make are never touched."""

from __future__ import annotations

import subprocess

from integration_helpers import Pyops, compression, make_sample_db, sqlite_target


def dead_pid() -> int:
    """The pid of a process that has exited: its temp files are a dead run's."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_are_never_listed_and_the_next_backup_removes_them(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=20)
    other_db = pyops.root / "other.sqlite3"
    make_sample_db(other_db, rows=5)
    pyops.write(
        compression("zstd") + sqlite_target("app", db) + "\n" + sqlite_target("other", other_db)
    )
    first = pyops.backup("app")
    daily = pyops.repo / "app" / "daily"
    weekly = pyops.repo / "app" / "weekly"
    weekly.mkdir(mode=0o700)

    dead = {
        # an artifact a killed run was still writing
        daily / f"app.daily.20200101T000000Z.sqlite3.zst.tmp-{dead_pid()}": b"half an artifact",
        # an artifact whose manifest never came
        daily / "app.daily.20200102T000000Z.sqlite3.zst": b"\x28\xb5\x2f\xfd no manifest",
        # a manifest being written when the run died
        daily / f"app.daily.20200103T000000Z.manifest.json.tmp-{dead_pid()}": b'{"id": "app.da',
        weekly / "app.weekly.20200105T000000Z.sqlite3.zst": b"orphan in another tier",
    }
    foreign = {
        daily / "notes.txt": b"the operator's notes\n",
        daily / "README": b"do not delete\n",
        pyops.repo / "app" / "notes.txt": b"more notes\n",
        weekly / "app.weekly.keep-me.txt": b"not a backup name\n",
    }
    other_dir = pyops.repo / "other" / "daily"
    other_dir.mkdir(parents=True, mode=0o700)
    # another target's leftover: that target's next backup deals with it
    other_orphan = other_dir / "other.daily.20200101T000000Z.sqlite3.zst"
    for path, data in {**dead, **foreign, other_orphan: b"orphan of other"}.items():
        path.write_bytes(data)

    assert [b["id"] for b in pyops.listed()] == [first]
    assert [b["id"] for b in pyops.listed("--tier", "weekly")] == []
    assert pyops.ok("verify", "--all").stdout.strip() == f"{first}: ok"

    second = pyops.backup("app")

    assert [b["id"] for b in pyops.listed()] == [second, first]
    for path in dead:
        assert not path.exists(), f"{path.name} survived the next backup"
    for path, data in foreign.items():
        assert path.read_bytes() == data, f"{path} was touched"
    assert other_orphan.exists()
    assert sorted(p.name for p in daily.iterdir()) == sorted(
        [
            pyops.artifact(first).name,
            pyops.manifest_path(first).name,
            pyops.artifact(second).name,
            pyops.manifest_path(second).name,
            "notes.txt",
            "README",
        ]
    )
    pyops.ok("verify", "--all")

    pyops.backup("other")
    assert not other_orphan.exists()
