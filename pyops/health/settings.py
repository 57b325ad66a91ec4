"""Validation of [health]: every error names its key (exit 2). Pure, no I/O.

Called from `config._check_rules`, so `pyops config check` catches these too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pyops.config import Config, HealthConfig
from pyops.errors import ConfigError

CHECK_NAMES = (
    "database",
    "disk",
    "backup_freshness",
    "offsite_freshness",
    "drill_freshness",
    "gpg_key",
    "s3",
    "tls",
    "http",
    "redis",
    "smtp",
    "paths",
    "deadlocks",
    "backup_size",
    "connections",
    "wraparound",
    "long_running",
    "blocking",
    "manifests",
)

POSITIVE = (
    "backup_max_age_hours",
    "drill_max_age_days",
    "weekly_max_age_days",
    "monthly_max_age_days",
    "timeout_seconds",
    "db_latency_warn_ms",
    "long_running_seconds",
    "long_running_critical_seconds",
    "blocking_critical_seconds",
    "backup_size_min_ratio",
)
NON_NEGATIVE = ("tls_warn_days", "tls_critical_days", "gpg_expiry_warn_days", "redis_queue_warn")
PERCENT = (
    "disk_min_free_percent",
    "disk_critical_free_percent",
    "redis_memory_warn_percent",
    "connections_warn_percent",
    "connections_critical_percent",
    "wraparound_warn_percent",
    "wraparound_critical_percent",
)
# (lower, higher): the warning threshold must come before the critical one
ORDERED = (
    ("disk_critical_free_percent", "disk_min_free_percent"),
    ("tls_critical_days", "tls_warn_days"),
    ("connections_warn_percent", "connections_critical_percent"),
    ("wraparound_warn_percent", "wraparound_critical_percent"),
    ("long_running_seconds", "long_running_critical_seconds"),
)


def validate(config: Config) -> None:
    h = config.health
    _numbers(h)
    for i, name in enumerate(h.checks):
        if name not in CHECK_NAMES:
            raise ConfigError(
                f"health.checks[{i}]", f"unknown check {name!r} (known: {', '.join(CHECK_NAMES)})"
            )
    for i, entry in enumerate(h.tls):
        host_port(entry, f"health.tls[{i}]", None)
    for i, entry in enumerate(h.smtp):
        host_port(entry, f"health.smtp[{i}]", 25)
    for i, url in enumerate(h.http):
        _url(url, f"health.http[{i}]", ("http", "https"))
    for i, url in enumerate(h.redis):
        _url(url, f"health.redis[{i}]", ("redis", "rediss"))
    for i, key in enumerate(h.redis_queues):
        if not key:
            raise ConfigError(f"health.redis_queues[{i}]", "must not be empty")


def _numbers(h: HealthConfig) -> None:
    for key in POSITIVE:
        if getattr(h, key) <= 0:
            raise ConfigError(f"health.{key}", "must be greater than 0")
    for key in NON_NEGATIVE:
        if getattr(h, key) < 0:
            raise ConfigError(f"health.{key}", "must not be negative")
    for key in PERCENT:
        if not 0 <= getattr(h, key) <= 100:
            raise ConfigError(f"health.{key}", "must be a percentage between 0 and 100")
    for low, high in ORDERED:
        if getattr(h, low) > getattr(h, high):
            raise ConfigError(f"health.{low}", f"must not be above health.{high}")


def host_port(entry: str, key: str, default_port: int | None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (with a default) 'host'."""
    host, sep, port = entry.rpartition(":")
    if not sep or "]" in port:
        host, port = entry, ""
    host = host.strip("[]")
    if not port:
        if default_port is None:
            raise ConfigError(key, f"expected host:port, not {entry!r}")
        return host, default_port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected host:port, not {entry!r}")
    return host, int(port)


def _url(url: str, key: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(key, f"expected a {' or '.join(s + '://' for s in schemes)} URL")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(key, "the port is not a number between 0 and 65535") from None
