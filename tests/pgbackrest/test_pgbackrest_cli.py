"""A pgbackrest target through the real CLI, against the real pgBackRest and a cluster
that archives its WAL: backup by tier, list, health, drill (newest and point in time),
and what pyops leaves to pgBackRest (prune, restore, maintenance).

The tests of this module share one stanza and run in file order: each one that needs a
backup makes sure there is one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pgbr_support import STANZA, TARGET, Archiving, Pyops, describe

from pyops.tools.pgbackrest import TYPE_TIERS


def backup(pyops: Pyops, tier: str) -> dict[str, Any]:
    result: dict[str, Any] = pyops.json("backup", "--tier", tier)["backups"][0]
    assert result["ok"], result
    return result


def ensure_backup(archiving: Archiving, pyops: Pyops) -> None:
    if not archiving.info().get("backup"):
        backup(pyops, "monthly")


def insert(archiving: Archiving, phase: str, rows: int) -> None:
    archiving.pg.psql(
        f"INSERT INTO events (phase) SELECT '{phase}' FROM generate_series(1, {rows})",
        dbname="app",
    )


def server_now(archiving: Archiving) -> str:
    return archiving.pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ).strip()


def events(drill: dict[str, Any]) -> int:
    return int(drill["checked"]["row_counts"]["app"]["public.events"])


def test_backup_by_tier_list_metrics_and_history(archiving: Archiving, pyops: Pyops) -> None:
    first = backup(pyops, "daily")
    made = {b["label"]: b for b in archiving.info()["backup"]}
    assert first["id"] in made
    if made[first["id"]]["type"] == "full":  # the stanza's first backup: pgBackRest says so
        assert any("changed to full" in w for w in first["warnings"]), first
    weekly = backup(pyops, "weekly")
    daily = backup(pyops, "daily")
    assert weekly["id"].endswith("D") and daily["id"].endswith("I")
    assert daily["tier"] == "daily" and daily["bytes"] > 0

    listed = pyops.json("list")
    rows = {r["id"]: r for r in listed["backups"]}
    assert listed["unavailable"] == []
    for label in [*made, weekly["id"], daily["id"]]:
        row = rows[label]
        assert row["engine"] == "pgbackrest" and row["target"] == TARGET
        assert row["tier"] == TYPE_TIERS[row["type"]]
        assert row["offsite"] is None and row["authenticated"] is None
    assert rows[weekly["id"]]["type"] == "diff" and rows[daily["id"]]["type"] == "incr"
    times = [r["time"] for r in listed["backups"]]
    assert times == sorted(times, reverse=True)
    assert [r["id"] for r in pyops.json("list", "--tier", "weekly")["backups"]][:1] == [
        weekly["id"]
    ]
    text = pyops.ok("list").stdout
    assert f"{TARGET}:{daily['id']}" in text and " - " in text  # offsite, authenticated: n/a

    prom = (pyops.config.parent / "prom" / "pyops_backup.prom").read_text()
    assert f'pyops_backup_last_run_ok{{target="{TARGET}",tier="daily"}} 1' in prom
    assert f'pyops_backup_last_run_ok{{target="{TARGET}",tier="weekly"}} 1' in prom
    runs = pyops.json("history")["runs"]
    assert runs[0]["command"] == "backup" and runs[0]["result"] == "ok"
    assert runs[0]["backups"][0]["id"] == daily["id"]


def test_health_sees_fresh_backups_and_working_archiving(
    archiving: Archiving, pyops: Pyops
) -> None:
    ensure_backup(archiving, pyops)
    report = pyops.json("health", "--check", "pgbackrest")
    (check,) = report["checks"]
    assert check["status"] == "ok", check
    assert "pgbackrest check passed" in check["message"]
    assert "WAL archiving works" in check["message"]
    assert check["metrics"][f"{TARGET}.archive_failed_count"] == 0
    assert f"{TARGET}.daily.age_hours" in check["metrics"]
    # the checks of pyops' own backups have nothing to judge here
    proc = pyops.run("health", "--format", "json")
    everything = json.loads(proc.stdout)
    names = {c["name"]: c for c in everything["checks"]}
    assert names["pgbackrest"]["status"] == "ok"
    skipped = {c["name"]: c["why"] for c in everything["not_configured"]}
    for name in ("backup_freshness", "backup_size"):
        assert "pgbackrest targets: the pgbackrest check" in skipped[name]
    assert "drill_freshness" in names


def test_drill_restores_the_newest_backup_and_replays_the_archive(
    archiving: Archiving, pyops: Pyops
) -> None:
    ensure_backup(archiving, pyops)
    insert(archiving, "after-backup", 7)  # only in the WAL: the drill must replay it
    archiving.switch_wal_and_wait()
    expected = int(archiving.pg.psql("SELECT count(*) FROM events", dbname="app"))
    newest = archiving.info()["backup"][-1]["label"]

    (drill,) = pyops.json("drill")["drills"]
    assert drill["ok"], drill
    assert drill["backup"] == newest and drill["tier"] == TYPE_TIERS[drill["checked"]["type"]]
    assert events(drill) == expected
    assert drill["checked"]["recovery"] == "end of archived WAL"
    assert drill["checked"]["amcheck"] == "ok"
    assert drill["checked"]["recovered_to"]
    assert drill["restore_s"] > 0 and drill["cluster_s"] > 0
    assert drill["rto_s"] >= drill["restore_s"] + drill["cluster_s"]
    assert drill["leftover"] is None and not Path(drill["scratch"]).exists()

    fresh = pyops.json("health", "--check", "drill_freshness")["checks"][0]
    assert fresh["status"] == "ok", fresh
    prom = (pyops.config.parent / "prom" / "pyops_drill.prom").read_text()
    assert f'pyops_drill_last_run_ok{{target="{TARGET}",tier="{drill["tier"]}"}} 1' in prom


def test_drill_to_a_point_in_time(archiving: Archiving, pyops: Pyops) -> None:
    ensure_backup(archiving, pyops)
    archiving.switch_wal_and_wait()
    time.sleep(2.1)  # the newest backup ended (to the second) before the target
    insert(archiving, "before", 11)
    before = int(archiving.pg.psql("SELECT count(*) FROM events", dbname="app"))
    time.sleep(0.3)
    target_time = server_now(archiving)
    time.sleep(0.3)
    insert(archiving, "after", 5)
    archiving.switch_wal_and_wait()

    (drill,) = pyops.json("drill", "--target-time", target_time)["drills"]
    assert drill["ok"], drill
    assert events(drill) == before  # present before the target, absent after it
    assert drill["checked"]["recovery"].startswith("to ")
    recovered = datetime.fromisoformat(drill["checked"]["recovered_to"])
    assert recovered < datetime.fromisoformat(target_time.replace("Z", "+00:00"))
    record = pyops.json("history")["runs"][0]
    assert record["command"] == "drill" and record["target_time"].startswith(target_time[:19])

    # before the oldest backup: nothing to recover from, said plainly
    old = pyops.run("drill", "--target-time", "2001-01-01T00:00:00Z")
    assert old.returncode == 1, describe(old)
    assert "no backup of stanza demo ended before 2001-01-01" in old.stdout


def test_target_time_is_checked_before_anything(archiving: Archiving, pyops: Pyops) -> None:
    future = pyops.run("drill", "--target-time", "2999-01-01T00:00:00Z")
    assert future.returncode == 2 and "is in the future" in future.stderr, describe(future)
    garbage = pyops.run("drill", "--target-time", "yesterday")
    assert garbage.returncode == 2 and "--target-time" in garbage.stderr, describe(garbage)


def test_prune_restore_and_maintenance_leave_it_to_pgbackrest(
    archiving: Archiving, pyops: Pyops
) -> None:
    ensure_backup(archiving, pyops)
    before = {b["label"] for b in archiving.info()["backup"]}
    pruned = pyops.run("prune", "--format", "json")
    assert pruned.returncode == 0, describe(pruned)
    assert json.loads(pruned.stdout)["backups"] == []
    assert "pgBackRest expires its own backups" in pruned.stderr
    assert {b["label"] for b in archiving.info()["backup"]} == before

    restore = pyops.run("restore", "--latest", "--target", TARGET, "--yes")
    assert restore.returncode == 2, describe(restore)
    assert "is a pgbackrest target: restore its cluster with pgBackRest" in restore.stderr

    maint = pyops.json("maintenance", "--all", "--target", TARGET)
    assert maint["summary"]["failed"] == 0
    assert "does not apply to pgbackrest targets" in json.dumps(maint["steps"])


def test_a_stanza_pgbackrest_cannot_read_fails_plainly(
    archiving: Archiving, tmp_path: Path
) -> None:
    config = tmp_path / "pyops.toml"
    archiving.pyops_config(config, tmp_path / "repo")
    config.write_text(config.read_text().replace(f'stanza = "{STANZA}"', 'stanza = "nope"'))
    pyops = Pyops(config)

    failed = pyops.run("backup", "--format", "json")
    assert failed.returncode == 1, describe(failed)
    (result,) = json.loads(failed.stdout)["backups"]
    assert not result["ok"] and "pgbackrest backup" in result["error"]
    assert "stanza nope" in result["error"] and "exited with status" in result["error"]

    listed = pyops.run("list", "--format", "json")
    assert listed.returncode == 1, describe(listed)
    assert json.loads(listed.stdout)["unavailable"][0]["target"] == TARGET

    health = pyops.run("health", "--check", "pgbackrest", "--format", "json")
    assert health.returncode == 2, describe(health)

    drill = pyops.run("drill")
    assert drill.returncode == 1 and "FAILED" in drill.stdout, describe(drill)


def test_fleet_summary_has_the_fleet_index_shape(archiving: Archiving, pyops: Pyops) -> None:
    from pyops import config as cfg
    from pyops.app import App
    from pyops.fleetshape import target_problems
    from pyops.sources import pgbackrest

    ensure_backup(archiving, pyops)
    app = App(cfg.load(pyops.config))
    (target,) = app.config.targets
    summary = pgbackrest.fleet_summary(app, target)  # type: ignore[arg-type]
    assert target_problems(summary) == []
    labels = [b["label"] for b in archiving.info()["backup"]]
    newest = max(
        (body["newest"] for body in summary["tiers"].values()), key=lambda n: str(n["time"])
    )
    assert newest["id"] == labels[-1]
    assert sum(body["count"] for body in summary["tiers"].values()) == len(labels)


@contextlib.contextmanager
def broken_archiving(archiving: Archiving) -> Iterator[None]:
    """archive_command fails until the block ends; it has failed once the block starts."""
    pg = archiving.pg
    failed = int(pg.psql("SELECT failed_count FROM pg_stat_archiver"))
    pg.psql("ALTER SYSTEM SET archive_command = '/bin/false'; SELECT pg_reload_conf()")
    try:
        insert(archiving, "lost", 1)
        pg.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while int(pg.psql("SELECT failed_count FROM pg_stat_archiver")) == failed:
            assert time.monotonic() < deadline, "the archiver never failed"
            time.sleep(0.2)
        yield
    finally:
        pg.psql("ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf()")
    archiving.switch_wal_and_wait(timeout=120)  # the archiver retries and catches up


def pgbackrest_health(pyops: Pyops) -> dict[str, Any]:
    proc = pyops.run("health", "--check", "pgbackrest", "--format", "json")
    (check,) = json.loads(proc.stdout)["checks"]
    assert proc.returncode == {"ok": 0, "warning": 1, "critical": 2}[check["status"]]
    return dict(check)


def test_archive_failures_are_critical_while_they_last(archiving: Archiving, pyops: Pyops) -> None:
    """Last in the module: it breaks archiving, then mends it."""
    ensure_backup(archiving, pyops)
    assert pgbackrest_health(pyops)["status"] == "ok"  # the counters' baseline

    with broken_archiving(archiving):
        pass  # failed, and mended before health looked
    recovered = pgbackrest_health(pyops)
    assert recovered["status"] == "warning", recovered
    assert "since the last health run; archiving recovered" in recovered["message"]
    assert pgbackrest_health(pyops)["status"] == "ok"  # news once

    with broken_archiving(archiving):
        check = pgbackrest_health(pyops)
        assert check["status"] == "critical", check
        assert "WAL archiving FAILS" in check["message"]
        assert "pgbackrest check" in check["message"]  # its WAL switch never arrived
        assert check["metrics"][f"{TARGET}.archive_failed_count"] >= 1
    assert pgbackrest_health(pyops)["status"] in ("ok", "warning")
    assert pgbackrest_health(pyops)["status"] == "ok"
