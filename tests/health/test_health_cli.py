"""`pyops health` through the real CLI: exit codes per Nagios, the three output
formats, the textfile, and the backup-based checks on real backups."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from health_support import Env, one, q
from prometheus_client.parser import text_string_to_metric_families


def _backup(env: Env) -> str:
    rc, out, err = env.pyops("backup", "--format", "json")
    assert rc == 0, err
    return str(json.loads(out)["backups"][0]["id"])


def _age_manifest(env: Env, backup_id: str, hours: float) -> None:
    """Pretend the backup was taken `hours` ago: rewrite started_at in its manifest."""
    (path,) = env.repo.rglob(f"{backup_id}.manifest.json")
    data = json.loads(path.read_text())
    data["started_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
    path.write_text(json.dumps(data))


def test_exit_codes_follow_nagios(env: Env) -> None:
    env.write(env.sqlite())
    rc, out, _ = env.pyops("health", "--check", "disk", "--check", "paths")
    assert rc == 0, out
    assert out.splitlines()[-1] == "score 100/100 (2 ok)"

    rc, out, _ = env.pyops("health", "--check", "redis")  # nothing configured
    assert rc == 3, out
    assert "not configured: health.redis lists nothing" in out

    env.write(env.sqlite() + "[health]\ndisk_min_free_percent = 99.9\n")
    rc, out, _ = env.pyops("health", "--check", "disk", "--check", "redis")
    assert rc == 1, out  # a warning outranks an unknown
    lines = out.splitlines()
    assert lines[0].startswith("WARNING   disk") and "minimum 99.9%" in lines[0]
    assert lines[1].startswith("UNKNOWN   redis")
    assert lines[-1] == "score 50/100 (1 warning, 1 unknown)"

    env.write(
        env.sqlite() + "[health]\ndisk_min_free_percent = 99.9\ndisk_critical_free_percent = 99.8\n"
    )
    rc, out, _ = env.pyops("health", "--check", "disk")
    assert rc == 2 and out.startswith("CRITICAL  disk"), out


def test_usage_and_config_errors_exit_2(env: Env) -> None:
    rc, _, err = env.pyops("health", "--check", "nosuch")
    assert rc == 2 and "nosuch" in err
    env.write("[health]\ndisk_critical_free_percent = 20\ndisk_min_free_percent = 10\n")
    rc, _, err = env.pyops("health")
    assert rc == 2 and "health.disk_critical_free_percent" in err
    env.write('[health]\ntls = ["example.org"]\n')
    rc, _, err = env.pyops("config", "check")
    assert rc == 2 and "health.tls[0]" in err
    env.write('[health]\nchecks = ["disk", "bogus"]\n')
    rc, _, err = env.pyops("health")
    assert rc == 2 and "health.checks[1]" in err


def test_stale_backup_is_critical(env: Env) -> None:
    env.write(env.sqlite())
    backup_id = _backup(env)
    fresh = one(env.config, "backup_freshness")
    assert fresh.status == "ok", fresh.message
    assert fresh.metrics["app.daily.age_hours"] < 0.1

    _age_manifest(env, backup_id, 30)
    rc, out, _ = env.pyops("health", "--check", "backup_freshness", "--format", "json")
    assert rc == 2
    (check,) = json.loads(out)["checks"]
    assert check["status"] == "critical"
    assert f"newest local daily backup {backup_id} is 30.0 h old (limit 26.0 h)" in check["message"]
    assert 29.9 < check["metrics"]["app.daily.age_hours"] < 30.1
    # the weekly tier is not due yet: the first backup is younger than 8 days
    assert "no local weekly backup yet" in check["message"]

    _age_manifest(env, backup_id, 24 * 10)
    result = one(env.config, "backup_freshness")
    assert "no local weekly backup yet (first backup 10.0 days ago, limit 8.0 days)" in (
        result.message
    )
    assert result.message.count("app:") == 3  # daily, weekly stale; monthly not due yet

    env.write(env.sqlite() + "[health]\nbackup_max_age_hours = 300\nweekly_max_age_days = 11\n")
    assert one(env.config, "backup_freshness").status == "ok"


def test_no_backup_is_critical_and_backup_size_unknown(env: Env) -> None:
    env.write(env.sqlite())
    result = one(env.config, "backup_freshness")
    assert (result.status, result.message) == ("critical", "app: no complete local backup")
    assert one(env.config, "backup_size").status == "unknown"


def test_backup_size_drop_warns(env: Env) -> None:
    env.write(env.sqlite(rows=3000) + '[compression]\nalgorithm = "none"\n')
    for _ in range(3):
        _backup(env)
    result = one(env.config, "backup_size")
    assert result.status == "ok", result.message
    conn = sqlite3.connect(env.root / "app.sqlite3")
    conn.execute("DELETE FROM notes WHERE id > 100")
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    newest = _backup(env)
    result = one(env.config, "backup_size")
    assert result.status == "warning"
    assert newest in result.message and "median" in result.message
    assert result.metrics["app.daily.bytes"] < result.metrics["app.daily.median_bytes"] / 2


def test_drill_freshness_from_the_run_log(env: Env) -> None:
    env.write(env.sqlite())
    result = one(env.config, "drill_freshness")
    assert (result.status, result.message) == ("warning", "app: never drilled (run `pyops drill`)")
    _backup(env)
    rc, _, err = env.pyops("drill")
    assert rc == 0, err
    result = one(env.config, "drill_freshness")
    assert result.status == "ok" and result.metrics["app.age_days"] < 0.01

    log = env.repo / ".pyops" / "runs.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for record in records:
        if record["command"] == "drill":
            record["started_at"] = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = one(env.config, "drill_freshness")
    assert result.status == "warning"
    assert "last successful drill 100 days ago (limit 92" in result.message


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_prometheus_output_parses(env: Env) -> None:
    env.write(env.sqlite() + "[health]\ndisk_min_free_percent = 99.9\n")
    rc, out, _ = env.pyops(
        "health", "--check", "disk", "--check", "paths", "--check", "smtp", "--format", "prometheus"
    )
    assert rc == 1
    assert "# TYPE pyops_health_status gauge" in out
    fams = _families(out)
    status = {labels["check"]: value for labels, value in fams["pyops_health_status"]}
    assert status == {"disk": 1.0, "paths": 0.0, "smtp": 3.0}
    assert fams["pyops_health_overall_status"] == [({}, 1.0)]
    assert fams["pyops_health_score"] == [({}, 66.0)]
    values = {(v["check"], v["subject"], v["metric"]): x for v, x in fams["pyops_health_value"]}
    assert 0 < values[("disk", str(env.repo), "free_percent")] < 99.9
    assert values[("paths", str(env.repo), "ok")] == 1.0


def test_textfile_written_atomically(env: Env, tmp_path: Path) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    env.write(
        env.sqlite() + f'[metrics]\ntextfile_dir = {q(textfiles)}\n[health]\nchecks = ["disk"]\n'
    )
    prom = textfiles / "pyops_health.prom"
    prom.write_text("# stale\n")
    inode = prom.stat().st_ino
    rc, out, _ = env.pyops("health", "--check", "paths")  # a spot check leaves it alone
    assert rc == 0 and prom.read_text() == "# stale\n"
    rc, out, _ = env.pyops("health", "--format", "json")
    assert rc == 0 and json.loads(out)["score"] == 100
    assert os.listdir(textfiles) == ["pyops_health.prom"]  # no temp file left behind
    assert prom.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert prom.stat().st_mode & 0o777 == 0o644
    fams = _families(prom.read_text())
    assert fams["pyops_health_status"] == [({"check": "disk"}, 0.0)]
    assert fams["pyops_health_last_run_timestamp_seconds"][0][1] > 1e9


def test_default_selection_runs_what_is_configured(env: Env) -> None:
    env.write(env.sqlite())
    rc, out, _ = env.pyops("health", "--format", "json")
    doc = json.loads(out)
    ran = {c["name"] for c in doc["checks"]}
    assert ran == {
        "disk",
        "paths",
        "backup_freshness",
        "drill_freshness",
        "backup_size",
        "manifests",
    }
    skipped = {s["name"] for s in doc["not_configured"]}
    assert {"redis", "database", "s3", "gpg_key", "tls"} <= skipped
    assert rc == doc["exit_code"] == 2  # no backup yet: critical

    env.write(env.sqlite() + '[health]\nchecks = ["disk", "paths"]\n')
    rc, out, _ = env.pyops("health")
    assert rc == 0 and out.splitlines()[-1] == "score 100/100 (2 ok)"
