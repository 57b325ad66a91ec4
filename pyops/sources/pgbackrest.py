"""What pyops knows of a pgBackRest stanza: it runs the real `pgbackrest` (backup on
pyops' calendar and tiers, info, check, restore for a drill) and reads its answers.

Not a dump source like its neighbours (no artifact passes through pyops): pgBackRest
writes, verifies and expires its own repository, so a pgbackrest target has no pyops
manifest, offsite copy or retention. Its backups are listed from `pgbackrest info
--output=json`, its runs are in pyops' run log and metrics like any other target's.

pgbackrest runs as the server's system user when pyops is root (`system_user`,
setpriv), since the repository must stay writable by archive_command; with its own
environment (PATH, locale and the operator's PGBACKREST_* variables, which is where a
cipher passphrase may live: never on argv).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyops.config import PgbackrestTarget
from pyops.errors import PyopsError, StageFailed, ToolMissing
from pyops.execute import Stage, run_quiet
from pyops.manifest import backup_id as make_id
from pyops.progress import human
from pyops.scratchcluster import RunAs
from pyops.tools import pgbackrest as tool

if TYPE_CHECKING:
    from pyops.app import App

log = logging.getLogger(__name__)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LONG_S = 7 * 86400.0  # backup, restore: pgBackRest's own timeouts govern; this bounds a hang
INFO_S = 600.0
CHECK_S = 900.0  # archive-timeout (default 60 s) plus a checkpoint
STATUS_OK = 0
STATUS_NO_BACKUP = 2  # pgbackrest info: "no valid backups"


# --- running pgbackrest -------------------------------------------------------------


def run_as(target: PgbackrestTarget) -> RunAs | None:
    """Whom pgbackrest runs as: pyops itself, or `system_user` when pyops is root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(target.system_user)
    except KeyError:
        raise PyopsError(
            f"target {target.name}: system user {target.system_user!r} does not exist: set "
            "system_user to the user the PostgreSQL server (and its archive_command) runs as"
        ) from None
    if shutil.which("setpriv") is None:
        raise ToolMissing(
            "setpriv not found (it runs pgbackrest as the server's user): install it, "
            "e.g. `apt-get install util-linux`"
        )
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)


def child_env(who: RunAs | None) -> dict[str, str]:
    """pgbackrest's whole environment: a fixed PATH and locale, the home of the user it
    runs as, TZ (backup labels are in local time), and the operator's PGBACKREST_*
    variables (options such as repo1-cipher-pass may be given there)."""
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8"}
    if who is not None:
        env |= {"HOME": pwd.getpwuid(who.uid).pw_dir, "USER": who.name, "LOGNAME": who.name}
    elif "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    env |= {k: v for k, v in os.environ.items() if k.startswith("PGBACKREST_")}
    return env


def stage(target: PgbackrestTarget, command: str, argv: tuple[str, ...]) -> Stage:
    """A pgbackrest command line as the process pyops starts (as `system_user` if root)."""
    program = shutil.which(tool.PROGRAM, path=PATH)
    if program is None:
        raise ToolMissing(
            "pgbackrest not found: install it, e.g. `apt-get install pgbackrest` "
            f"(target {target.name})"
        )
    who = run_as(target)
    prefix: tuple[str, ...] = ()
    if who is not None:
        prefix = ("setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--init-groups", "--")
    return Stage(f"pgbackrest {command}", (*prefix, program, *argv[1:]), env=child_env(who))


def run(target: PgbackrestTarget, command: str, argv: tuple[str, ...], timeout: float) -> str:
    """Run one pgbackrest command; its stdout. A non-zero exit raises with the tail of
    what it said; its warnings (stderr, exit 0) are logged and returned by `run_warned`."""
    return run_warned(target, command, argv, timeout)[0]


def run_warned(
    target: PgbackrestTarget, command: str, argv: tuple[str, ...], timeout: float
) -> tuple[str, list[str]]:
    st = stage(target, command, argv)
    log.debug("run %s: %s", st.name, st)
    result = run_quiet(st, timeout=timeout, check=False)
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    if result.returncode != 0:
        raise StageFailed(
            f"{st.name} (target {target.name}, stanza {target.stanza})",
            result.returncode,
            " | ".join(lines[-6:]),
        )
    warnings = [f"pgbackrest: {ln}" for ln in lines if ln.startswith(("WARN:", "WARNING:"))]
    for warning in warnings:
        log.warning("%s %s: %s", st.name, target.name, warning)
    return result.stdout, warnings


# --- pgbackrest info ----------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One backup of the stanza, as `pgbackrest info` describes it."""

    label: str
    type: str  # full | diff | incr
    started: datetime
    stopped: datetime
    database_bytes: int  # the cluster's size at backup time (what a restore writes)
    repository_bytes: int  # what this backup added to the repository (compressed)
    repo: int
    prior: str | None = None
    error: bool = False  # pgBackRest found page checksum errors
    annotation: dict[str, str] = field(default_factory=dict)

    @property
    def tier(self) -> str:
        return tool.TYPE_TIERS.get(self.type, "daily")

    def warnings(self) -> list[str]:
        if not self.error:
            return []
        return [
            f"pgBackRest found page checksum errors in backup {self.label}: "
            f"pgbackrest info --set={self.label} names the files"
        ]


@dataclass(frozen=True)
class Stanza:
    """`pgbackrest info` of one stanza; backups newest first."""

    name: str
    status_code: int
    status: str
    cipher: str
    backups: tuple[Backup, ...]
    pg_version: str | None = None  # the major version of the newest database in it

    @property
    def encrypted(self) -> bool:
        return self.cipher not in ("", "none")

    def newest(self, tier: str | None = None) -> Backup | None:
        """The newest backup, or the newest of `tier` or a longer one (a full backup is
        also a fresh diff and incr: it restores as well)."""
        order = ("daily", "weekly", "monthly")
        wanted = order[order.index(tier) :] if tier in order else order
        return next((b for b in self.backups if b.tier in wanted), None)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _backup(raw: Any) -> Backup | None:
    """One entry of `backup`, or None when it lacks what pyops needs."""
    item = _dict(raw)
    label, kind = item.get("label"), item.get("type")
    stamps = _dict(item.get("timestamp"))
    start, stop = stamps.get("start"), stamps.get("stop")
    if not isinstance(label, str) or kind not in tool.TYPE_TIERS:
        return None
    if not isinstance(start, int) or not isinstance(stop, int):
        return None
    sizes = _dict(item.get("info"))
    repo = _dict(sizes.get("repository"))
    annotation = {str(k): str(v) for k, v in _dict(item.get("annotation")).items()}
    prior = item.get("prior")
    return Backup(
        label=label,
        type=str(kind),
        started=datetime.fromtimestamp(start, UTC),
        stopped=datetime.fromtimestamp(stop, UTC),
        database_bytes=_int(sizes.get("size")),
        repository_bytes=_int(repo.get("delta"), _int(repo.get("size"))),
        repo=_int(_dict(item.get("database")).get("repo-key"), 1),
        prior=prior if isinstance(prior, str) else None,
        error=item.get("error") is True,
        annotation=annotation,
    )


def parse_info(data: Any, stanza: str) -> Stanza:
    """The stanza's entry of `pgbackrest info --output=json` (a list of stanzas)."""
    entries = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    entry = next((e for e in entries if e.get("name") == stanza), None)
    if entry is None:
        raise PyopsError(f"pgbackrest info: no stanza {stanza!r} in its answer")
    status = _dict(entry.get("status"))
    backups = [b for b in map(_backup, entry.get("backup") or []) if b is not None]
    backups.sort(key=lambda b: (b.stopped, b.label), reverse=True)
    dbs = [_dict(d) for d in entry.get("db") or []]
    newest_db = max(dbs, key=lambda d: _int(d.get("id")), default={})
    return Stanza(
        name=stanza,
        status_code=_int(status.get("code"), -1),
        status=str(status.get("message") or "?"),
        cipher=str(entry.get("cipher") or "none"),
        backups=tuple(backups),
        pg_version=str(newest_db["version"]) if "version" in newest_db else None,
    )


def info(target: PgbackrestTarget) -> Stanza:
    """`pgbackrest info` of the target's stanza; PyopsError if it cannot be read."""
    import json

    out = run(target, "info", tool.info(target.pgbackrest_config, target.stanza), INFO_S)
    try:
        data = json.loads(out)
    except ValueError:
        raise PyopsError(
            f"pgbackrest info (target {target.name}) did not answer JSON: {out[:200]!r}"
        ) from None
    return parse_info(data, target.stanza)


def usable(target: PgbackrestTarget, stanza: Stanza) -> None:
    """PyopsError unless the stanza exists and holds a backup."""
    if stanza.status_code not in (STATUS_OK, STATUS_NO_BACKUP) or not stanza.backups:
        raise PyopsError(
            f"target {target.name}: stanza {target.stanza} holds no usable backup "
            f"(pgbackrest info: {stanza.status})"
        )


# --- backup ---------------------------------------------------------------------------


@dataclass
class Done:
    label: str
    type: str
    bytes: int
    database_bytes: int
    duration_s: float
    warnings: list[str]


def backup(app: App, target: PgbackrestTarget, tier: str) -> Done:
    """`pgbackrest backup --type=<tier's type>`, annotated with pyops' run id and tier,
    then found again in `pgbackrest info` by that id. pgBackRest expires what its
    repo1-retention-* settings say right after (pyops prunes nothing of it)."""
    t0 = time.monotonic()
    run_id = make_id(target.name, tier, app.clock())
    notes = {tool.RUN_ANNOTATION: run_id, tool.TIER_ANNOTATION: tier}
    argv = tool.backup(target.pgbackrest_config, target.stanza, tier, notes)
    log.info(
        "backup %s: pgbackrest %s backup of stanza %s",
        target.name,
        tool.TIER_TYPES[tier],
        target.stanza,
    )
    _, warnings = run_warned(target, "backup", argv, LONG_S)
    stanza = info(target)
    made = next(
        (b for b in stanza.backups if b.annotation.get(tool.RUN_ANNOTATION) == run_id), None
    )
    if made is None:
        raise PyopsError(
            f"target {target.name}: pgbackrest backup succeeded, but pgbackrest info shows no "
            f"backup annotated {tool.RUN_ANNOTATION}={run_id}: check `pgbackrest info`"
        )
    warnings += made.warnings()
    done = Done(
        made.label,
        made.type,
        made.repository_bytes,
        made.database_bytes,
        round(time.monotonic() - t0, 3),
        warnings,
    )
    log.info(
        "backup %s: done, pgBackRest %s backup %s: %s added to the repository (database %s) "
        "in %.1fs",
        target.name,
        made.type,
        made.label,
        human(made.repository_bytes),
        human(made.database_bytes),
        done.duration_s,
    )
    return done


# --- list, fleet ----------------------------------------------------------------------


def row(target: str, stanza: Stanza, b: Backup) -> dict[str, Any]:
    """A `pyops list` row. `size` is what the backup added to the repository; offsite
    and authenticated are pyops' notions (null: pgBackRest keeps its own repositories
    and checks its own manifests)."""
    return {
        "id": b.label,
        "target": target,
        "tier": b.tier,
        "time": b.started.isoformat(),
        "size": b.repository_bytes,
        "encrypted": stanza.encrypted,
        "offsite": None,
        "authenticated": None,
        "warnings": b.warnings(),
        "engine": "pgbackrest",
        "type": b.type,
        "finished": b.stopped.isoformat(),
        "database_size": b.database_bytes,
        "repo": b.repo,
        "prior": b.prior,
    }


def targets(app: App, name: str | None = None) -> list[PgbackrestTarget]:
    return [
        t
        for t in app.config.targets
        if isinstance(t, PgbackrestTarget) and (name is None or t.name == name)
    ]


def list_rows(
    app: App, name: str | None, tier: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows, targets whose info could not be read, and why) for `pyops list`."""
    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    for t in targets(app, name):
        try:
            stanza = info(t)
        except PyopsError as exc:
            unavailable.append({"target": t.name, "reason": str(exc)})
            continue
        if stanza.status_code not in (STATUS_OK, STATUS_NO_BACKUP):
            reason = f"stanza {t.stanza}: pgbackrest info says {stanza.status}"
            unavailable.append({"target": t.name, "reason": reason})
        rows += [row(t.name, stanza, b) for b in stanza.backups if tier in (None, b.tier)]
    return rows, unavailable


def fleet_summary(app: App, target: PgbackrestTarget) -> dict[str, Any]:
    """The fleet index's TARGET entry of a pgbackrest target (its shape: pyops.fleetindex),
    per tier by backup type. `size` and `sizes` are the database's size at backup time:
    an incremental backup's own size follows the day's writes, not the data, and would
    look like a shrinking backup. No sha256 (pgBackRest checks each file itself), no
    offsite (pgBackRest's repositories are its own). Never raises: a stanza that cannot
    be read is a warning."""
    try:
        stanza = info(target)
    except PyopsError as exc:
        return {"type": target.type, "tiers": {}, "warnings": [f"pgbackrest info failed: {exc}"]}
    tiers: dict[str, Any] = {}
    for b in stanza.backups:  # newest first
        entry = tiers.setdefault(
            b.tier,
            {
                "newest": {
                    "id": b.label,
                    "time": b.started.isoformat(),
                    "size": b.database_bytes,
                    "sha256": "",
                    "offsite": None,
                    "warnings": b.warnings(),
                },
                "count": 0,
                "offsite_count": None,
                "sizes": [],
            },
        )
        entry["count"] += 1
        entry["sizes"].insert(0, [int(b.started.timestamp()), b.database_bytes])
    warnings = [] if stanza.status_code == STATUS_OK else [f"pgbackrest info: {stanza.status}"]
    return {"type": target.type, "tiers": tiers, "warnings": warnings}
