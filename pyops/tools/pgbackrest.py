"""pgbackrest command lines, as tuples (pyops runs the real pgBackRest; it reimplements
none of it). No secret is ever on them: a repository's cipher passphrase and S3 keys
live in pgBackRest's config file or in the PGBACKREST_* variables of the child's own
environment (`pyops.sources.pgbackrest.child_env`).

pyops' tiers map to pgBackRest's backup types (docs/pgbackrest.md):

    monthly -> full    weekly -> diff    daily -> incr    (pre-restore -> incr)

and a backup's tier, as pyops lists and judges it, is its type's: full -> monthly,
diff -> weekly, incr -> daily. pgBackRest itself turns a diff or incr into a full
when the repository holds no full backup yet (and says so in a warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PROGRAM = "pgbackrest"
TIER_TYPES = {"monthly": "full", "weekly": "diff", "daily": "incr", "pre-restore": "incr"}
TYPE_TIERS = {"full": "monthly", "diff": "weekly", "incr": "daily"}
TIER_ANNOTATION = "pyops-tier"
RUN_ANNOTATION = "pyops-run"


def common(config: Path, stanza: str) -> tuple[str, ...]:
    """Options of every command: the config and stanza; errors and warnings on stderr
    (pyops shows their tail), nothing else on the console."""
    return (
        PROGRAM,
        f"--config={config}",
        f"--stanza={stanza}",
        "--log-level-console=off",
        "--log-level-stderr=warn",
    )


def backup(
    config: Path, stanza: str, tier: str, annotations: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """`pgbackrest backup --type=` the tier's type; `annotations` (key=value, no
    secrets: `pgbackrest info` shows them) tie the backup to pyops' run."""
    return (
        *common(config, stanza),
        f"--type={TIER_TYPES[tier]}",
        *(f"--annotation={k}={v}" for k, v in (annotations or {}).items()),
        "backup",
    )


def info(config: Path, stanza: str) -> tuple[str, ...]:
    return (*common(config, stanza), "--output=json", "info")


def check(config: Path, stanza: str) -> tuple[str, ...]:
    """`pgbackrest check`: the server's archive_command delivers WAL to the repository
    (it forces a WAL switch and waits for the segment, up to archive-timeout)."""
    return (*common(config, stanza), "check")


def restore(
    config: Path,
    stanza: str,
    pg_path: Path,
    *,
    label: str,
    tablespaces: Path,
    target_time: str | None = None,
) -> tuple[str, ...]:
    """Restore backup `label` into the empty directory `pg_path` for a drill: every
    tablespace under `tablespaces` (never onto the live ones), archive_mode off (the
    copy must never push WAL into the live repository). Without `target_time` recovery
    replays all archived WAL and ends; with it, recovery stops there and promotes."""
    recovery: tuple[str, ...] = (
        ("--type=time", f"--target={target_time}", "--target-action=promote") if target_time else ()
    )
    return (
        *common(config, stanza),
        f"--pg1-path={pg_path}",
        f"--set={label}",
        f"--tablespace-map-all={tablespaces}",
        "--archive-mode=off",
        *recovery,
        "restore",
    )


def version() -> tuple[str, ...]:
    return (PROGRAM, "version")
