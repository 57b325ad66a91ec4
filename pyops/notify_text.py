"""What a notification says: one outcome per run, built from the results the commands
already hold, and the redaction every message passes before it leaves the host.

Pure: no I/O. A message is read on a phone first, so the first line says it all
("backup on web-1: 2 of 3 targets ok; app-db FAILED: pg_dump ..."), the details
follow, bounded, and a failure ends with the tail of the run's log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pyops.progress import human

if TYPE_CHECKING:
    from pyops.actions.backup import BackupResult
    from pyops.actions.drill import DrillResult
    from pyops.actions.maintenance import Report as MaintenanceReport
    from pyops.actions.sync import SyncResult
    from pyops.actions.verify import VerifyResult
    from pyops.health.render import Report as HealthReport
    from pyops.maintenance import Step

HEADLINE_CHARS = 300
DETAIL_CHARS = 600
DETAIL_LINES = 20
HEADLINED = 3  # failures named in the first line
SHORT = 80  # an error this long or shorter, on one line, is not repeated below it


Ending = Literal["success", "warning", "failure"]


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for people: `event` success | warning | failure."""

    event: Ending
    headline: str
    details: tuple[str, ...] = ()

    def body(self, command: str, host: str, tail: str = "") -> str:
        lines = [_cut(f"{command} on {host}: {self.headline}", HEADLINE_CHARS)]
        shown = [_cut(d, DETAIL_CHARS) for d in self.details[:DETAIL_LINES]]
        if len(self.details) > DETAIL_LINES:
            shown.append(f"... and {len(self.details) - DETAIL_LINES} more")
        lines += shown
        if tail:
            lines += ["", "last lines of the log:", tail]
        return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "failed"


@dataclass(frozen=True)
class _Item:
    name: str
    ok: bool
    error: str | None = None
    warnings: Sequence[str] = ()
    note: str = ""


def _tally(noun: str, items: Sequence[_Item], extra_warnings: Iterable[str] = ()) -> Outcome:
    """ "2 of 3 targets ok; app-db FAILED: ..." with a line per failure, warning and
    success."""
    failed = [i for i in items if not i.ok]
    warned = [*(f"{i.name}: warning: {w}" for i in items for w in i.warnings), *extra_warnings]
    plural = noun if len(items) == 1 else noun + "s"
    headline = f"{len(items) - len(failed)} of {len(items)} {plural} ok"
    headline += "".join(f"; {i.name} FAILED: {_first_line(i.error)}" for i in failed[:HEADLINED])
    if warned and not failed:
        headline += f"; {len(warned)} warning(s)"
    # a failure the headline told in full (one short line) is not repeated
    details = [
        f"{i.name} FAILED: {(i.error or 'failed').strip()}"
        for n, i in enumerate(failed)
        if n >= HEADLINED
        or len((i.error or "").strip()) > SHORT
        or (i.error or "").strip() != _first_line(i.error)
    ]
    details += warned
    details += [f"{i.name}: ok{' ' + i.note if i.note else ''}" for i in items if i.ok]
    event: Ending = "failure" if failed else "warning" if warned else "success"
    return Outcome(event, headline, tuple(details))


def backup_outcome(results: Sequence[BackupResult], skipped: Sequence[str] = ()) -> Outcome:
    """`skipped`: what the run could not back up at all (databases it cannot name)."""
    return _tally(
        "target",
        [_Item(r.target, r.ok, r.error, r.warnings, f"{r.id} {human(r.bytes)}") for r in results],
        (f"warning: {w}" for w in skipped),
    )


def verify_outcome(results: Sequence[VerifyResult]) -> Outcome:
    return _tally(
        "backup",
        [_Item(r.id, r.ok, r.error, r.warnings, "(deep)" if r.deep else "") for r in results],
    )


def drill_outcome(results: Sequence[DrillResult]) -> Outcome:
    """A scratch left behind is a warning: the drill passed, but someone must clean up."""
    return _tally(
        "target",
        [
            _Item(
                r.target,
                r.ok,
                r.error,
                [*r.warnings, *([f"scratch left behind: {r.leftover}"] if r.leftover else [])],
                f"{r.backup} RTO {r.rto_s:.1f}s",
            )
            for r in results
        ],
    )


def sync_outcome(result: SyncResult) -> Outcome:
    headline = (
        f"uploaded {len(result.uploaded)}, already offsite {len(result.present)}, "
        f"failed {len(result.failed)}"
    )
    headline += "".join(f"; {k} FAILED: {_first_line(v)}" for k, v in result.failed.items())
    details = tuple(f"{k} FAILED: {v}" for k, v in result.failed.items())
    return Outcome("failure" if result.failed else "success", headline, details)


def maintenance_outcome(report: MaintenanceReport) -> Outcome:
    """A step that timed out waiting for a lock is a warning: the next run retries it."""

    def label(step: Step) -> str:
        return " ".join(p for p in (step.target, step.operation, step.object) if p)

    failed = [s for s in report.steps if s.status == "failed"]
    timeouts = [s for s in report.steps if s.status == "timeout"]
    counts = report.summary()
    done = len(report.steps) - counts["skipped"]
    headline = f"{counts['ok']} of {done} steps ok"
    headline += "".join(
        f"; {label(s)} FAILED: {_first_line(str(s.details.get('error') or ''))}" for s in failed
    )
    if timeouts:
        headline += f"; {len(timeouts)} timed out waiting for a lock"
    details = [f"{label(s)} FAILED: {s.details.get('error') or 'failed'}" for s in failed]
    details += [f"{label(s)}: timed out waiting for a lock; retried next run" for s in timeouts]
    event: Ending = "failure" if failed else "warning" if timeouts else "success"
    return Outcome(event, headline, tuple(details))


def health_outcome(report: HealthReport) -> Outcome:
    """WARNING is a warning; CRITICAL and UNKNOWN (a check that cannot tell) are
    failures. The headline names the checks, not their numbers, so it changes only
    when the state does."""
    bad = [r for r in report.results if r.status != "ok"]
    if not bad:
        return Outcome("success", f"OK ({len(report.results)} checks)")
    status = report.status
    headline = f"{status.upper()}: " + ", ".join(f"{r.name} {r.status}" for r in bad)
    details = tuple(f"{r.name} {r.status.upper()}: {r.message}" for r in bad)
    return Outcome("warning" if status == "warning" else "failure", headline, details)


def exception_outcome(exc: BaseException) -> Outcome:
    """The run ended with `exc`: interrupted, terminated, or failed."""
    from pyops.errors import Terminated

    if isinstance(exc, KeyboardInterrupt):
        return Outcome("failure", "interrupted (SIGINT); nothing half-done left")
    if isinstance(exc, Terminated):
        return Outcome("failure", "terminated (SIGTERM); nothing half-done left")
    if isinstance(exc, SystemExit):
        return Outcome("failure", f"FAILED (exit status {exc.code})")
    text = str(exc).strip() or type(exc).__name__
    return Outcome("failure", f"FAILED: {_first_line(text)}", (text,) if "\n" in text else ())


# --- redaction -------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:]*):[^\s/@]+@")
_KEY_VALUE = re.compile(
    r"(?i)\b([\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|auth\w*)"
    r"[\w.-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
MASK = "<redacted>"


def redactor(values: Iterable[str], host: str = "") -> Callable[[str], str]:
    """A function that removes secrets from a text: the known `values` (a password, a
    notifier URL) wherever they appear, and whatever looks like one: a URL's password,
    `password=...`/`token: ...`, a bearer token, an AWS key id."""
    known = sorted({v for v in values if v and len(v) >= 4 and v != host}, key=len, reverse=True)

    def scrub(text: str) -> str:
        for value in known:
            text = text.replace(value, MASK)
        text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
        text = _BEARER.sub(rf"\1 {MASK}", text)
        text = _KEY_VALUE.sub(rf"\1\2{MASK}", text)
        return _AWS_KEY_ID.sub(MASK, text)

    return scrub
