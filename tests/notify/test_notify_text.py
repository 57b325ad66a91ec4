"""What a message says, without a receiver: outcomes from results, redaction, the
ping URLs, the bounded log tail."""

from __future__ import annotations

import logging

import pytest

from pyops.actions.backup import BackupResult
from pyops.actions.drill import DrillResult
from pyops.actions.sync import SyncResult
from pyops.actions.verify import VerifyResult
from pyops.health.render import Report
from pyops.health.result import Result
from pyops.notify import TAIL_BYTES, TAIL_LINES, _Tail, ping_target
from pyops.notify_text import (
    DETAIL_LINES,
    backup_outcome,
    drill_outcome,
    exception_outcome,
    health_outcome,
    redactor,
    sync_outcome,
    verify_outcome,
)


def test_backup_outcome_counts_and_names_the_failure() -> None:
    results = [
        BackupResult("app", True, "app.daily.20260101T000000Z", "daily", 2048),
        BackupResult(
            "app-db", False, error="pg_dump exited with status 1: FATAL: no such db\nmore"
        ),
        BackupResult(
            "media", True, "media.daily.20260101T000000Z", "daily", 10, warnings=["x changed"]
        ),
    ]
    out = backup_outcome(results)
    assert out.event == "failure"
    assert (
        out.headline
        == "2 of 3 targets ok; app-db FAILED: pg_dump exited with status 1: FATAL: no such db"
    )
    body = out.body("backup", "web-1", "INFO a\nERROR b")
    assert body.splitlines()[0] == f"backup on web-1: {out.headline}"
    assert "app-db FAILED: pg_dump exited with status 1: FATAL: no such db\nmore" in body
    assert "media: warning: x changed" in body
    assert "app: ok app.daily.20260101T000000Z 2.0 KiB" in body
    assert body.endswith("last lines of the log:\nINFO a\nERROR b")


def test_warnings_make_a_warning_and_all_ok_a_success() -> None:
    ok = BackupResult("app", True, "app.daily.20260101T000000Z", "daily", 1)
    assert backup_outcome([ok]).event == "success"
    assert backup_outcome([ok]).headline == "1 of 1 target ok"
    skipped = backup_outcome([ok], ["database bad\nname: cannot be named"])
    assert (skipped.event, skipped.headline) == ("warning", "1 of 1 target ok; 1 warning(s)")
    torn = VerifyResult("app.daily.20260101T000000Z", True, deep=True, warnings=("torn file",))
    assert verify_outcome([torn]).event == "warning"
    left = DrillResult("app", True, backup="app.daily.20260101T000000Z", leftover="rm -r /x")
    drilled = drill_outcome([left])
    assert drilled.event == "warning"
    assert "app: warning: scratch left behind: rm -r /x" in drilled.details


def test_sync_and_health_outcomes() -> None:
    synced = sync_outcome(SyncResult(uploaded=["a"], present=["b"], failed={"c": "503\nslow down"}))
    assert synced.event == "failure"
    assert synced.headline == "uploaded 1, already offsite 1, failed 1; c FAILED: 503"
    report = Report(
        [
            Result("disk", "warning", "/srv: 8% free"),
            Result("tls", "ok", "fine"),
            Result("backup_freshness", "critical", "app: 30 h old"),
        ]
    )
    health = health_outcome(report)
    assert health.event == "failure"
    assert health.headline == "CRITICAL: disk warning, backup_freshness critical"  # no numbers
    assert health.details == (
        "disk WARNING: /srv: 8% free",
        "backup_freshness CRITICAL: app: 30 h old",
    )
    assert health_outcome(Report([Result("disk", "unknown", "?")])).event == "failure"
    assert health_outcome(Report([Result("disk", "ok", "")])).headline == "OK (1 checks)"


def test_details_are_bounded() -> None:
    results = [BackupResult(f"t{i}", False, error="x" * 5000) for i in range(50)]
    body = backup_outcome(results).body("backup", "h")
    assert len(body) < 20_000
    assert body.endswith(f"\n... and {50 - DETAIL_LINES} more")
    assert len(body.splitlines()[0]) <= 300


def test_exception_outcomes() -> None:
    assert exception_outcome(KeyboardInterrupt()).headline.startswith("interrupted")
    out = exception_outcome(RuntimeError("lock held by pid 42\nsince 02:15"))
    assert (out.event, out.headline) == ("failure", "FAILED: lock held by pid 42")
    assert out.details == ("lock held by pid 42\nsince 02:15",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dsn postgresql://app:hunter2@db/app", "dsn postgresql://app:<redacted>@db/app"),
        ("PGPASSWORD=hunter2 pg_dump", "PGPASSWORD=<redacted> pg_dump"),
        ('password: "two words"', "password: <redacted>"),
        ("api_key=abc123&x=1", "api_key=<redacted>"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: <redacted> <redacted>"),
        ("key AKIAABCDEFGHIJKLMNOP used", "key <redacted> used"),
        ("the known s3cr3t-value here", "the known <redacted> here"),
        (
            "password authentication failed for user app",
            "password authentication failed for user app",
        ),
        ("ntfy://127.0.0.1/backups ok", "ntfy://127.0.0.1/backups ok"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert redactor(["s3cr3t-value", "", "ab"])(text) == expected


def test_redaction_never_hides_the_host_name() -> None:
    assert redactor(["web-1"], host="web-1")("backup on web-1") == "backup on web-1"


def test_ping_targets() -> None:
    url = "https://hc-ping.com/uuid"
    assert ping_target(url, "backup", "start", "R") == "https://hc-ping.com/uuid/start?rid=R"
    assert ping_target(url + "/", "backup", "success", "R") == "https://hc-ping.com/uuid?rid=R"
    assert ping_target(url, "backup", "warning", "R") == "https://hc-ping.com/uuid?rid=R"
    assert ping_target(url, "backup", "failure", "R") == "https://hc-ping.com/uuid/fail?rid=R"
    assert ping_target(url, "health", "failure", "R") is None  # would keep a backup check up
    per_command = "https://hc-ping.com/KEY/pyops-{command}?create=1"
    assert (
        ping_target(per_command, "drill", "failure", "R")
        == "https://hc-ping.com/KEY/pyops-drill/fail?create=1&rid=R"
    )
    assert ping_target("", "backup", "start", "R") is None


def test_log_tail_is_bounded_in_lines_and_bytes() -> None:
    tail = _Tail()
    logger = logging.getLogger("pyops.test_tail")
    logger.addHandler(tail)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("not kept: below INFO")
        for i in range(100):
            logger.info("line %d", i)
        assert tail.text().splitlines() == [f"INFO line {i}" for i in range(100 - TAIL_LINES, 100)]
        logger.error("%s", "y" * 3000 + "\n" + "z" * 3000)
        logging.getLogger("pyops.notify").warning("about a message, not the run")
        text = tail.text()
        assert len(text.encode()) <= TAIL_BYTES
        assert text == "ERROR " + "z" * 3000  # the newest lines that fit
        logger.info("%s", "w" * 10_000)
        assert tail.text() == "..." + "w" * (TAIL_BYTES - 4)  # one long line: its end
    finally:
        logger.removeHandler(tail)
