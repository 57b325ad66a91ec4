"""Every rule a config must follow beyond its types, and the defaults that derive from
what the operator wrote. `config.parse` applies them, so `pyops config check` catches
all of it, and no command later refuses a config that check accepted.

Pure, and imports no feature module (metrics, notify, health, maintenance): they
import what they share from here (the health check names, `host_port`,
`split_table_name`). Every error names its key (exit 2); a key the operator did not
write is only named as a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyops import pgdatabases
from pyops.errors import ConfigError

if TYPE_CHECKING:
    from pyops.config import (
        Config,
        HealthConfig,
        HooksConfig,
        MaintenanceConfig,
        PgbackrestTarget,
        PostgresTarget,
    )

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def check(config: Config, written: Collection[str]) -> Config:
    """`config` with its derived defaults filled in, or ConfigError naming the key.
    `written`: the dotted keys the operator wrote (`health.disk_min_free_percent`)."""
    _targets(config)
    _encryption_compression_retention(config)
    _offsite(config)
    _maintenance(config)
    config = _health(config, written)
    _notify(config)
    _metrics(config)
    _hooks(config)
    _secret_files(config)
    return config


# --- targets, encryption, compression, retention, offsite ------------------------------


def _targets(config: Config) -> None:
    seen: set[str] = set()
    for i, t in enumerate(config.targets):
        key = f"targets[{i}]"
        if not t.name or not set(t.name) <= NAME_CHARS:
            raise ConfigError(f"{key}.name", "use letters, digits, '-' and '_' only")
        if len(t.name) > pgdatabases.MAX_NAME:
            raise ConfigError(f"{key}.name", f"at most {pgdatabases.MAX_NAME} characters")
        if t.name in seen:
            raise ConfigError(f"{key}.name", f"duplicate target name {t.name!r}")
        seen.add(t.name)
        if t.type == "postgres":
            _dsn(t.dsn, f"{key}.dsn")
            if t.jobs < 1:
                raise ConfigError(f"{key}.jobs", "must be at least 1")
            if t.lock_wait_seconds < 1:
                raise ConfigError(f"{key}.lock_wait_seconds", "must be at least 1 (seconds)")
            _databases(t, key)
        if t.type == "pgbackrest":
            _pgbackrest(t, key)
        if t.type == "files":
            if not t.paths:
                raise ConfigError(f"{key}.paths", "list at least one path")
            for j, p in enumerate(t.paths):
                if not p.is_absolute():
                    raise ConfigError(f"{key}.paths[{j}]", f"must be absolute, not {str(p)!r}")
    _child_names(config)


STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")


def _pgbackrest(t: PgbackrestTarget, key: str) -> None:
    """A pgbackrest target: a stanza name, absolute paths, a plausible system user."""
    if not STANZA_RE.match(t.stanza):
        raise ConfigError(
            f"{key}.stanza",
            f"a pgBackRest stanza name (letters, digits, '_', '.', '-'), not {t.stanza!r}",
        )
    _dsn(t.dsn, f"{key}.dsn")
    for name in ("pgbackrest_config", "pg_bin_dir", "drill_dir"):
        path = getattr(t, name)
        if path is not None and not path.is_absolute():
            raise ConfigError(f"{key}.{name}", f"must be absolute, not {str(path)!r}")
    if not USER_RE.match(t.system_user):
        raise ConfigError(f"{key}.system_user", f"a system user name, not {t.system_user!r}")


def _databases(t: PostgresTarget, key: str) -> None:
    """`databases`, `exclude`, `exclude_table_data` of a postgres target."""
    if t.databases not in ("", pgdatabases.ALL):
        raise ConfigError(
            f"{key}.databases",
            f'"all" (every database of the server) or "" (the dsn\'s database), '
            f"not {t.databases!r}",
        )
    if t.exclude and t.databases != pgdatabases.ALL:
        raise ConfigError(
            f"{key}.exclude", 'leaves out databases of databases = "all" only; set that too'
        )
    for j, pattern in enumerate(t.exclude):
        if not pattern:
            raise ConfigError(f"{key}.exclude[{j}]", "must not be empty")
    for j, pattern in enumerate(t.exclude_table_data):
        try:
            pgdatabases.table_pattern(pattern)
        except pgdatabases.PatternError as exc:
            raise ConfigError(
                f"{key}.exclude_table_data[{j}]",
                f"{exc} (pg_dump's pattern syntax: table or schema.table, * and ? wildcards)",
            ) from None


def _child_names(config: Config) -> None:
    """`<name>-<database>` must name one target only: no target's name may start with
    the name of a `databases = "all"` target and '-'."""
    for parent in config.targets:
        if not pgdatabases.is_all(parent):
            continue
        for i, t in enumerate(config.targets):
            if t is not parent and t.name.startswith(f"{parent.name}-"):
                raise ConfigError(
                    f"targets[{i}].name",
                    f"{t.name!r} would also be the name of a database's backup of target "
                    f'{parent.name!r} (databases = "all" names them {parent.name}-<database>): '
                    "rename one of them",
                )


def _dsn(dsn: str, key: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError with the parse error
        raise ConfigError(key, f"not a valid connection string: {exc}") from None
    if parts.get("password"):
        raise ConfigError(
            key, "contains a password; use password_env, ~/.pgpass or PGPASSFILE instead"
        )
    if not parts.get("dbname"):
        raise ConfigError(key, "names no database (add /DBNAME or dbname=...)")


def _encryption_compression_retention(config: Config) -> None:
    enc = config.encryption
    if enc.mode == "gpg-public" and not enc.recipients:
        raise ConfigError(
            "encryption.recipients", "mode = 'gpg-public' needs at least one recipient"
        )
    if enc.mode == "gpg-symmetric" and enc.passphrase_file is None:
        raise ConfigError(
            "encryption.passphrase_file", "mode = 'gpg-symmetric' needs a passphrase file"
        )
    comp = config.compression
    limits = {"zstd": (1, 19), "gzip": (1, 9), "none": (0, 99)}[comp.algorithm]
    if comp.algorithm != "none" and not limits[0] <= comp.level <= limits[1]:
        raise ConfigError("compression.level", f"{comp.algorithm} takes {limits[0]}..{limits[1]}")
    if comp.threads < 0:
        raise ConfigError("compression.threads", "must be 0 (all cores) or more")
    for tier in ("daily", "weekly", "monthly", "pre_restore_days"):
        if getattr(config.retention, tier) < 0:
            raise ConfigError(f"retention.{tier}", "must not be negative")


def _offsite(config: Config) -> None:
    offsite = config.offsite
    if offsite.concurrency < 1:
        raise ConfigError("offsite.concurrency", "must be at least 1")
    if offsite.object_lock_days < 0:
        raise ConfigError("offsite.object_lock_days", "must not be negative")
    if offsite.max_upload_rate < 0:
        raise ConfigError(
            "offsite.max_upload_rate", "must not be negative (bytes per second; 0 = unlimited)"
        )
    if offsite.sse == "aws:kms" and not offsite.kms_key_id:
        raise ConfigError("offsite.kms_key_id", "sse = 'aws:kms' needs a key id")


# --- [maintenance] and [[maintenance.cleanup]] ----------------------------------------


def _maintenance(config: Config) -> None:
    m: MaintenanceConfig = config.maintenance
    if m.lock_timeout_seconds <= 0:
        raise ConfigError("maintenance.lock_timeout_seconds", "must be more than 0")
    if not 0 <= m.vacuum_min_dead_ratio <= 1:
        raise ConfigError("maintenance.vacuum_min_dead_ratio", "must be between 0 and 1")
    types = {t.name: t.type for t in config.targets}
    for i, rule in enumerate(m.cleanup):
        key = f"maintenance.cleanup[{i}]"
        kind = types.get(rule.target)
        if kind is None:
            raise ConfigError(f"{key}.target", f"unknown target {rule.target!r}")
        if kind == "files":
            raise ConfigError(
                f"{key}.target",
                f"{rule.target!r} is a files target: cleanup deletes rows "
                "from postgres and sqlite targets only",
            )
        if kind == "pgbackrest":
            raise ConfigError(
                f"{key}.target",
                f"{rule.target!r} is a pgbackrest target: cleanup deletes rows "
                "from postgres and sqlite targets only",
            )
        schema, _ = split_table_name(rule.table, f"{key}.table")
        if kind == "sqlite" and schema not in (None, "main"):
            raise ConfigError(
                f"{key}.table", f"a SQLite table is `table` or `main.table`, not {rule.table!r}"
            )
        if not rule.where.strip():
            raise ConfigError(
                f"{key}.where", "must not be empty (to delete every row, say so: true)"
            )
        if ";" in rule.where:
            raise ConfigError(f"{key}.where", "one condition, without ';'")
        if rule.batch_size < 1:
            raise ConfigError(f"{key}.batch_size", "must be at least 1")


def split_table_name(name: str, key: str) -> tuple[str | None, str]:
    """`table`, `schema.table`, or double-quoted parts (`"My Schema"."My Table"`) ->
    (schema or None, table). Names are taken as written: no case folding."""
    parts: list[str] = []
    i, n = 0, len(name)
    while i < n:
        if name[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ConfigError(key, f"unbalanced quote in {name!r}")
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            j = name.find(".", i)
            j = n if j < 0 else j
            parts.append(name[i:j])
            i = j
        if i < n:
            if name[i] != ".":
                raise ConfigError(key, f"expected '.' after {parts[-1]!r} in {name!r}")
            i += 1
            if i == n:
                parts.append("")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(key, f"expected table or schema.table, not {name!r}")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


# --- [health] ----------------------------------------------------------------------------

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
    "coverage",
    "pgbackrest",
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
    "archive_max_age_minutes",
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
# (lower, higher) pairs of a warning and a critical threshold: lower <= higher
ORDERED = (
    ("disk_critical_free_percent", "disk_min_free_percent"),
    ("tls_critical_days", "tls_warn_days"),
    ("connections_warn_percent", "connections_critical_percent"),
    ("wraparound_warn_percent", "wraparound_critical_percent"),
    ("long_running_seconds", "long_running_critical_seconds"),
)


def _health(config: Config, written: Collection[str]) -> Config:
    h = config.health
    for key in POSITIVE:
        if getattr(h, key) <= 0:
            raise ConfigError(f"health.{key}", "must be greater than 0")
    for key in NON_NEGATIVE:
        if getattr(h, key) < 0:
            raise ConfigError(f"health.{key}", "must not be negative")
    for key in PERCENT:
        if not 0 <= getattr(h, key) <= 100:
            raise ConfigError(f"health.{key}", "must be a percentage between 0 and 100")
    derived: dict[str, Any] = dict(derived_thresholds(h, written))
    if derived:
        h = dataclasses.replace(h, **derived)
        config = dataclasses.replace(config, health=h)
    for low, high in ORDERED:
        if getattr(h, low) > getattr(h, high):
            raise ConfigError(
                f"health.{low}", f"must not be above health.{high} ({getattr(h, high):g})"
            )
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
    return config


def derived_thresholds(h: HealthConfig, written: Collection[str]) -> dict[str, float]:
    """The defaults of a warning/critical pair follow the one key of it the operator
    wrote, keeping the ratio r = default(higher) / default(lower): the lower key's
    default is at most `higher / r` (`disk_min_free_percent = 1` alone: the critical
    threshold is 0.5, not 5), the higher key's at least `lower x r` and, for a
    percentage, at most halfway from the lower key to 100. A pair the operator wrote
    whole, or not at all, is left as it is (docs/health.md)."""
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(h)}
    changes: dict[str, float] = {}
    for low, high in ORDERED:
        low_set, high_set = f"health.{low}" in written, f"health.{high}" in written
        ratio = defaults[high] / defaults[low]
        if high_set and not low_set:
            value = getattr(h, high)
            changes[low] = min(defaults[low], round(value / ratio, 2), value)
        elif low_set and not high_set:
            value = getattr(h, low)
            scaled = value * ratio
            if high in PERCENT:
                scaled = min(scaled, (value + 100) / 2)
            changes[high] = max(defaults[high], round(scaled, 2), value)
    return {k: v for k, v in changes.items() if v != getattr(h, k)}


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


# --- [notify], [metrics] -----------------------------------------------------------------


def _notify(config: Config) -> None:
    for key in ("on_start", "on_success", "on_failure", "ping_url"):
        url = getattr(config.notify, key)
        if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
            raise ConfigError(f"notify.{key}", "expected an http:// or https:// URL")
    # the shape only: asking Apprise loads all its plugins (half a second on every
    # command); `pyops config check` asks it (check_notify_urls)
    for i, url in enumerate(config.notify.urls):
        if not APPRISE_SHAPE.match(url):
            raise ConfigError(f"notify.urls[{i}]", NOT_APPRISE)
    if config.notify.urls_file is not None:
        _secret_path(config.notify.urls_file, "notify.urls_file")


APPRISE_SHAPE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S")
NOT_APPRISE = (
    "not an Apprise URL (scheme://..., e.g. ntfy://host/topic, mailto://, slack://; see "
    "https://github.com/caronc/apprise/wiki)"
)


def check_notify_urls(config: Config) -> None:
    """Each of [notify] urls is one Apprise can send to (`pyops config check`)."""
    for i, url in enumerate(config.notify.urls):
        if not apprise_url(url):
            raise ConfigError(f"notify.urls[{i}]", NOT_APPRISE)


def apprise_url(url: str) -> bool:
    """Whether Apprise knows the URL's service and can parse it. Apprise is imported
    only for a config that has URLs; its own log line would print the URL (tokens and
    all), so it is kept quiet."""
    import logging

    import apprise

    quiet = logging.getLogger("apprise")
    before, quiet.propagate = quiet.propagate, False
    try:
        return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None
    finally:
        quiet.propagate = before


def private_notify_urls(config: Config) -> dict[str, Any]:
    """[notify]'s URLs as `config show` prints them: Apprise's privacy view of each of
    `urls` (slack://T...A/B...0/..., never the tokens), a ping URL without its path
    (the check's secret)."""
    notify = config.notify
    out: dict[str, Any] = {}
    for key in ("on_start", "on_success", "on_failure", "ping_url"):
        url = getattr(notify, key)
        if url:
            parts = urlsplit(url)
            out[key] = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/<redacted>"
    if notify.urls:
        import apprise

        out["urls"] = []
        for url in notify.urls:
            plugin = apprise.Apprise.instantiate(url) if apprise_url(url) else None
            shown = plugin.url(privacy=True) if plugin else "<not an Apprise URL>"  # type: ignore[no-untyped-call]
            parts = urlsplit(str(shown))
            out["urls"].append(f"{parts.scheme}://{parts.netloc}{parts.path}")
    return out


def _metrics(config: Config) -> None:
    directory = config.metrics.textfile_dir
    if directory and not Path(directory).is_absolute():
        raise ConfigError("metrics.textfile_dir", f"must be an absolute path, not {directory!r}")


# --- [hooks], [targets.hooks] ------------------------------------------------------------

HOOK_KINDS = ("before_backup", "after_backup", "on_error", "before_restore", "after_restore")


def _hooks(config: Config) -> None:
    """Each hook a non-empty argv list whose program is an absolute path or a bare name
    (looked up on PATH when it runs: `hooks.missing_programs`, which `config check`
    applies too); each timeout positive."""
    for prefix, table in hook_tables(config):
        timeout = table.timeout_seconds
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"{prefix}.timeout_seconds", "must be more than 0 (seconds)")
        for kind in HOOK_KINDS:
            for j, argv in enumerate(getattr(table, kind)):
                key = f"{prefix}.{kind}[{j}]"
                if not argv or not argv[0]:
                    raise ConfigError(key, 'an argv list: ["program", "argument", ...], not empty')
                if "/" in argv[0] and not argv[0].startswith("/"):
                    raise ConfigError(
                        key,
                        f"{argv[0]!r} is relative to a working directory pyops does not "
                        "choose (hooks run in /): give an absolute path, or a name on PATH",
                    )


def hook_tables(config: Config) -> list[tuple[str, HooksConfig]]:
    """[hooks] and each target's, with the key prefix that names them."""
    tables = [("hooks", config.hooks)]
    tables += [(f"targets[{i}].hooks", t.hooks) for i, t in enumerate(config.targets)]
    return tables


# --- secret files: password_file, [offsite] access_key_id_file / secret_access_key_file ---

CREDENTIAL_CHARS = NAME_CHARS | {".", "@"}


def _secret_files(config: Config) -> None:
    """password_file beside password_env, never both; the S3 key files both or neither;
    each an absolute path or `%d/NAME` (a systemd credential)."""
    for i, t in enumerate(config.targets):
        if t.type != "postgres" or t.password_file is None:
            continue
        key = f"targets[{i}].password_file"
        if t.password_env:
            raise ConfigError(
                key, f"set password_env ({t.password_env}) or password_file, not both"
            )
        _secret_path(t.password_file, key)
    offsite = config.offsite
    id_file, secret_file = offsite.access_key_id_file, offsite.secret_access_key_file
    if (id_file is None) != (secret_file is None):
        missing, other = (
            ("access_key_id_file", "secret_access_key_file")
            if id_file is None
            else ("secret_access_key_file", "access_key_id_file")
        )
        raise ConfigError(
            f"offsite.{missing}", f"set together with offsite.{other} (both keys, or neither)"
        )
    for name, path in (("access_key_id_file", id_file), ("secret_access_key_file", secret_file)):
        if path is not None:
            _secret_path(path, f"offsite.{name}")


def _secret_path(path: Path, key: str) -> None:
    head, _, name = str(path).partition("/")
    if head == "%d":
        if not name or name in (".", "..") or not set(name) <= CREDENTIAL_CHARS:
            raise ConfigError(
                key,
                f"{str(path)!r}: a systemd credential is %d/NAME, NAME of letters, digits "
                "and - _ . @ (the ID in LoadCredential=NAME:...)",
            )
    elif not path.is_absolute():
        raise ConfigError(
            key, f"must be an absolute path or %d/NAME (a systemd credential), not {str(path)!r}"
        )
