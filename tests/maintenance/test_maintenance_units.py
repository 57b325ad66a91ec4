"""Pure parts of maintenance (names, estimates, statements, config) and the CLI's usage
errors; none needs a database."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import MakeConfig, maintain
from fixtures.cli import run_pyops
from psycopg import sql

from pyops import config as cfg
from pyops.cli import cli
from pyops.commands.maintenance import details_text, parse_operations
from pyops.config_rules import split_table_name
from pyops.errors import ConfigError
from pyops.maintenance import ALL_OPERATIONS, Journal
from pyops.maintenance import cleanup as pgcleanup
from pyops.maintenance import sqlite as sqliteops
from pyops.pgfacts import bloat


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("django_session", (None, "django_session")),
        ("audit.events", ("audit", "events")),
        ("audit.Old Events", ("audit", "Old Events")),
        ('"My Schema"."My.Table"', ("My Schema", "My.Table")),
        ('"say ""hi"""', (None, 'say "hi"')),
        ('public."Mixed"', ("public", "Mixed")),
    ],
)
def test_split_name(name: str, expected: tuple[str | None, str]) -> None:
    assert split_table_name(name, "k") == expected


@pytest.mark.parametrize("name", ["", "a.b.c", '"open', "a.", ".b", '"a"x'])
def test_split_name_rejects(name: str) -> None:
    with pytest.raises(ConfigError, match=r"maintenance\.cleanup"):
        split_table_name(name, "maintenance.cleanup[0].table")


def test_postgres_batch_statement_by_key_and_by_ctid() -> None:
    table = sql.Identifier("audit", "Old Events")
    by_key = pgcleanup.batch_statement(table, "kind = 'debug'", 50, ["a", "B"]).as_string(None)
    assert by_key == (
        'DELETE FROM "audit"."Old Events" WHERE ("a", "B") IN (SELECT "a", "B" FROM '
        '"audit"."Old Events" WHERE (kind = \'debug\') LIMIT 50 FOR UPDATE SKIP LOCKED)'
    )
    by_ctid = pgcleanup.batch_statement(table, "true", 5, []).as_string(None)
    assert by_ctid == (
        'DELETE FROM "audit"."Old Events" WHERE ctid = ANY (ARRAY(SELECT ctid FROM '
        '"audit"."Old Events" WHERE (true) LIMIT 5 FOR UPDATE SKIP LOCKED))'
    )


def test_sqlite_batch_statement() -> None:
    assert sqliteops.batch_statement('we"ird', "x < 1", 3, ["k1", "k2"]) == (
        'DELETE FROM "we""ird" WHERE ("k1", "k2") IN (SELECT "k1", "k2" FROM "we""ird" '
        "WHERE (x < 1) LIMIT 3)"
    )


def test_heap_estimate_matches_a_hand_count() -> None:
    # 8 KiB page: (8192 - 24) / (24 header + 8 data + 4 line pointer) = 226 rows a page
    assert bloat.heap_pages(226, 8, 2, False) == 1
    assert bloat.heap_pages(227, 8, 2, False) == 2
    # fillfactor 50 halves what fits
    assert bloat.heap_pages(226, 8, 2, False, fillfactor=50) == 2
    assert bloat.heap_pages(0, 8, 2, False) == 0


def test_table_estimate_prefers_the_larger_signal() -> None:
    stats = (8.0, 2, False)
    packed = bloat.table(100 * 8192, live=226 * 10, dead=0, stats=stats)
    assert packed == bloat.Estimate(90 * 8192, "pg_stats")
    assert packed.ratio(100 * 8192) == 0.9
    # stale statistics, many dead tuples: the dead share is the better estimate
    dead = bloat.table(10 * 8192, live=226 * 10, dead=226 * 30, stats=stats)
    assert dead == bloat.Estimate(int(10 * 8192 * 0.75), "dead_tuples")
    assert bloat.table(8192, 0, 0, None) == bloat.Estimate(None, "unavailable")


def test_btree_estimate() -> None:
    # int4 key: 8 header + 4 -> 16 aligned + 4 line pointer = 20 bytes; 90% of 8152 / 20 = 366
    assert bloat.btree_pages(366, 4) == 1 + 1 + 0
    assert bloat.btree_pages(367, 4) == 1 + 2 + 1
    assert bloat.index(8192 * 100, 366, 4) == bloat.Estimate(98 * 8192, "pg_stats")
    assert bloat.index(8192, 10, None).wasted_bytes is None


def test_parse_operations() -> None:
    assert parse_operations(["vacuum,analyze", "vacuum", " stats "]) == [
        "vacuum",
        "analyze",
        "stats",
    ]
    with pytest.raises(click.BadParameter, match="'vaccum'"):
        parse_operations(["vaccum"])
    assert set(ALL_OPERATIONS) == {
        "amcheck", "bloat", "cleanup", "vacuum", "analyze", "reindex", "matviews", "stats",
        "integrity", "optimize", "checkpoint",
    }  # fmt: skip


def _maintenance(body: str) -> cfg.MaintenanceConfig:
    data = {
        "targets": [{"name": "db", "type": "sqlite", "path": "/tmp/x.sqlite3"}],
        **json.loads(body),
    }
    return cfg.parse(data).maintenance


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('{"maintenance": {"lock_timeout_seconds": 0}}', "maintenance.lock_timeout_seconds"),
        ('{"maintenance": {"vacuum_min_dead_ratio": 1.5}}', "maintenance.vacuum_min_dead_ratio"),
        (
            '{"maintenance": {"cleanup": [{"target": "db", "table": "t", "where": "x",'
            ' "batch_size": 0}]}}',
            "maintenance.cleanup[0].batch_size",
        ),
        (
            '{"maintenance": {"cleanup": [{"target": "db", "table": "t", "where": " "}]}}',
            "maintenance.cleanup[0].where",
        ),
        (
            '{"maintenance": {"cleanup": [{"target": "db", "table": "t", "where": "1; drop"}]}}',
            "maintenance.cleanup[0].where",
        ),
        (
            '{"maintenance": {"cleanup": [{"target": "db", "table": "a.b.c", "where": "x"}]}}',
            "maintenance.cleanup[0].table",
        ),
    ],
)
def test_config_rules_name_the_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _maintenance(body)
    assert err.value.key == key


def test_journal_classifies_errors() -> None:
    journal = Journal(dry_run=False)
    with journal.step("t", "vacuum", "x", sqliteops.classify):
        raise sqliteops.sqlite3.OperationalError("database is locked")
    with journal.step("t", "vacuum", "y", sqliteops.classify):
        raise sqliteops.sqlite3.DatabaseError("database disk image is malformed")
    assert [(s.object, s.status) for s in journal.steps] == [("x", "timeout"), ("y", "failed")]
    with pytest.raises(KeyError), journal.step("t", "vacuum", "z", sqliteops.classify):
        raise KeyError("a bug is not a step failure")


def test_details_text_humanizes_bytes() -> None:
    assert details_text({"bytes_before": 2048, "dead_ratio": 0.5, "x": None}) == (
        "bytes_before=2.0 KiB dead_ratio=0.5"
    )


# --- the command line -----------------------------------------------------------------


def _files_config(make_config: MakeConfig, tmp_path: Path, extra: str = "") -> Path:
    return make_config(
        f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{tmp_path}"]\n' + extra
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --operation OP... or --all"),
        (("--all", "--operation", "vacuum"), "give --operation OP... or --all"),
        (("--operation", "defrag"), "Invalid value for '--operation': unknown operation 'defrag'"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(cli, ["--config", "/nonexistent.toml", "maintenance", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_unknown_target_exits_2(make_config: MakeConfig, tmp_path: Path) -> None:
    config = _files_config(make_config, tmp_path)
    proc = run_pyops(config, "maintenance", "--all", "--target", "nope")
    assert proc.returncode == 2
    assert "unknown target 'nope'" in proc.stderr


def test_bad_maintenance_config_exits_2(make_config: MakeConfig, tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = f'\n[[targets]]\nname = "db"\ntype = "sqlite"\npath = "{path}"\n'
    rule = '\n[[maintenance.cleanup]]\ntarget = "db"\ntable = "t"\nwhere = "x"\nbatch_size = 0\n'
    proc = run_pyops(_files_config(make_config, tmp_path, db + rule), "maintenance", "--all")
    assert proc.returncode == 2
    assert "maintenance.cleanup[0].batch_size" in proc.stderr
    # a cleanup rule cannot name a files target
    rule = '\n[[maintenance.cleanup]]\ntarget = "media"\ntable = "t"\nwhere = "x"\n'
    proc = run_pyops(_files_config(make_config, tmp_path, rule), "maintenance", "--all")
    assert proc.returncode == 2
    assert "maintenance.cleanup[0].target: 'media' is a files target" in proc.stderr


def test_files_targets_are_skipped_with_a_note(make_config: MakeConfig, tmp_path: Path) -> None:
    config = _files_config(make_config, tmp_path)
    proc, doc = maintain(config, "--all")
    assert proc.returncode == 0, proc.stderr
    (step,) = doc["steps"]
    assert step["target"] == "media" and step["status"] == "skipped"
    assert "does not apply to files targets" in step["details"]["note"]
    runs = (tmp_path / "repo" / ".pyops" / "runs.jsonl").read_text().splitlines()
    assert json.loads(runs[-1])["command"] == "maintenance"


def test_missing_sqlite_file_fails_without_creating_it(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.sqlite3"
    config = make_config(f'[[targets]]\nname = "lite"\ntype = "sqlite"\npath = "{missing}"\n')
    proc, doc = maintain(config, "--operation", "vacuum")
    assert proc.returncode == 1
    assert doc["steps"][0]["operation"] == "connect"
    assert "does not exist" in doc["steps"][0]["details"]["error"]
    assert not missing.exists()
    assert (
        json.loads((tmp_path / "repo" / ".pyops" / "runs.jsonl").read_text().splitlines()[-1])[
            "result"
        ]
        == "failed"
    )
