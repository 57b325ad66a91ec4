"""Backup ids, manifests, and the rules a manifest read back must pass.

Pure: no I/O. A manifest is input, not truth: whoever can write the repository or
the bucket can write one. `Manifest.parse` checks its shape; `check_place` checks
that it names the backup whose place it was found in; `seal`/`authenticate` put
and check an HMAC-SHA256 over its canonical content with the repository key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyops.errors import PyopsError

TIERS = ("daily", "weekly", "monthly", "pre-restore")
TYPES = ("postgres", "sqlite", "files")
STAMP = "%Y%m%dT%H%M%SZ"
MANIFEST_SUFFIX = ".manifest.json"
ID_RE = re.compile(
    r"^(?P<target>[A-Za-z0-9_-]+)\.(?P<tier>daily|weekly|monthly|pre-restore)\."
    r"(?P<stamp>\d{8}T\d{6}Z)\Z"
)
# innermost layer (what the source wrote), then compression, then encryption
EXT_RE = re.compile(r"^(pgdump|sql|pgdir\.tar|pgtar|sqlite3|tar)(\.zst|\.gz)?(\.gpg)?\Z")
# what a backup keeps beside its artifact, by kind: `<id>.<kind>.json` plus the same layers
ATTACHMENT_KINDS = ("globals",)
ATTACHMENT_RE = re.compile(r"^(?P<kind>globals)\.json(\.zst|\.gz)?(\.gpg)?\Z")
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
REPO_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
MAC_PREFIX = "hmac-sha256:"
TEMP_RE = re.compile(r"\.tmp-\d+\Z")


class InvalidManifest(PyopsError):
    """A manifest that must not be used; the message says why."""


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


def _name_tail(backup_id_: str, name: str) -> str | None:
    """What follows `<id>.` in a file name of that backup; None for any other name."""
    head = f"{backup_id_}."
    if not name.startswith(head) or "/" in name or "\\" in name or "\0" in name:
        return None
    return name[len(head) :]


def artifact_extension(backup_id_: str, name: str) -> str | None:
    """The extension of an artifact name `<id>.<ext>`, or None when the name is not one
    (a separator, another id, an unknown layer)."""
    ext = _name_tail(backup_id_, name)
    return ext if ext is not None and EXT_RE.match(ext) else None


def attachment_kind(backup_id_: str, name: str) -> str | None:
    """The kind of an attachment name `<id>.<kind>.json[.zst|.gz][.gpg]`, else None."""
    match = ATTACHMENT_RE.match(_name_tail(backup_id_, name) or "")
    return match["kind"] if match else None


def object_of_backup(backup_id_: str, name: str) -> bool:
    """Whether `name` is a file pyops writes for the backup: its artifact or an attachment."""
    return (
        artifact_extension(backup_id_, name) is not None
        or attachment_kind(backup_id_, name) is not None
    )


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
    repository_id: str = ""
    warnings: list[str] = field(default_factory=list)
    # kind -> {"name", "bytes", "sha256"}: files kept with the artifact (PostgreSQL: the
    # roles and the database's own state), encoded and checked like it
    attachments: dict[str, dict[str, Any]] = field(default_factory=dict)
    mac: str = ""

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

    def _fields(self) -> dict[str, Any]:
        """Every field; one added later only when set, so older manifests read back
        the same (and stay authentic)."""
        data = asdict(self)
        for key in ADDED_LATER:
            if not data[key]:
                data.pop(key)
        return data

    def canonical(self) -> bytes:
        """What the MAC covers: every field but the MAC itself, in one fixed form."""
        data = self._fields()
        data.pop("mac")
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def to_json(self) -> bytes:
        return (json.dumps(self._fields(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, origin: str) -> Manifest:
        """A manifest from its bytes, its shape checked field by field."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidManifest(f"{origin}: not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidManifest(f"{origin}: not a JSON object")
        problems = _shape_problems(raw)
        if problems:
            raise InvalidManifest(f"{origin}: {'; '.join(problems)}")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "target": str,
    "type": str,
    "tier": str,
    "host": str,
    "started_at": str,
    "finished_at": str,
    "duration_s": (int, float),
    "pyops_version": str,
    "tools": dict,
    "source": dict,
    "format": str,
    "compression": dict,
    "encryption": dict,
    "artifact": dict,
}
_OPTIONAL_TYPES: dict[str, type] = {
    "content": dict,
    "repository_id": str,
    "warnings": list,
    "attachments": dict,
    "mac": str,
}
ADDED_LATER = ("attachments",)


def _shape_problems(raw: dict[str, Any]) -> list[str]:
    problems = []
    for key, tp in _FIELD_TYPES.items():
        if key not in raw:
            problems.append(f"{key} missing")
        elif not isinstance(raw[key], tp) or isinstance(raw[key], bool):
            problems.append(f"{key} has the wrong type")
    for key, tp in _OPTIONAL_TYPES.items():
        if key in raw and not isinstance(raw[key], tp):
            problems.append(f"{key} has the wrong type")
    if problems:
        return problems
    match = ID_RE.match(raw["id"])
    try:
        parse_id(raw["id"])
    except PyopsError:
        match = None
    if not match:
        return [f"id {raw['id']!r} is not a backup id"]
    if raw["target"] != match["target"] or raw["tier"] != match["tier"]:
        problems.append(f"target/tier {raw['target']}/{raw['tier']} differ from its id")
    if raw["type"] not in TYPES:
        problems.append(f"unknown type {raw['type']!r}")
    art = raw["artifact"]
    name = art.get("name")
    if not isinstance(name, str) or artifact_extension(raw["id"], name) is None:
        problems.append(f"artifact.name {name!r} is not {raw['id']}.<known extension>")
    size = art.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append("artifact.bytes is not a byte count")
    if not isinstance(art.get("sha256"), str) or not SHA_RE.match(art["sha256"]):
        problems.append("artifact.sha256 is not a sha256")
    try:
        started = datetime.fromisoformat(raw["started_at"])
        if started.tzinfo is None:
            problems.append("started_at has no time zone")
    except ValueError:
        problems.append("started_at is not a time")
    problems += _attachment_problems(raw["id"], raw.get("attachments", {}))
    problems += _fact_problems(raw["source"], raw.get("content", {}))
    rid = raw.get("repository_id", "")
    if rid and not REPO_ID_RE.match(rid):
        problems.append("repository_id is malformed")
    if not all(isinstance(w, str) for w in raw.get("warnings", [])):
        problems.append("warnings must be strings")
    return problems


def _attachment_problems(backup_id_: str, attachments: dict[str, Any]) -> list[str]:
    problems = []
    for kind, entry in attachments.items():
        if kind not in ATTACHMENT_KINDS or not isinstance(entry, dict):
            problems.append(f"attachments.{kind!s:.40} is not a known attachment")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or attachment_kind(backup_id_, name) != kind:
            problems.append(f"attachments.{kind}.name {name!r} is not {backup_id_}.{kind}.json…")
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"attachments.{kind}.bytes is not a byte count")
        if not isinstance(entry.get("sha256"), str) or not SHA_RE.match(entry["sha256"]):
            problems.append(f"attachments.{kind}.sha256 is not a sha256")
    return problems


def _fact_problems(source: dict[str, Any], content: dict[str, Any]) -> list[str]:
    """The facts restore and drill read: each of the type they read it as."""
    problems = []
    for key in (
        "paths",
        "exclude",
        "exclude_table_data",
        "tables_without_data",
        "row_security_tables",
    ):
        value = source.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"source.{key} must be a list of strings")
    for key in ("database", "path", "encoding", "collate", "ctype"):
        if key in source and not isinstance(source[key], str):
            problems.append(f"source.{key} must be a string")
    if not isinstance(source.get("enable_row_security", False), bool):
        problems.append("source.enable_row_security must be true or false")
    tables = content.get("tables", {})
    if not isinstance(tables, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in tables.items()
    ):
        problems.append("content.tables must map table names to row counts")
    for key in ("files", "bytes"):
        value = content.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"content.{key} must be a count")
    return problems


def check_place(manifest: Manifest, target: str, tier: str, stem: str) -> None:
    """The manifest must name the backup whose place (directory or key, file name) it
    was found in: a manifest copied or planted elsewhere is not that backup."""
    if manifest.id != stem:
        raise InvalidManifest(f"it names another backup ({manifest.id})")
    if manifest.target != target or manifest.tier != tier:
        raise InvalidManifest(
            f"it says {manifest.target}/{manifest.tier} but lies in {target}/{tier}"
        )


# --- authenticity ---------------------------------------------------------------


def mac(key: bytes, body: bytes) -> str:
    """The MAC pyops puts on what it writes (manifests, the repository identity)."""
    return MAC_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def mac_matches(key: bytes, body: bytes, claimed: str) -> bool:
    return bool(claimed) and hmac.compare_digest(claimed, mac(key, body))


def mac_of(key: bytes, manifest: Manifest) -> str:
    return mac(key, manifest.canonical())


def seal(key: bytes | None, manifest: Manifest) -> Manifest:
    """Put the MAC on (no key: leave it off; the manifest is then unauthenticated)."""
    manifest.mac = mac_of(key, manifest) if key else ""
    return manifest


def authentic(key: bytes, manifest: Manifest) -> bool:
    return mac_matches(key, manifest.canonical(), manifest.mac)
