"""The pure parts of pgBackRest support: command lines, the tier mapping, reading
`pgbackrest info`, choosing a backup for a point in time, the config rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pyops import config
from pyops.errors import ConfigError, PyopsError
from pyops.health.checks_pgbackrest import segment
from pyops.health.registry import CHECKS
from pyops.restoredcluster import choose, pg_time
from pyops.sources.pgbackrest import child_env, parse_info
from pyops.tools import pgbackrest as tool

CONF = Path("/etc/pgbackrest/pgbackrest.conf")
COMMON = (
    "pgbackrest",
    f"--config={CONF}",
    "--stanza=main",
    "--log-level-console=off",
    "--log-level-stderr=warn",
)


def test_tiers_map_to_backup_types_and_back() -> None:
    assert tool.TIER_TYPES == {
        "monthly": "full",
        "weekly": "diff",
        "daily": "incr",
        "pre-restore": "incr",
    }
    for tier in ("daily", "weekly", "monthly"):
        assert tool.TYPE_TIERS[tool.TIER_TYPES[tier]] == tier


def test_backup_argv() -> None:
    argv = tool.backup(CONF, "main", "weekly", {"pyops-run": "db.weekly.20250101T000000Z"})
    assert argv == (
        *COMMON,
        "--type=diff",
        "--annotation=pyops-run=db.weekly.20250101T000000Z",
        "backup",
    )
    assert tool.backup(CONF, "main", "monthly")[-2:] == ("--type=full", "backup")


def test_info_check_version_argv() -> None:
    assert tool.info(CONF, "main") == (*COMMON, "--output=json", "info")
    assert tool.check(CONF, "main") == (*COMMON, "check")
    assert tool.version() == ("pgbackrest", "version")


def test_restore_argv_never_touches_live_paths_or_archives() -> None:
    argv = tool.restore(CONF, "main", Path("/s/data"), label="L", tablespaces=Path("/s/ts"))
    assert argv == (
        *COMMON,
        "--pg1-path=/s/data",
        "--set=L",
        "--tablespace-map-all=/s/ts",
        "--archive-mode=off",
        "restore",
    )
    timed = tool.restore(
        CONF, "main", Path("/s/data"), label="L", tablespaces=Path("/s/ts"), target_time="T"
    )
    assert timed[-4:] == ("--type=time", "--target=T", "--target-action=promote", "restore")


def test_no_secret_on_argv_and_only_pgbackrest_variables_in_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGBACKREST_REPO1_CIPHER_PASS", "s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-s3cret")
    monkeypatch.setenv("PGPASSWORD", "pg-s3cret")
    argvs = [
        tool.backup(CONF, "main", "daily", {"pyops-run": "x"}),
        tool.info(CONF, "main"),
        tool.check(CONF, "main"),
        tool.restore(CONF, "main", Path("/d"), label="L", tablespaces=Path("/t"), target_time="T"),
    ]
    for argv in argvs:
        assert not any("s3cret" in a or "pass" in a.lower() for a in argv), argv
    env = child_env(None)
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] == "s3cret"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "PGPASSWORD" not in env


def info_json(*backups: dict[str, Any], code: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": "other", "backup": []},
        {
            "name": "main",
            "backup": list(backups),
            "cipher": "aes-256-cbc",
            "db": [{"id": 1, "version": "14"}, {"id": 2, "version": "15"}],
            "status": {"code": code, "message": "ok" if code == 0 else "no valid backups"},
        },
    ]


def raw(label: str, kind: str, start: int, stop: int, **more: Any) -> dict[str, Any]:
    return {
        "label": label,
        "type": kind,
        "timestamp": {"start": start, "stop": stop},
        "info": {"size": 1000, "repository": {"delta": 100, "size": 300}},
        "database": {"id": 2, "repo-key": 1},
        "prior": None,
        "annotation": {"pyops-tier": "daily"},
        **more,
    }


def test_parse_info_reads_what_pyops_needs_newest_first() -> None:
    stanza = parse_info(
        info_json(
            raw("F", "full", 100, 200),
            raw("F_I", "incr", 300, 400, prior="F", error=True),
            {"label": "junk"},  # not enough to use: skipped
            raw("F_D", "diff", 250, 260),
        ),
        "main",
    )
    assert [b.label for b in stanza.backups] == ["F_I", "F_D", "F"]
    assert [b.tier for b in stanza.backups] == ["daily", "weekly", "monthly"]
    newest = stanza.backups[0]
    assert newest.started == datetime.fromtimestamp(300, UTC)
    assert (newest.database_bytes, newest.repository_bytes, newest.repo) == (1000, 100, 1)
    assert newest.prior == "F" and newest.annotation == {"pyops-tier": "daily"}
    assert newest.warnings() and "page checksum errors" in newest.warnings()[0]
    assert stanza.encrypted and stanza.pg_version == "15"
    assert stanza.newest("weekly").label == "F_D"  # type: ignore[union-attr]
    assert stanza.newest("monthly").label == "F"  # type: ignore[union-attr]


def test_parse_info_refuses_an_answer_without_the_stanza() -> None:
    with pytest.raises(PyopsError, match="no stanza 'main'"):
        parse_info([{"name": "other"}], "main")
    with pytest.raises(PyopsError):
        parse_info({"not": "a list"}, "main")


def test_a_point_in_time_uses_the_newest_backup_that_ended_before_it() -> None:
    stanza = parse_info(info_json(raw("A", "full", 100, 200), raw("B", "incr", 300, 400)), "main")
    assert choose(stanza, None).label == "B"
    assert choose(stanza, datetime.fromtimestamp(401, UTC)).label == "B"
    assert choose(stanza, datetime.fromtimestamp(400.9, UTC)).label == "A"  # B may end at 400.9
    with pytest.raises(PyopsError, match="no backup of stanza main ended before"):
        choose(stanza, datetime.fromtimestamp(200.5, UTC))
    assert pg_time(datetime(2025, 5, 1, 12, 0, 0, 5, UTC)) == "2025-05-01 12:00:00.000005+00"


def test_wal_segment_numbers() -> None:
    assert segment("000000010000000200000003", 256) == ("00000001", 2 * 256 + 3)
    assert segment("00000002.history", 256) is None
    assert segment("000000010000000000000003.00000028.backup", 256) is None
    assert segment(None, 256) is None


def parse_target(**keys: Any) -> config.Config:
    target = {"name": "db", "type": "pgbackrest", "stanza": "main", "dsn": "dbname=postgres"}
    return config.parse({"targets": [{**target, **keys}]})


def test_config_defaults() -> None:
    (t,) = parse_target().targets
    assert isinstance(t, config.PgbackrestTarget)
    assert t.pgbackrest_config == Path("/etc/pgbackrest.conf")
    assert (t.system_user, t.pg_bin_dir, t.drill_dir) == ("postgres", None, None)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"stanza": "a/b"}, "targets[0].stanza"),
        ({"stanza": ""}, "targets[0].stanza"),
        ({"dsn": "postgresql://u:pw@h/db"}, "targets[0].dsn"),
        ({"dsn": "host=/run/postgresql"}, "targets[0].dsn"),
        ({"pgbackrest_config": "pgbackrest.conf"}, "targets[0].pgbackrest_config"),
        ({"drill_dir": "scratch"}, "targets[0].drill_dir"),
        ({"system_user": "-o"}, "targets[0].system_user"),
        ({"format": "custom"}, "targets[0].format"),
    ],
)
def test_config_errors_name_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_target(**keys)
    assert caught.value.key == named


def test_a_cleanup_rule_cannot_name_a_pgbackrest_target() -> None:
    with pytest.raises(ConfigError, match="is a pgbackrest target"):
        config.parse(
            {
                "targets": [{"name": "db", "type": "pgbackrest", "stanza": "s", "dsn": "dbname=x"}],
                "maintenance": {"cleanup": [{"target": "db", "table": "t", "where": "true"}]},
            }
        )


def test_health_runs_the_pgbackrest_check_only_with_such_a_target() -> None:
    only = parse_target()
    assert CHECKS["pgbackrest"].needs(only) is None
    assert CHECKS["backup_freshness"].needs(only) is not None
    assert CHECKS["drill_freshness"].needs(only) is None
    plain = config.parse({"targets": [{"name": "f", "type": "files", "paths": ["/etc"]}]})
    assert CHECKS["pgbackrest"].needs(plain) is not None
    assert CHECKS["backup_freshness"].needs(plain) is None
