"""Prometheus metrics for node_exporter's textfile collector.

`record_run` keeps, per command, target and tier, the last run's outcome,
duration and bytes and the last success's time (in the state dir, so a run of
one target does not erase the others), and rewrites
`<textfile_dir>/pyops_<command>.prom`. `health` writes `pyops_health.prom`.
Files are replaced atomically (temp name node_exporter ignores, then rename, 0644):
the collector never reads half a file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyops.errors import PyopsError
from pyops.fsutil import make_private_dir, write_atomic
from pyops.manifest import parse_id

if TYPE_CHECKING:
    from pyops.app import App
    from pyops.health.result import Result

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
HEALTH_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


# --- the exposition format --------------------------------------------------------


@dataclass
class Family:
    name: str
    help: str
    type: str = "gauge"
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> list[str]:
    """HELP and TYPE once per family, then its samples; families without samples are
    left out (the format does not want empty ones)."""
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        lines.append(f"# HELP {fam.name} {escape(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            lines.append(
                f"{fam.name}{{{inner}}} {number(value)}" if inner else f"{fam.name} {number(value)}"
            )
    return lines


# --- the textfile -------------------------------------------------------------------


def write_textfile(app: App, name: str, lines: list[str]) -> Path | None:
    """Atomically write <textfile_dir>/pyops_<name>.prom; None when no dir is set."""
    directory = app.config.metrics.textfile_dir
    if not directory:
        return None
    if not NAME_RE.match(name):
        raise ValueError(f"metrics file name {name!r}: lowercase letters, digits, '_'")
    path = Path(directory) / f"pyops_{name}.prom"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: never collected
    data = ("\n".join(lines) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PyopsError(
            f"cannot write {path}: {exc.strerror or exc} (check metrics.textfile_dir)"
        ) from None
    return path


# --- backup / verify / drill runs ------------------------------------------------------


def _where(result: dict[str, Any]) -> tuple[str, str]:
    """(target, tier) of a BackupResult / VerifyResult / DrillResult dict."""
    target, tier = result.get("target"), result.get("tier")
    for key in ("id", "backup"):
        value = result.get(key)
        if value and (not target or not tier):
            try:
                parsed_target, parsed_tier, _ = parse_id(str(value))
            except PyopsError:
                continue
            target, tier = target or parsed_target, tier or parsed_tier
    return str(target or "unknown"), str(tier or "unknown")


def _merge_run(results: list[dict[str, Any]], now: float) -> dict[str, dict[str, float]]:
    """This run's outcome per target and tier (several results for one add up)."""
    out: dict[str, dict[str, float]] = {}
    for result in results:
        target, tier = _where(result)
        entry = out.setdefault(
            f"{target}\t{tier}",
            {"last_run": now, "ok": 1.0, "duration": 0.0, "bytes": 0.0, "warnings": 0.0},
        )
        if not result.get("ok"):
            entry["ok"] = 0.0
        entry["duration"] += float(result.get("duration_s") or result.get("rto_s") or 0)
        entry["bytes"] += float(result.get("bytes") or 0)
        entry["warnings"] += float(len(result.get("warnings") or ()))
    for entry in out.values():
        if entry["ok"]:
            entry["last_success"] = now
    return out


def run_families(command: str, state: dict[str, dict[str, float]]) -> list[Family]:
    p = f"pyops_{command}"
    fams = {
        "last_run": Family(f"{p}_last_run_timestamp_seconds", f"When the last {command} ran."),
        "ok": Family(f"{p}_last_run_ok", f"1 if the last {command} succeeded, else 0."),
        "last_success": Family(
            f"{p}_last_success_timestamp_seconds", f"When a {command} last succeeded."
        ),
        "duration": Family(f"{p}_last_duration_seconds", f"How long the last {command} took."),
        "bytes": Family(f"{p}_last_bytes", f"Bytes the last {command} handled."),
        "warnings": Family(
            f"{p}_last_warnings",
            f"Warnings of the last {command} (e.g. files that changed while read).",
        ),
    }
    for key in sorted(state):
        target, _, tier = key.partition("\t")
        for name, fam in fams.items():
            if name in state[key]:
                fam.add(float(state[key][name]), target=target, tier=tier)
    return list(fams.values())


def record_run(app: App, command: str, results: list[dict[str, Any]]) -> None:
    """Update <textfile_dir>/pyops_<command>.prom after a backup, verify or drill.
    Never raises: metrics must not fail a backup (a problem is logged as a warning)."""
    if not app.config.metrics.textfile_dir or not NAME_RE.match(command):
        return
    state_path = app.state / "metrics" / f"{command}.json"
    try:
        try:
            state: dict[str, dict[str, float]] = json.loads(state_path.read_text())
        except FileNotFoundError:
            state = {}
        except ValueError:
            log.warning("metrics state %s unreadable: starting afresh", state_path)
            state = {}
        for key, entry in _merge_run(results, app.clock().timestamp()).items():
            previous = state.get(key, {})
            if "last_success" not in entry and "last_success" in previous:
                entry["last_success"] = previous["last_success"]
            state[key] = entry
        make_private_dir(state_path.parent)
        write_atomic(state_path, json.dumps(state, sort_keys=True).encode())
        write_textfile(app, command, render(run_families(command, state)))
    except (OSError, PyopsError) as exc:
        log.warning("metrics for %s not written: %s", command, exc)


# --- health --------------------------------------------------------------------------


def health_families(results: list[Result], score: int, overall: int, now: float) -> list[Family]:
    status = Family(
        "pyops_health_status", "Health check status: 0 ok, 1 warning, 2 critical, 3 unknown."
    )
    duration = Family("pyops_health_check_duration_seconds", "How long the check took.")
    value = Family(
        "pyops_health_value",
        "A measurement of a health check; `subject` is the target, path, URL or host.",
    )
    for r in results:
        status.add(HEALTH_CODES[r.status], check=r.name)
        duration.add(round(r.duration_s, 4), check=r.name)
        for key, v in r.metrics.items():
            subject, _, metric = key.rpartition(".")
            value.add(float(v), check=r.name, subject=subject, metric=metric)
    return [
        status,
        Family("pyops_health_overall_status", "Worst status, as the exit code: 0..3.").add(overall),
        Family("pyops_health_score", "Overall health score 0-100 (docs/health.md).").add(score),
        value,
        duration,
        Family("pyops_health_last_run_timestamp_seconds", "When pyops health last ran.").add(now),
    ]


# --- notifications ---------------------------------------------------------------------


def count_notifications(app: App, command: str, failed: int) -> None:
    """Add a run's undelivered notifications to pyops_notifications_failed_total{command}
    (kept in <state_dir>/metrics/notify.json under a file lock: a health run may end
    while a backup does). Writing 0 makes the series exist before the first failure.
    Never raises."""
    if not app.config.metrics.textfile_dir:
        return
    state_path = app.state / "metrics" / "notify.json"
    try:
        make_private_dir(state_path.parent)
        with open(state_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state: dict[str, float] = json.loads(state_path.read_text())
            except (FileNotFoundError, ValueError):
                state = {}
            state[command] = float(state.get(command, 0)) + failed
            write_atomic(state_path, json.dumps(state, sort_keys=True).encode())
            fam = Family(
                "pyops_notifications_failed_total",
                "Notifications pyops could not deliver (receiver down, refusing or too slow).",
                "counter",
            )
            for name in sorted(state):
                fam.add(state[name], command=name)
            write_textfile(app, "notify", render([fam]))
    except (OSError, ValueError, PyopsError) as exc:
        log.warning("metrics for notifications not written: %s", exc)
