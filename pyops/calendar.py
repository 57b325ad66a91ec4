"""The one calendar: what runs when. systemd timers (OnCalendar=) and the
foreground scheduler (`pyops schedule run`) are both rendered from these jobs,
so the two can never disagree. Times are UTC.

Pure: no I/O. `previous_fire` tells when a job was last due, which is how a
missed run after downtime is caught up once (like systemd's Persistent=true).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Job:
    name: str  # unit name stem, e.g. "pyops-backup@auto"
    args: tuple[str, ...]  # pyops arguments
    description: str
    hour: int = 0
    minute: int = 0
    weekday: int | None = None  # 0 = Monday
    months: tuple[int, ...] = ()  # quarterly: (1, 4, 7, 10)
    day: int | None = None  # day of month
    every_minutes: int | None = None  # health: every N minutes
    randomized_delay: str = "30min"

    @property
    def oncalendar(self) -> str:
        if self.every_minutes:
            return f"*:0/{self.every_minutes}"
        months = ",".join(f"{m:02d}" for m in self.months) if self.months else "*"
        day = f"{self.day:02d}" if self.day else "*"
        prefix = f"{WEEKDAYS[self.weekday]} " if self.weekday is not None else ""
        return f"{prefix}*-{months}-{day} {self.hour:02d}:{self.minute:02d}:00 UTC"

    def due_on(self, when: datetime) -> bool:
        """Whether `when`'s date is one of this job's days (ignoring the time)."""
        if self.weekday is not None and when.weekday() != self.weekday:
            return False
        if self.months and when.month not in self.months:
            return False
        return not (self.day and when.day != self.day)

    def previous_fire(self, now: datetime) -> datetime:
        """The latest time at or before `now` when this job was due."""
        if self.every_minutes:
            minute = now.minute - now.minute % self.every_minutes
            return now.replace(minute=minute, second=0, microsecond=0)
        candidate = now.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if candidate > now:
            candidate -= timedelta(days=1)
        for _ in range(400):
            if self.due_on(candidate):
                return candidate
            candidate -= timedelta(days=1)
        raise ValueError(f"{self.name}: no fire time within 400 days")


BACKUP_AUTO = Job(
    "pyops-backup@auto",
    ("backup", "--tier", "auto"),
    "pyops backup (auto tier: monthly on the 1st, weekly on Sunday, else daily)",
    hour=2,
    minute=15,
)
BACKUP_TIERS = (
    Job("pyops-backup@daily", ("backup", "--tier", "daily"), "pyops daily backup", 2, 15),
    Job(
        "pyops-backup@weekly",
        ("backup", "--tier", "weekly"),
        "pyops weekly backup",
        3,
        15,
        weekday=6,
    ),
    Job(
        "pyops-backup@monthly",
        ("backup", "--tier", "monthly"),
        "pyops monthly backup",
        4,
        15,
        day=1,
    ),
)
MAINTENANCE = Job(
    "pyops-maintenance", ("maintenance", "--all"), "pyops database maintenance", 5, 0, weekday=6
)
HEALTH = Job(
    "pyops-health",
    ("health", "--format", "text"),
    "pyops health checks",
    every_minutes=5,
    randomized_delay="30s",
)
DRILL = Job(
    "pyops-drill",
    ("drill",),
    "pyops quarterly disaster-recovery drill",
    6,
    0,
    months=(1, 4, 7, 10),
    day=15,
    randomized_delay="2h",
)

# the default set: one auto backup timer drives all three tiers
DEFAULT_JOBS = (BACKUP_AUTO, MAINTENANCE, HEALTH, DRILL)
ALL_JOBS = (BACKUP_AUTO, *BACKUP_TIERS, MAINTENANCE, HEALTH, DRILL)
