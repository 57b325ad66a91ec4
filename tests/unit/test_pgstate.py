"""The rules that turn saved roles and database state back into statements (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from pyops import pgstate
from pyops.pgstate import Me


def text(statement: sql.Composable) -> str:
    return statement.as_string(None)


def state(**db: Any) -> dict[str, Any]:
    database = {
        "name": "app",
        "owner": "app_owner",
        "owner_is_bootstrap": False,
        "acl": None,
        "settings": [],
        "role_settings": {},
        "comment": None,
        "connection_limit": -1,
        **db,
    }
    return {
        "roles": [
            {"name": "app_owner", "login": True, "inherit": True, "password": "SCRAM-SHA-256$x"},
            {"name": "app_ro", "login": True, "inherit": True, "settings": ["work_mem=8MB"]},
            {"name": "reporting", "login": False, "inherit": True, "comment": "read 'em"},
        ],
        "memberships": [
            {"role": "reporting", "member": "app_ro", "admin": False},
            {"role": "pg_read_all_stats", "member": "reporting", "admin": True},
            {"role": "ghost", "member": "app_ro", "admin": False},
        ],
        "database": database,
    }


ME = Me("deploy", False, True, True, False, "postgres")


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ("app, public", ["app", "public"]),
        ('"$user", public', ["$user", "public"]),
        ('"a,b", "x""y"', ["a,b", 'x"y']),
        ("", []),
        ("single", ["single"]),
    ],
)
def test_list_settings_split_like_pg_dump(value: str, elements: list[str]) -> None:
    assert pgstate.split_guc_list(value) == elements


def test_a_list_setting_is_written_element_by_element() -> None:
    name, value = pgstate.setting("search_path=app, public")
    assert text(name) == '"search_path"'
    assert text(value) == "'app', 'public'"


def test_other_settings_are_one_literal_and_dotted_names_keep_their_parts() -> None:
    name, value = pgstate.setting("DateStyle=ISO, DMY")
    assert text(value) == "'ISO, DMY'"
    name, value = pgstate.setting("app.tenant=it's")
    assert (text(name), text(value)) == ('"app"."tenant"', "'it''s'")


def test_only_missing_roles_are_created_and_existing_ones_never_changed() -> None:
    plan = pgstate.roles(state(), existing={"app_owner"}, server_major=15)
    assert plan.create == ["app_ro", "reporting"]
    statements = [text(s.statement) for s in plan.steps]
    assert not any('"app_owner"' in s and "CREATE" in s for s in statements)
    assert 'CREATE ROLE "app_ro" WITH NOSUPERUSER INHERIT' in statements[0]
    assert "NOLOGIN" in statements[2] or any("NOLOGIN" in s for s in statements)
    assert """COMMENT ON ROLE "reporting" IS 'read ''em'""" in statements
    assert """ALTER ROLE "app_ro" SET "work_mem" TO '8MB'""" in statements
    assert 'GRANT "reporting" TO "app_ro"' in statements
    assert 'GRANT "pg_read_all_stats" TO "reporting" WITH ADMIN OPTION' in statements
    assert plan.skipped == ["membership of app_ro in ghost: role ghost does not exist"]


def test_a_membership_of_an_existing_role_is_not_granted() -> None:
    plan = pgstate.roles(state(), existing={"app_ro", "app_owner"}, server_major=15)
    assert plan.create == ["reporting"]
    assert not any('TO "app_ro"' in text(s.statement) for s in plan.steps)


def test_membership_options_of_postgresql_16() -> None:
    saved = state()
    saved["memberships"] = [
        {"role": "reporting", "member": "app_ro", "admin": True, "inherit": False, "set": True}
    ]
    plan = pgstate.roles(saved, existing=set(), server_major=16)
    assert 'GRANT "reporting" TO "app_ro" WITH ADMIN TRUE, INHERIT False, SET True' in [
        text(s.statement) for s in plan.steps
    ]


def test_password_hash_is_kept_as_given() -> None:
    statement = text(pgstate.create_role({"name": "a", "password": "SCRAM-SHA-256$4096:abc"}))
    assert statement.endswith("PASSWORD 'SCRAM-SHA-256$4096:abc'")


def test_database_state_statements() -> None:
    saved = state(
        settings=["search_path=app, public", "statement_timeout=5min"],
        role_settings={"app_ro": ["work_mem=8MB"], "gone": ["work_mem=1MB"]},
        acl=[
            {"grantee": "PUBLIC", "privilege": "TEMPORARY", "grantable": False},
            {"grantee": "app_owner", "privilege": "CONNECT", "grantable": True},
            {"grantee": "app_ro", "privilege": "CONNECT", "grantable": False},
            {"grantee": "nobody", "privilege": "CONNECT", "grantable": False},
        ],
        comment="the app",
        connection_limit=20,
    )
    steps, skipped = pgstate.database(
        saved, "app_new", {"app_owner", "app_ro"}, "app_owner", acl=True
    )
    statements = [text(s.statement) for s in steps]
    assert statements == [
        """ALTER DATABASE "app_new" SET "search_path" TO 'app', 'public'""",
        """ALTER DATABASE "app_new" SET "statement_timeout" TO '5min'""",
        """ALTER ROLE "app_ro" IN DATABASE "app_new" SET "work_mem" TO '8MB'""",
        'REVOKE ALL ON DATABASE "app_new" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "app_new" FROM "app_owner"',
        'GRANT TEMPORARY ON DATABASE "app_new" TO PUBLIC',
        'GRANT CONNECT ON DATABASE "app_new" TO "app_owner" WITH GRANT OPTION',
        'GRANT CONNECT ON DATABASE "app_new" TO "app_ro"',
        """COMMENT ON DATABASE "app_new" IS 'the app'""",
        'ALTER DATABASE "app_new" CONNECTION LIMIT 20',
    ]
    assert len(skipped) == 2
    assert "gone" in skipped[0] and "nobody" in skipped[1]


def test_no_acl_leaves_grants_alone_and_a_default_acl_is_not_touched() -> None:
    saved = state(acl=[{"grantee": "app_ro", "privilege": "CONNECT", "grantable": False}])
    steps, _ = pgstate.database(saved, "x", {"app_ro"}, "app_owner", acl=False)
    assert not any("GRANT" in text(s.statement) for s in steps)
    steps, _ = pgstate.database(state(), "x", {"app_ro"}, "app_owner", acl=True)
    assert steps == []


def test_owner_of_the_bootstrap_superuser_maps_to_this_clusters() -> None:
    saved = state(owner="pgsql", owner_is_bootstrap=True)
    assert pgstate.owner(saved, ME) == "postgres"
    assert pgstate.owner(state(), ME) == "app_owner"


def test_missing_rights_are_named_before_anything() -> None:
    saved = state()
    saved["roles"].append({"name": "repl", "replication": True})
    plan = pgstate.roles(saved, existing=set(), server_major=15)
    weak = Me("deploy", False, False, False, False, "postgres")
    problems = pgstate.missing_rights(plan, saved, weak, "app_owner")
    joined = " | ".join(problems)
    assert "CREATEROLE" in joined and "repl" in joined and "CREATEDB" in joined
    assert "GRANT app_owner TO deploy" in joined
    root = Me("postgres", True, True, True, True, "postgres")
    assert pgstate.missing_rights(plan, saved, root, "app_owner") == []


def test_a_good_state_has_no_shape_problems() -> None:
    saved = state(acl=[{"grantee": "PUBLIC", "privilege": "CONNECT", "grantable": False}])
    saved["database"]["role_settings"] = {"app_ro": ["work_mem=8MB"]}
    assert pgstate.shape_problems(saved) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.update(database=[]), "database: no owner"),
        (lambda s: s["database"].update(settings="x=1"), "database.settings"),
        (lambda s: s["database"].update(role_settings={"a": [1]}), "database.role_settings"),
        (
            lambda s: s["database"].update(acl=[{"grantee": "x", "privilege": "DROP TABLE y"}]),
            "database.acl",
        ),
        (lambda s: s["roles"].append({"name": 7}), "roles must be"),
        (lambda s: s["memberships"].append({"role": "a"}), "memberships must"),
    ],
)
def test_a_malformed_state_is_refused_before_any_statement(change: Any, problem: str) -> None:
    saved = state()
    change(saved)
    assert any(problem in p for p in pgstate.shape_problems(saved))
