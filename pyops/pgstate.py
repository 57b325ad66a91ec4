"""The rules that turn a backup's saved roles and database state (pyops.pgfacts.globals)
back into statements: which roles to create (only missing ones: an existing role is
never altered), which memberships to grant (only to roles created now), and what makes
a freshly restored database the database it was (owner, settings, per-role settings,
ACL, comment, connection limit). Pure: the caller runs the statements and says what
could not be done. Also: whether the restoring role will be able to finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

# variables whose list elements pg_dump quotes one by one (pg_dump's
# variable_is_guc_list_quote): written as one literal, search_path = 'app, public'
# would become a single schema named "app, public"
LIST_QUOTE = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}
# what only a superuser may create
SUPERUSER_ONLY = ("superuser", "replication", "bypassrls")


@dataclass(frozen=True)
class Step:
    """One statement and what it does, for the log and for a refusal."""

    what: str
    statement: sql.Composed


@dataclass
class RolePlan:
    create: list[str] = field(default_factory=list)  # role names, in order
    steps: list[Step] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what was left alone, and why


@dataclass(frozen=True)
class Me:
    """The restoring role's rights, as the server says."""

    name: str
    superuser: bool
    createdb: bool
    createrole: bool
    signal_backend: bool  # member of pg_signal_backend
    bootstrap: str  # the cluster's bootstrap superuser


def shape_problems(state: dict[str, Any]) -> list[str]:
    """What is wrong with saved roles and database state before any statement is made
    of them (an attachment is authenticated with its manifest; this catches what pyops
    itself could not have written)."""
    problems = []
    db = state.get("database")
    if not isinstance(db, dict) or not isinstance(db.get("owner"), str):
        problems.append("database: no owner")
    else:
        for key in ("settings",):
            if not _strings(db.get(key, [])):
                problems.append(f"database.{key} must be a list of strings")
        role_settings = db.get("role_settings", {})
        if not isinstance(role_settings, dict) or not all(
            isinstance(k, str) and _strings(v) for k, v in role_settings.items()
        ):
            problems.append("database.role_settings must map roles to lists of strings")
        acl = db.get("acl")
        if acl is not None and not (
            isinstance(acl, list)
            and all(
                isinstance(e, dict)
                and isinstance(e.get("grantee"), str)
                and e.get("privilege") in ("CREATE", "TEMPORARY", "CONNECT")
                for e in acl
            )
        ):
            problems.append("database.acl is not a list of grants")
    roles = state.get("roles", [])
    if not isinstance(roles, list) or not all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and _strings(r.get("settings", []))
        for r in roles
    ):
        problems.append("roles must be a list of roles with names")
    members = state.get("memberships", [])
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("member"), str)
        for m in members
    ):
        problems.append("memberships must name a role and a member")
    return problems


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def split_guc_list(value: str) -> list[str]:
    """A list setting's elements, double quotes removed (pg_dump's SplitGUCList)."""
    out, cur, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1 : i + 2] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip() or out:
        out.append(cur.strip())
    return out


def setting(entry: str) -> tuple[sql.Composable, sql.Composable]:
    """`name=value` as saved in pg_db_role_setting: (name, value) for `SET name TO value`."""
    name, _, value = entry.partition("=")
    ident = sql.Identifier(*name.split("."))
    if name.lower() in LIST_QUOTE:
        elements = split_guc_list(value) or [""]
        return ident, sql.SQL(", ").join(sql.Literal(e) for e in elements)
    return ident, sql.Literal(value)


def _set(head: sql.Composable, entry: str) -> sql.Composed:
    name, value = setting(entry)
    return sql.SQL("{} SET {} TO {}").format(head, name, value)


def create_role(role: dict[str, Any]) -> sql.Composed:
    flags = [
        ("SUPERUSER", "superuser"),
        ("INHERIT", "inherit"),
        ("CREATEROLE", "createrole"),
        ("CREATEDB", "createdb"),
        ("LOGIN", "login"),
        ("REPLICATION", "replication"),
        ("BYPASSRLS", "bypassrls"),
    ]
    parts: list[sql.Composable] = [
        sql.SQL(word if role.get(key) else f"NO{word}") for word, key in flags
    ]
    limit = int(role.get("connection_limit", -1))
    if limit != -1:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(limit)))
    if role.get("valid_until"):
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(role["valid_until"])))
    if role.get("password"):  # a SCRAM or md5 hash: the server stores it as given
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(role["password"])))
    return sql.SQL("CREATE ROLE {} WITH {}").format(
        sql.Identifier(role["name"]), sql.SQL(" ").join(parts)
    )


def roles(state: dict[str, Any], existing: set[str], server_major: int) -> RolePlan:
    """Create the saved roles that do not exist, with their comments and settings, and
    grant the memberships of the roles created now. An existing role is left as it is,
    even when it differs from the saved one."""
    plan = RolePlan()
    for role in state.get("roles", []):
        name = str(role["name"])
        if name in existing:
            continue
        plan.create.append(name)
        ident = sql.Identifier(name)
        plan.steps.append(Step(f"create role {name}", create_role(role)))
        if role.get("comment"):
            plan.steps.append(
                Step(
                    f"comment on role {name}",
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(role["comment"])),
                )
            )
        for entry in role.get("settings", []):
            head = sql.SQL("ALTER ROLE {}").format(ident)
            plan.steps.append(Step(f"role {name}: {entry}", _set(head, entry)))
    created = set(plan.create)
    known = existing | created
    for m in state.get("memberships", []):
        role, member = str(m["role"]), str(m["member"])
        if member not in created:
            continue  # never change what an existing role may do
        if role not in known and not role.startswith("pg_"):
            plan.skipped.append(f"membership of {member} in {role}: role {role} does not exist")
            continue
        options: list[sql.Composable] = []
        if m.get("admin"):
            options.append(sql.SQL("ADMIN OPTION") if server_major < 16 else sql.SQL("ADMIN TRUE"))
        if server_major >= 16:
            if "inherit" in m:
                options.append(sql.SQL("INHERIT {}").format(sql.SQL(str(bool(m["inherit"])))))
            if "set" in m:
                options.append(sql.SQL("SET {}").format(sql.SQL(str(bool(m["set"])))))
        grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member))
        if options:
            grant = sql.SQL("{} WITH {}").format(grant, sql.SQL(", ").join(options))
        plan.steps.append(Step(f"grant {role} to {member}", grant))
    return plan


def owner(state: dict[str, Any], me: Me) -> str:
    """Who owns the database: the saved owner; the bootstrap superuser's databases
    belong to this cluster's bootstrap superuser, whatever its name."""
    db = state["database"]
    return me.bootstrap if db.get("owner_is_bootstrap") else str(db["owner"])


def database(
    state: dict[str, Any], name: str, existing: set[str], owner_name: str | None, *, acl: bool
) -> tuple[list[Step], list[str]]:
    """What makes the restored database `name` the saved one again, after the data is
    in (a setting such as default_transaction_read_only or a revoked CONNECT must not
    apply to the restore itself): settings, per-role settings, ACL, comment, connection
    limit; and what was left out because its role does not exist."""
    db = state["database"]
    ident = sql.Identifier(name)
    head = sql.SQL("ALTER DATABASE {}").format(ident)
    steps = [Step(f"database setting {e}", _set(head, e)) for e in db.get("settings", [])]
    skipped = []
    for role, entries in sorted(db.get("role_settings", {}).items()):
        if role not in existing:
            skipped.append(f"settings of role {role} in the database: role {role} does not exist")
            continue
        head_role = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), ident)
        steps += [Step(f"role {role} in database: {e}", _set(head_role, e)) for e in entries]
    if acl and db.get("acl") is not None:
        steps.append(
            Step(
                "database ACL: revoke the defaults",
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident),
            )
        )
        if owner_name:
            steps.append(
                Step(
                    "database ACL: the owner's defaults",
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                        ident, sql.Identifier(owner_name)
                    ),
                )
            )
        for entry in db["acl"]:
            grantee = str(entry["grantee"])
            if grantee != "PUBLIC" and grantee not in existing:
                skipped.append(f"{entry['privilege']} on the database for {grantee}: no such role")
                continue
            who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
            grant = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(str(entry["privilege"])), ident, who
            )
            if entry.get("grantable"):
                grant = sql.SQL("{} WITH GRANT OPTION").format(grant)
            steps.append(Step(f"grant {entry['privilege']} on database to {grantee}", grant))
    if db.get("comment"):
        steps.append(
            Step(
                "database comment",
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(db["comment"])),
            )
        )
    limit = int(db.get("connection_limit", -1))
    if limit != -1:
        steps.append(
            Step(
                f"connection limit {limit}",
                sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(ident, sql.Literal(limit)),
            )
        )
    return steps, skipped


def missing_rights(
    plan: RolePlan, state: dict[str, Any], me: Me, new_owner: str | None
) -> list[str]:
    """What the restoring role lacks to create the roles and give the database its
    owner: said before anything is changed."""
    if me.superuser:
        return []
    problems = []
    if plan.create and not me.createrole:
        problems.append(
            f"roles {', '.join(plan.create)} must be created, which needs CREATEROLE "
            f"(ALTER ROLE {me.name} CREATEROLE) or a superuser"
        )
    saved = {str(r["name"]): r for r in state.get("roles", [])}
    strong = [n for n in plan.create if any(saved[n].get(k) for k in SUPERUSER_ONLY)]
    if strong:
        problems.append(
            f"roles {', '.join(strong)} are SUPERUSER, REPLICATION or BYPASSRLS: only a "
            "superuser may create them"
        )
    if not me.createdb:
        problems.append(f"creating the database needs CREATEDB (ALTER ROLE {me.name} CREATEDB)")
    if new_owner and new_owner != me.name:
        problems.append(
            f"the database belongs to {new_owner}: giving it to that role needs membership "
            f"(GRANT {new_owner} TO {me.name}) or a superuser; or restore with --no-owner"
        )
    return problems
