"""pyops.manifest: backup ids, the shape a manifest read back must have, the place it
must lie in, and the MAC that says the repository key wrote it. Pure: no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from unit_support import WHEN, raw_manifest

from pyops import manifest as mf
from pyops.errors import PyopsError
from pyops.manifest import (
    MANIFEST_SUFFIX,
    TIERS,
    TYPES,
    InvalidManifest,
    Manifest,
    artifact_extension,
    authentic,
    backup_id,
    check_place,
    mac_of,
    parse_id,
    seal,
)

BID = "app-db.daily.20261123T020000Z"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
REPO = "0123456789abcdef0123456789abcdef"


def manifest(**kw: Any) -> Manifest:
    return Manifest(**raw_manifest(**kw))


def encode(raw: object) -> bytes:
    return json.dumps(raw).encode()


def parse_problem(raw: object) -> str:
    with pytest.raises(InvalidManifest) as info:
        Manifest.parse(encode(raw), "origin")
    return str(info.value)


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("tier", TIERS)
def test_backup_id_round_trip(tier: str) -> None:
    bid = backup_id("app-db", tier, WHEN)
    assert bid == f"app-db.{tier}.20261123T020000Z"
    assert parse_id(bid) == ("app-db", tier, WHEN)
    assert mf.ID_RE.match(bid)


def test_backup_id_is_utc_whatever_the_input_zone() -> None:
    cet = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 23, 3, 0, 0, tzinfo=cet)
    assert backup_id("media", "weekly", local) == "media.weekly.20261123T020000Z"
    assert parse_id("media.weekly.20261123T020000Z")[2] == WHEN
    assert parse_id("media.weekly.20261123T020000Z")[2].tzinfo == UTC


def test_backup_id_drops_microseconds() -> None:
    assert mf.stamp(WHEN.replace(microsecond=999_999)) == "20261123T020000Z"


@pytest.mark.parametrize("name", ["app_db", "A-1", "x"])
def test_target_names_allowed_by_config_round_trip(name: str) -> None:
    assert parse_id(backup_id(name, "monthly", WHEN))[0] == name


@pytest.mark.parametrize(
    "text",
    [
        "",
        "app-db",
        "app-db.daily",
        "app-db.hourly.20261123T020000Z",  # unknown tier
        "app-db.daily.2026-11-23T02:00:00Z",  # not the compact stamp
        "app-db.daily.20261123T020000",  # no Z
        "app-db.daily.20261123T0200Z",  # short time
        "app db.daily.20261123T020000Z",  # space in the target
        "app.db.daily.20261123T020000Z",  # dot in the target
        "app/db.daily.20261123T020000Z",  # separator in the target
        "app-db.daily.20261123T020000Z.pgdump.zst",  # a file name, not an id
        "app-db.daily.20261123T020000Z.manifest.json",
        "../app-db.daily.20261123T020000Z",
        "app-db.daily.20261123T020000Z\n",
    ],
)
def test_bad_ids_are_rejected(text: str) -> None:
    with pytest.raises(PyopsError, match="not a backup id"):
        parse_id(text)


@pytest.mark.parametrize("text", ["app.daily.20261399T000000Z", "app.daily.20261123T250000Z"])
def test_impossible_stamps_are_rejected_as_bad_ids(text: str) -> None:
    with pytest.raises(PyopsError, match="not a valid date"):
        parse_id(text)


# --------------------------------------------------------------------------- artifact names


@pytest.mark.parametrize(
    "ext",
    [
        "pgdump",
        "pgdump.zst",
        "pgdump.zst.gpg",
        "pgdump.gpg",
        "sql",
        "sql.gz",
        "sql.gz.gpg",
        "pgdir.tar",
        "pgdir.tar.zst.gpg",
        "pgtar.zst",
        "sqlite3",
        "sqlite3.zst.gpg",
        "tar",
        "tar.gz",
        "tar.zst.gpg",
    ],
)
def test_artifact_extension_of_every_known_layering(ext: str) -> None:
    assert artifact_extension(BID, f"{BID}.{ext}") == ext


@pytest.mark.parametrize(
    "name",
    [
        f"{BID}",  # no extension
        f"{BID}.",
        f"{BID}.exe",  # unknown inner layer
        f"{BID}.tar.bz2",  # unknown compression
        f"{BID}.tar.gpg.zst",  # layers in the wrong order
        f"{BID}.zst.tar",
        f"{BID}.tar.zst.zst",
        f"{BID}.tar.zst.gpg.tmp-123",  # a temp name is not an artifact
        f"{BID}{MANIFEST_SUFFIX}",
        "app-db.daily.20261124T020000Z.pgdump",  # another backup's artifact
        "media.daily.20261123T020000Z.tar",
        f"/{BID}.pgdump",  # absolute
        f"/srv/{BID}.pgdump",
        f"../{BID}.pgdump",
        f"{BID}.pgdump/../../etc",
        f"{BID}./../x.pgdump",
        f"{BID}.tar/x",
        f"{BID}.tar\\x",
        f"{BID}.tar\0",
        f"{BID}.tar\n",  # `$` alone would let a trailing newline through
        f"x{BID}.pgdump",
        "",
    ],
)
def test_artifact_extension_refuses_names_that_are_not_ours(name: str) -> None:
    assert artifact_extension(BID, name) is None


# --------------------------------------------------------------------------- manifest data


def test_manifest_json_round_trip() -> None:
    m = manifest(repository_id=REPO, warnings=["disk almost full"], mac="hmac-sha256:00")
    data = m.to_json()
    assert data.endswith(b"\n")
    raw = json.loads(data)
    assert list(raw) == sorted(raw)
    assert set(raw) == {
        "id",
        "target",
        "type",
        "tier",
        "host",
        "started_at",
        "finished_at",
        "duration_s",
        "pyops_version",
        "tools",
        "source",
        "format",
        "compression",
        "encryption",
        "artifact",
        "content",
        "repository_id",
        "warnings",
        "mac",
    }
    again = Manifest.parse(data, "test")
    assert again == m
    assert again.to_json() == data


def test_manifest_properties() -> None:
    m = manifest()
    assert m.started == WHEN
    assert m.artifact_name == "app-db.daily.20261123T020000Z.pgdump.zst.gpg"
    assert m.sha256 == "ab" * 32
    assert m.size == 2048
    assert m.encrypted is True
    assert manifest(encryption={"mode": "none"}).encrypted is False
    assert manifest(encryption={}).encrypted is False


def test_legacy_manifest_without_the_new_fields_is_read_with_defaults() -> None:
    raw = raw_manifest()
    del raw["content"]
    raw["from_the_future"] = 1  # unknown keys are ignored
    m = Manifest.parse(encode(raw), "test")
    assert m.content == {}
    assert m.repository_id == ""
    assert m.warnings == []
    assert m.mac == ""
    assert m.id == BID


def test_every_valid_type_tier_and_zone_parses() -> None:
    for tp in TYPES:
        Manifest.parse(encode(raw_manifest(type=tp)), "t")
    for tier in TIERS:
        Manifest.parse(encode(raw_manifest(tier=tier)), "t")
    plus_one = WHEN.astimezone(timezone(timedelta(hours=1))).isoformat()
    assert Manifest.parse(encode(raw_manifest(started_at=plus_one)), "t").started == WHEN
    assert Manifest.parse(encode(raw_manifest(duration_s=42)), "t").duration_s == 42


def test_invalid_manifest_is_a_pyops_error() -> None:
    assert issubclass(InvalidManifest, PyopsError)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"{ torn", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"\xc3\x28", "not JSON"),
        (b"null", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b'{"id": "x"}', "target missing"),
        (b"{}", "id missing"),
    ],
)
def test_unreadable_manifest_is_invalid_naming_its_origin(data: bytes, why: str) -> None:
    with pytest.raises(InvalidManifest, match=re.escape("/r/x.manifest.json: ")) as info:
        Manifest.parse(data, "/r/x.manifest.json")
    assert why in str(info.value)


@pytest.mark.parametrize("field", sorted(mf._FIELD_TYPES))
def test_each_required_field_missing_is_named(field: str) -> None:
    raw = raw_manifest()
    del raw[field]
    assert f"{field} missing" in parse_problem(raw)


def _wrong_types() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for field, tp in sorted(mf._FIELD_TYPES.items()):
        if tp is str:
            bad: list[object] = [None, True, 7, ["a"], {"a": 1}]
        elif tp is dict:
            bad = [None, True, 7, "text", ["a"]]
        else:  # a number of seconds
            bad = [None, True, "42", ["a"], {"a": 1}]
        out += [(field, b) for b in bad]
    return out


@pytest.mark.parametrize(("field", "bad"), _wrong_types())
def test_each_required_field_of_the_wrong_type_is_named(field: str, bad: object) -> None:
    assert f"{field} has the wrong type" in parse_problem(raw_manifest(**{field: bad}))


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("content", []),
        ("content", "x"),
        ("repository_id", 1),
        ("repository_id", None),
        ("warnings", "one warning"),
        ("warnings", {}),
        ("mac", 0),
        ("mac", None),
    ],
)
def test_optional_fields_of_the_wrong_type_are_named(field: str, bad: object) -> None:
    raw = raw_manifest(**{field: bad})
    assert f"{field} has the wrong type" in parse_problem(raw)


def test_every_problem_is_listed_at_once() -> None:
    raw = raw_manifest(host=1, tools=[], duration_s="fast")
    del raw["format"]
    problem = parse_problem(raw)
    for part in (
        "host has the wrong type",
        "tools has the wrong type",
        "duration_s has the wrong type",
        "format missing",
    ):
        assert part in problem


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"id": "app-db"}, "is not a backup id"),
        ({"id": "app-db.daily.20261123T020000Z.pgdump"}, "is not a backup id"),
        ({"id": "../app-db.daily.20261123T020000Z"}, "is not a backup id"),
        ({"target": "media"}, "target/tier media/daily differ from its id"),
        ({"tier": "weekly"}, "target/tier app-db/weekly differ from its id"),
        ({"type": "mysql"}, "unknown type 'mysql'"),
        ({"started_at": "yesterday"}, "started_at is not a time"),
        ({"started_at": "2026-11-23T02:00:00"}, "started_at has no time zone"),
        ({"repository_id": "not-hex"}, "repository_id is malformed"),
        ({"repository_id": REPO.upper()}, "repository_id is malformed"),
        ({"repository_id": REPO + "00"}, "repository_id is malformed"),
        ({"warnings": ["ok", 3]}, "warnings must be strings"),
    ],
)
def test_shape_rules(changes: dict[str, Any], why: str) -> None:
    raw = raw_manifest()
    raw.update(changes)
    assert why in parse_problem(raw)


def test_an_id_with_an_impossible_date_is_not_a_backup_id() -> None:
    # The id has the right shape but no such time exists: `parse_id` refuses it, so
    # every key built from it (`manifest_key`, delete, copy) would fail later. A
    # manifest carrying it must be refused at parse time, like any other bad id.
    bid = "app-db.daily.20261399T000000Z"
    raw = raw_manifest(id=bid)
    raw["artifact"]["name"] = f"{bid}.pgdump.zst.gpg"
    assert "is not a backup id" in parse_problem(raw)


@pytest.mark.parametrize(
    "name",
    [
        f"/var/backups/{BID}.pgdump.zst.gpg",  # absolute
        f"/{BID}.pgdump.zst.gpg",
        f"../{BID}.pgdump.zst.gpg",
        f"{BID}.pgdump/../../../etc/passwd",
        f"sub/{BID}.pgdump.zst.gpg",
        f"{BID}.pgdump.zst.gpg/x",
        "..",
        "app-db.daily.20261124T020000Z.pgdump.zst.gpg",  # another backup's artifact
        "media.daily.20261123T020000Z.tar",
        f"{BID}.exe",
        f"{BID}{MANIFEST_SUFFIX}",
        "",
    ],
)
def test_artifact_name_must_be_this_backups_file(name: str) -> None:
    raw = raw_manifest()
    raw["artifact"]["name"] = name
    assert f"artifact.name {name!r} is not {BID}.<known extension>" in parse_problem(raw)


@pytest.mark.parametrize("name", [None, 3, ["x"]])
def test_artifact_name_of_the_wrong_type(name: object) -> None:
    raw = raw_manifest()
    raw["artifact"]["name"] = name
    assert "artifact.name" in parse_problem(raw)


def test_artifact_name_missing() -> None:
    raw = raw_manifest()
    del raw["artifact"]["name"]
    assert "artifact.name None" in parse_problem(raw)


@pytest.mark.parametrize("size", [-1, True, "2048", 2048.0, None])
def test_artifact_bytes_must_be_a_byte_count(size: object) -> None:
    raw = raw_manifest()
    raw["artifact"]["bytes"] = size
    assert "artifact.bytes is not a byte count" in parse_problem(raw)


@pytest.mark.parametrize("sha", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, 0, None])
def test_artifact_sha256_must_be_a_sha256(sha: object) -> None:
    raw = raw_manifest()
    raw["artifact"]["sha256"] = sha
    assert "artifact.sha256 is not a sha256" in parse_problem(raw)


def test_zero_byte_artifact_is_a_byte_count() -> None:
    raw = raw_manifest()
    raw["artifact"]["bytes"] = 0
    assert Manifest.parse(encode(raw), "t").size == 0


# --------------------------------------------------------------------------- place


def test_check_place_accepts_the_manifest_in_its_place() -> None:
    check_place(manifest(), "app-db", "daily", BID)


@pytest.mark.parametrize(
    ("target", "tier", "stem", "why"),
    [
        ("app-db", "daily", "app-db.daily.20261124T020000Z", "names another backup (" + BID),
        ("media", "daily", BID, "it says app-db/daily but lies in media/daily"),
        ("app-db", "weekly", BID, "it says app-db/daily but lies in app-db/weekly"),
        ("app-db", "pre-restore", BID, "lies in app-db/pre-restore"),
    ],
)
def test_check_place_refuses_a_manifest_elsewhere(
    target: str, tier: str, stem: str, why: str
) -> None:
    with pytest.raises(InvalidManifest, match=re.escape(why)):
        check_place(manifest(), target, tier, stem)


# --------------------------------------------------------------------------- MAC


def test_canonical_is_compact_sorted_ascii_json_without_the_mac() -> None:
    m = manifest(host="wéb-1", mac="hmac-sha256:whatever")
    data = m.canonical()
    assert data.isascii()
    assert b"\n" not in data
    raw = json.loads(data)
    assert "mac" not in raw
    assert list(raw) == sorted(raw)
    assert raw["host"] == "wéb-1"
    assert data == json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    assert b'"host":"w\\u00e9b-1"' in data


def test_canonical_ignores_the_mac_and_the_layout_of_the_file() -> None:
    m = manifest()
    again = Manifest.parse(encode(json.loads(m.to_json())), "t")  # other whitespace
    assert again.canonical() == m.canonical()
    again.mac = "hmac-sha256:" + "0" * 64
    assert again.canonical() == m.canonical()


def test_mac_is_hmac_sha256_of_the_canonical_form() -> None:
    m = manifest()
    expected = hmac.new(KEY, m.canonical(), hashlib.sha256).hexdigest()
    assert mac_of(KEY, m) == f"hmac-sha256:{expected}"
    assert mac_of(OTHER_KEY, m) != mac_of(KEY, m)


def test_seal_puts_the_mac_on_and_authentic_checks_it() -> None:
    m = seal(KEY, manifest())
    assert m.mac == mac_of(KEY, m)
    assert authentic(KEY, m)
    assert not authentic(OTHER_KEY, m)


def test_seal_without_a_key_leaves_the_manifest_unauthenticated() -> None:
    m = seal(None, manifest(mac="hmac-sha256:stale"))
    assert m.mac == ""
    assert not authentic(KEY, m)


def test_seal_replaces_a_stale_mac() -> None:
    m = seal(OTHER_KEY, manifest())
    seal(KEY, m)
    assert authentic(KEY, m)


def test_the_mac_survives_writing_and_reading_back() -> None:
    m = seal(KEY, manifest(repository_id=REPO))
    again = Manifest.parse(m.to_json(), "t")
    assert authentic(KEY, again)


def test_a_sealed_legacy_shape_stays_authentic() -> None:
    # a manifest without the optional fields, sealed by `pyops init --new-key`
    raw = raw_manifest()
    del raw["content"]
    m = seal(KEY, Manifest.parse(encode(raw), "t"))
    assert authentic(KEY, Manifest.parse(m.to_json(), "t"))


def test_authentic_needs_a_mac() -> None:
    assert not authentic(KEY, manifest())
    assert not authentic(KEY, manifest(mac="hmac-sha256:"))
    assert not authentic(KEY, manifest(mac="hmac-sha256:" + "0" * 64))


def _edits() -> list[tuple[str, Any]]:
    other = "app-db.daily.20261124T020000Z"
    return [
        ("id", other),
        ("started_at", (WHEN + timedelta(days=1)).isoformat()),
        ("finished_at", (WHEN + timedelta(days=1)).isoformat()),
        ("duration_s", 1.0),
        ("host", "evil"),
        ("target", "media"),
        ("tier", "weekly"),
        ("type", "files"),
        ("repository_id", "f" * 32),
        ("warnings", ["x"]),
        ("content", {}),
        ("encryption", {"mode": "none"}),
        ("compression", {"algorithm": "none"}),
        ("source", {"paths": ["/etc"]}),
        ("tools", {}),
        ("format", "plain"),
        ("pyops_version", "9"),
    ]


@pytest.mark.parametrize(("field", "value"), _edits())
def test_any_edit_after_sealing_breaks_the_mac(field: str, value: object) -> None:
    m = seal(KEY, manifest())
    setattr(m, field, value)
    assert not authentic(KEY, m)


@pytest.mark.parametrize("part", ["name", "bytes", "sha256"])
def test_an_artifact_edit_after_sealing_breaks_the_mac(part: str) -> None:
    m = seal(KEY, manifest())
    m.artifact = {**m.artifact, part: {"name": "x", "bytes": 1, "sha256": "cd" * 32}[part]}
    assert not authentic(KEY, m)


def test_a_relabelled_file_breaks_the_mac() -> None:
    # the edit made on the bytes, as someone with write access would
    m = seal(KEY, manifest())
    raw = json.loads(m.to_json())
    raw["artifact"]["sha256"] = "cd" * 32
    assert not authentic(KEY, Manifest.parse(encode(raw), "t"))
    raw = json.loads(m.to_json())
    raw["duration_s"] = 42  # same number, other form: not what was sealed
    assert not authentic(KEY, Manifest.parse(encode(raw), "t"))


# --------------------------------------------------------------------------- attachments


def test_a_manifest_without_attachments_keeps_its_mac_across_versions() -> None:
    """Manifests sealed before attachments existed stay authentic: the empty field is
    not part of what the MAC covers."""
    key = b"k" * 32
    old = manifest()
    body = old.canonical()
    assert b"attachments" not in body
    sealed = mf.seal(key, old)
    assert mf.authentic(key, Manifest.parse(sealed.to_json(), "x"))
    old.attachments = {
        "globals": {"name": f"{old.id}.globals.json", "bytes": 1, "sha256": "ab" * 32}
    }
    assert b"attachments" in old.canonical()
    assert not mf.authentic(key, old)


@pytest.mark.parametrize(
    ("attachments", "problem"),
    [
        ({"roles": {}}, "attachments.roles is not a known attachment"),
        ({"globals": {"name": "x", "bytes": 1, "sha256": "ab" * 32}}, "attachments.globals.name"),
        ({"globals": {"name": "{id}.globals.json", "bytes": -1, "sha256": "ab" * 32}}, "bytes"),
        ({"globals": {"name": "{id}.globals.json.zst", "bytes": 1, "sha256": "x"}}, "sha256"),
        ([], "attachments has the wrong type"),
    ],
)
def test_attachment_entries_are_checked(attachments: Any, problem: str) -> None:
    raw = raw_manifest()
    if isinstance(attachments, dict):
        for entry in attachments.values():
            if "name" in entry:
                entry["name"] = entry["name"].replace("{id}", raw["id"])
    raw["attachments"] = attachments
    assert problem in parse_problem(raw)


def test_attachment_names() -> None:
    bid = "app.daily.20260101T000000Z"
    assert mf.attachment_kind(bid, f"{bid}.globals.json.zst.gpg") == "globals"
    assert mf.attachment_kind(bid, f"{bid}.globals.json/x") is None
    assert mf.attachment_kind(bid, f"{bid}.secrets.json") is None
    assert mf.object_of_backup(bid, f"{bid}.globals.json.gz")
    assert mf.object_of_backup(bid, f"{bid}.pgdump")
    assert not mf.object_of_backup(bid, f"{bid}.manifest.json")
