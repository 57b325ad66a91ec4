"""[notify] against a local HTTP server that records hits, and the run metrics
textfile built from the result dicts backup/verify/drill produce."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from health_support import Env, HttpServer, q, refused_port
from prometheus_client.parser import text_string_to_metric_families

from pyops import metrics
from pyops.actions.backup import BackupResult
from pyops.actions.drill import DrillResult
from pyops.actions.verify import VerifyResult
from pyops.app import App
from pyops.config import load
from pyops.notify import notify


def _notify_config(env: Env, start: str, success: str, failure: str) -> App:
    env.write(
        f"[notify]\non_start = {q(start)}\non_success = {q(success)}\non_failure = {q(failure)}\n"
    )
    return App(load(env.config))


def test_start_success_failure_hit_the_urls(env: Env) -> None:
    with HttpServer() as web:
        app = _notify_config(
            env, f"{web.url}/200/uuid/start", f"{web.url}/200/uuid", f"{web.url}/200/uuid/fail"
        )
        assert notify(app, "start", "backup starting")
        assert notify(app, "success", "backup ok")
        assert notify(app, "failure", "backup of app failed: pg_dump exited with status 1")
    assert [(h.method, h.path, h.body) for h in web.hits] == [
        ("GET", "/200/uuid/start", b""),
        ("GET", "/200/uuid", b""),
        ("POST", "/200/uuid/fail", b"backup of app failed: pg_dump exited with status 1"),
    ]


def test_failing_or_dead_urls_only_warn(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pyops.notify")
    with HttpServer() as web, refused_port() as port:
        dead = f"http://127.0.0.1:{port}/secret-uuid"
        app = _notify_config(env, dead, f"{web.url}/500/secret-uuid", "")
        t0 = time.monotonic()
        assert notify(app, "start", "x") is False
        assert notify(app, "success", "x") is False
        assert notify(app, "failure", "x") is False  # not configured: nothing to do
        assert time.monotonic() - t0 < 5
    assert [h.path for h in web.hits] == ["/500/secret-uuid"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("notify start: http://127.0.0.1/... unreachable:")
    assert messages[1] == "notify success: http://127.0.0.1/... answered 500"
    assert not any("secret-uuid" in m for m in messages)


def test_notify_url_must_be_http(env: Env) -> None:
    env.write('[notify]\non_failure = "file:///etc/passwd"\n')
    rc, _, err = env.pyops("config", "check")
    assert rc == 2 and "notify.on_failure" in err


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_record_run_keeps_last_success_per_target_and_tier(env: Env, tmp_path: Path) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    env.write(f"[metrics]\ntextfile_dir = {q(textfiles)}\n")
    app = App(load(env.config))
    ok = BackupResult("app", True, "app.daily.20260101T000000Z", "daily", 1234, 2.5)
    metrics.record_run(app, "backup", [ok.as_dict()])
    prom = textfiles / "pyops_backup.prom"
    first = _samples(prom)
    where = (("target", "app"), ("tier", "daily"))
    success_at = first[("pyops_backup_last_success_timestamp_seconds", where)]
    assert abs(success_at - time.time()) < 60
    assert first[("pyops_backup_last_bytes", where)] == 1234
    assert first[("pyops_backup_last_duration_seconds", where)] == 2.5
    assert first[("pyops_backup_last_run_ok", where)] == 1

    failed = BackupResult("app", False, duration_s=0.5, error="pg_dump exited with status 1")
    other = BackupResult("media", True, "media.weekly.20260101T000000Z", "weekly", 99, 1.0)
    time.sleep(0.01)
    metrics.record_run(app, "backup", [{**failed.as_dict(), "tier": "daily"}, other.as_dict()])
    second = _samples(prom)
    assert second[("pyops_backup_last_run_ok", where)] == 0
    assert second[("pyops_backup_last_success_timestamp_seconds", where)] == success_at
    assert second[("pyops_backup_last_run_timestamp_seconds", where)] > success_at
    media = (("target", "media"), ("tier", "weekly"))
    assert second[("pyops_backup_last_bytes", media)] == 99
    assert prom.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(textfiles)) == ["pyops_backup.prom"]


def test_record_run_for_verify_and_drill(env: Env, tmp_path: Path) -> None:
    env.write(f"[metrics]\ntextfile_dir = {q(tmp_path)}\n")
    app = App(load(env.config))
    metrics.record_run(
        app,
        "verify",
        [
            VerifyResult("app.daily.20260101T000000Z", True, deep=True).as_dict(),
            VerifyResult("app.daily.20260102T000000Z", False, deep=True, error="bad").as_dict(),
        ],
    )
    verify = _samples(tmp_path / "pyops_verify.prom")
    assert verify[("pyops_verify_last_run_ok", (("target", "app"), ("tier", "daily")))] == 0
    drill = DrillResult("app", True, backup="app.monthly.20260101T000000Z", rto_s=12.5, bytes=7)
    metrics.record_run(app, "drill", [drill.as_dict()])
    drilled = _samples(tmp_path / "pyops_drill.prom")
    where = (("target", "app"), ("tier", "monthly"))
    assert drilled[("pyops_drill_last_duration_seconds", where)] == 12.5
    assert drilled[("pyops_drill_last_run_ok", where)] == 1


def test_record_run_never_raises(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env.write("")
    app = App(load(env.config))
    metrics.record_run(app, "backup", [{"target": "app", "ok": True}])
    assert not (env.repo / ".pyops" / "metrics").exists()  # no textfile_dir: nothing kept

    env.write(f"[metrics]\ntextfile_dir = {q(tmp_path / 'missing')}\n")
    caplog.set_level(logging.WARNING, logger="pyops.metrics")
    metrics.record_run(App(load(env.config)), "backup", [{"target": "app", "ok": True}])
    assert "metrics for backup not written: cannot write" in caplog.text
