"""Issue 10 rows 7, 8 and 9, through the real CLI.

Row 7: every rule `maintenance` applies to its config is a config rule, so `pyops
config check` (and every other command) refuses what `maintenance` would refuse.
Row 8: a default that would contradict what the operator wrote follows it, and an
error never names a key the operator did not write.
Row 9: one table from errors to exit codes: usage errors exit 2, SIGINT 130, SIGTERM
143, and `pyops --help` says so."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.cli import PYOPS
from integration_helpers import Pyops, output

from pyops import config
from pyops.config_rules import ORDERED, PERCENT
from pyops.errors import ConfigError
from pyops.lock import repository_lock


def _sqlite(pyops: Pyops) -> str:
    db = pyops.root / "app.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES ('x')")
    conn.close()
    return f'[[targets]]\nname = "app"\ntype = "sqlite"\npath = "{db}"\n'


def _files(pyops: Pyops) -> str:
    media = pyops.root / "media"
    media.mkdir(exist_ok=True)
    (media / "a.txt").write_text("a\n")
    return f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{media}"]\n'


def _rule(**fields: object) -> str:
    rule = {"target": "app", "table": "t", "where": "id < 10", **fields}
    return "[[maintenance.cleanup]]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in rule.items()
    )


# --- row 7 ------------------------------------------------------------------------------

CLEANUP_RULES = [
    pytest.param(
        _rule(batch_size=0), "maintenance.cleanup[0].batch_size", "at least 1", id="batch-0"
    ),
    pytest.param(
        _rule(batch_size=-5), "maintenance.cleanup[0].batch_size", "at least 1", id="batch-neg"
    ),
    pytest.param(
        _rule(where="id < 10; DROP TABLE t"), "maintenance.cleanup[0].where", "';'", id="semicolon"
    ),
    pytest.param(
        _rule(where="  "), "maintenance.cleanup[0].where", "must not be empty", id="empty-where"
    ),
    pytest.param(
        _rule(table="a.b.c"), "maintenance.cleanup[0].table", "schema.table", id="three-parts"
    ),
    pytest.param(
        _rule(table='"open'), "maintenance.cleanup[0].table", "unbalanced quote", id="quote"
    ),
    pytest.param(
        _rule(table="other.t"), "maintenance.cleanup[0].table", "main.table", id="sqlite-schema"
    ),
    pytest.param(
        _rule(target="nope"), "maintenance.cleanup[0].target", "unknown target", id="unknown-target"
    ),
    pytest.param(
        _rule(target="media"), "maintenance.cleanup[0].target", "files target", id="files-target"
    ),
    pytest.param(
        "[maintenance]\nlock_timeout_seconds = 0\n",
        "maintenance.lock_timeout_seconds",
        "more than 0",
        id="lock-timeout",
    ),
    pytest.param(
        "[maintenance]\nvacuum_min_dead_ratio = 1.5\n",
        "maintenance.vacuum_min_dead_ratio",
        "between 0 and 1",
        id="dead-ratio",
    ),
]


@pytest.mark.parametrize(("body", "key", "fragment"), CLEANUP_RULES)
def test_config_check_refuses_what_maintenance_would(
    pyops: Pyops, body: str, key: str, fragment: str
) -> None:
    pyops.write(_sqlite(pyops) + _files(pyops) + body)
    checked = pyops.run("config", "check")
    assert checked.returncode == 2, output(checked)
    assert f"pyops: error: config: {key}: " in checked.stderr, output(checked)
    assert fragment in checked.stderr, output(checked)
    # maintenance says exactly the same, before touching anything
    maintained = pyops.run("maintenance", "--all")
    assert maintained.returncode == 2, output(maintained)
    assert f"config: {key}: " in maintained.stderr, output(maintained)


def test_a_good_cleanup_rule_passes_check_and_runs(pyops: Pyops) -> None:
    pyops.write(_sqlite(pyops) + _rule(table="main.t", batch_size=1))
    assert pyops.run("config", "check").returncode == 0
    ran = pyops.run("maintenance", "--operation", "cleanup", "--format", "json")
    assert ran.returncode == 0, output(ran)


# --- row 8 ------------------------------------------------------------------------------


def _health(pyops: Pyops, body: str) -> tuple[subprocess.CompletedProcess[str], dict[str, float]]:
    pyops.write(f"[health]\n{body}\n")
    shown = pyops.run("config", "show", "--format", "json")
    health = json.loads(shown.stdout)["health"] if shown.returncode == 0 else {}
    return shown, health


def test_the_documented_disk_minimum_alone_is_accepted(pyops: Pyops) -> None:
    pyops.write("[health]\ndisk_min_free_percent = 1\n")
    checked = pyops.run("config", "check")
    assert checked.returncode == 0, output(checked)
    _, health = _health(pyops, "disk_min_free_percent = 1")
    assert (health["disk_min_free_percent"], health["disk_critical_free_percent"]) == (1, 0.5)


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ("disk_min_free_percent = 20", {"disk_critical_free_percent": 5}),  # the default fits
        ("disk_min_free_percent = 8", {"disk_critical_free_percent": 4}),
        ("disk_critical_free_percent = 30", {"disk_min_free_percent": 60}),
        ("tls_warn_days = 6", {"tls_critical_days": 2}),
        ("tls_critical_days = 30", {"tls_warn_days": 90}),
        ("connections_warn_percent = 97", {"connections_critical_percent": 98.5}),
        ("connections_critical_percent = 60", {"connections_warn_percent": 50.53}),
        ("wraparound_warn_percent = 80", {"wraparound_critical_percent": 90}),
        ("long_running_critical_seconds = 120", {"long_running_seconds": 10}),
        ("long_running_seconds = 7200", {"long_running_critical_seconds": 86400}),
    ],
)
def test_a_default_follows_the_key_the_operator_set(
    pyops: Pyops, body: str, expect: dict[str, float]
) -> None:
    shown, health = _health(pyops, body)
    assert shown.returncode == 0, output(shown)
    for key, value in expect.items():
        assert health[key] == value, (key, health[key])


def test_a_contradiction_the_operator_wrote_names_both_keys(pyops: Pyops) -> None:
    pyops.write("[health]\ndisk_min_free_percent = 1\ndisk_critical_free_percent = 2\n")
    checked = pyops.run("config", "check")
    assert checked.returncode == 2, output(checked)
    assert (
        "config: health.disk_critical_free_percent: must not be above "
        "health.disk_min_free_percent (1)" in checked.stderr
    ), output(checked)


@pytest.mark.parametrize(("low", "high"), ORDERED)
@pytest.mark.parametrize("value", [0, 0.01, 1, 5, 50, 99, 100, 1e6])
def test_one_key_of_any_pair_is_accepted_or_refused_by_its_own_name(
    low: str, high: str, value: float
) -> None:
    for key in (low, high):
        if key in PERCENT and value > 100:
            with pytest.raises(ConfigError) as caught:
                config.parse({"health": {key: value}})
            assert caught.value.key == f"health.{key}"
            continue
        try:
            parsed = config.parse({"health": {key: value}}).health
        except ConfigError as exc:  # only a rule on the key itself (e.g. > 0)
            assert exc.key == f"health.{key}", str(exc)
            continue
        assert getattr(parsed, low) <= getattr(parsed, high), (key, value)
        assert getattr(parsed, key) == value


# --- row 9 ------------------------------------------------------------------------------


def test_restore_latest_among_several_targets_is_a_usage_error(pyops: Pyops) -> None:
    pyops.write(_sqlite(pyops) + _files(pyops))
    pyops.ok("backup")
    refused = pyops.run("restore", "--latest", "--into", str(pyops.root / "out"), "--yes")
    assert refused.returncode == 2, output(refused)
    assert "--latest needs --target" in refused.stderr
    assert "app, media" in refused.stderr
    unknown = pyops.run("restore", "--latest", "--target", "nope", "--yes")
    assert unknown.returncode == 2, output(unknown)
    assert "--target: unknown target 'nope' (known: app, media)" in unknown.stderr
    assert not (pyops.root / "out").exists()


def test_root_help_lists_the_exit_codes() -> None:
    shown = subprocess.run([PYOPS, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "Exit codes" in text
    for code in ("0", "1", "2", "130", "143"):
        assert any(line.split()[:1] == [code] for line in text.splitlines()), text
    assert "SIGINT" in text and "SIGTERM" in text


def _waiting_for_the_lock(proc: subprocess.Popen[str], lock: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        fds = Path(f"/proc/{proc.pid}/fd")
        try:
            if any(os.readlink(fd) == str(lock) for fd in fds.iterdir()):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"pyops never waited for {lock}: {proc.communicate()}")


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signals_have_their_exit_codes(
    pyops: Pyops, signum: signal.Signals, code: int, said: str
) -> None:
    pyops.write(_files(pyops), lock_wait_seconds=60)
    with repository_lock(pyops.repo, 1, "test holds the lock"):
        proc = subprocess.Popen(
            [PYOPS, "--config", str(pyops.config), "backup"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # as from a terminal, whatever this test runner's shell ignores
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _waiting_for_the_lock(proc, pyops.repo / ".lock")
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == code, stderr
    assert f"pyops: {said}; temp files removed" in stderr
