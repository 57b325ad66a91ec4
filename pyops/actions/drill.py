"""pyops drill: prove each target's latest backup restores, and how long it takes.

The backup is restored into a scratch database / file / directory (never the
live one), or with --scratch-cluster into a throwaway PostgreSQL cluster (the
bare-server path), its content compared with the manifest, and the time to
recover (fetch, restore, check) recorded in the run log for auditors and
`health`. One target's failure is its own result; a scratch pyops could not
remove is reported (`leftover`), with the command to remove it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shlex
import shutil
import sys
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pyops import attachments, fleetindex
from pyops.app import App
from pyops.artifact import read_chunks
from pyops.catalog import Backup
from pyops.config import PgbackrestTarget, PostgresTarget, Target
from pyops.errors import PyopsError, VerifyFailed, os_error_message
from pyops.fsutil import make_private_dir
from pyops.manifest import stamp as make_stamp
from pyops.sources import RestoreOptions, compare_content, module
from pyops.stream import Checksum

log = logging.getLogger(__name__)
SAMPLE_FILES = 20


@dataclass
class DrillResult:
    target: str
    ok: bool
    backup: str | None = None
    remote: bool = False
    fetch_s: float = 0.0
    restore_s: float = 0.0
    check_s: float = 0.0
    rto_s: float = 0.0
    bytes: int = 0
    scratch: str | None = None
    checked: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cluster_s: float = 0.0  # initdb and start of the scratch cluster (part of the RTO)
    scratch_cluster: str | None = None  # "PostgreSQL 15": restored into a throwaway cluster
    leftover: str | None = None  # a scratch not removed, and the command that removes it
    warnings: list[str] = field(default_factory=list)
    tier: str | None = None  # pgbackrest: the tier of the backup's type (no pyops id to read)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def latest(app: App, target: Target, remote: bool) -> tuple[Backup, float]:
    """The newest complete backup (not a pre-restore one), and the seconds it took to
    have it locally."""
    t0 = time.monotonic()
    if remote:
        from pyops.actions import sync

        backup = sync.fetch(app, sync.find_remote(app, None, target.name), fresh=True)
        return backup, time.monotonic() - t0
    found = app.local().scan(target.name).latest(target.name)
    if found is None:
        raise PyopsError(f"target {target.name}: no complete backup to drill")
    return found, 0.0


def _scratch_place(app: App, target: Target, backup: Backup, stamp: str) -> str:
    if isinstance(target, PostgresTarget):
        return f"pyops_drill_{target.name.replace('-', '_')}_{stamp.lower()}"[:63]
    base = make_private_dir(app.state / "drill")
    name = f"{backup.id}.{stamp}"
    return str(base / (f"{name}.sqlite3" if target.type == "sqlite" else name))


def _check_postgres(target: PostgresTarget, database: str, backup: Backup) -> dict[str, Any]:
    """Exact row counts of every table of the scratch database against the manifest."""
    from pyops.pgfacts import server, session

    limits = session.restore(target.lock_wait_seconds)
    with session.connect(target, limits, purpose="drill", db=database) as conn:
        tables = [(s, t) for s, t, _ in server.tables(conn)]
        counts = server.count_rows(conn, tables)
    diff = compare_content(backup.manifest.content, {"tables": counts})
    if diff:
        raise VerifyFailed(f"{backup.id}: restored content differs: {'; '.join(diff[:5])}")
    return {"tables": len(counts), "rows": sum(counts.values())}


def _sample_files(directory: Path) -> dict[str, Any]:
    """Read back a random sample of restored files end to end."""
    files = [Path(d, n) for d, _, names in os.walk(directory) for n in names]
    regular = [f for f in files if f.is_file() and not f.is_symlink()]
    sample = random.sample(regular, min(SAMPLE_FILES, len(regular)))
    digests = {}
    for path in sample:
        h = hashlib.sha256()
        for chunk in read_chunks(path):
            h.update(chunk)
        digests[str(path.relative_to(directory))] = h.hexdigest()
    return {"sampled_files": len(digests)}


def _options(app: App, backup: Backup) -> RestoreOptions:
    """The backup's saved roles and database state, as `restore` uses them: a drill on
    a server without the roles (a scratch cluster) creates them the same way."""
    if "globals" not in backup.manifest.attachments:
        return RestoreOptions()
    return RestoreOptions(globals=attachments.saved_state(app.local(), backup, app.codec))


def _restore(
    app: App,
    target: Target,
    backup: Backup,
    place: str,
    stamp: str,
    result: DrillResult,
    options: RestoreOptions,
) -> None:
    """The same restore as `pyops restore --into`, timed, sha256 confirmed in the pass."""
    source = module(target.type)
    t0 = time.monotonic()
    with app.scratch(f"drill-{backup.id}") as work, app.codec.decoder(backup.manifest) as dec:
        check = Checksum(backup.manifest)
        staged = source.restore(
            target,
            backup.manifest,
            check.through(app.local().chunks(backup)),
            dec,
            place,
            stamp,
            work,
            1,
            options,
        )
        check.check()  # sha256 of the artifact, confirmed in the same pass
        staged.commit()
    result.restore_s = time.monotonic() - t0


def _check(target: Target, place: str, backup: Backup, result: DrillResult) -> None:
    t0 = time.monotonic()
    if isinstance(target, PostgresTarget):
        result.checked = _check_postgres(target, place, backup)
    elif target.type == "files":
        result.checked = {**backup.manifest.content, **_sample_files(Path(place))}
    else:
        result.checked = {
            "tables": len(backup.manifest.content.get("tables", {})),
            "integrity_check": "ok",
        }
    result.check_s = time.monotonic() - t0


def _remove(target: Target, place: str) -> None:
    if isinstance(target, PostgresTarget):
        from pyops.sources import postgres

        postgres.drop_database(target, place)
    elif os.path.isdir(place) and not os.path.islink(place):
        shutil.rmtree(place)
    else:
        Path(place).unlink(missing_ok=True)


def _removal_command(target: Target, place: str) -> str:
    """What the operator runs to remove a scratch pyops could not."""
    if isinstance(target, PostgresTarget):
        from pyops.sources import postgres

        return (
            f"database {place} on {postgres.where(target)}: as its owner or a superuser, "
            f"DROP DATABASE {_quoted(place)} WITH (FORCE);"
        )
    return f"{place}: rm -rf -- {shlex.quote(place)}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _same_server(
    app: App, target: Target, backup: Backup, stamp: str, keep: bool, result: DrillResult
) -> None:
    """Restore into a scratch database / file / directory beside the live data."""
    place = _scratch_place(app, target, backup, stamp)
    result.scratch = place
    options = _options(app, backup)
    module(target.type).plan(target, place, backup.manifest, options)  # an existing one: not ours
    try:
        _restore(app, target, backup, place, stamp, result, options)
        _check(target, place, backup, result)
    finally:
        if not keep:
            try:
                _remove(target, place)
            except Exception as exc:  # the drill's verdict stands; the leftover is reported
                _left_behind(result, _removal_command(target, place), _cause(exc))


def _in_scratch_cluster(
    app: App, target: PostgresTarget, backup: Backup, stamp: str, result: DrillResult
) -> None:
    """The bare-server path: a throwaway cluster with no application roles, the backup
    restored into its original database name, the same exact comparison."""
    from pyops import scratchcluster

    wanted = scratchcluster.major_of(backup.manifest.source.get("server_version"))
    database = _original_name(target, backup, result)
    t0 = time.monotonic()
    cluster = scratchcluster.start(wanted)
    try:
        with cluster:
            result.cluster_s = time.monotonic() - t0
            result.scratch_cluster = f"PostgreSQL {cluster.major}"
            result.scratch = database
            if wanted is not None and cluster.major != wanted:
                _warn(
                    result,
                    f"the backup is of PostgreSQL {wanted}, which is not installed here: "
                    f"the scratch cluster runs PostgreSQL {cluster.major}",
                )
            scratch = _retarget(target, cluster.dsn(database))
            options = _options(app, backup)
            module("postgres").plan(scratch, database, backup.manifest, options)
            _restore(app, scratch, backup, database, stamp, result, options)
            _check(scratch, database, backup, result)
    finally:
        if cluster.leftover:
            _left_behind(result, cluster.leftover, "the scratch cluster could not be removed")


def _original_name(target: PostgresTarget, backup: Backup, result: DrillResult) -> str:
    """The backup's database name (a manifest is input: only a plausible name is used;
    the target's own otherwise). The names initdb makes are taken: a backup of one of
    them goes into pyops_drill_<name>."""
    from pyops.sources import postgres

    name = backup.manifest.source.get("database")
    if not isinstance(name, str) or not 0 < len(name.encode()) <= 63 or "\0" in name:
        name = postgres.dbname(target)
    if name in ("postgres", "template0", "template1"):
        renamed = f"pyops_drill_{name}"
        _warn(result, f"database {name} exists in every new cluster: restored as {renamed}")
        return renamed
    return name


def _retarget(target: PostgresTarget, dsn: str) -> PostgresTarget:
    """The target, pointing at the scratch cluster: its superuser over the private
    socket, no password, nothing of the live server's connection settings."""
    changes: dict[str, Any] = {"dsn": dsn, "password_env": ""}
    for f in fields(target):  # keys other parts of pyops may add: their defaults
        if f.name in ("password_file", "container") and f.default is not MISSING:
            changes[f.name] = f.default
    return replace(target, **changes)


def _warn(result: DrillResult, text: str) -> None:
    result.warnings.append(text)
    log.warning("drill %s: %s", result.target, text)


def _left_behind(result: DrillResult, leftover: str, cause: str) -> None:
    result.leftover = leftover
    _warn(result, f"scratch NOT removed: {cause}")


def _pg_error(exc: BaseException) -> bool:
    """A psycopg error (psycopg is loaded only by PostgreSQL targets' drills)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def _cause(exc: BaseException) -> str:
    """An exception as the operator reads it: pyops' own messages as they are."""
    if isinstance(exc, PyopsError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if _pg_error(exc):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"PostgreSQL: {first} ({type(exc).__name__})"
    return f"unexpected error: {type(exc).__name__}: {exc}"


def _from_backup(
    app: App, target: Target, remote: bool, keep: bool, scratch_cluster: bool, result: DrillResult
) -> None:
    """A target pyops backs up itself: its newest backup, restored beside or into a
    scratch cluster."""
    backup, result.fetch_s = latest(app, target, remote)
    result.backup, result.bytes = backup.id, backup.manifest.size
    if backup.manifest.encrypted:  # a host with only the public key: say so plainly
        app.codec.probe_decrypt(app.local().head(backup, 1 << 16), backup.id)
    stamp = make_stamp(app.clock())
    if scratch_cluster and isinstance(target, PostgresTarget):
        _in_scratch_cluster(app, target, backup, stamp, result)
    else:
        if scratch_cluster:
            _warn(
                result,
                f"--scratch-cluster applies to postgres targets: this {target.type} "
                "target was restored into a scratch place as usual",
            )
        _same_server(app, target, backup, stamp, keep, result)


def _from_pgbackrest(
    app: App,
    target: PgbackrestTarget,
    remote: bool,
    keep: bool,
    target_time: datetime | None,
    result: DrillResult,
) -> None:
    """pgBackRest restores the stanza into a throwaway cluster, which recovers and is
    checked (pyops.restoredcluster). No fetch: pgBackRest reads its repository as it
    restores, so the RTO is restore + recovery (cluster_s) + check."""
    from pyops import restoredcluster

    if remote:
        _warn(result, "--remote: pgBackRest restores from its own repositories (its config's)")
    if keep:
        _warn(result, "--keep: a pgBackRest drill's scratch cluster is always removed")
    done = restoredcluster.Drilled()
    try:
        restoredcluster.drill(app, target, target_time, done)
    finally:
        result.backup, result.tier, result.bytes = done.label or None, done.tier or None, done.bytes
        result.restore_s, result.cluster_s = done.restore_s, done.cluster_s
        result.check_s, result.checked = done.check_s, done.checked
        result.scratch, result.scratch_cluster = done.scratch or None, done.scratch_cluster or None
        for warning in done.warnings:
            _warn(result, warning)
        if done.leftover:
            _left_behind(result, done.leftover, "the scratch cluster could not be removed")


def drill_target(
    app: App,
    target: Target,
    remote: bool,
    keep: bool,
    scratch_cluster: bool = False,
    target_time: datetime | None = None,
) -> DrillResult:
    """One target's drill. Whatever fails is this target's result, never the run's:
    only an interrupt (Ctrl-C, SIGTERM) stops the other targets. `target_time`: a
    pgbackrest target's point-in-time recovery."""
    result = DrillResult(target.name, False, remote=remote)
    try:
        if isinstance(target, PgbackrestTarget):
            _from_pgbackrest(app, target, remote, keep, target_time, result)
        else:
            _from_backup(app, target, remote, keep, scratch_cluster, result)
        result.ok = True
    except Exception as exc:
        result.error = _cause(exc)
        log.error("drill %s: FAILED: %s", target.name, result.error)
        if not isinstance(exc, (PyopsError, OSError)) and not _pg_error(exc):
            log.debug("drill %s: traceback", target.name, exc_info=exc)
    result.rto_s = round(result.fetch_s + result.cluster_s + result.restore_s + result.check_s, 3)
    for key in ("fetch_s", "cluster_s", "restore_s", "check_s"):
        setattr(result, key, round(getattr(result, key), 3))
    if result.ok:
        log.info(
            "drill %s: ok, %s restored in %.1fs (fetch %.1fs, restore %.1fs, check %.1fs)%s%s",
            target.name,
            result.backup,
            result.rto_s,
            result.fetch_s,
            result.restore_s,
            result.check_s,
            f" in a scratch cluster ({result.scratch_cluster})" if result.scratch_cluster else "",
            f"; kept at {result.scratch}" if keep and result.scratch else "",
        )
    if result.leftover:
        log.warning("drill %s: scratch left behind: %s", target.name, result.leftover)
    return result


def run(
    app: App,
    targets: tuple[Target, ...],
    remote: bool,
    keep: bool,
    scratch_cluster: bool = False,
    target_time: datetime | None = None,
) -> list[DrillResult]:
    results = [drill_target(app, t, remote, keep, scratch_cluster, target_time) for t in targets]
    fleetindex.publish(app, "drill", results)  # best effort: the drills' results and RTOs
    return results
