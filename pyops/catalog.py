"""Naming, manifests and the listing of complete backups.

A backup is complete when its manifest exists: the artifact is renamed into
place first, the manifest last. Everything else in the repository is either a
leftover of a dead run (cleaned by the next one) or not ours (never touched).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyops.errors import PyopsError

TIERS = ("daily", "weekly", "monthly", "pre-restore")
STAMP = "%Y%m%dT%H%M%SZ"
MANIFEST_SUFFIX = ".manifest.json"
TEMP_MARK = ".tmp-"
ID_RE = re.compile(
    r"^(?P<target>[A-Za-z0-9_-]+)\.(?P<tier>daily|weekly|monthly|pre-restore)\."
    r"(?P<stamp>\d{8}T\d{6}Z)$"
)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP)


def backup_id(target: str, tier: str, when: datetime) -> str:
    return f"{target}.{tier}.{stamp(when)}"


def parse_id(text: str) -> tuple[str, str, datetime]:
    match = ID_RE.match(text)
    if not match:
        raise PyopsError(f"not a backup id: {text!r} (expected TARGET.TIER.YYYYmmddTHHMMSSZ)")
    try:
        when = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise PyopsError(f"not a backup id: {text!r} (its time is not a valid date)") from None
    return match["target"], match["tier"], when


def tier_dir(repo: Path, target: str, tier: str) -> Path:
    return repo / target / tier


@dataclass
class Manifest:
    id: str
    target: str
    type: str
    tier: str
    host: str
    started_at: str
    finished_at: str
    duration_s: float
    pyops_version: str
    tools: dict[str, str]
    source: dict[str, Any]
    format: str
    compression: dict[str, Any]
    encryption: dict[str, Any]
    artifact: dict[str, Any]
    content: dict[str, Any] = field(default_factory=dict)

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    @property
    def artifact_name(self) -> str:
        return str(self.artifact["name"])

    @property
    def sha256(self) -> str:
        return str(self.artifact["sha256"])

    @property
    def size(self) -> int:
        return int(self.artifact["bytes"])

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption.get("mode", "none") != "none")

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> Manifest:
        try:
            raw = json.loads(data)
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError) as exc:
            raise PyopsError(f"unreadable manifest {origin}: {exc}") from None


@dataclass(frozen=True)
class Backup:
    """A complete local backup: its manifest and where its artifact lies."""

    manifest: Manifest
    directory: Path

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def artifact_path(self) -> Path:
        return self.directory / self.manifest.artifact_name

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.id}{MANIFEST_SUFFIX}"


def _manifests(repo: Path) -> Iterator[Path]:
    if not repo.is_dir():
        return
    for target_dir in sorted(repo.iterdir()):
        if target_dir.name.startswith(".") or not target_dir.is_dir():
            continue
        for tier in TIERS:
            directory = target_dir / tier
            if directory.is_dir():
                yield from sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))


def complete_backups(
    repo: Path, target: str | None = None, tier: str | None = None
) -> list[Backup]:
    """Complete backups, newest first. A manifest pyops cannot read is an error, not a
    silent omission: retention must never count around it."""
    found: list[Backup] = []
    for path in _manifests(repo):
        stem = path.name[: -len(MANIFEST_SUFFIX)]
        if not ID_RE.match(stem):
            continue
        manifest = Manifest.from_json(path.read_bytes(), str(path))
        if manifest.id != stem:
            raise PyopsError(f"manifest {path} names another backup ({manifest.id})")
        if target and manifest.target != target:
            continue
        if tier and manifest.tier != tier:
            continue
        found.append(Backup(manifest, path.parent))
    found.sort(key=lambda b: (b.manifest.started_at, b.id), reverse=True)
    return found


def find(repo: Path, backup_id_: str) -> Backup:
    target, tier, _ = parse_id(backup_id_)
    path = tier_dir(repo, target, tier) / f"{backup_id_}{MANIFEST_SUFFIX}"
    if not path.exists():
        raise PyopsError(f"no complete backup {backup_id_} in {repo} (see `pyops list`)")
    return Backup(Manifest.from_json(path.read_bytes(), str(path)), path.parent)


def leftovers(repo: Path, target: str) -> list[Path]:
    """Files of dead runs: temp files, and artifacts whose manifest never came.
    Only names pyops makes are considered; anything else is left alone."""
    out: list[Path] = []
    for tier in TIERS:
        directory = tier_dir(repo, target, tier)
        if not directory.is_dir():
            continue
        complete = {p.name[: -len(MANIFEST_SUFFIX)] for p in directory.glob(f"*{MANIFEST_SUFFIX}")}
        for path in directory.iterdir():
            name = path.name
            head = name.split(TEMP_MARK, 1)[0]
            stem = head.split(".")
            candidate = ".".join(stem[:3])
            if not ID_RE.match(candidate):
                continue
            if TEMP_MARK in name or candidate not in complete:
                out.append(path)
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Temp name, fsync, rename, fsync the directory: a reader sees all or nothing."""
    tmp = path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> Path:
    """mkdir -p with 0700 on what it creates, whatever the umask."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        os.chmod(d, 0o700)
    return path
