"""TOML -> validated, frozen dataclasses. No side effects: reading secrets and
touching the repository happen elsewhere.

The dataclasses *are* the schema: each field's metadata carries its help text,
and `docs/configuration.md` is checked against them by a test.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from pyops import config_rules, pgdatabases
from pyops.errors import ConfigError, UsageError

DEFAULT_LOCATIONS = (Path("pyops.toml"), Path("/etc/pyops/pyops.toml"))


def opt(default: Any = MISSING, help: str = "") -> Any:
    """A config field with its documentation attached."""
    meta = {"help": help}
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RepositoryConfig:
    path: Path = opt(Path("/var/backups/pyops"), "where backups live; created 0700")
    host: str = opt("", "host name in S3 keys and manifests; default: this machine's")
    state_dir: Path | None = opt(None, "run log, scratch, markers; default: <path>/.pyops")
    lock_wait_seconds: float = opt(30.0, "how long a run waits for another run's lock")
    key_file: Path | None = opt(
        None,
        "repository key (0600) that authenticates manifests; `pyops init` creates it. "
        "Keep a copy with the gpg secret key; empty: manifests are unauthenticated",
    )

    @property
    def state(self) -> Path:
        return self.state_dir or self.path / ".pyops"


@dataclass(frozen=True)
class RetentionConfig:
    daily: int = opt(7, "complete daily backups kept per target")
    weekly: int = opt(5, "complete weekly backups kept per target")
    monthly: int = opt(12, "complete monthly backups kept per target")
    pre_restore_days: int = opt(7, "days a pre-restore safety backup is kept")


@dataclass(frozen=True)
class CompressionConfig:
    algorithm: Literal["zstd", "gzip", "none"] = opt("zstd", "zstd | gzip | none")
    level: int = opt(3, "compression level (zstd 1-19, gzip 1-9)")
    threads: int = opt(0, "zstd -T; 0 = all cores")


@dataclass(frozen=True)
class EncryptionConfig:
    mode: Literal["none", "gpg-public", "gpg-symmetric"] = opt(
        "none", "none | gpg-public | gpg-symmetric"
    )
    recipients: tuple[str, ...] = opt((), "gpg-public: key ids, fingerprints or e-mails")
    gnupghome: Path | None = opt(None, "GnuPG home; default: gpg's own ($GNUPGHOME, ~/.gnupg)")
    passphrase_file: Path | None = opt(
        None, "gpg-symmetric: the passphrase; gpg-public: the secret key's, for restore"
    )


@dataclass(frozen=True)
class OffsiteConfig:
    bucket: str = opt("", "S3 bucket; empty: no offsite copies")
    prefix: str = opt("pyops", "key prefix; objects go under <prefix>/<host>/")
    endpoint_url: str = opt("", "S3-compatible endpoint (MinIO, ...); empty: AWS")
    region: str = opt("", "bucket region")
    storage_class: str = opt("STANDARD", "storage class of uploaded objects")
    sse: Literal["AES256", "aws:kms", "none"] = opt("AES256", "AES256 | aws:kms | none")
    kms_key_id: str = opt("", "aws:kms: the key id")
    object_lock_days: int = opt(0, ">0: COMPLIANCE retain-until on every object")
    concurrency: int = opt(2, "parts uploaded at once (memory: concurrency x part size)")
    max_upload_rate: int = opt(
        0, "bytes per second sent to the bucket, by backup and sync alike; 0 = unlimited"
    )
    access_key_id_file: Path | None = opt(
        None, "file holding the S3 access key id (e.g. a systemd credential)"
    )
    secret_access_key_file: Path | None = opt(None, "file holding the S3 secret access key")


@dataclass(frozen=True)
class HooksConfig:
    """Commands around backup and restore (argv lists, no shell unless the list says
    so), global in [hooks] and per target in [targets.hooks]."""

    before_backup: tuple[tuple[str, ...], ...] = opt(
        (), "argv lists run before each target's backup; one failing stops that target"
    )
    after_backup: tuple[tuple[str, ...], ...] = opt(
        (), "argv lists run after each target's backup, after a failure too (PYOPS_STATUS)"
    )
    on_error: tuple[tuple[str, ...], ...] = opt(
        (), "argv lists run when a target's backup or restore failed"
    )
    before_restore: tuple[tuple[str, ...], ...] = opt(
        (), "argv lists run before a restore changes anything; one failing stops it"
    )
    after_restore: tuple[tuple[str, ...], ...] = opt(
        (), "argv lists run after a restore, after a failure too (PYOPS_STATUS)"
    )
    timeout_seconds: float = opt(300.0, "longest a hook may run; then it is killed and failed")


@dataclass(frozen=True)
class PostgresTarget:
    name: str = opt(help="target name, used in file names")
    type: Literal["postgres"] = opt(help="postgres")
    dsn: str = opt(
        help="libpq URI or key=value string, without a password; pgbackrest: the stanza's "
        "server, which health asks (pg_stat_archiver)"
    )
    password_env: str = opt("", "environment variable holding the password")
    password_file: Path | None = opt(
        None, "file holding the password (beside password_env; e.g. a systemd credential)"
    )
    container: str = opt(
        "", "run pg_dump, pg_restore and psql inside this container (never with a TTY)"
    )
    container_engine: Literal["docker", "podman"] = opt("docker", "docker | podman")
    format: Literal["custom", "plain", "directory", "tar"] = opt(
        "custom", "custom | plain | directory | tar"
    )
    jobs: int = opt(1, "pg_dump -j; used by the directory format only (others ignore it)")
    pg_bin_dir: Path | None = opt(
        None,
        "where pg_dump lives; default: newest matching; pgbackrest: the server binaries a "
        "drill runs the restored cluster with; default: those of the backup's major version",
    )
    lock_wait_seconds: float = opt(
        600.0,
        "longest wait for a table lock another session holds (pg_dump --lock-wait-timeout, "
        "and pyops' own snapshot session); then the backup fails naming the table and the pid",
    )
    databases: str = opt(
        "",
        'empty: the dsn\'s database; "all": every database of the server, one backup '
        "each, as target <name>-<database> (the dsn's database is only where pyops asks); "
        "templates and databases that refuse connections are skipped",
    )
    exclude: tuple[str, ...] = opt(
        (),
        'postgres, databases = "all": database names left out (fnmatch patterns, e.g. '
        '"scratch_*"); files: tar --exclude patterns',
    )
    exclude_table_data: tuple[str, ...] = opt(
        (),
        "tables whose rows are left out, their schema kept (pg_dump --exclude-table-data "
        'patterns: "django_session", "audit.*"); the manifest and the restore preview say so',
    )
    enable_row_security: bool = opt(
        False,
        "pg_dump --enable-row-security: back up, under their policies, tables with row-level "
        "security the backup role does not bypass (an owner's FORCE ROW LEVEL SECURITY)",
    )
    hooks: HooksConfig = opt(
        HooksConfig(), "a table with the keys of [hooks]: commands around this target's runs"
    )


@dataclass(frozen=True)
class SqliteTarget:
    name: str = opt(help="target name, used in file names")
    type: Literal["sqlite"] = opt(help="sqlite")
    path: Path = opt(help="the live database file")
    hooks: HooksConfig = opt(
        HooksConfig(), "a table with the keys of [hooks]: commands around this target's runs"
    )


@dataclass(frozen=True)
class FilesTarget:
    name: str = opt(help="target name, used in file names")
    type: Literal["files"] = opt(help="files")
    paths: tuple[Path, ...] = opt(help="absolute paths to archive")
    exclude: tuple[str, ...] = opt((), "tar --exclude patterns")
    hooks: HooksConfig = opt(
        HooksConfig(), "a table with the keys of [hooks]: commands around this target's runs"
    )


@dataclass(frozen=True)
class PgbackrestTarget:
    """A PostgreSQL cluster backed up by pgBackRest on pyops' calendar (docs/pgbackrest.md)."""

    name: str = opt(help="target name, used in file names")
    type: Literal["pgbackrest"] = opt(help="pgbackrest")
    stanza: str = opt(help="the pgBackRest stanza (pgbackrest --stanza)")
    dsn: str = opt(
        help="libpq URI or key=value string, without a password; pgbackrest: the stanza's "
        "server, which health asks (pg_stat_archiver)"
    )
    pgbackrest_config: Path = opt(
        Path("/etc/pgbackrest.conf"),
        "pgBackRest's config file (pgbackrest --config); the default is where Debian's "
        "package puts it",
    )
    pg_bin_dir: Path | None = opt(
        None,
        "where pg_dump lives; default: newest matching; pgbackrest: the server binaries a "
        "drill runs the restored cluster with; default: those of the backup's major version",
    )
    system_user: str = opt(
        "postgres",
        "when pyops runs as root, pgbackrest and a drill's scratch cluster run as this user "
        "(the server's, which archive_command runs as)",
    )
    drill_dir: Path | None = opt(
        None,
        "where a drill restores the cluster (room for the whole database, reachable by "
        "system_user); default: TMPDIR, else /tmp",
    )
    hooks: HooksConfig = opt(
        HooksConfig(), "a table with the keys of [hooks]: commands around this target's runs"
    )


Target = PostgresTarget | SqliteTarget | FilesTarget | PgbackrestTarget
TARGET_TYPES: dict[str, type[Any]] = {
    "postgres": PostgresTarget,
    "sqlite": SqliteTarget,
    "files": FilesTarget,
    "pgbackrest": PgbackrestTarget,
}


@dataclass(frozen=True)
class CleanupRule:
    target: str = opt(help="target name")
    table: str = opt(help="table (schema.table allowed)")
    where: str = opt(help="SQL condition selecting rows to delete")
    batch_size: int = opt(1000, "rows per transaction")


@dataclass(frozen=True)
class MaintenanceConfig:
    cleanup: tuple[CleanupRule, ...] = opt((), "batched delete rules")
    lock_timeout_seconds: float = opt(5.0, "lock_timeout for maintenance statements")
    vacuum_min_dead_ratio: float = opt(
        0.0, "vacuum only tables whose dead/(live+dead) tuple ratio reaches this; 0 = every table"
    )


@dataclass(frozen=True)
class HealthConfig:
    disk_min_free_percent: float = opt(
        10.0,
        "disk check warns below this; "
        "set alone, disk_critical_free_percent follows (docs/health.md)",
    )
    backup_max_age_hours: float = opt(26.0, "daily backup freshness")
    drill_max_age_days: float = opt(92.0, "drill freshness")
    tls: tuple[str, ...] = opt((), "host:port to check certificate expiry")
    http: tuple[str, ...] = opt((), "URLs that must answer 2xx")
    redis: tuple[str, ...] = opt((), "redis:// URLs")
    smtp: tuple[str, ...] = opt((), "host:port of SMTP servers")
    paths: tuple[Path, ...] = opt((), "paths that must exist and be writable")
    checks: tuple[str, ...] = opt(
        (), "checks run without --check; empty: every check whose inputs are configured"
    )
    disk_critical_free_percent: float = opt(
        5.0,
        "disk check is critical below this; "
        "set alone, disk_min_free_percent follows (docs/health.md)",
    )
    weekly_max_age_days: float = opt(8.0, "weekly backup freshness")
    monthly_max_age_days: float = opt(32.0, "monthly backup freshness")
    backup_size_min_ratio: float = opt(
        0.5, "backup_size warns when the newest backup is below this x its tier's median"
    )
    timeout_seconds: float = opt(10.0, "timeout of each network check (tls, http, redis, smtp)")
    tls_warn_days: float = opt(
        21.0,
        "tls/smtp: warn when the certificate expires sooner; "
        "set alone, tls_critical_days follows (docs/health.md)",
    )
    tls_critical_days: float = opt(
        7.0,
        "tls/smtp: critical when the certificate expires sooner; "
        "set alone, tls_warn_days follows (docs/health.md)",
    )
    tls_ca_file: Path | None = opt(None, "CA bundle for tls, https, smtp, rediss; default: system")
    gpg_expiry_warn_days: float = opt(30.0, "gpg_key warns when a recipient key expires sooner")
    redis_queues: tuple[str, ...] = opt((), "list keys whose LLEN is reported, e.g. celery")
    redis_queue_warn: int = opt(1000, "redis warns when a queue is longer than this")
    redis_memory_warn_percent: float = opt(90.0, "redis warns above this used_memory/maxmemory")
    db_latency_warn_ms: float = opt(1000.0, "database warns when SELECT 1 takes longer")
    connections_warn_percent: float = opt(
        80.0,
        "connections: warn above this % of max_connections; "
        "set alone, connections_critical_percent follows (docs/health.md)",
    )
    connections_critical_percent: float = opt(
        95.0,
        "connections: critical above this %; "
        "set alone, connections_warn_percent follows (docs/health.md)",
    )
    wraparound_warn_percent: float = opt(
        50.0,
        "wraparound: warn above this % of 2^31 (xid or multixact age, the nearer); "
        "set alone, wraparound_critical_percent follows (docs/health.md)",
    )
    wraparound_critical_percent: float = opt(
        75.0,
        "wraparound: critical above this % of 2^31; "
        "set alone, wraparound_warn_percent follows (docs/health.md)",
    )
    long_running_seconds: float = opt(
        300.0,
        "long_running warns about queries running longer; "
        "set alone, long_running_critical_seconds follows (docs/health.md)",
    )
    long_running_critical_seconds: float = opt(
        3600.0,
        "long_running is critical above this; "
        "set alone, long_running_seconds follows (docs/health.md)",
    )
    blocking_critical_seconds: float = opt(
        300.0, "blocking is critical when a session waits longer (any blocked session warns)"
    )
    archive_max_age_minutes: float = opt(
        60.0,
        "pgbackrest: warn when WAL segments wait to be archived and the last one archived "
        "is older (an idle server archives nothing, and that is fine)",
    )


@dataclass(frozen=True)
class NotifyConfig:
    on_start: str = opt("", "URL called when a run starts")
    on_success: str = opt("", "URL called when a run succeeds")
    on_failure: str = opt("", "URL called when a run fails")
    urls: tuple[str, ...] = opt((), "Apprise URLs (ntfy://, mailto://, slack://, json://, ...)")
    events: tuple[Literal["start", "success", "warning", "failure"], ...] = opt(
        ("failure", "warning"), "start | success | warning | failure: what the urls hear of"
    )
    commands: tuple[Literal["backup", "verify", "drill", "maintenance", "health", "sync"], ...] = (
        opt(
            ("backup", "verify", "drill", "maintenance", "health", "sync"),
            "the commands whose runs are notified",
        )
    )
    ping_url: str = opt(
        "",
        "healthchecks-style: <url>/start, <url>, <url>/fail; backups only, "
        "unless it holds {command} (one check per command)",
    )
    urls_file: Path | None = opt(
        None,
        "file of more Apprise URLs, one a line (URLs holding tokens): "
        "an absolute path or %d/NAME (a systemd credential)",
    )


@dataclass(frozen=True)
class MetricsConfig:
    textfile_dir: str = opt("", "node_exporter textfile collector directory")


@dataclass(frozen=True)
class Config:
    repository: RepositoryConfig = opt(RepositoryConfig())
    retention: RetentionConfig = opt(RetentionConfig())
    compression: CompressionConfig = opt(CompressionConfig())
    encryption: EncryptionConfig = opt(EncryptionConfig())
    offsite: OffsiteConfig = opt(OffsiteConfig())
    targets: tuple[Target, ...] = opt(())
    maintenance: MaintenanceConfig = opt(MaintenanceConfig())
    health: HealthConfig = opt(HealthConfig())
    notify: NotifyConfig = opt(NotifyConfig())
    hooks: HooksConfig = opt(HooksConfig())
    metrics: MetricsConfig = opt(MetricsConfig())
    source: Path | None = None

    @property
    def host(self) -> str:
        return self.repository.host or socket.gethostname()

    def target(self, name: str) -> Target:
        """A configured target, or one database's target of a `databases = "all"`
        target (`<name>-<database>`), resolved without asking the server."""
        for t in self.targets:
            if t.name == name:
                return t
        found = pgdatabases.resolve(self.targets, name)
        if found is not None:
            return found
        known = ", ".join(
            f"{t.name} (and {t.name}-<database>)" if pgdatabases.is_all(t) else t.name
            for t in self.targets
        )
        raise UsageError(
            f"--target: unknown target {name!r} (known: {known or 'none configured'})", "--target"
        )

    def select(self, names: typing.Sequence[str]) -> tuple[Target, ...]:
        if not names:
            return self.targets
        return tuple(self.target(n) for n in names)


# --- loading ---------------------------------------------------------------

T = TypeVar("T")


def find_config(explicit: str | None) -> Path:
    """--config, else $PYOPS_CONFIG, else ./pyops.toml, else /etc/pyops/pyops.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PYOPS_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_LOCATIONS:
        if candidate.exists():
            return candidate
    return DEFAULT_LOCATIONS[0]


def load(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file (create one with `pyops init`)") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    config = parse(data)
    return _replace(config, source=path)


def parse(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document (types here, every other rule in config_rules),
    with the defaults that derive from what it sets; every error names its key."""
    config = _build(Config, {k: v for k, v in data.items()}, "")
    return config_rules.check(config, written_keys(data))


def written_keys(data: dict[str, Any]) -> set[str]:
    """The dotted keys of the document's tables (`health.disk_min_free_percent`)."""
    return {
        f"{section}.{key}"
        for section, body in data.items()
        if isinstance(body, dict)
        for key in body
    }


def _replace(config: Config, **changes: Any) -> Config:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(where or "(top level)", "expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(_join(where, key), f"unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == "source":
            continue
        key = _join(where, f.name)
        if f.name in data:
            values[f.name] = _coerce(hints[f.name], data[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(key, "required")
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__}")
        if key == "targets":
            return tuple(_build_target(v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, key)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, "expected a non-empty path string")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(key, "expected integer, got boolean")
    if not isinstance(value, tp):
        raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__}")
    return value


def _build_target(value: Any, key: str) -> Target:
    if not isinstance(value, dict):
        raise ConfigError(key, "expected a table")
    kind = value.get("type")
    known = " | ".join(TARGET_TYPES)
    if kind is None:
        raise ConfigError(f"{key}.type", f"required ({known})")
    if kind not in TARGET_TYPES:
        raise ConfigError(f"{key}.type", f"unknown target type {kind!r} ({known})")
    target: Target = _build(TARGET_TYPES[kind], value, key)
    return target


# --- presentation ------------------------------------------------------------


def as_data(config: Config) -> dict[str, Any]:
    """The effective config as plain data. It holds no secrets by construction: passwords
    live in the environment or .pgpass (named by `password_env`), passphrases in files;
    but for the [notify] URLs, whose tokens are masked here."""
    data = typing.cast(dict[str, Any], _plain(config))
    data["notify"].update(config_rules.private_notify_urls(config))
    return data


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        out: dict[str, Any] = {}
        for f in fields(value):
            if f.name == "source":
                continue
            v = getattr(value, f.name)
            out[f.name] = _plain(v)
        return out
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """A password written into a URL (redis://:pw@host, https://user:pw@host) is shown
    as <redacted>: `config show` output ends up in tickets and chat."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:<redacted>@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def described_keys() -> list[tuple[str, str, str]]:
    """(key, default, help) for every documented key; used by the docs test."""
    rows: list[tuple[str, str, str]] = []

    def walk(cls: Any, prefix: str) -> None:
        for f in fields(cls):
            if f.name == "source":
                continue
            hint = typing.get_type_hints(cls)[f.name]
            if prefix == "targets[]." and f.name == "hooks":  # the keys of [hooks], per target
                rows.append(("targets[].hooks", "{}", f.metadata.get("help", "")))
                continue
            if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
                walk(hint, f"{prefix}{f.name}.")
                continue
            if f.name == "cleanup":
                walk(CleanupRule, f"{prefix}cleanup[].")
                continue
            if f.name == "targets":
                for tcls in TARGET_TYPES.values():
                    walk(tcls, "targets[].")
                continue
            if f.default is not MISSING:
                default = repr(f.default)
            elif f.default_factory is not MISSING:  # a list: shown as TOML would write it
                value = f.default_factory()
                default = json.dumps([str(v) for v in value]) if value else ""
            else:
                default = ""
            rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))

    walk(Config, "")
    merged: dict[str, tuple[str, str, str]] = {}
    for key, default, help_ in rows:
        if key in merged and help_ not in merged[key][2].split(" | "):
            old = merged[key]
            merged[key] = (old[0], old[1], f"{old[2]} | {help_}")
        else:
            merged.setdefault(key, (key, default, help_))
    return list(merged.values())
