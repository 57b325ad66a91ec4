"""`pyops drill` through the real CLI against real PostgreSQL, SQLite, files, gpg and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from drill_support import (
    ZSTD,
    Live,
    Repo,
    databases_like,
    describe,
    edit_manifest,
    files_target,
    gpg_public,
    newest_manifest,
    pg_snapshot,
    pg_target,
    sqlite_snapshot,
    sqlite_target,
    tree_digest,
)
from fixtures.gpgkeys import GpgKey
from fixtures.s3 import S3

TARGETS = ["appdb", "lite", "media"]
PG_TABLES = {"public.items": 250, "public.MixedCase": 17, "audit.events": 3}


def three_targets(live: Live, extra: str = "") -> str:
    return (
        pg_target("appdb", live.pg.dsn(live.db))
        + sqlite_target("lite", live.sqlite)
        + files_target("media", live.files)
        + ZSTD
        + extra
    )


def drills_by_target(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["target"]: d for d in data["drills"]}


def last_drill_run(repo: Repo) -> dict[str, Any]:
    runs = repo.json("history", "--limit", "5")["runs"]
    drills = [r for r in runs if r.get("command") == "drill"]
    assert drills, f"no drill in the run log: {runs}"
    newest: dict[str, Any] = drills[0]
    return newest


def test_drill_passes_on_good_backups_and_leaves_nothing(
    repo: Repo, live: Live, gpg_home: GpgKey
) -> None:
    repo.write(three_targets(live, gpg_public(gpg_home.email, gpg_home.gnupghome)))
    repo.ok("backup")
    before = live.fingerprint()

    proc = repo.run("drill", "--format", "json")
    assert proc.returncode == 0, describe(proc)
    drills = drills_by_target(json.loads(proc.stdout))
    assert sorted(drills) == TARGETS

    for name, d in drills.items():
        assert d["ok"] is True and d["error"] is None, d
        assert d["remote"] is False
        assert d["backup"].startswith(f"{name}.daily."), d
        for key in ("rto_s", "fetch_s", "restore_s", "check_s"):
            assert isinstance(d[key], (int, float)) and d[key] >= 0, (key, d)
        assert d["fetch_s"] == 0  # local: nothing to fetch
        assert d["restore_s"] > 0
        assert d["rto_s"] == pytest.approx(d["fetch_s"] + d["restore_s"] + d["check_s"], abs=0.01)

    # what was checked is what the live data holds
    assert drills["appdb"]["checked"] == {"tables": 3, "rows": sum(PG_TABLES.values())}
    assert drills["lite"]["checked"]["integrity_check"] == "ok"
    assert drills["lite"]["checked"]["tables"] == 2
    assert drills["media"]["checked"]["files"] == 5
    assert drills["media"]["checked"]["sampled_files"] == 5

    # the scratch is gone: no drill database, no drill file or directory
    assert databases_like(live.pg, "pyops_drill_") == []
    assert drills["appdb"]["scratch"].startswith("pyops_drill_appdb_")
    for name in ("lite", "media"):
        scratch = Path(drills[name]["scratch"])
        assert scratch.parent == repo.drill_dir, scratch
        assert not scratch.exists() and not scratch.is_symlink()
    assert list(repo.drill_dir.iterdir()) == []
    assert list((repo.path / ".pyops" / "scratch").iterdir()) == []

    # the live database, file and directory are untouched
    assert live.fingerprint() == before

    run = last_drill_run(repo)
    assert run["result"] == "ok" and run["targets"] == TARGETS
    assert sorted(d["target"] for d in run["drills"]) == TARGETS
    assert all(d["ok"] for d in run["drills"])


def test_drill_keep_leaves_a_faithful_scratch(repo: Repo, live: Live) -> None:
    repo.write(three_targets(live))
    repo.ok("backup")
    drills = drills_by_target(repo.json("drill", "--keep"))
    assert all(d["ok"] for d in drills.values()), drills

    scratch_db = drills["appdb"]["scratch"]
    assert databases_like(live.pg, "pyops_drill_") == [scratch_db]
    assert pg_snapshot(live.pg, scratch_db) == pg_snapshot(live.pg, live.db)

    lite = Path(drills["lite"]["scratch"])
    assert lite.is_file()
    assert sqlite_snapshot(lite) == sqlite_snapshot(live.sqlite)

    media = Path(drills["media"]["scratch"])
    assert media.is_dir()
    restored = media / live.files.relative_to("/")
    assert tree_digest(restored) == tree_digest(live.files)
    # the fixture drops the kept database


def test_drill_remote_after_losing_the_local_repository(repo: Repo, live: Live, s3: S3) -> None:
    repo.write(three_targets(live, s3.config(object_lock_days=0)))
    repo.ok("backup")
    keys = s3.object_keys()
    for name in TARGETS:
        assert any(f"/{name}/" in k and k.endswith(".manifest.json") for k in keys), keys
    shutil.rmtree(repo.path)

    proc = repo.run("drill", "--remote", "--format", "json")
    assert proc.returncode == 0, describe(proc)
    drills = drills_by_target(json.loads(proc.stdout))
    assert sorted(drills) == TARGETS
    for d in drills.values():
        assert d["ok"] is True and d["remote"] is True, d
        assert d["fetch_s"] > 0, d
        assert d["rto_s"] >= d["fetch_s"]
    assert drills["appdb"]["checked"] == {"tables": 3, "rows": sum(PG_TABLES.values())}
    assert databases_like(live.pg, "pyops_drill_") == []
    assert last_drill_run(repo)["result"] == "ok"


@pytest.mark.parametrize(
    ("target", "table", "key"),
    [
        ("appdb", "public.MixedCase", "tables"),
        ("lite", "Tags", "tables"),
        ("media", None, "files"),
    ],
    ids=["postgres", "sqlite", "files"],
)
def test_drill_fails_naming_the_difference(
    repo: Repo, live: Live, target: str, table: str | None, key: str
) -> None:
    repo.write(three_targets(live))
    repo.ok("backup")
    manifest = newest_manifest(repo.path, target)
    real = json.loads(manifest.read_text())["content"]
    if table is None:
        wrong = real[key] + 1

        def change(doc: dict[str, Any]) -> None:
            doc["content"][key] = wrong

        expected = f"{key}: {real[key]}, manifest says {wrong}"
    else:
        wrong = real["tables"][table] + 1000

        def change(doc: dict[str, Any]) -> None:
            doc["content"]["tables"][table] = wrong

        expected = f"table {table}: {real['tables'][table]} rows, manifest says {wrong}"
    edit_manifest(manifest, change)

    proc = repo.run("drill")
    assert proc.returncode == 1, describe(proc)
    lines = {line.split(":", 1)[0]: line for line in proc.stdout.splitlines()}
    assert "FAILED" in lines[target] and expected in lines[target], describe(proc)
    for other in set(TARGETS) - {target}:
        assert lines[other].startswith(f"{other}: ok "), describe(proc)
    assert expected in proc.stderr  # the log says it too

    # a failed drill still leaves nothing behind, and is recorded as failed
    assert databases_like(live.pg, "pyops_drill_") == []
    assert list(repo.drill_dir.iterdir()) == []
    run = last_drill_run(repo)
    assert run["result"] == "failed"
    failed = [d for d in run["drills"] if not d["ok"]]
    assert [d["target"] for d in failed] == [target]
    assert expected in failed[0]["error"]


def test_drill_of_a_damaged_artifact_fails_and_drops_the_scratch(repo: Repo, live: Live) -> None:
    repo.write(pg_target("appdb", live.pg.dsn(live.db)) + ZSTD)
    repo.ok("backup")
    artifact = repo.artifact("appdb")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    proc = repo.run("drill", "--format", "json")
    assert proc.returncode == 1, describe(proc)
    (d,) = json.loads(proc.stdout)["drills"]
    assert d["ok"] is False and d["error"], d
    assert databases_like(live.pg, "pyops_drill_") == []


def test_drill_without_a_backup_fails_clearly(repo: Repo, live: Live) -> None:
    repo.write(sqlite_target("lite", live.sqlite))
    proc = repo.run("drill")
    assert proc.returncode == 1, describe(proc)
    assert "lite" in proc.stdout and "no complete backup" in proc.stdout, describe(proc)
    unknown = repo.run("drill", "--target", "nope")
    assert unknown.returncode == 2 and "--target" in unknown.stderr, describe(unknown)
    assert "nope" in unknown.stderr


def test_drill_of_a_mixed_case_hyphenated_target_name(repo: Repo, live: Live) -> None:
    repo.write(pg_target("App-DB_2", live.pg.dsn(live.db)) + ZSTD)
    repo.ok("backup")
    (d,) = repo.json("drill", "--keep")["drills"]
    assert d["ok"] is True, d
    assert databases_like(live.pg, "pyops_drill_") == [d["scratch"]]
    assert d["scratch"].startswith("pyops_drill_App_DB_2_")
    assert pg_snapshot(live.pg, d["scratch"]) == pg_snapshot(live.pg, live.db)
