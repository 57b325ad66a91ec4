"""`pyops schedule run`: the systemd calendar for hosts without systemd.

The `schedule` package drives a tick every 30 seconds; each tick asks the shared
calendar (pyops.calendar) which jobs fell due since they last ran, and runs them
one at a time as child processes, each handed the secrets its command needs (the
scheduler, like every pyops process, withholds them from its children). The same
rule catches up a run missed while the scheduler was down, once (like systemd's
Persistent=true). SIGTERM lets the running job finish, then the loop exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import schedule

from pyops import secrets
from pyops.calendar import Job
from pyops.config import Config
from pyops.fsutil import make_private_dir, write_atomic

log = logging.getLogger(__name__)
Runner = Callable[[Job], int]
TICK_SECONDS = 30


# what each job's command reads of the secrets the scheduler withheld from its own
# children (pyops.secrets): the databases' passwords, the bucket's AWS keys
USES: dict[str, frozenset[str]] = {
    "backup": frozenset({"database", "bucket"}),  # pg_dump; the offsite upload
    "maintenance": frozenset({"database"}),
    "health": frozenset({"database", "bucket"}),  # database checks; the s3 check
    "drill": frozenset({"database", "bucket"}),  # restores into scratch; --remote, DR adoption
}


def job_secrets(job: Job, config: Config) -> list[str]:
    """The secret variables `job` needs: exactly those, no others."""
    uses = USES[job.args[0]]
    wanted = secrets.passwords(config) if "database" in uses else []
    if "bucket" in uses and config.offsite.bucket:
        wanted += secrets.AWS_KEYS
    return wanted


def run_as_child(config_path: Path, config: Config) -> Runner:
    """Each job is `pyops --config PATH ...`, with our environment plus the secrets it
    needs (ours were withheld from every child at start-up)."""

    def run(job: Job) -> int:
        argv = [sys.executable, "-m", "pyops", "--config", str(config_path), *job.args]
        log.info("schedule: starting %s", job.name)
        env = secrets.environment(job_secrets(job, config))
        code = subprocess.run(argv, env=env, check=False).returncode
        log.info("schedule: %s finished with exit code %d", job.name, code)
        return code

    return run


class Scheduler:
    def __init__(
        self,
        jobs: Sequence[Job],
        runner: Runner,
        state_dir: Path,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.jobs = list(jobs)
        self.runner = runner
        self.state_file = state_dir / "schedule.json"
        self.clock = clock
        self.stopping = False
        self.inner = schedule.Scheduler()
        self.inner.every(TICK_SECONDS).seconds.do(self.tick)

    def _load(self) -> dict[str, datetime]:
        try:
            data: Any = json.loads(self.state_file.read_text())
            return {str(k): datetime.fromisoformat(v) for k, v in data.items()}
        except (OSError, ValueError, TypeError):
            return {}

    def _save(self, last: dict[str, datetime]) -> None:
        make_private_dir(self.state_file.parent)
        data = {k: v.isoformat() for k, v in last.items()}
        write_atomic(self.state_file, json.dumps(data, indent=2).encode())

    def tick(self) -> list[str]:
        """Run every job due since its last run; returns their names. A job never seen
        before starts counting from now (systemd does the same on first activation)."""
        now = self.clock()
        last = self._load()
        ran = []
        for job in self.jobs:
            if self.stopping:
                break
            if job.name not in last:
                last[job.name] = now
                self._save(last)
                continue
            due = job.previous_fire(now)
            if last[job.name] < due:
                self.runner(job)
                last[job.name] = self.clock()
                self._save(last)
                ran.append(job.name)
        return ran

    def loop(self, sleep: Callable[[float], None] = time.sleep) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        missed = self.tick()  # catch up what fell due while we were down
        if missed:
            log.info("schedule: caught up %s", ", ".join(missed))
        while not self.stopping:
            self.inner.run_pending()
            if not self.stopping:
                sleep(1)
        log.info("schedule: stopped")

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("schedule: signal %d, stopping after the running job", signum)
        self.stopping = True
