"""The fleet index: one small authenticated object per host, `<prefix>/<host>/index.json`
(`catalog.INDEX_KEY`), so that `pyops fleet` reads one object per host instead of
every manifest. This module is the one place that builds, seals, writes, reads and
validates it (the rules it must pass, and its seal, are in pyops/fleetshape.py).

A host rewrites it after each backup (with its upload), prune, sync and drill
(`publish`), best effort: a failure to write it is a warning, never a failed
command. It is sealed like a manifest: an HMAC-SHA256 with the repository key over
its canonical JSON (sorted keys, no spaces, ASCII). An index is input, not truth:
`read` checks its shape, that it names the host it lies under, and its MAC.

Shape, version 1 (a JSON object; times are ISO 8601 with a zone, series times are
epoch seconds, sizes are bytes):

    {
      "format": "pyops-fleet-index",
      "version": 1,
      "host": "web-1",                  # must equal the <host> it lies under
      "repository_id": "<32 hex>" | "",
      "written_at": "<time>",
      "event": "backup" | "prune" | "sync" | "drill",
      "pyops_version": "0.1.0",
      "retention": {"daily": 7, "weekly": 5, "monthly": 12},  # a tier at 0 is not judged
      "targets": {"<target name>": TARGET, ...},
      "mac": "hmac-sha256:<64 hex>" | ""    # "" when the host has no repository key
    }

TARGET, per target (what `pyops.sources.pgbackrest.fleet_summary(app, target)` returns
too, for a `type = "pgbackrest"` target; "drill" is filled in by the writer from the
run log, "refused" and "unauthenticated" default to 0, "sizes" is extended with the
sizes this host recorded before, so a summary may leave those four out or give only
the current backups' sizes):

    {
      "type": "postgres" | "sqlite" | "files" | "pgbackrest",
      "tiers": {                          # daily | weekly | monthly (never pre-restore)
        "<tier>": {
          "newest": null | {
            "id": "<backup id or label>",
            "time": "<time the backup started>",
            "size": <bytes>,
            "sha256": "<64 hex>" | "",     # "" where the engine keeps no one digest
            "offsite": true | false | null, # in the bucket; null: not known
            "warnings": ["..."]             # that backup's own warnings (at most 10)
          },
          "count": <complete backups of the tier on the host>,
          "offsite_count": <manifests of the tier in the bucket> | null,
          "sizes": [[<epoch>, <bytes>], ...]  # oldest first, the newest last (trend, chart)
        }
      },
      "drill": {
        "last": null | {"time": "<time>", "ok": true|false, "rto_s": <seconds>,
                        "backup": "<id>", "error": "<why it failed>" | ""},
        "last_ok": null | "<time of the last successful drill>",
        "history": [[<epoch>, <rto_s>, <1 ok | 0 failed>], ...]   # oldest first
      },
      "warnings": ["..."],               # about the target (refused manifests' reasons)
      "refused": <manifests refused>,
      "unauthenticated": <backups used without a MAC>
    }

Limits: the object is at most 1 MiB; 1000 targets; `sizes` and `history` at most
1000 entries (the writer keeps 100 daily, 60 weekly, 36 monthly sizes and 100 drills).
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyops import __version__, runlog
from pyops import manifest as mf
from pyops.catalog import INDEX_KEY, MANIFEST_SUFFIX, Listing
from pyops.errors import PyopsError
from pyops.fleetshape import (
    FORMAT,
    LIMIT,
    MAX_TARGETS,
    MAX_TEXT,
    NAME_RE,
    TIERS,
    VERSION,
    WARNINGS_KEPT,
    Read,
    is_series,
    is_time,
    read,
    seal,
    target_problems,
)
from pyops.fsutil import make_private_dir, write_atomic
from pyops.manifest import Manifest

if TYPE_CHECKING:
    from pyops.app import App
    from pyops.config import Target
    from pyops.storage import Store

log = logging.getLogger(__name__)

SIZES_KEPT = {"daily": 100, "weekly": 60, "monthly": 36}
DRILLS_KEPT = 100
LOCAL_COPY = "fleet-index.json"  # in the state dir: the sizes history carried forward

__all__ = ["INDEX_KEY", "LIMIT", "Read", "publish", "read", "seal", "targets_from_listing"]


# --- building ---------------------------------------------------------------------


def _epoch(when: str) -> int:
    return int(datetime.fromisoformat(when).timestamp())


def merge_sizes(
    previous: Iterable[Sequence[int]], current: Iterable[Sequence[int]], keep: int
) -> list[list[int]]:
    """The size series: what was recorded before and the current backups' sizes, one
    point per time (the current one wins), oldest first, the newest `keep`."""
    points: dict[int, int] = {int(t): int(s) for t, s in previous}
    points.update({int(t): int(s) for t, s in current})
    return [[t, points[t]] for t in sorted(points)][-keep:]


def newest_entry(m: Manifest, offsite_ids: set[str] | None) -> dict[str, Any]:
    return {
        "id": m.id,
        "time": m.started_at,
        "size": m.size,
        "sha256": m.sha256,
        "offsite": None if offsite_ids is None else m.id in offsite_ids,
        "warnings": [w[:MAX_TEXT] for w in m.warnings[:WARNINGS_KEPT]],
    }


def target_entry(
    name: str,
    type_: str,
    manifests: Sequence[Manifest],
    offsite_ids: set[str] | None,
    previous: dict[str, Any] | None = None,
    *,
    refused: Sequence[str] = (),
    unauthenticated: int = 0,
) -> dict[str, Any]:
    """One target's entry from its complete backups (`manifests`, any order), the ids
    of the backups the bucket holds (None: not known) and the entry written before
    (its sizes history). Drills are left empty (`drill_entry`)."""
    tiers: dict[str, Any] = {}
    old_tiers = (previous or {}).get("tiers", {})
    for tier in TIERS:
        mine = sorted((m for m in manifests if m.tier == tier), key=lambda m: m.started)
        old = old_tiers.get(tier, {}).get("sizes", [])
        if not mine and not old:
            continue
        offsite_count = None
        if offsite_ids is not None:
            offsite_count = sum(1 for i in offsite_ids if i.startswith(f"{name}.{tier}."))
        tiers[tier] = {
            "newest": newest_entry(mine[-1], offsite_ids) if mine else None,
            "count": len(mine),
            "offsite_count": offsite_count,
            "sizes": merge_sizes(
                old, [(_epoch(m.started_at), m.size) for m in mine], SIZES_KEPT[tier]
            ),
        }
    return {
        "type": type_,
        "tiers": tiers,
        "drill": empty_drill(),
        "warnings": [r[:MAX_TEXT] for r in refused[:WARNINGS_KEPT]],
        "refused": len(refused),
        "unauthenticated": unauthenticated,
    }


def empty_drill() -> dict[str, Any]:
    return {"last": None, "last_ok": None, "history": []}


def drill_entry(attempts: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A target's drills from (time, DrillResult as a dict) pairs, oldest first."""
    out = empty_drill()
    for when, result in attempts:
        if result.get("ok"):
            out["last_ok"] = when
    for when, result in attempts[-DRILLS_KEPT:]:
        ok = bool(result.get("ok"))
        rto = round(float(result.get("rto_s") or 0.0), 3)
        out["history"].append([_epoch(when), rto, int(ok)])
        out["last"] = {
            "time": when,
            "ok": ok,
            "rto_s": rto,
            "backup": str(result.get("backup") or "")[:MAX_TEXT],
            "error": str(result.get("error") or "")[:MAX_TEXT],
        }
    return out


def drills_from_runlog(records: Iterable[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Each target's drills in the run log (`records` newest first), oldest first."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for record in records:
        if record.get("command") != "drill" or not isinstance(record.get("drills"), list):
            continue
        when = str(record.get("started_at", ""))
        if not is_time(when):
            continue
        for result in record["drills"]:
            if isinstance(result, dict) and isinstance(result.get("target"), str):
                out.setdefault(result["target"], []).append((when, result))
    for attempts in out.values():
        attempts.reverse()
    return out


@dataclass
class _Grouped:
    backups: dict[str, list[Manifest]]
    unauthenticated: dict[str, int]
    refused: dict[str, list[str]]

    @property
    def names(self) -> set[str]:
        return set(self.backups) | set(self.refused)


def _group(listing: Listing) -> _Grouped:
    """A listing's backups (pre-restore ones left out) and refusals, by target."""
    out = _Grouped({}, {}, {})
    for b in listing.backups:
        if b.manifest.tier in TIERS:
            name = b.manifest.target
            out.backups.setdefault(name, []).append(b.manifest)
            out.unauthenticated[name] = out.unauthenticated.get(name, 0) + (not b.authenticated)
    for r in listing.refused:
        name = r.key.split("/", 1)[0]
        if NAME_RE.match(name):
            out.refused.setdefault(name, []).append(f"{r.key}: {r.reason}")
    return out


def _entry(
    name: str,
    grouped: _Grouped,
    type_: str,
    offsite_ids: set[str] | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    mine = grouped.backups.get(name, [])
    return target_entry(
        name,
        mine[0].type if mine else type_,
        mine,
        offsite_ids,
        previous,
        refused=grouped.refused.get(name, []),
        unauthenticated=grouped.unauthenticated.get(name, 0),
    )


def targets_from_listing(listing: Listing) -> dict[str, dict[str, Any]]:
    """Target entries from the bucket's listing of a host without a usable index: all
    its backups are offsite; drills are unknown (manifests do not record them)."""
    grouped = _group(listing)
    ids = {b.manifest.id for b in listing.backups}
    return {n: _entry(n, grouped, "unknown", ids, None) for n in sorted(grouped.names)}


def remote_ids(store: Store) -> set[str]:
    """The ids of the manifests the bucket holds under this host (listed, not read)."""
    out = set()
    for info in store.list():
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2].endswith(MANIFEST_SUFFIX):
            stem = parts[2][: -len(MANIFEST_SUFFIX)]
            if mf.ID_RE.match(stem):
                out.add(stem)
    return out


PGBACKREST: tuple[str, ...] = ("pgbackrest",)


def _texts(value: Any, most: int) -> Any:
    """A list of texts cut to what the index keeps; anything else as it is (then refused)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v[:MAX_TEXT] for v in value[:most]]
    return value


def _pgbackrest(app: App, target: Target, previous: dict[str, Any] | None) -> dict[str, Any]:
    """A pgBackRest target's entry: the engine's own summary
    (`pyops.sources.pgbackrest.fleet_summary`), its sizes history carried forward."""
    empty = target_entry(target.name, target.type, [], None)
    try:
        module = importlib.import_module("pyops.sources.pgbackrest")
        summary = copy.deepcopy(dict(module.fleet_summary(app, target)))
    except Exception as exc:
        log.warning("fleet index: %s: no pgBackRest summary: %s", target.name, exc)
        return {**empty, "warnings": [f"no pgBackRest summary: {exc}"[:MAX_TEXT]]}
    entry = {**empty, **summary, "type": target.type}
    entry["warnings"] = _texts(entry["warnings"], WARNINGS_KEPT)
    old = (previous or {}).get("tiers", {})
    for tier, body in entry["tiers"].items() if isinstance(entry["tiers"], dict) else ():
        if not isinstance(body, dict):
            continue
        if isinstance(body.get("newest"), dict) and "warnings" in body["newest"]:
            body["newest"]["warnings"] = _texts(body["newest"]["warnings"], WARNINGS_KEPT)
        if tier in SIZES_KEPT and is_series(body.get("sizes"), 2):
            body["sizes"] = merge_sizes(
                old.get(tier, {}).get("sizes", []), body["sizes"], SIZES_KEPT[tier]
            )
    problems = target_problems(entry)
    if problems:
        why = (
            f"its pgBackRest summary is malformed (the shape: pyops/fleetindex.py): "
            f"{'; '.join(problems[:3])}"
        )
        log.warning("fleet index: %s: %s", target.name, why)
        return {**empty, "warnings": [why[:MAX_TEXT]]}
    return entry


def build(app: App, event: str, drills: Sequence[Any] = ()) -> dict[str, Any]:
    """The host's index: its local backups, which of them the bucket holds, its drills
    (the run log, and `drills` of the run in progress), the sizes recorded before."""
    from pyops import pgdatabases

    grouped = _group(app.local().scan())
    offsite_ids = remote_ids(app.remote(write=True).store)
    previous = _previous(app)
    now = app.clock().isoformat()
    attempts = drills_from_runlog(runlog.read(app.state))
    for result in drills:
        row = result.as_dict() if hasattr(result, "as_dict") else dict(result)
        attempts.setdefault(str(row.get("target")), []).append((now, row))
    configured = {t.name: t for t in app.config.targets}
    names = grouped.names | {  # an "all" target stands for its databases, once it has some
        n
        for n, t in configured.items()
        if not pgdatabases.is_all(t) or not any(g.startswith(f"{n}-") for g in grouped.names)
    }
    targets: dict[str, Any] = {}
    for name in sorted(names)[:MAX_TARGETS]:
        target = configured.get(name)
        if target is not None and target.type in PGBACKREST:
            entry = _pgbackrest(app, target, previous.get(name))
        else:
            type_ = target.type if target else "unknown"
            entry = _entry(name, grouped, type_, offsite_ids, previous.get(name))
        entry["drill"] = drill_entry(attempts.get(name, []))
        targets[name] = entry
    identity = app.identity()
    return document(
        app.config.host,
        identity.repository_id if identity else "",
        now,
        event,
        {t: int(getattr(app.config.retention, t)) for t in TIERS},
        targets,
    )


def document(
    host: str,
    repository_id: str,
    written_at: str,
    event: str,
    retention: dict[str, int],
    targets: dict[str, Any],
) -> dict[str, Any]:
    """The index around its target entries (unsealed: `seal` adds the MAC)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "host": host,
        "repository_id": repository_id,
        "written_at": written_at,
        "event": event,
        "pyops_version": __version__,
        "retention": retention,
        "targets": targets,
        "mac": "",
    }


def _previous(app: App) -> dict[str, Any]:
    """The targets of the index this host wrote last (its sizes history), if it reads."""
    try:
        data = (app.state / LOCAL_COPY).read_bytes()
    except OSError:
        return {}
    got = read(data, app.config.host, app.key)
    if got.doc is None or got.state not in ("authenticated", "unauthenticated"):
        log.warning("fleet index: %s: %s: starting its history afresh", LOCAL_COPY, got.reason)
        return {}
    return dict(got.doc["targets"])


# --- writing ---------------------------------------------------------------------


def _fitting(doc: dict[str, Any], key: bytes | None) -> bytes:
    """The sealed index, its series shortened while it is larger than a reader takes
    (a host with hundreds of targets): the newest points are kept."""
    data = seal(doc, key)
    keep = max(SIZES_KEPT.values())
    while len(data) > LIMIT and keep > 1:
        keep //= 4
        for entry in doc["targets"].values():
            for body in entry["tiers"].values():
                body["sizes"] = body["sizes"][-keep:]
            entry["drill"]["history"] = entry["drill"]["history"][-keep:]
        data = seal(doc, key)
    if len(data) > LIMIT:
        raise PyopsError(f"it would be {len(data)} bytes, over the {LIMIT} a reader takes")
    return data


def publish(app: App, event: str, drills: Sequence[Any] = ()) -> None:
    """Rewrite this host's index in the bucket (and its local copy in the state dir).
    Never raises: the backup, prune, sync or drill it follows stands either way."""
    if not app.config.offsite.bucket:
        return
    try:
        if app.config.repository.key_file is not None and app.key is None:
            log.warning(
                "fleet index not written: the repository key is missing (an unsealed "
                "index would be refused by `pyops fleet`)"
            )
            return
        data = _fitting(build(app, event, drills), app.key)
        make_private_dir(app.state)
        write_atomic(app.state / LOCAL_COPY, data)
        app.remote(write=True).store.put_bytes(INDEX_KEY, data)
    except Exception as exc:
        log.warning("fleet index not written (the %s itself is not affected): %s", event, exc)
        log.debug("fleet index: traceback", exc_info=exc)
