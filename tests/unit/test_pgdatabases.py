"""pyops.pgdatabases: the pure rules of `databases = "all"` (child names and their
inverse, exclusion, coverage) and pg_dump's table patterns, plus the config rules
that keep child names unambiguous. No server: the listing is given."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyops import config, pgdatabases
from pyops.config import PostgresTarget
from pyops.errors import ConfigError, UsageError
from pyops.pgdatabases import Database
from pyops.tools import pg

DSN = "postgresql://backup@/postgres?host=/run/postgresql"


def cfg(*targets: dict[str, Any]) -> config.Config:
    return config.parse({"targets": list(targets)})


def pg_target(name: str, dsn: str = DSN, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "postgres", "dsn": dsn, **extra}


def all_target(name: str = "pg-all", **extra: Any) -> dict[str, Any]:
    return pg_target(name, databases="all", **extra)


def only(c: config.Config) -> PostgresTarget:
    t = c.targets[0]
    assert isinstance(t, PostgresTarget)
    return t


# --- child names ------------------------------------------------------------------------


def test_child_name_and_its_inverse() -> None:
    assert pgdatabases.child_name("pg-all", "app") == "pg-all-app"
    assert pgdatabases.database_of("pg-all", "pg-all-app") == "app"
    assert pgdatabases.database_of("pg-all", "pg-all-my-app_2") == "my-app_2"
    assert pgdatabases.database_of("pg-all", "pg-all-") is None
    assert pgdatabases.database_of("pg-all", "pg-allx-app") is None
    assert pgdatabases.database_of("pg-all", "other") is None


@pytest.mark.parametrize("database", ["my db", "caf\u00e9", "a.b", "x/y", ""])
def test_a_database_name_outside_the_target_name_charset_has_no_child(database: str) -> None:
    assert pgdatabases.child_name("pg-all", database) is None
    if database:
        assert "letters, digits" in pgdatabases.unnamable("pg-all", database)


def test_a_child_name_over_the_length_limit_is_refused() -> None:
    parent = "p" * 100
    assert pgdatabases.child_name(parent, "a" * 27) is not None  # 128 exactly
    assert pgdatabases.child_name(parent, "a" * 28) is None
    assert "longer than 128" in pgdatabases.unnamable(parent, "a" * 28)


@given(
    parent=st.text(alphabet="ab-_1", min_size=1, max_size=20),
    database=st.text(min_size=0, max_size=70),
)
def test_naming_is_invertible(parent: str, database: str) -> None:
    name = pgdatabases.child_name(parent, database)
    if name is not None:
        assert pgdatabases.database_of(parent, name) == database
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", name)


def test_the_child_inherits_everything_but_name_and_database() -> None:
    parent = only(
        cfg(
            all_target(
                exclude=["scratch_*"],
                format="directory",
                jobs=3,
                exclude_table_data=["django_session"],
                enable_row_security=True,
                password_env="PGPW",
            )
        )
    )
    child = pgdatabases.child(parent, "app")
    assert child.name == "pg-all-app"
    assert pgdatabases.dbname_of(child.dsn) == "app"
    assert pgdatabases.server_of(child.dsn) == pgdatabases.server_of(parent.dsn)
    assert (child.databases, child.exclude) == ("", ())
    assert (child.format, child.jobs, child.password_env) == ("directory", 3, "PGPW")
    assert child.exclude_table_data == ("django_session",)
    assert child.enable_row_security


def test_config_target_resolves_a_child_without_a_server() -> None:
    c = cfg(all_target(), pg_target("app-db", "postgresql://app@127.0.0.1/app"))
    child = c.target("pg-all-shop")
    assert isinstance(child, PostgresTarget)
    assert (child.name, pgdatabases.dbname_of(child.dsn)) == ("pg-all-shop", "shop")
    assert c.select(["pg-all-shop", "app-db"])[1].name == "app-db"
    assert c.target("pg-all").name == "pg-all"  # the "all" target itself
    with pytest.raises(UsageError, match=r"pg-all \(and pg-all-<database>\)"):
        c.target("app-dbx")


# --- which databases ----------------------------------------------------------------------

LISTING = [
    Database("postgres"),
    Database("template0", allows_connections=False, template=True),
    Database("template1", template=True),
    Database("app"),
    Database("shop"),
    Database("scratch_1"),
    Database("closed", allows_connections=False),
    Database("my db"),
    Database("pyops_drill_pg_all_app_20261123t020000z"),
    Database("app_pyops_restore_20261123T020000Z"),
    Database("app_pre_restore_20261123T020000Z"),
]


def test_split_includes_excludes_and_names() -> None:
    t = only(cfg(all_target(exclude=["scratch_*", "postgres"])))
    got = pgdatabases.split(t, LISTING)
    assert got.included == ["app", "shop", "app_pre_restore_20261123T020000Z"]
    assert got.excluded == {"scratch_1": "scratch_*", "postgres": "postgres"}
    assert list(got.unnamable) == ["my db"]


def test_exclude_is_case_sensitive_fnmatch() -> None:
    assert pgdatabases.excluded_by(["Scratch*"], "scratch_1") is None
    assert pgdatabases.excluded_by(["scratch_?", "x"], "scratch_1") == "scratch_?"
    assert pgdatabases.excluded_by(["[ab]pp"], "app") == "[ab]pp"


def test_coverage_per_server() -> None:
    c = cfg(
        all_target(exclude=["scratch_*"]),
        pg_target("app-db", "postgresql://app@/app?host=/run/postgresql"),
    )
    targets = [t for t in c.targets if isinstance(t, PostgresTarget)]
    got = pgdatabases.coverage(targets, LISTING)
    assert got.covered["app"] == "app-db"  # its own target first
    assert got.covered["shop"] == "pg-all-shop"
    assert got.covered["postgres"] == "pg-all-postgres"
    assert got.excluded == {"scratch_1": "pg-all: exclude 'scratch_*'"}
    assert got.uncovered == []
    assert "'my db'" in got.unnamable["my db"] and "own" in got.unnamable["my db"]
    # without the "all" target: everything but app is uncovered, pyops' own left aside
    alone = pgdatabases.coverage(targets[1:], LISTING)
    assert alone.uncovered == [
        "postgres",
        "shop",
        "scratch_1",
        "my db",
        "app_pre_restore_20261123T020000Z",
    ]
    # a database with a target of its own is covered, whatever its name
    own = cfg(pg_target("mine", "postgresql://app@/my%20db?host=/run/postgresql"))
    assert pgdatabases.coverage([only(own)], [Database("my db")]).covered == {"my db": "mine"}


def test_servers_are_told_apart_by_host_and_port() -> None:
    c = cfg(
        pg_target("a", "host=/run/postgresql dbname=a"),
        pg_target("b", "postgresql://x@/b?host=/run/postgresql"),
        pg_target("c", "host=/run/postgresql port=5433 dbname=c"),
    )
    grouped = pgdatabases.servers(t for t in c.targets if isinstance(t, PostgresTarget))
    assert [[t.name for t in ts] for ts in grouped.values()] == [["a", "b"], ["c"]]


# --- pg_dump table patterns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("django_session", (None, "^(django_session)$")),
        ("audit.*", ("^(audit)$", "^(.*)$")),
        ("Audit.Log?", ("^(audit)$", "^(log.)$")),
        ('"Audit"."Log?"', ("^(Audit)$", "^(Log\\?)$")),
        ('"a.b"', (None, "^(a\\.b)$")),
        ('"say ""hi"""', (None, '^(say "hi")$')),
        ("price$", (None, "^(price\\$)$")),
        ("t[0-9]", (None, "^(t[0-9])$")),
        ("int[]", (None, "^(int\\[])$")),
        ("*.sess*", ("^(.*)$", "^(sess.*)$")),
    ],
)
def test_table_pattern_is_pg_dumps(pattern: str, expected: tuple[str | None, str]) -> None:
    assert pgdatabases.table_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", ["", "db.schema.table", ".t", "s.", '"open', '""'])
def test_table_pattern_refusals(pattern: str) -> None:
    with pytest.raises(pgdatabases.PatternError):
        pgdatabases.table_pattern(pattern)


# --- pg_dump argv ------------------------------------------------------------------------------


def test_pg_dump_flags_from_the_target() -> None:
    t = only(cfg(pg_target("t", exclude_table_data=["django_session", "audit.*"])))
    stage = pg.pg_dump(None, t.dsn, "custom", env={}, **pg.dump_options(t))
    assert stage.argv[-3:] == (
        "--exclude-table-data=django_session",
        "--exclude-table-data=audit.*",
        f"--dbname={t.dsn}",
    )
    assert "--enable-row-security" not in stage.argv
    rls = only(cfg(pg_target("t", enable_row_security=True)))
    assert (
        "--enable-row-security"
        in pg.pg_dump(None, rls.dsn, "plain", env={}, **pg.dump_options(rls)).argv
    )


# --- config rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "key", "words"),
    [
        ([pg_target("t", databases="some")], "targets[0].databases", '"all"'),
        ([pg_target("t", exclude=["x"])], "targets[0].exclude", 'databases = "all"'),
        ([all_target(exclude=[""])], "targets[0].exclude[0]", "empty"),
        (
            [pg_target("t", exclude_table_data=["a.b.c"])],
            "targets[0].exclude_table_data[0]",
            "schema.table",
        ),
        ([pg_target("t", exclude_table_data=['"x'])], "targets[0].exclude_table_data[0]", "quote"),
        ([pg_target("t", enable_row_security="yes")], "targets[0].enable_row_security", "boolean"),
        ([all_target(), pg_target("pg-all-app")], "targets[1].name", "pg-all-<database>"),
        ([pg_target("pg-all-app"), all_target()], "targets[0].name", "rename one"),
        ([all_target("pg"), all_target("pg-x")], "targets[1].name", "pg-<database>"),
        ([pg_target("n" * 129)], "targets[0].name", "128"),
    ],
)
def test_bad_keys_name_the_key(targets: list[dict[str, Any]], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(*targets)
    assert err.value.key == key
    assert words in str(err.value)


def test_files_targets_keep_their_own_exclude() -> None:
    c = cfg({"name": "f", "type": "files", "paths": ["/srv"], "exclude": ["*.tmp"]})
    assert c.targets[0].exclude == ("*.tmp",)  # type: ignore[union-attr]
