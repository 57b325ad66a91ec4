"""The checks by name, what each needs configured, and the run of a selection.

A check is a function Context -> Result. Its `needs` says, from the config alone,
why it cannot run (None: it can). Without --check only runnable checks run;
named explicitly, an unrunnable one reports `unknown` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyops.config import Config, PostgresTarget
from pyops.config_rules import CHECK_NAMES
from pyops.errors import PyopsError
from pyops.health import (
    checks_backup,
    checks_db,
    checks_gpg,
    checks_host,
    checks_net,
    checks_pgbackrest,
    checks_redis,
)
from pyops.health.context import Context
from pyops.health.result import Result

log = logging.getLogger(__name__)
WORKERS = 8

Needs = Callable[[Config], str | None]


def _postgres(config: Config) -> str | None:
    if any(isinstance(t, PostgresTarget) for t in config.targets):
        return None
    return "no PostgreSQL target configured ([[targets]] type = 'postgres')"


def _targets(config: Config) -> str | None:
    return None if config.targets else "no targets configured ([[targets]])"


def _dumped(config: Config) -> str | None:
    """Targets pyops backs up itself (a pgbackrest target's backups are pgBackRest's)."""
    if any(t.type != "pgbackrest" for t in config.targets):
        return None
    return "no targets pyops backs up itself (pgbackrest targets: the pgbackrest check)"


def _pgbackrest(config: Config) -> str | None:
    if any(t.type == "pgbackrest" for t in config.targets):
        return None
    return "no pgbackrest target configured ([[targets]] type = 'pgbackrest')"


def _bucket(config: Config) -> str | None:
    return None if config.offsite.bucket else "no [offsite] bucket configured"


def _encryption(config: Config) -> str | None:
    if config.encryption.mode == "none":
        return "encryption.mode = 'none': no keys to check"
    return None


def _listed(key: str) -> Needs:
    def needs(config: Config) -> str | None:
        return None if getattr(config.health, key) else f"health.{key} lists nothing"

    return needs


def _both(first: Needs, second: Needs) -> Needs:
    def needs(config: Config) -> str | None:
        return first(config) or second(config)

    return needs


def _always(config: Config) -> str | None:
    return None


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Result]
    needs: Needs


CHECKS: dict[str, Check] = {
    c.name: c
    for c in (
        Check("database", checks_db.database, _postgres),
        Check("disk", checks_host.disk, _always),
        Check("backup_freshness", checks_backup.backup_freshness, _dumped),
        Check("offsite_freshness", checks_backup.offsite_freshness, _both(_bucket, _dumped)),
        Check("drill_freshness", checks_backup.drill_freshness, _targets),
        Check("gpg_key", checks_gpg.gpg_key, _encryption),
        Check("s3", checks_net.s3, _bucket),
        Check("tls", checks_net.tls, _listed("tls")),
        Check("http", checks_net.http, _listed("http")),
        Check("redis", checks_redis.redis, _listed("redis")),
        Check("smtp", checks_net.smtp, _listed("smtp")),
        Check("paths", checks_host.paths, _always),
        Check("deadlocks", checks_db.deadlocks, _postgres),
        Check("backup_size", checks_backup.backup_size, _dumped),
        Check("connections", checks_db.connections, _postgres),
        Check("wraparound", checks_db.wraparound, _postgres),
        Check("long_running", checks_db.long_running, _postgres),
        Check("blocking", checks_db.blocking, _postgres),
        Check("manifests", checks_backup.manifests, _targets),
        Check("coverage", checks_db.coverage, _postgres),
        Check("pgbackrest", checks_pgbackrest.pgbackrest_check, _pgbackrest),
    )
}
assert tuple(CHECKS) == CHECK_NAMES


def select(config: Config, names: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(checks to run, {check: why not run}). Explicit names always run."""
    if names:
        return list(dict.fromkeys(names)), {}
    wanted = config.health.checks or CHECK_NAMES
    run, skipped = [], {}
    for name in wanted:
        why = CHECKS[name].needs(config)
        if why is None:
            run.append(name)
        else:
            skipped[name] = why
    return run, skipped


def run_one(ctx: Context, name: str) -> Result:
    check = CHECKS[name]
    t0 = time.monotonic()
    why = check.needs(ctx.app.config)
    if why is not None:
        result = Result(name, "unknown", f"not configured: {why}")
    else:
        try:
            result = check.run(ctx)
        except PyopsError as exc:
            result = Result(name, "unknown", f"could not check: {exc}")
        except Exception as exc:  # a check's bug must not hide the other checks
            log.debug("check %s crashed", name, exc_info=True)
            result = Result(name, "unknown", f"check crashed: {type(exc).__name__}: {exc}")
    result.name = name
    result.duration_s = time.monotonic() - t0
    log.debug("health %s: %s: %s", name, result.status, result.message)
    return result


def run(ctx: Context, names: list[str]) -> list[Result]:
    """Every check at once in threads: the run takes as long as the slowest check."""
    with ThreadPoolExecutor(max_workers=min(WORKERS, max(1, len(names)))) as pool:
        return list(pool.map(lambda n: run_one(ctx, n), names))
