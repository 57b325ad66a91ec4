"""pyops prune: apply retention to the repository or the bucket.

The same code for both: the catalog lists what is usable, retention decides, the
catalog deletes (manifest first: from that moment it is no longer a backup, and
an interrupted delete leaves only a leftover artifact the next run cleans up).
Only this repository's backups are counted or deleted: refused manifests and
another repository's backups are reported and never touched. Remotely, an object
still under object lock is skipped and reported, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyops import fleetindex, pgdatabases, retention
from pyops.app import App
from pyops.catalog import Backup, Catalog
from pyops.fsutil import make_private_dir, write_atomic
from pyops.manifest import ID_RE

log = logging.getLogger(__name__)


@dataclass
class PruneRow:
    id: str
    target: str
    tier: str
    keep: bool
    reason: str
    locked_until: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def policy(app: App) -> retention.Policy:
    r = app.config.retention
    return retention.Policy(
        r.daily,
        r.weekly,
        r.monthly,
        r.pre_restore_days,
        min_size_ratio=app.config.health.backup_size_min_ratio,
    )


def _accepted_dir(app: App) -> Path:
    return app.state / "accepted"


def accepted(app: App) -> set[str]:
    """Backups whose unusual size the operator accepted (`prune --accept ID`)."""
    directory = _accepted_dir(app)
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if ID_RE.match(p.name)}


def accept(app: App, catalog: Catalog, ids: Sequence[str]) -> None:
    """Accept the size of these backups: from now on they count toward retention."""
    for backup_id in ids:
        backup = catalog.find(backup_id)  # validated: an id of a backup that exists
        make_private_dir(_accepted_dir(app))
        write_atomic(_accepted_dir(app) / backup.id, backup.manifest.sha256.encode())
        log.info(
            "prune: %s accepted at %d bytes: it now counts toward retention",
            backup.id,
            backup.manifest.size,
        )


def plan(
    app: App, catalog: Catalog, target: str, tiers: Sequence[str] | None
) -> list[tuple[Backup, retention.Decision]]:
    listing = catalog.scan(target)
    listing.report("prune", catalog.describe(), "not counted, not deleted")
    backups = {b.id: b for b in listing.backups}
    ok = accepted(app)
    items = [
        retention.Item(
            b.id,
            b.manifest.target,
            b.manifest.tier,
            b.manifest.started,
            size=b.manifest.size,
            accepted=b.id in ok,
        )
        for b in backups.values()
    ]
    decisions = retention.apply(items, policy(app), app.clock(), tiers)
    return [(backups[d.item.id], d) for d in decisions]


def _locked_until(catalog: Catalog, backup: Backup) -> datetime | None:
    now = datetime.now(UTC)
    locks = [
        info.retain_until
        for info in (
            catalog.store.stat(backup.artifact_key),
            catalog.store.stat(backup.manifest_key),
        )
        if info is not None and info.retain_until is not None and info.retain_until > now
    ]
    return max(locks) if locks else None


def run(
    app: App,
    targets: Sequence[str],
    tiers: Sequence[str] | None,
    dry_run: bool,
    remote: bool = False,
    accept_ids: Sequence[str] = (),
    index: bool = True,
) -> list[PruneRow]:
    catalog = app.remote(write=not dry_run) if remote else app.local(write=not dry_run)
    if accept_ids:
        accept(app, catalog, accept_ids)
    where = "prune --remote" if remote else "prune"
    engine = [t.name for t in app.config.targets if t.type == "pgbackrest" and t.name in targets]
    for name in engine:
        log.info(
            "%s %s: skipped: pgBackRest expires its own backups (repo1-retention-* in its "
            "config, applied after each backup)",
            where,
            name,
        )
    targets = [n for n in targets if n not in engine]
    rows = []
    # a databases = "all" target's name stands for its databases' backups: those the
    # catalog holds, dropped databases included (their retention still applies)
    for target in pgdatabases.stored_names(app.config, catalog, targets):
        for backup, decision in plan(app, catalog, target, tiers):
            row = PruneRow(backup.id, target, decision.item.tier, decision.keep, decision.reason)
            rows.append(row)
            if decision.keep:
                continue
            until = _locked_until(catalog, backup) if remote else None
            if until is not None:
                row.keep = True
                row.locked_until = until.isoformat()
                row.reason += f"; object lock until {row.locked_until}: skipped"
                log.warning("%s %s: locked until %s, skipped", where, backup.id, row.locked_until)
            elif dry_run:
                log.info("%s %s: would delete (%s)", where, backup.id, decision.reason)
            else:
                catalog.delete(backup)
                log.info("%s %s: deleted (%s)", where, backup.id, decision.reason)
    if index and any(not r.keep for r in rows) and not dry_run:
        fleetindex.publish(app, "prune")  # best effort; `backup` publishes once at its end
    return rows
