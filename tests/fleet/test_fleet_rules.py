"""The fleet's pure parts, fast: the index's shape, seal and reading (fleetshape,
fleetindex), the rules (fleet/rules.py) and the three renderings, over hand-made
entries and MemoryStore hosts written through the catalog."""

from __future__ import annotations

import json
import math
import re
import types
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fleet_support import RETENTION, history, manifest, write_synthetic_host
from prometheus_client.parser import text_string_to_metric_families

from pyops import fleetindex
from pyops.actions import fleet as fleet_action
from pyops.app import App
from pyops.catalog import INDEX_KEY
from pyops.config import HealthConfig, parse
from pyops.fleet import html, render, rules
from pyops.fleet import view as fleet_view
from pyops.identity import create_key
from pyops.storage.memory import MemoryStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
LIM = rules.limits(HealthConfig())


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def newest(target: str, tier: str, when: str, size: int = 1000, **extra: Any) -> dict[str, Any]:
    stamp = datetime.fromisoformat(when).strftime("%Y%m%dT%H%M%SZ")
    return {
        "id": f"{target}.{tier}.{stamp}",
        "time": when,
        "size": size,
        "sha256": "ab" * 32,
        "offsite": True,
        "warnings": [],
        **extra,
    }


def entry(tiers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "sqlite",
        "tiers": {},
        "warnings": [],
        "refused": 0,
        "unauthenticated": 0,
    }
    for tier, (when, sizes) in tiers.items():
        epoch = int(datetime.fromisoformat(when).timestamp())
        series = [[epoch - 86400 * (len(sizes) - i), s] for i, s in enumerate(sizes[:-1])]
        series.append([epoch, sizes[-1]])
        body["tiers"][tier] = {
            "newest": newest("notes", tier, when, sizes[-1]),
            "count": len(sizes),
            "offsite_count": len(sizes),
            "sizes": series,
        }
    drill = fleetindex.drill_entry([(ago(days=3), {"ok": True, "rto_s": 4.2, "backup": "x"})])
    body["drill"] = drill
    body.update(extra)
    return body


def judge(
    body: dict[str, Any], retention: dict[str, int] | None = RETENTION, known: bool = True
) -> fleet_view.TargetView:
    return rules.judge_target("notes", body, retention, NOW, LIM, known)


def problems(view: fleet_view.TargetView | fleet_view.HostView) -> str:
    return " | ".join(f"{p.status}: {p.text}" for p in view.problems)


# --- freshness, trend, offsite, drills ---------------------------------------------------


def test_fresh_tiers_are_ok_and_a_weekly_backup_counts_as_a_fresh_daily() -> None:
    view = judge(
        entry(
            {
                "daily": (ago(hours=40), [900, 1000]),
                "weekly": (ago(hours=2), [1000]),
                "monthly": (ago(days=20), [990]),
            }
        )
    )
    assert view.status == "ok", problems(view)
    daily = view.tiers[0]
    assert daily.age_hours == pytest.approx(2) and daily.newest["time"] == ago(hours=40)
    assert view.newest is not None and view.newest["tier"] == "weekly"


def test_a_stale_tier_is_critical() -> None:
    view = judge(
        entry(
            {
                "daily": (ago(hours=30), [1000]),
                "weekly": (ago(days=3), [1000]),
                "monthly": (ago(days=20), [1000]),
            }
        )
    )
    assert view.status == "critical"
    assert "daily: newest backup notes.daily." in problems(view) and "(limit 26.0 h)" in problems(
        view
    )
    assert [t.status for t in view.tiers] == ["critical", "ok", "ok"]


def test_a_tier_never_written_is_fine_until_its_limit_then_critical() -> None:
    young = judge(entry({"daily": (ago(hours=2), [1000, 1000])}))
    assert young.status == "ok" and young.tiers[1].age_hours is None
    old = entry({"daily": (ago(hours=2), [1000])})
    old["tiers"]["daily"]["sizes"].insert(0, [int((NOW - timedelta(days=9)).timestamp()), 1000])
    view = judge(old)
    assert view.status == "critical" and "no weekly backup yet (first backup 9.0 days ago" in (
        problems(view)
    )


def test_tiers_the_host_does_not_keep_are_not_judged() -> None:
    body = entry({"daily": (ago(hours=2), [1000])})
    body["tiers"]["daily"]["sizes"].insert(0, [int((NOW - timedelta(days=90)).timestamp()), 9])
    view = judge(body, {"daily": 7, "weekly": 0, "monthly": 0})
    assert view.status == "ok" and [t.judged for t in view.tiers] == [True, False, False]
    # without the host's retention (no index): daily, and the tiers it has
    assert [t.judged for t in judge(body, None).tiers] == [True, False, False]


def test_a_backup_far_below_the_median_is_shrinking() -> None:
    view = judge(entry({"daily": (ago(hours=1), [1000, 1100, 900, 1000, 1050, 1000, 400])}))
    daily = view.tiers[0]
    assert view.status == "warning" and daily.shrinking and daily.median == 1000
    assert daily.ratio == pytest.approx(0.4)
    assert "below 0.5 x the median 1000 B of the 5 before it: shrinking" in problems(view)
    assert not judge(entry({"daily": (ago(hours=1), [1000, 600])})).tiers[0].shrinking


def test_newest_not_offsite_warnings_refused_and_unauthenticated() -> None:
    body = entry(
        {"daily": (ago(hours=1), [1000])},
        refused=2,
        unauthenticated=1,
        warnings=["notes/daily/x.manifest.json: its MAC does not match"],
    )
    body["tiers"]["daily"]["newest"].update(offsite=False, warnings=["file changed as we read"])
    view = judge(body)
    text = problems(view)
    assert view.status == "critical"
    assert "warning: newest backup notes.daily." in text and "is not in the bucket" in text
    assert "1 warning(s), e.g. file changed as we read" in text
    assert "critical: 2 manifest(s) refused (forged, altered or malformed): notes/daily/x" in text
    assert "warning: 1 backup(s) used without a MAC" in text
    assert (view.refused, view.unauthenticated) == (2, 1)


def test_no_backup_at_all_is_critical() -> None:
    view = judge(entry({}))
    assert view.status == "critical" and "no complete backup" in problems(view)
    assert view.newest is None and not any(t.judged for t in view.tiers)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        ([], "never drilled"),
        ([(10, False, "restore failed")], "never drilled successfully"),
        ([(120, True, ""), (1, False, "no space")], "the last drill (24.0 h ago) failed: no space"),
        ([(120, True, "")], "last successful drill 120 days ago (limit 92"),
    ],
)
def test_drills(attempts: list[tuple[int, bool, str]], expected: str) -> None:
    body = entry({"daily": (ago(hours=1), [1000])})
    body["drill"] = fleetindex.drill_entry(
        [(ago(days=d), {"ok": ok, "rto_s": 3.0, "error": e}) for d, ok, e in attempts]
    )
    view = judge(body)
    assert view.status == "warning" and expected in problems(view)
    assert view.drill["status"] == "warning"
    assert judge(body, known=False).status == "ok"  # no index: drills unknown, not judged


def test_a_recent_successful_drill_is_ok() -> None:
    view = judge(entry({"daily": (ago(hours=1), [1000])}))
    assert view.status == "ok" and view.drill["rto_s"] == 4.2
    assert view.drill["success_age_days"] == pytest.approx(3)


# --- hosts and the fleet -------------------------------------------------------------------


def host(**changes: Any) -> fleet_view.HostRead:
    read = fleet_view.HostRead(
        "web-1",
        index="authenticated",
        authenticated=True,
        retention=RETENTION,
        targets={"notes": entry({"daily": (ago(hours=1), [9])})},
    )
    for k, v in changes.items():
        setattr(read, k, v)
    return read


@pytest.mark.parametrize(
    ("changes", "status", "text"),
    [
        ({}, "ok", ""),
        (
            {"index": "refused", "source": "manifests", "reason": "forged"},
            "critical",
            "index refused (forged): listed from its manifests",
        ),
        (
            {"index": "unsupported", "source": "manifests", "reason": "version 2"},
            "warning",
            "index not read (version 2)",
        ),
        ({"index": "missing", "source": "manifests"}, "ok", "no index"),
        (
            {"authenticated": False, "index": "unauthenticated"},
            "warning",
            "unauthenticated: no key",
        ),
        ({"source": "none", "error": "AccessDenied", "targets": {}}, "unknown", "cannot read"),
        ({"targets": {}}, "critical", "no complete backup of any target"),
    ],
)
def test_hosts(changes: dict[str, Any], status: str, text: str) -> None:
    view = rules.judge_host(host(**changes), NOW, LIM)
    assert view.status == status and text in problems(view)


def test_unauthenticated_is_a_note_when_allowed() -> None:
    lim = rules.limits(HealthConfig(), allow_unauthenticated=True)
    assert rules.judge_host(host(authenticated=False), NOW, lim).status == "ok"


def test_the_fleet_is_its_worst_host_and_unknown_when_empty_or_unlisted() -> None:
    fleet = fleet_view.FleetView("b", "pyops", NOW)
    assert (fleet.status, fleet.exit_code) == ("unknown", 3)
    fleet.add(rules.judge_host(host(), NOW, LIM))
    assert (fleet.status, fleet.exit_code) == ("ok", 0)
    fleet.add(rules.judge_host(host(host="web-2", index="refused"), NOW, LIM), keep=False)
    assert (fleet.status, fleet.exit_code) == ("critical", 2)
    fleet.error = "AccessDenied"
    assert fleet.status == "critical"  # the worst still shows
    assert fleet.counts() == {
        "hosts": 2,
        "targets": 2,
        "ok": 1,
        "warning": 0,
        "critical": 1,
        "unknown": 0,
    }


# --- the index: shape, seal, reading -------------------------------------------------------


def sealed(doc: dict[str, Any], key: bytes | None = KEY) -> bytes:
    return fleetindex.seal(doc, key)


def a_doc(**changes: Any) -> dict[str, Any]:
    doc = fleetindex.document(
        "web-1",
        "ab" * 16,
        ago(hours=1),
        "backup",
        dict(RETENTION),
        {"notes": entry({"daily": (ago(hours=1), [5, 6])})},
    )
    doc.update(changes)
    return doc


def test_an_index_reads_back_authenticated_and_its_seal_covers_everything() -> None:
    data = sealed(a_doc())
    got = fleetindex.read(data, "web-1", KEY)
    assert got.state == "authenticated" and got.doc == json.loads(data)
    tampered = json.loads(data)
    tampered["targets"]["notes"]["tiers"]["daily"]["count"] = 99
    got = fleetindex.read(json.dumps(tampered).encode(), "web-1", KEY)
    assert (got.state, got.doc) == ("refused", None) and "forged or altered" in got.reason
    assert fleetindex.read(data, "web-1", OTHER).state == "refused"  # another host's key
    unsealed = fleetindex.read(sealed(a_doc(), None), "web-1", KEY)
    assert unsealed.state == "refused" and "no MAC" in unsealed.reason
    assert fleetindex.read(data, "web-1", None).state == "unauthenticated"


def test_an_index_under_another_host_is_refused_even_with_a_good_mac() -> None:
    got = fleetindex.read(sealed(a_doc()), "web-2", KEY)
    assert got.state == "refused" and "names host 'web-1', but lies under 'web-2'" in got.reason


def bad(path: str, value: Any) -> dict[str, Any]:
    doc = a_doc()
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (bad("targets", {"../etc": entry({})}), "is not a target name"),
        (bad("targets.notes.tiers.daily.newest.size", -1), "daily: newest is malformed"),
        (bad("targets.notes.tiers.daily.newest.time", "yesterday"), "newest is malformed"),
        (bad("targets.notes.tiers.daily.sizes", [[1, math.inf]]), "sizes is not a list"),
        (bad("targets.notes.tiers.daily.sizes", [[1, 2]] * 1001), "sizes is not a list"),
        (bad("targets.notes.tiers.pre-restore", {}), "is not a tier"),
        (bad("targets.notes.drill.history", [[1, 2]]), "drill.history is not"),
        (bad("targets.notes.refused", True), "refused is not a count"),
        (bad("targets.notes.warnings", ["x" * 3000]), "warnings is not a list"),
        (bad("written_at", "2026-11-23T12:00:00"), "written_at is not a time"),
        (bad("event", "rm -rf"), "event is not one of"),
        (bad("retention", {"hourly": 3}), "retention is not a count per tier"),
    ],
)
def test_a_malformed_index_is_refused_with_a_reason(doc: dict[str, Any], why: str) -> None:
    got = fleetindex.read(sealed(doc), "web-1", KEY)  # sealed: only the shape is wrong
    assert got.state == "refused" and why in got.reason


@pytest.mark.parametrize(
    ("data", "state", "why"),
    [
        (b"{not json", "refused", "not JSON"),
        (b"[]", "refused", "not a pyops fleet index"),
        (
            json.dumps({"format": "pyops-fleet-index", "version": 2}).encode(),
            "unsupported",
            "format version 2, newer than this pyops",
        ),
    ],
)
def test_what_is_not_an_index(data: bytes, state: str, why: str) -> None:
    got = fleetindex.read(data, "web-1", KEY)
    assert (got.state, got.doc) == (state, None) and why in got.reason


def test_an_index_too_large_for_a_reader_is_trimmed_by_its_writer() -> None:
    sizes = [1000 + i for i in range(100)]
    targets = {f"db-{i}": entry({"daily": (ago(hours=1), sizes)}) for i in range(700)}
    doc = a_doc(targets=targets)
    assert len(sealed(doc)) > fleetindex.LIMIT
    assert fleetindex.read(sealed(doc), "web-1", KEY).reason == "larger than 1048576 bytes"
    data = fleetindex._fitting(doc, KEY)
    got = fleetindex.read(data, "web-1", KEY)
    assert len(data) <= fleetindex.LIMIT and got.state == "authenticated" and got.doc
    kept = got.doc["targets"]["db-0"]["tiers"]["daily"]["sizes"]
    assert len(kept) == 25 and kept[-1][1] == 1099  # the newest points


def test_sizes_and_drills_series() -> None:
    assert fleetindex.merge_sizes([[1, 10], [2, 20]], [(2, 21), (3, 30)], 2) == [[2, 21], [3, 30]]
    attempts = [(ago(days=300 - i), {"ok": i == 0, "rto_s": i}) for i in range(150)]
    drill = fleetindex.drill_entry(attempts)
    assert len(drill["history"]) == fleetindex.DRILLS_KEPT and drill["last"]["ok"] is False
    assert drill["last_ok"] == ago(days=300)  # older than the history kept, still known
    records = [  # the run log, newest first
        {"command": "drill", "started_at": ago(days=1), "drills": [{"target": "a", "ok": True}]},
        {"command": "backup", "started_at": ago(days=2), "drills": [{"target": "a"}]},
        {"command": "drill", "started_at": "not a time", "drills": [{"target": "a"}]},
        {
            "command": "drill",
            "started_at": ago(days=3),
            "drills": [{"target": "a", "ok": False}, {"target": "b", "ok": True}],
        },
    ]
    found = fleetindex.drills_from_runlog(records)
    assert [w for w, _ in found["a"]] == [ago(days=3), ago(days=1)] and len(found["b"]) == 1


# --- hosts in a store, read back -------------------------------------------------------------


def test_a_host_is_read_from_its_index_or_else_its_manifests() -> None:
    indexed, bare, empty = MemoryStore("a"), MemoryStore("b"), MemoryStore("c")
    points = {"notes": history(NOW, 40, 1000)}
    write_synthetic_host(indexed, "web-1", KEY, points, {}, NOW)
    write_synthetic_host(bare, "web-2", KEY, points, {}, NOW, index=False)
    read = fleet_action.read_host(indexed, "web-1", KEY)
    assert read is not None and (read.source, read.index, read.authenticated) == (
        "index",
        "authenticated",
        True,
    )
    sizes = read.targets["notes"]["tiers"]["daily"]["sizes"]
    assert len(sizes) > 7  # the history, beyond what retention keeps
    from_manifests = fleet_action.read_host(bare, "web-2", KEY)
    assert from_manifests is not None and from_manifests.source == "manifests"
    tiers = from_manifests.targets["notes"]["tiers"]
    assert tiers["daily"]["count"] == 7 and len(tiers["daily"]["sizes"]) == 7
    assert tiers["daily"]["newest"] == read.targets["notes"]["tiers"]["daily"]["newest"]
    assert fleet_action.read_host(empty, "web-3", KEY) is None  # nothing of pyops' there

    # a forged manifest beside them: refused, counted, named
    forged = manifest("notes", "daily", NOW, 5, "web-2")
    bare.put_bytes(f"notes/daily/{forged.id}.manifest.json", forged.to_json())
    again = fleet_action.read_host(bare, "web-2", KEY)
    assert again is not None and again.targets["notes"]["refused"] == 1
    view = rules.judge_host(again, NOW, LIM)
    assert view.status == "critical" and "1 manifest(s) refused" in problems(view.targets[0])
    # without the key, the same host: every manifest unauthenticated, said once per host
    blind = fleet_action.read_host(bare, "web-2", None)
    assert blind is not None and blind.targets["notes"]["unauthenticated"] == 0
    assert rules.judge_host(blind, NOW, LIM).status == "warning"


def test_an_altered_index_falls_back_to_the_manifests() -> None:
    store = MemoryStore()
    write_synthetic_host(store, "web-1", KEY, {"notes": history(NOW, 10, 1000)}, {}, NOW)
    doc = json.loads(store.objects[INDEX_KEY])
    doc["targets"]["notes"]["tiers"]["daily"]["newest"]["size"] = 1
    store.put_bytes(INDEX_KEY, json.dumps(doc).encode())
    read = fleet_action.read_host(store, "web-1", KEY)
    assert read is not None and (read.index, read.source) == ("refused", "manifests")
    assert read.targets["notes"]["tiers"]["daily"]["newest"]["size"] != 1


def test_keys_come_from_the_keys_dir_or_the_own_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    create_key(keys / "web-1.key")
    (keys / "web-2.key").write_text("not a key\n")
    own = tmp_path / "own.key"
    create_key(own)
    found = fleet_action.Keys(keys, "me", own)
    assert found.get("web-1") is not None and found.get("web-2") is None
    assert found.get("me") == bytes.fromhex(own.read_text().strip())
    assert found.get("stranger") is None
    assert fleet_action.Keys(None, "me", None).get("me") is None


# --- the host writing its index -------------------------------------------------------------


def app_with_bucket(tmp_path: Path, extra: str = "") -> App:
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = tmp_path / "repository.key"
    create_key(key)
    config = parse(
        {
            "repository": {"path": str(tmp_path / "repo"), "host": "web-1", "key_file": str(key)},
            "offsite": {"bucket": "b", "prefix": "pyops"},
            "targets": [
                {"name": "notes", "type": "sqlite", "path": str(tmp_path / "a.db")},
                {"name": "never", "type": "sqlite", "path": str(tmp_path / "b.db")},
            ],
        }
    )
    app = App(config, clock=lambda: NOW)
    app._remote = MemoryStore("bucket")  # type: ignore[assignment]
    return app


def test_publish_writes_a_sealed_index_of_the_configured_targets(tmp_path: Path) -> None:
    app = app_with_bucket(tmp_path)
    local = app.local(write=True)
    for tier, when, size in history(NOW, 20, 1000):
        local.write_manifest(manifest("notes", tier, when, size, "web-1"))
    remote: MemoryStore = app._remote  # type: ignore[assignment]
    newest = local.backups("notes", "daily")[0]
    remote.put_bytes(newest.manifest_key, b"{}")  # listed as offsite; not read
    fleetindex.publish(
        app,
        "drill",
        [
            types.SimpleNamespace(
                as_dict=lambda: {"target": "notes", "ok": True, "rto_s": 2.5, "backup": newest.id}
            )
        ],
    )
    got = fleetindex.read(remote.objects[INDEX_KEY], "web-1", app.key)
    assert got.state == "authenticated", got.reason
    doc = got.doc
    assert doc is not None and sorted(doc["targets"]) == ["never", "notes"]
    assert doc["targets"]["never"]["tiers"] == {}
    daily = doc["targets"]["notes"]["tiers"]["daily"]
    dailies = [p for p in history(NOW, 20, 1000) if p[0] == "daily"]
    assert daily["count"] == len(dailies) and daily["offsite_count"] == 1  # no prune here
    assert daily["newest"]["offsite"] is True
    assert doc["targets"]["notes"]["drill"]["last"]["rto_s"] == 2.5
    assert (tmp_path / "repo" / ".pyops" / "fleet-index.json").read_bytes() == remote.objects[
        INDEX_KEY
    ]


def test_publish_is_quiet_without_a_bucket_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with_bucket(tmp_path)
    (tmp_path / "repository.key").unlink()
    app.allow_unauthenticated = True
    fleetindex.publish(app, "backup")
    assert "fleet index not written: the repository key is missing" in caplog.text
    assert INDEX_KEY not in app._remote.objects  # type: ignore[union-attr]

    broken = app_with_bucket(tmp_path / "b")
    broken._remote = None  # type: ignore[assignment]
    broken.remote_store = lambda: (_ for _ in ()).throw(OSError("bucket on fire"))  # type: ignore[method-assign]
    fleetindex.publish(broken, "sync")
    assert (
        "fleet index not written (the sync itself is not affected): bucket on fire" in caplog.text
    )


def test_a_pgbackrest_summary_is_taken_checked_and_its_history_carried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = {
        "tiers": {
            "daily": {
                "newest": newest("pg", "daily", ago(hours=1), 7000),
                "count": 2,
                "offsite_count": None,
                "sizes": [[int(NOW.timestamp()), 7000]],
            }
        },
        "warnings": ["archive_command failed 3 times"],
    }
    fake = types.ModuleType("pyops.sources.pgbackrest")
    fake.fleet_summary = lambda app, target: summary  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "pyops.sources.pgbackrest", fake)
    target = types.SimpleNamespace(name="pg", type="pgbackrest")
    previous = {"tiers": {"daily": {"sizes": [[1, 6000]]}}}
    entry = fleetindex._pgbackrest(None, target, previous)  # type: ignore[arg-type]
    assert entry["tiers"]["daily"]["sizes"] == [[1, 6000], [int(NOW.timestamp()), 7000]]
    assert entry["warnings"] == ["archive_command failed 3 times"] and entry["refused"] == 0
    summary["tiers"]["daily"]["newest"]["warnings"] = [f"w{i}" for i in range(30)]
    many = fleetindex._pgbackrest(None, target, None)  # type: ignore[arg-type]
    assert many["tiers"]["daily"]["newest"]["warnings"] == [f"w{i}" for i in range(10)]
    summary["tiers"]["daily"]["newest"]["size"] = "big"
    broken = fleetindex._pgbackrest(None, target, None)  # type: ignore[arg-type]
    assert broken["tiers"] == {} and "summary is malformed" in broken["warnings"][0]
    assert "daily: newest is malformed" in broken["warnings"][0]


# --- the renderings --------------------------------------------------------------------------


def a_fleet() -> fleet_view.FleetView:
    hostile = entry(
        {"daily": (ago(hours=1), [1000, 1000, 100])},
        warnings=['<script>alert("x")</script> & "quotes"'],
    )
    reads = [
        host(),
        host(host="web-2", targets={"notes": hostile}),
        host(host="web-3", source="none", error="AccessDenied <b>", targets={}),
    ]
    view = fleet_view.FleetView("bucket", "pyops", NOW)
    for r in reads:
        view.add(rules.judge_host(r, NOW, LIM, series=True))
    return view


class Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def test_html_escapes_what_came_from_the_bucket_and_draws_charts() -> None:
    page = html.page(a_fleet())
    parsed = Texts()
    parsed.feed(page)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    text = "".join(parsed.data)
    assert '<script>alert("x")</script> & "quotes"' in text and "AccessDenied <b>" in text
    assert parsed.tags.count("svg") == 4 and parsed.tags.count("polyline") == 4
    assert "web-2 / notes: daily: newest backup is 100 B, below 0.5 x the median" in text


def test_text_and_prometheus() -> None:
    view = a_fleet()
    out = render.text(view)
    assert out.splitlines()[0] == (
        "pyops fleet s3://bucket/pyops/: WARNING, 3 host(s), 2 target(s): 1 ok, 1 warning, "
        "1 unknown"  # an unknown never hides a warning
    )
    assert re.search(r"^UNKNOWN +web-3 +\(unreadable, 0 target\(s\)\)", out, re.M)
    families = {f.name: f for f in text_string_to_metric_families(render.prometheus(view))}
    assert families["pyops_fleet_overall_status"].samples[0].value == 1
    statuses = {s.labels["host"]: s.value for s in families["pyops_fleet_host_status"].samples}
    assert statuses == {"web-1": 0, "web-2": 1, "web-3": 3}
    assert json.loads(render.as_json(view))["hosts"][1]["targets"][0]["tiers"]["daily"]["shrinking"]
