"""Attachments: small files a backup keeps beside its artifact (PostgreSQL: the roles
and the database's own state, which pg_dump does not carry), compressed, encrypted and
checksummed like the artifact, listed in its manifest, copied, verified and pruned
with it. They are small by nature: read into memory whole, never streamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyops import stream
from pyops.artifact import ArtifactWriter
from pyops.catalog import Backup, Catalog
from pyops.codec import Codec
from pyops.errors import PyopsError, VerifyFailed
from pyops.execute import PIPE, in_thread, pipeline
from pyops.storage import NotFound, StoreError

LIMIT = 64 << 20  # a decoded attachment larger than this is not one pyops wrote


def name(backup_id: str, kind: str, codec: Codec) -> str:
    return f"{backup_id}.{codec.extension(f'{kind}.json')}"


def write(path: Path, data: dict[str, Any], codec: Codec) -> dict[str, Any]:
    """Encode `data` as JSON through the codec into `path` (temp name, fsync, rename);
    the manifest entry for it."""
    raw = json.dumps(data, sort_keys=True, indent=1).encode()
    writer = ArtifactWriter(path)
    try:
        with codec.encoder() as encoders:
            if encoders:
                with pipeline(encoders, stdin=PIPE, stdout=PIPE) as running:
                    join = in_thread(lambda: running.feed([raw]))
                    for chunk in running.chunks():
                        writer.write(chunk)
                    join()
            else:
                writer.write(raw)
        size, sha = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"name": path.name, "bytes": size, "sha256": sha}


def read(catalog: Catalog, backup: Backup, kind: str, codec: Codec) -> dict[str, Any]:
    """The attachment decoded, its sha256 checked first against the manifest."""
    if kind not in backup.manifest.attachments:
        raise PyopsError(f"{backup.id} has no {kind} attachment")
    key = backup.attachment_key(kind)
    try:
        stream.checksum(backup.manifest, catalog.attachment(backup, kind), kind)
        with codec.decoder(backup.manifest) as decoders:
            check = stream.Checksum(backup.manifest, kind)
            with stream.decoded(check.through(catalog.attachment(backup, kind)), decoders) as f:
                raw = f.read(LIMIT + 1)
    except (NotFound, FileNotFoundError):
        raise VerifyFailed(f"{backup.id}: attachment {key} is missing") from None
    except StoreError as exc:
        raise VerifyFailed(f"{backup.id}: attachment {key} cannot be read: {exc}") from None
    if len(raw) > LIMIT:
        raise VerifyFailed(f"{backup.id}: attachment {key} is larger than pyops writes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerifyFailed(f"{backup.id}: attachment {key} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VerifyFailed(f"{backup.id}: attachment {key} is not a JSON object")
    return data


def saved_state(catalog: Catalog, backup: Backup, codec: Codec) -> dict[str, Any]:
    """The roles and database state kept with a PostgreSQL backup, its shape checked
    before any statement is made of it."""
    from pyops import pgstate  # PostgreSQL's rules (and psycopg) only when one is read

    state = read(catalog, backup, "globals", codec)
    problems = pgstate.shape_problems(state)
    if problems:
        raise VerifyFailed(
            f"{backup.id}: its saved roles and database state: {'; '.join(problems)}"
        )
    return state
