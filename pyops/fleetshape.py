"""The rules a fleet index read back must pass, and its seal: pure, no I/O.

The shape is described in pyops/fleetindex.py. An index is input, not truth: whoever
can write the bucket can write one. `read` checks its shape (every field, every
bound), that it names the host it lies under, and its MAC under that host's key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyops import manifest as mf

FORMAT = "pyops-fleet-index"
VERSION = 1
LIMIT = 1 << 20  # bytes of one index, at most
TIERS = ("daily", "weekly", "monthly")
EVENTS = ("backup", "prune", "sync", "drill")
WARNINGS_KEPT = 10
MAX_TARGETS = 1000
MAX_SERIES = 1000
MAX_TEXT = 2000
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


# --- sealing ------------------------------------------------------------


def canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(doc: dict[str, Any], key: bytes | None) -> bytes:
    """The index's bytes, with its MAC when there is a key."""
    sealed = {**doc, "mac": mf.mac(key, canonical(doc)) if key else ""}
    return json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """An index judged: `doc` is usable when `state` is authenticated or unauthenticated
    (no key to check it with); refused and unsupported (a newer format) are not."""

    doc: dict[str, Any] | None
    state: str
    reason: str = ""


def read(data: bytes, host: str, key: bytes | None) -> Read:
    if len(data) > LIMIT:
        return Read(None, "refused", f"larger than {LIMIT} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return Read(None, "refused", f"not JSON: {exc}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return Read(None, "refused", "not a pyops fleet index")
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        return Read(None, "unsupported", f"format version {version}, newer than this pyops")
    problems = shape_problems(doc, host)
    if problems:
        return Read(None, "refused", "; ".join(problems[:5]))
    if key is None:
        return Read(doc, "unauthenticated", "no key to authenticate it with")
    if mf.mac_matches(key, canonical(doc), doc["mac"]):
        return Read(doc, "authenticated")
    if doc["mac"]:
        return Read(None, "refused", "its MAC does not match the host's key: forged or altered")
    return Read(None, "refused", "it carries no MAC, though the host has a key: forged?")


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_num(v: Any) -> bool:
    """A finite number >= 0 (not a bool): `type(...) is`, for the long series too."""
    kind = type(v)
    return (kind is int and v >= 0) or (kind is float and 0 <= v < math.inf)


def is_time(v: Any) -> bool:
    if not isinstance(v, str) or len(v) > 64:
        return False
    try:
        return datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _is_texts(v: Any, most: int) -> bool:
    return (
        isinstance(v, list)
        and len(v) <= most
        and all(isinstance(s, str) and len(s) <= MAX_TEXT for s in v)
    )


def is_series(v: Any, width: int) -> bool:
    """A list of at most MAX_SERIES [number, ...] rows of `width` numbers >= 0."""
    if type(v) is not list or len(v) > MAX_SERIES:
        return False
    for row in v:
        if type(row) is not list or len(row) != width:
            return False
        for x in row:
            kind = type(x)
            if not ((kind is int and x >= 0) or (kind is float and 0 <= x < math.inf)):
                return False
    return True


def shape_problems(doc: dict[str, Any], host: str) -> list[str]:
    problems = []
    if doc.get("version") != VERSION:
        problems.append("version is not 1")
    if doc.get("host") != host:
        problems.append(f"it names host {str(doc.get('host'))[:64]!r}, but lies under {host!r}")
    for name in ("repository_id", "pyops_version", "mac"):
        if not isinstance(doc.get(name), str) or len(doc[name]) > 128:
            problems.append(f"{name} is not a string")
    if not is_time(doc.get("written_at")):
        problems.append("written_at is not a time")
    if doc.get("event") not in EVENTS:
        problems.append("event is not one of " + ", ".join(EVENTS))
    retention = doc.get("retention")
    if not isinstance(retention, dict) or not all(
        t in TIERS and _is_int(n) for t, n in retention.items()
    ):
        problems.append("retention is not a count per tier")
    targets = doc.get("targets")
    if not isinstance(targets, dict) or len(targets) > MAX_TARGETS:
        return [*problems, "targets is not a table of targets"]
    for name, entry in targets.items():
        if not NAME_RE.match(name):
            problems.append(f"target name {name[:64]!r} is not a target name")
            continue
        problems += [f"{name}: {p}" for p in target_problems(entry)]
    return problems


def target_problems(entry: Any) -> list[str]:
    """What is wrong with one TARGET (see the module's docstring)."""
    if not isinstance(entry, dict):
        return ["not an object"]
    problems = []
    if not isinstance(entry.get("type"), str) or not NAME_RE.match(entry["type"]):
        problems.append("type is not a name")
    tiers = entry.get("tiers")
    if not isinstance(tiers, dict):
        return [*problems, "tiers is not a table"]
    for tier, body in tiers.items():
        if tier not in TIERS or not isinstance(body, dict):
            problems.append(f"tiers.{str(tier)[:20]} is not a tier")
            continue
        problems += [f"{tier}: {p}" for p in _tier_problems(body)]
    drill = entry.get("drill", {"history": []})
    if not isinstance(drill, dict):
        problems.append("drill is not an object")
    else:
        last = drill.get("last")
        if last is not None and not (
            isinstance(last, dict)
            and is_time(last.get("time"))
            and isinstance(last.get("ok"), bool)
            and _is_num(last.get("rto_s"))
            and _is_texts([last.get("backup"), last.get("error")], 2)
        ):
            problems.append("drill.last is malformed")
        if drill.get("last_ok") is not None and not is_time(drill["last_ok"]):
            problems.append("drill.last_ok is not a time")
        if not is_series(drill.get("history"), 3):
            problems.append("drill.history is not a list of [time, rto, ok]")
    if not _is_texts(entry.get("warnings", []), 50):
        problems.append("warnings is not a list of texts")
    for name in ("refused", "unauthenticated"):
        if not _is_int(entry.get(name, 0)):
            problems.append(f"{name} is not a count")
    return problems


def _tier_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    newest = body.get("newest")
    if newest is not None and not (
        isinstance(newest, dict)
        and isinstance(newest.get("id"), str)
        and 0 < len(newest["id"]) <= 200
        and is_time(newest.get("time"))
        and _is_int(newest.get("size"))
        and isinstance(newest.get("sha256"), str)
        and (newest["sha256"] == "" or mf.SHA_RE.match(newest["sha256"]))
        and newest.get("offsite") in (True, False, None)
        and _is_texts(newest.get("warnings", []), WARNINGS_KEPT)
    ):
        problems.append("newest is malformed")
    if not _is_int(body.get("count")):
        problems.append("count is not a count")
    if body.get("offsite_count") is not None and not _is_int(body["offsite_count"]):
        problems.append("offsite_count is not a count")
    if not is_series(body.get("sizes"), 2):
        problems.append("sizes is not a list of [time, bytes]")
    return problems
