"""pyops drill: prove each target's latest backup restores, and how long it takes.

The backup is restored into a scratch database / file / directory (never the
live one), its content compared with the manifest, and the time to recover
(fetch, restore, check) recorded in the run log for auditors and `health`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops.app import App
from pyops.artifact import read_chunks
from pyops.catalog import Backup
from pyops.config import PostgresTarget, Target
from pyops.errors import PyopsError, VerifyFailed
from pyops.fsutil import make_private_dir
from pyops.manifest import stamp as make_stamp
from pyops.sources import compare_content, module
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


def _drop(target: Target, place: str) -> None:
    if isinstance(target, PostgresTarget):
        from pyops.sources import postgres

        postgres.drop_database(target, place)
    elif os.path.isdir(place):
        shutil.rmtree(place, ignore_errors=True)
    else:
        Path(place).unlink(missing_ok=True)


def drill_target(app: App, target: Target, remote: bool, keep: bool) -> DrillResult:
    result = DrillResult(target.name, False, remote=remote)
    place: str | None = None
    try:
        backup, result.fetch_s = latest(app, target, remote)
        result.backup, result.bytes = backup.id, backup.manifest.size
        if backup.manifest.encrypted:  # a host with only the public key: say so plainly
            app.codec.probe_decrypt(app.local().head(backup, 1 << 16), backup.id)
        stamp = make_stamp(app.clock())
        place = _scratch_place(app, target, backup, stamp)
        result.scratch = place
        source = module(target.type)
        source.plan(target, place)  # refuses an existing scratch
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
            )
            check.check()  # sha256 of the artifact, confirmed in the same pass
            staged.commit()
        result.restore_s = time.monotonic() - t0
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
        result.ok = True
    except PyopsError as exc:
        result.error = str(exc)
        log.error("drill %s: FAILED: %s", target.name, exc)
    finally:
        if place and not keep:
            try:
                _drop(target, place)
            except PyopsError as exc:
                log.warning("drill %s: could not remove scratch %s: %s", target.name, place, exc)
    result.rto_s = round(result.fetch_s + result.restore_s + result.check_s, 3)
    for key in ("fetch_s", "restore_s", "check_s"):
        setattr(result, key, round(getattr(result, key), 3))
    if result.ok:
        log.info(
            "drill %s: ok, %s restored in %.1fs (fetch %.1fs, restore %.1fs, check %.1fs)%s",
            target.name,
            result.backup,
            result.rto_s,
            result.fetch_s,
            result.restore_s,
            result.check_s,
            f"; kept at {place}" if keep else "",
        )
    return result


def run(app: App, targets: tuple[Target, ...], remote: bool, keep: bool) -> list[DrillResult]:
    return [drill_target(app, t, remote, keep) for t in targets]
