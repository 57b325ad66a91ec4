"""systemd units, rendered from the calendar and the config. Pure text in, text out;
writing and `systemctl` live in the command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyops import secrets
from pyops.calendar import ALL_JOBS, DEFAULT_JOBS, Job
from pyops.config import Config, FilesTarget, PostgresTarget, SqliteTarget

HOME_DIRS = ("/home", "/root", "/run/user")
ENVIRONMENT_FILE = "/etc/pyops/environment"


@dataclass(frozen=True)
class Settings:
    pyops: str  # absolute path of the pyops executable
    config: Path
    user: str = "pyops"
    group: str = "pyops"
    user_units: bool = False  # systemctl --user: no User=/Group=, lighter hardening
    writable: tuple[str, ...] = field(default_factory=tuple)
    readable: tuple[str, ...] = field(default_factory=tuple)  # sources outside writable
    # LoadCredential=NAME:PATH for each `%d/NAME` the config names; the failure unit's
    # (it only notifies): those of [notify]
    credentials: tuple[tuple[str, Path], ...] = field(default_factory=tuple)
    failure_credentials: tuple[tuple[str, Path], ...] = field(default_factory=tuple)
    environment_file: bool = True  # EnvironmentFile=-/etc/pyops/environment

    @classmethod
    def from_config(
        cls, cfg: Config, pyops: str, config: Path, user: str = "pyops", user_units: bool = False
    ) -> Settings:
        paths = {str(cfg.repository.path), str(cfg.repository.state)}
        if cfg.encryption.gnupghome:
            paths.add(str(cfg.encryption.gnupghome))  # gpg writes its trustdb and sockets
        for t in cfg.targets:
            if isinstance(t, SqliteTarget):
                paths.add(str(t.path.parent))  # a WAL database needs its -shm writable
        if cfg.metrics.textfile_dir:
            paths.add(cfg.metrics.textfile_dir)
        readable = {str(p) for t in cfg.targets if isinstance(t, FilesTarget) for p in t.paths}
        files = secrets.files(cfg)
        names = sorted({n for f in files if (n := secrets.credential_name(f.path))})
        notify = sorted(
            {
                n
                for f in files
                if f.key.startswith("notify.") and (n := secrets.credential_name(f.path))
            }
        )
        readable |= {str(f.path) for f in files if secrets.credential_name(f.path) is None}
        store = secrets.credstore(system=not user_units)
        return cls(
            pyops,
            config,
            user=user,
            group=user,
            user_units=user_units,
            writable=tuple(sorted(paths)),
            readable=tuple(sorted(readable)),
            credentials=tuple((name, store / name) for name in names),
            failure_credentials=tuple((name, store / name) for name in notify),
            environment_file=needs_environment(cfg),
        )


def needs_environment(cfg: Config) -> bool:
    """Whether the units still read /etc/pyops/environment: unless the config takes its
    secrets from files (credentials) only: no password_env, and the S3 keys, if a bucket
    is set, from key files."""
    if not secrets.files(cfg):
        return True
    if any(isinstance(t, PostgresTarget) and t.password_env for t in cfg.targets):
        return True
    return bool(cfg.offsite.bucket) and cfg.offsite.access_key_id_file is None


def _secrets(s: Settings, credentials: tuple[tuple[str, Path], ...]) -> list[str]:
    lines = [f"EnvironmentFile=-{ENVIRONMENT_FILE}"] if s.environment_file else []
    for name, path in credentials:
        lines.append(f"LoadCredential={name}:{str(path).replace('%', '%%')}")
    return lines


def _hardening(s: Settings) -> list[str]:
    under_home = any(p.startswith(HOME_DIRS) for p in (*s.writable, *s.readable, str(s.config)))
    lines = [
        "UMask=0077",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(s.writable)}",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        f"ProtectHome={'read-only' if under_home else 'true'}",
        "PrivateDevices=true",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectControlGroups=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        "RestrictRealtime=true",
        "SystemCallArchitectures=native",
    ]
    if not s.user_units:
        # reading other users' files (media owned by the app) needs the app's group,
        # or CAP_DAC_READ_SEARCH here: see docs/systemd.md
        lines.append("CapabilityBoundingSet=")
    return lines


def service(s: Settings, description: str, args: str, *, extra: tuple[str, ...] = ()) -> str:
    identity = [] if s.user_units else [f"User={s.user}", f"Group={s.group}"]
    return "\n".join(
        [
            "# Rendered by `pyops systemd render`; edits are lost on the next render.",
            "[Unit]",
            f"Description={description}",
            "Documentation=man:systemd.service(5)",
            "Wants=network-online.target",
            "After=network-online.target postgresql.service",
            "OnFailure=pyops-failure@%n.service",
            "",
            "[Service]",
            "Type=oneshot",
            *identity,
            f"Environment=PYOPS_CONFIG={s.config}",
            *_secrets(s, s.credentials),
            f"ExecStart={s.pyops} --log-format text {args}",
            *extra,
            *_hardening(s),
            "",
        ]
    )


def timer(job: Job) -> str:
    return "\n".join(
        [
            "# Rendered by `pyops systemd render`; edits are lost on the next render.",
            "[Unit]",
            f"Description=Timer: {job.description}",
            "",
            "[Timer]",
            f"OnCalendar={job.oncalendar}",
            f"RandomizedDelaySec={job.randomized_delay}",
            "AccuracySec=1min",
            "Persistent=true",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )


def render(s: Settings) -> dict[str, str]:
    """Every unit file name -> content."""
    units = {
        "pyops-backup@.service": service(
            s,
            "pyops backup, %i tier",
            "backup --tier %i",
            extra=("Nice=10", "IOSchedulingClass=idle", "TimeoutStartSec=6h"),
        ),
        "pyops-maintenance.service": service(
            s,
            "pyops database maintenance",
            "maintenance --all",
            extra=("Nice=10", "TimeoutStartSec=4h"),
        ),
        "pyops-health.service": service(
            s,
            "pyops health checks",
            "health",
            # Nagios codes: 1 warning and 3 unknown are reported, not unit failures
            extra=("SuccessExitStatus=1 3", "TimeoutStartSec=5min"),
        ),
        "pyops-drill.service": service(
            s,
            "pyops disaster-recovery drill",
            "drill",
            extra=("Nice=10", "IOSchedulingClass=idle", "TimeoutStartSec=12h"),
        ),
        "pyops-failure@.service": "\n".join(
            [
                "# Rendered by `pyops systemd render`; edits are lost on the next render.",
                "[Unit]",
                "Description=pyops: report the failure of %i",
                "",
                "[Service]",
                "Type=oneshot",
                *([] if s.user_units else [f"User={s.user}", f"Group={s.group}"]),
                f"Environment=PYOPS_CONFIG={s.config}",
                *_secrets(s, s.failure_credentials),
                f"ExecStart={s.pyops} systemd on-failure %i",
                "TimeoutStartSec=2min",
                *_hardening(s),
                "",
            ]
        ),
    }
    for job in ALL_JOBS:
        units[f"{job.name}.timer"] = timer(job)
    return units


def default_timers() -> list[str]:
    return [f"{job.name}.timer" for job in DEFAULT_JOBS]
