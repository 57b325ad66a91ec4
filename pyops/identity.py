"""The repository key (authenticates manifests) and the repository identity (says
which backups under a prefix are this repository's).

The key is 32 random bytes, kept hex-encoded in a 0600 file whose path is
`[repository] key_file`. The identity is a small record, `repository.json`, kept
at the root of the repository and beside the backups in the bucket, carrying a
random id and, when there is a key, a MAC over it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyops.errors import ConfigError, PyopsError
from pyops.manifest import REPO_ID_RE, mac, mac_matches

IDENTITY_KEY = "repository.json"
KEY_BYTES = 32


def create_key(path: Path) -> bytes:
    """A new random key in a new 0600 file (never over an existing one)."""
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            "repository.key_file",
            f"{path} does not exist: restore it from where you keep it with the gpg secret "
            "key, or (to restore without it) pass --allow-unauthenticated",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("repository.key_file", f"cannot read {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError("repository.key_file", f"{path} is not a pyops repository key")
    return key


@dataclass(frozen=True)
class Identity:
    repository_id: str
    created_at: str
    host: str
    mac: str = ""

    def body(self) -> bytes:
        data = asdict(self)
        data.pop("mac")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def sealed(self, key: bytes | None) -> Identity:
        sealed_mac = mac(key, self.body()) if key else ""
        return Identity(self.repository_id, self.created_at, self.host, sealed_mac)

    def authentic(self, key: bytes) -> bool:
        return mac_matches(key, self.body(), self.mac)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, origin: str) -> Identity:
        try:
            raw = json.loads(data)
            identity = cls(
                str(raw["repository_id"]),
                str(raw["created_at"]),
                str(raw["host"]),
                str(raw.get("mac", "")),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise PyopsError(f"{origin}: not a repository identity: {exc}") from None
        if not REPO_ID_RE.match(identity.repository_id):
            raise PyopsError(f"{origin}: malformed repository id")
        return identity


def new_identity(host: str, key: bytes | None) -> Identity:
    return Identity(secrets.token_hex(16), datetime.now(UTC).isoformat(), host).sealed(key)
