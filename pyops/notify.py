"""Run notifications: one message per run of backup, verify, drill, maintenance,
health and sync, to a person (Apprise URLs: ntfy, e-mail, Slack, ...) and to a
dead-man's switch (a healthchecks-style `ping_url`).

A notification never decides a run: every receiver gets `TIMEOUT` seconds in a
daemon thread of its own (a dead or slow receiver can neither hang a run nor delay
its exit), and what was not delivered is logged as a warning, with the receiver
named without its secret (Apprise URLs and ping URLs carry tokens), and counted in
`pyops_notifications_failed_total`. Messages are built from the results the
commands already have (`pyops.notify_text`); nothing from the environment goes in.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from pyops import __version__, metrics, secrets
from pyops.errors import PyopsError
from pyops.fsutil import make_private_dir, write_atomic
from pyops.notify_text import (
    Outcome,
    backup_outcome,
    drill_outcome,
    exception_outcome,
    health_outcome,
    maintenance_outcome,
    redactor,
    sync_outcome,
    verify_outcome,
)

if TYPE_CHECKING:
    from pyops.app import App
    from pyops.config import NotifyConfig

__all__ = [
    "Outcome",
    "Run",
    "backup_outcome",
    "drill_outcome",
    "health_outcome",
    "maintenance_outcome",
    "notify",
    "read_urls_file",
    "run",
    "sync_outcome",
    "unit_failed",
    "verify_outcome",
]

log = logging.getLogger(__name__)
Event = Literal["start", "success", "warning", "failure"]
TIMEOUT = 10.0  # seconds one message may take, all receivers together
MAX_BODY = 10_000  # the legacy on_failure POST
TAIL_LINES = 40
TAIL_BYTES = 4096
TITLES = {"start": "started", "success": "ok", "warning": "WARNING", "failure": "FAILED"}


def redact(url: str) -> str:
    """scheme://host/... : enough to tell receivers apart, never the token in the rest."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/..."


# --- receivers ---------------------------------------------------------------------


@dataclass
class _Send:
    """One delivery to one receiver; `call` returns None when delivered, else why not."""

    label: str
    call: Callable[[], str | None]
    reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        try:
            self.reason = self.call()
        except Exception as exc:  # a receiver's bug must not escape its thread
            self.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


class _Batch:
    """Sends started at once, each in a daemon thread; `wait` gives up at the deadline
    and reports what was not delivered as (receiver, why)."""

    def __init__(self, sends: list[_Send], timeout: float = TIMEOUT) -> None:
        self.sends = sends
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        for send in sends:
            threading.Thread(target=send, name="pyops-notify", daemon=True).start()

    def wait(self) -> list[tuple[str, str]]:
        failed = []
        for send in self.sends:
            if not send.done.wait(max(0.0, self.deadline - time.monotonic())):
                failed.append((send.label, f"no answer within {self.timeout:g} s"))
            elif send.reason is not None:
                failed.append((send.label, send.reason))
        return failed


def _http(url: str, body: str | None) -> str | None:
    """GET (no body) or POST a text body; None on 2xx, else why not."""
    import urllib.error  # only when there is something to send (12 ms of every start)
    import urllib.request

    headers = {"User-Agent": f"pyops/{__version__}"}
    data = None
    if body is not None:
        data = body.encode("utf-8", "replace")
        headers["Content-Type"] = "text/plain; charset=utf-8"
    request = urllib.request.Request(url, data, headers, method="GET" if data is None else "POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 - http(s) only
            answer.read(1024)
            code = int(answer.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"
    return None if 200 <= code < 300 else f"answered {code}"


def _apprise_label(url: str) -> str:
    """Service name and scheme://host as Apprise shows them with privacy on
    (tgram://1...c): a URL's token never reaches a log."""
    try:
        import apprise

        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    except Exception:  # naming a receiver must never break a run
        plugin = None
    if not plugin:
        return f"{urlsplit(url).scheme}://..."
    shown = urlsplit(str(plugin.url(privacy=True)))  # type: ignore[no-untyped-call]
    return f"{plugin.service_name} ({shown.scheme}://{shown.netloc})"


def _apprise(url: str, title: str, body: str, event: Event) -> Callable[[], str | None]:
    def send() -> str | None:
        import apprise

        # apprise's own log lines would repeat ours, URLs and all; show them with -v only
        logging.getLogger("apprise").propagate = logging.getLogger().isEnabledFor(logging.DEBUG)
        # service_timeout=0: delivery stays in this thread, which `_Batch` bounds;
        # memory storage: nothing of a receiver written to disk
        asset = apprise.AppriseAsset(service_timeout=0, storage_mode="memory")
        sender = apprise.Apprise(asset=asset)
        if not sender.add(url):
            return "not an Apprise URL"
        kind = {
            "start": apprise.NotifyType.INFO,
            "success": apprise.NotifyType.SUCCESS,
            "warning": apprise.NotifyType.WARNING,
            "failure": apprise.NotifyType.FAILURE,
        }[event]
        result = sender.notify(
            body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT
        )
        if result:
            return None
        said = [e.message for s in result for e in s.logs() if e.level in ("WARNING", "ERROR")]
        return said[-1] if said else "not delivered"

    return send


def ping_target(ping_url: str, command: str, event: Event, rid: str) -> str | None:
    """The healthchecks URL for `event` (<url>/start, <url>, <url>/fail), with the run id
    that pairs start and end; None when this command does not ping. Without
    `{command}` in it, only backups ping: a health run every few minutes must not keep
    a backup's dead-man's switch alive."""
    if not ping_url or ("{command}" not in ping_url and command != "backup"):
        return None
    parts = urlsplit(ping_url.replace("{command}", command))
    suffix = {"start": "/start", "failure": "/fail"}.get(event, "")
    query = "&".join(q for q in (parts.query, f"rid={rid}") if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + suffix, query, ""))


# --- where URLs come from ------------------------------------------------------------


def read_urls_file(path: Path) -> list[str]:
    """Apprise URLs, one a line; blank lines and `#` comments skipped. `%d/NAME` is a
    systemd credential, found as the other secret files are (`secrets.resolve`).
    OSError when unreadable."""
    text = secrets.resolve(path).read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def _urls(config: NotifyConfig) -> tuple[list[str], str | None]:
    """Every Apprise URL, and why the urls_file could not be read (None: fine)."""
    urls = list(config.urls)
    if config.urls_file is not None:
        try:
            urls += read_urls_file(config.urls_file)
        except OSError as exc:
            return urls, f"notify.urls_file {config.urls_file}: {exc.strerror or exc}"
    return urls, None


# --- a run -----------------------------------------------------------------------------


class _Tail(logging.Handler):
    """The run's last log lines (INFO and up), for the failure message. Notification
    lines are left out: they are about the message, not the run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("apprise", __name__)):
            return
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break the run
            return
        self.lines += [f"{record.levelname} {line}" for line in text.splitlines()]
        del self.lines[:-TAIL_LINES]

    def text(self) -> str:
        out: list[str] = []
        size = 0
        for line in reversed(self.lines):
            size += len(line.encode()) + 1
            if size > TAIL_BYTES:
                if not out:  # one line longer than the bound: its end
                    out.append("..." + line.encode()[-TAIL_BYTES + 4 :].decode(errors="ignore"))
                break
            out.append(line)
        return "\n".join(reversed(out))


class Run:
    """One notified run: the start message at once (in the background), the final one
    from `finish` (an Outcome) or `failed` (the exception that ended the run). As a
    context manager, the outcome set on `.outcome` inside is sent on exit, after the
    locks and the run log the same `with` holds are released."""

    def __init__(
        self, app: App, command: str, targets: Sequence[str] = (), enabled: bool = True
    ) -> None:
        cfg = app.config.notify
        self.app, self.command = app, command
        self.outcome: Outcome | None = None
        self.rid = str(uuid.uuid4())
        self.chosen = command in cfg.commands  # the urls and ping_url hear of it
        # on_start/on_success/on_failure: backups, as ever, whatever `commands` says
        self.legacy = command == "backup" and any((cfg.on_start, cfg.on_success, cfg.on_failure))
        self.urls, self.urls_problem = _urls(cfg) if enabled and self.chosen else ([], None)
        told = self.urls or self.urls_problem or cfg.ping_url
        self.active = enabled and (self.legacy or bool(self.chosen and told))
        self.attempted = False
        self.failures: list[tuple[str, str, str]] = []  # what was not delivered
        self._done = not self.active
        self._tail = _Tail()
        self._started: _Batch | None = None
        self._people: set[str] = set()  # labels of this message's Apprise receivers
        self._health_state: str | None = None
        if self._done:
            return
        logging.getLogger().addHandler(self._tail)
        what = f": {', '.join(targets)}" if targets else ""
        start = Outcome("success", f"started{what}")  # event "start" below
        self._started = self._send("start", start)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not (isinstance(exc, SystemExit) and not exc.code):
            self.failed(exc)
        else:
            self.finish()

    def failed(self, exc: BaseException) -> None:
        self.finish(exception_outcome(exc))

    def finish(self, outcome: Outcome | None = None) -> None:
        """Send the final message once; wait (bounded) for it and the start message."""
        if self._done:
            return
        self._done = True
        logging.getLogger().removeHandler(self._tail)
        outcome = outcome or self.outcome or Outcome("success", "finished")
        failures: list[tuple[str, str, str]] = []  # (message, receiver, why)
        if self._started is not None:
            failures += [("start", *f) for f in self._started.wait()]
        final = self._send(outcome.event, outcome)
        if final is not None:
            failed = final.wait()
            self._remember_health(failed)
            failures += [(outcome.event, *f) for f in failed]
        if self.urls_problem:
            failures.append((outcome.event, "urls_file", self.urls_problem))
        for event, receiver, why in failures:
            log.warning("notify %s %s: %s: %s", self.command, event, receiver, why)
        if self.attempted or failures:
            metrics.count_notifications(self.app, self.command, len(failures))
        self.failures = failures

    def _send(self, event: Event, outcome: Outcome) -> _Batch | None:
        cfg = self.app.config.notify
        scrub = redactor(self._secret_values(), host=self.app.config.host)
        title = f"{self.command} on {self.app.config.host}: {TITLES[event]}"
        tail = self._tail.text() if event == "failure" else ""
        body = scrub(outcome.body(self.command, self.app.config.host, tail))
        sends: list[_Send] = []
        if self._tell_people(event, outcome) and event in cfg.events:
            sends += [_Send(_apprise_label(u), _apprise(u, title, body, event)) for u in self.urls]
        self._people = {s.label for s in sends}
        ping = ping_target(cfg.ping_url, self.command, event, self.rid) if self.chosen else None
        if ping:
            sends.append(_Send(f"ping {redact(ping)}", _ping(ping, event, body)))
        legacy = {"start": cfg.on_start, "failure": cfg.on_failure}.get(event, cfg.on_success)
        if self.legacy and legacy:
            short = body[:MAX_BODY] if event == "failure" else None
            sends.append(_Send(f"on_{_legacy_key(event)} {redact(legacy)}", _legacy(legacy, short)))
        if not sends:
            return None
        self.attempted = True
        return _Batch(sends)

    def _secret_values(self) -> list[str]:
        """What must never appear in a message, so it is cut out wherever it does: the
        configured secrets (read only to find them) and the notifier URLs themselves."""
        cfg = self.app.config.notify
        values = [secrets.get(n) or "" for n in secrets.names(self.app.config)]
        for secret in secrets.files(self.app.config):
            try:
                values.append(secrets.read(secret.path, secret.key))
            except PyopsError:
                continue  # unreadable here: then no message can hold it either
        return [*values, *self.urls, cfg.ping_url, cfg.on_start, cfg.on_success, cfg.on_failure]

    def _tell_people(self, event: Event, outcome: Outcome) -> bool:
        """Health runs every few minutes: people hear of a change of its state only
        (a new problem, another set of problems, back to OK), never of a start."""
        if self.command != "health":
            return True
        if event == "start":
            return False
        try:
            before = json.loads(self._health_path.read_text()).get("state")
        except (OSError, ValueError, AttributeError):
            before = None
        now = outcome.headline if outcome.event != "success" else "ok"
        if now == (before or "ok"):
            return False
        self._health_state = now
        return True

    @property
    def _health_path(self) -> Path:
        return self.app.state / "notify-health.json"

    def _remember_health(self, failed: list[tuple[str, str]]) -> None:
        """The state people were told of; not when they were not (the next run retries)."""
        if self._health_state is None or any(r in self._people for r, _ in failed):
            return
        try:
            make_private_dir(self._health_path.parent)
            write_atomic(self._health_path, json.dumps({"state": self._health_state}).encode())
        except OSError as exc:
            log.warning("notify health: cannot remember the state: %s", exc)


def _legacy_key(event: Event) -> str:
    return {"start": "start", "failure": "failure"}.get(event, "success")


def _ping(url: str, event: Event, body: str) -> Callable[[], str | None]:
    # healthchecks keeps a POST body in the check's log: the summary, or the failure
    return lambda: _http(url, None if event == "start" else body)


def _legacy(url: str, body: str | None) -> Callable[[], str | None]:
    return lambda: _http(url, body)


def run(app: App, command: str, targets: Sequence[str] = (), enabled: bool = True) -> Run:
    """Start notifying a run of `command` (a no-op unless it is in notify.commands and
    `enabled`): `with notify.run(app, "verify") as note, app.lock(...): ...`."""
    return Run(app, command, targets, enabled)


# --- outside a run ---------------------------------------------------------------------


def notify(app: App, event: Literal["start", "success", "failure"], summary: str) -> bool:
    """Call the legacy on_<event> URL, if any, and wait for it (bounded). True when it
    answered 2xx."""
    url = {
        "start": app.config.notify.on_start,
        "success": app.config.notify.on_success,
        "failure": app.config.notify.on_failure,
    }.get(event, "")
    if not url:
        return False
    if urlsplit(url).scheme not in ("http", "https"):
        log.warning("notify %s: not an http(s) URL; skipped", event)
        return False
    body = None
    if event == "failure":
        body = summary if len(summary) <= MAX_BODY else summary[: MAX_BODY - 3] + "..."
    failed = _Batch([_Send(redact(url), _legacy(url, body))]).wait()
    for receiver, why in failed:
        log.warning("notify %s: %s %s", event, receiver, why)
    if not failed:
        log.debug("notify %s: %s answered", event, redact(url))
    return not failed


def unit_failed(app: App, unit: str, environ: dict[str, str] | None = None) -> None:
    """A pyops systemd unit failed (OnFailure=). The legacy on_failure URL hears of
    every such failure, as before. The Apprise URLs and the ping URL hear only of one
    pyops could not report itself: killed by its timeout or a signal, out of memory
    (systemd's $MONITOR_SERVICE_RESULT is not "exit-code"); a run that exited has
    reported itself."""
    env = os.environ if environ is None else environ
    notify(app, "failure", f"systemd unit {unit} failed")
    result = env.get("MONITOR_SERVICE_RESULT", "")
    command = unit.removeprefix("pyops-").split("@")[0].split(".")[0]
    cfg = app.config.notify
    if result in ("", "exit-code", "success") or command not in cfg.commands:
        return
    host = app.config.host
    body = Outcome(
        "failure",
        f"systemd unit {unit} failed ({result}) before pyops could report; "
        f"see journalctl -u {unit}",
    ).body(command, host)
    urls, problem = _urls(cfg) if "failure" in cfg.events else ([], None)
    title = f"{command} on {host}: {TITLES['failure']}"
    sends = [_Send(_apprise_label(u), _apprise(u, title, body, "failure")) for u in urls]
    ping = ping_target(cfg.ping_url, command, "failure", str(uuid.uuid4()))
    if ping:
        sends.append(_Send(f"ping {redact(ping)}", _ping(ping, "failure", body)))
    failed = _Batch(sends).wait() + ([("urls_file", problem)] if problem else [])
    for receiver, why in failed:
        log.warning("notify %s failure: %s: %s", command, receiver, why)
    if sends or failed:
        metrics.count_notifications(app, command, len(failed))
