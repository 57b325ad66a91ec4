"""The foreground scheduler, driven by a simulated clock (no wall-time waits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fixtures.cli import write_config

from pyops.calendar import DEFAULT_JOBS, Job
from pyops.scheduler import Scheduler


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def simulate(tmp_path: Path, start: datetime, days: int) -> list[tuple[str, datetime]]:
    clock = Clock(start)
    fired: list[tuple[str, datetime]] = []

    def runner(job: Job) -> int:
        fired.append((job.name, clock.now))
        return 0

    scheduler = Scheduler(DEFAULT_JOBS, runner, tmp_path / "state", clock)
    scheduler.tick()  # first start: everything starts counting from now
    end = start + timedelta(days=days)
    while clock.now < end:
        clock.now += timedelta(minutes=5)  # every job time is a multiple of 5 minutes
        scheduler.tick()
    return fired


def test_jobs_fire_on_the_timer_calendar(tmp_path: Path) -> None:
    # 2026-12-28 (Mon) .. 2027-01-18: covers Sundays, the 1st and a quarterly 15th
    start = datetime(2026, 12, 28, 0, 0, tzinfo=UTC)
    fired = simulate(tmp_path, start, 21)
    backups = [t for name, t in fired if name == "pyops-backup@auto"]
    assert len(backups) == 21 and all((t.hour, t.minute) == (2, 15) for t in backups)
    maintenance = [t for name, t in fired if name == "pyops-maintenance"]
    assert [t.date().isoformat() for t in maintenance] == ["2027-01-03", "2027-01-10", "2027-01-17"]
    assert all(t.weekday() == 6 and t.hour == 5 for t in maintenance)
    drills = [t for name, t in fired if name == "pyops-drill"]
    assert drills == [datetime(2027, 1, 15, 6, 0, tzinfo=UTC)]
    health = [t for name, t in fired if name == "pyops-health"]
    assert len(health) == 21 * 24 * 12
    assert all(t.minute % 5 == 0 for t in health)


def test_missed_run_after_downtime_runs_once_at_start(tmp_path: Path) -> None:
    clock = Clock(datetime(2027, 3, 1, 1, 0, tzinfo=UTC))
    fired: list[str] = []
    scheduler = Scheduler(DEFAULT_JOBS, lambda j: fired.append(j.name) or 0, tmp_path, clock)
    scheduler.tick()
    assert fired == []  # nothing was due yet
    # down for three days, across three 02:15 backups and a Sunday maintenance
    clock.now = datetime(2027, 3, 8, 1, 0, tzinfo=UTC)
    restarted = Scheduler(DEFAULT_JOBS, lambda j: fired.append(j.name) or 0, tmp_path, clock)
    restarted.tick()
    assert fired.count("pyops-backup@auto") == 1
    assert fired.count("pyops-maintenance") == 1
    assert fired.count("pyops-drill") == 0
    restarted.tick()
    assert fired.count("pyops-backup@auto") == 1  # once, not once per missed day


def test_sigterm_finishes_the_running_job_then_exits_0(tmp_path: Path) -> None:
    """The real `pyops schedule run`: a job that is due at start runs as a child; SIGTERM
    while it runs lets it finish."""
    marker = tmp_path / "done"
    (tmp_path / "state").mkdir()
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo")
    # make the backup job due: pretend it last ran long ago
    (tmp_path / "repo" / ".pyops").mkdir(parents=True)
    (tmp_path / "repo" / ".pyops" / "schedule.json").write_text(
        '{"pyops-backup@auto": "2000-01-01T00:00:00+00:00"}'
    )
    started = tmp_path / "started"
    slow = tmp_path / "slow-pyops"
    slow.write_text(f"#!/bin/sh\ntouch {started}\nsleep 2\ntouch {marker}\n")
    slow.chmod(0o755)
    code = (
        "import sys, pyops.scheduler as s\n"
        f"s.run_as_child = lambda *_: (lambda job: __import__('subprocess').call(['{slow}']))\n"
        "from pyops.cli import main\n"
        f"sys.argv = ['pyops', '--config', '{config}', 'schedule', 'run']\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    # the catch-up job is running (the scheduler set its signal handlers before it):
    # a fixed sleep raced a slow start-up on a loaded machine
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    stderr = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, stderr
    assert marker.exists()
    assert "stopping after the running job" in stderr
