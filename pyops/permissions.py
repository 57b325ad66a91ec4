"""Unsafe file modes, as OpenSSH's StrictModes and gpg's "unsafe permissions" see them.

A config another user can write decides what pyops runs as root (pg_bin_dir); a
repository another user can write decides what is restored; a key or passphrase
file others can read is no longer a secret. The check is about each path itself,
and where its symlinks lead; a sticky world-writable parent such as /tmp is fine.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pyops import secrets
from pyops.config import Config
from pyops.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unsafe:
    path: Path
    key: str  # the config key naming it, or the config file itself
    problem: str
    fix: str
    refuse: bool = True  # as root: refused (exit 2), not only warned about

    def __str__(self) -> str:
        return f"{self.key}: {self.path} is {self.problem}; fix: {self.fix}"


def _chain(path: Path) -> list[Path]:
    """The path and, when it is a symlink, every path it leads through."""
    out = [path]
    seen = {path}
    while _is_symlink(out[-1]):
        target = Path(os.readlink(out[-1]))
        nxt = target if target.is_absolute() else out[-1].parent / target
        if nxt in seen:
            break
        seen.add(nxt)
        out.append(nxt)
    return out


def _is_symlink(path: Path) -> bool:
    try:
        return path.is_symlink()
    except PermissionError:  # in a directory we may not search (/etc/credstore)
        return False


def check_path(
    path: Path, key: str, secret: bool, uid: int, service_owned: bool = False
) -> list[Unsafe]:
    """Problems of one path. `service_owned`: a data directory the service account
    legitimately owns (the repository): owned by another user is a warning, since
    that user already writes every backup; writable by group or others is refused."""
    problems = []
    for p in _chain(path):
        try:
            st = os.lstat(p)
        except (FileNotFoundError, PermissionError):
            continue  # nothing there, or out of our reach: reading it will say so
        if stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; where it leads is checked next
        if st.st_uid not in (0, uid):
            problems.append(
                Unsafe(
                    p,
                    key,
                    f"owned by uid {st.st_uid}",
                    f"chown {uid} {p}",
                    refuse=not service_owned,
                )
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            mode = "0700" if stat.S_ISDIR(st.st_mode) else "0600"
            problems.append(
                Unsafe(
                    p,
                    key,
                    f"writable by group or others ({oct(st.st_mode & 0o777)})",
                    f"chmod {mode} {p}",
                )
            )
        elif secret and st.st_mode & stat.S_IROTH:
            problems.append(
                Unsafe(p, key, f"readable by others ({oct(st.st_mode & 0o777)})", f"chmod 0600 {p}")
            )
    return problems


def unsafe_paths(config: Config, uid: int | None = None) -> list[Unsafe]:
    """Every unsafe path the config names: itself, the repository, the state dir,
    the repository key, the passphrase file and the secret files (password_file, the
    S3 key files: a `%d/NAME` credential where it is read from)."""
    uid = os.geteuid() if uid is None else uid
    repo = config.repository
    checks: list[tuple[Path | None, str, bool, bool]] = [
        (config.source, str(config.source), False, False),
        (repo.path, "repository.path", False, True),
        (repo.state_dir, "repository.state_dir", False, True),
        (repo.key_file, "repository.key_file", True, False),
        (config.encryption.passphrase_file, "encryption.passphrase_file", True, False),
    ]
    checks += [(secrets.resolve(f.path), f.key, True, False) for f in secrets.files(config)]
    out: list[Unsafe] = []
    for path, key, secret, service_owned in checks:
        if path is not None:
            out += check_path(path, key, secret, uid, service_owned)
    return out


def enforce(config: Config) -> list[Unsafe]:
    """As root, refuse the first unsafe path (exit 2, naming it and the fix); as
    another user, warn about each. Returns what was found."""
    found = unsafe_paths(config)
    refused = [u for u in found if u.refuse]
    if refused and os.geteuid() == 0:
        first = refused[0]
        raise ConfigError(
            first.key, f"{first.path} is {first.problem}: refusing to run as root; fix: {first.fix}"
        )
    for problem in found:
        log.warning("unsafe permissions: %s", problem)
    return found
