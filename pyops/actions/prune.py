"""pyops prune: apply retention to the local repository.

A backup is deleted manifest first: from that moment it is no longer a backup
(never listed or restored), and an interrupted delete leaves only a leftover
artifact that the next run cleans up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyops import catalog, retention
from pyops.app import App
from pyops.catalog import Backup

log = logging.getLogger(__name__)


@dataclass
class PruneRow:
    id: str
    target: str
    tier: str
    keep: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def policy(app: App) -> retention.Policy:
    r = app.config.retention
    return retention.Policy(r.daily, r.weekly, r.monthly, r.pre_restore_days)


def plan(
    app: App, target: str, tiers: Sequence[str] | None
) -> list[tuple[Backup, retention.Decision]]:
    backups = {b.id: b for b in catalog.complete_backups(app.repo, target=target)}
    items = [
        retention.Item(b.id, b.manifest.target, b.manifest.tier, b.manifest.started)
        for b in backups.values()
    ]
    decisions = retention.apply(items, policy(app), app.clock(), tiers)
    return [(backups[d.item.id], d) for d in decisions]


def delete(backup: Backup) -> None:
    backup.manifest_path.unlink()
    catalog.fsync_dir(backup.directory)
    backup.artifact_path.unlink(missing_ok=True)


def run(
    app: App, targets: Sequence[str], tiers: Sequence[str] | None, dry_run: bool
) -> list[PruneRow]:
    rows = []
    for target in targets:
        for backup, decision in plan(app, target, tiers):
            if not decision.keep:
                if dry_run:
                    log.info("prune %s: would delete (%s)", backup.id, decision.reason)
                else:
                    delete(backup)
                    log.info("prune %s: deleted (%s)", backup.id, decision.reason)
            rows.append(
                PruneRow(backup.id, target, decision.item.tier, decision.keep, decision.reason)
            )
    return rows
