"""Issue 11: a realistic application database, and a snapshot of everything a restore
must bring back, as plain data that compares with a readable diff.

The database is what a small production app looks like: a non-superuser owner, a
read-only role in a NOLOGIN group, a role that sees rows through an RLS policy which
reads a custom setting of the database, `ALTER DATABASE ... SET`, a per-role setting
in the database, `REVOKE CONNECT ... FROM PUBLIC`, a comment, large objects with a
grant, sequences ahead of their rows, a view, a function, default privileges; plus a
LATIN1 database with Latin-1 text.

The snapshot reads, as the superuser: the schema dump (`pg_dump --schema-only
--create`, so the database's own properties are in it too), per-table checksums,
sequences, large objects (by content, not oid), owners, grants, RLS, the database's
row in pg_database, its settings, ACL and comment, the application roles, and (with
`logins=True`) what the application roles see when they log in with their passwords.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from e2e_support import CLI_TIMEOUT, compression, describe, encryption_public, toml_str
from fixtures.cli import PYOPS
from fixtures.pgcluster import PgCluster
from fixtures.s3 import S3
from psycopg import sql

# --- the realistic database ---------------------------------------------------------

APP_ROLES = ("app_owner", "app_ro", "app_rls_user", "reporting")
PASSWORDS = {
    "app_owner": "owner-pw-7f3a19",
    "app_ro": "ro-pw-91c2e4",
    "app_rls_user": "rls-pw-0b5e77",
}
COMMENT = "Acme production data: do not drop (owner: ops@acme.example)"
ACME_DOCUMENTS = 400  # of 600: what app_rls_user sees with app.tenant = 'acme'

ROLES_SQL = """
CREATE ROLE app_owner LOGIN CREATEDB PASSWORD {owner};
CREATE ROLE app_ro LOGIN CONNECTION LIMIT 20 PASSWORD {ro};
CREATE ROLE app_rls_user LOGIN PASSWORD {rls};
CREATE ROLE reporting NOLOGIN;
GRANT reporting TO app_ro;
ALTER ROLE app_ro SET idle_in_transaction_session_timeout = '10min';
"""

DATABASE_SQL = """
CREATE DATABASE {db} OWNER app_owner;
ALTER DATABASE {db} SET search_path = app, public;
ALTER DATABASE {db} SET statement_timeout = '5min';
ALTER DATABASE {db} SET app.tenant = 'acme';
ALTER DATABASE {db} SET "DateStyle" = 'ISO, DMY';
ALTER ROLE app_ro IN DATABASE {db} SET work_mem = '8MB';
REVOKE CONNECT ON DATABASE {db} FROM PUBLIC;
GRANT CONNECT ON DATABASE {db} TO app_ro, app_rls_user;
COMMENT ON DATABASE {db} IS {comment};
"""

# run inside the database as the superuser; ownership comes from SET ROLE
APP_SCHEMA_SQL = """
SET ROLE app_owner;
CREATE SCHEMA app AUTHORIZATION app_owner;
COMMENT ON SCHEMA app IS 'application data';

CREATE TABLE app.customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    signed_up date NOT NULL
);
COMMENT ON TABLE app.customers IS 'one row per paying customer';
INSERT INTO app.customers (name, email, signed_up)
SELECT 'Customer ' || g || CASE WHEN g % 7 = 0 THEN ' Müller-Lüdenscheidt' ELSE '' END,
       'c' || g || '@example.org',
       date '2020-01-01' + g
FROM generate_series(1, 2000) AS g;
SELECT setval('app.customers_id_seq', 5000);

CREATE TABLE app.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES app.customers (id),
    amount numeric(10, 2) NOT NULL,
    placed_at timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON app.orders (customer_id);
INSERT INTO app.orders (customer_id, amount, placed_at)
SELECT g % 2000 + 1, (g * 1.37)::numeric(10, 2),
       timestamptz '2024-03-01 08:00:00+00' + g * interval '17 minutes'
FROM generate_series(1, 3000) AS g;
SELECT setval(pg_get_serial_sequence('app.orders', 'id'), 7777);

-- never used: is_called stays false, and must stay false
CREATE SEQUENCE app.invoice_no START 1000;

CREATE TABLE app.documents (
    id serial PRIMARY KEY,
    tenant text NOT NULL,
    title text NOT NULL,
    body oid
);
INSERT INTO app.documents (tenant, title)
SELECT CASE WHEN g % 3 = 0 THEN 'globex' ELSE 'acme' END, 'document ' || g
FROM generate_series(1, 600) AS g;
ALTER TABLE app.documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.documents
    USING (tenant = current_setting('app.tenant'));

DO $$
DECLARE
    contract oid;
    scan oid;
BEGIN
    contract := lo_from_bytea(0, convert_to(repeat('Acme contract, clause § ', 4000), 'UTF8'));
    scan := lo_from_bytea(0, decode(repeat('00ff7f80', 2048), 'hex'));
    EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO app_ro', contract);
    EXECUTE format('COMMENT ON LARGE OBJECT %s IS %L', contract, 'signed contract');
    UPDATE app.documents SET body = contract WHERE id = 1;
    UPDATE app.documents SET body = scan WHERE id = 2;
END
$$;

CREATE VIEW app.customer_totals AS
    SELECT c.id, c.name, count(o.id) AS orders, coalesce(sum(o.amount), 0) AS total
    FROM app.customers c LEFT JOIN app.orders o ON o.customer_id = c.id
    GROUP BY c.id, c.name;

CREATE FUNCTION app.customer_total(cid integer) RETURNS numeric
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(amount), 0) FROM app.orders WHERE customer_id = cid $$;
REVOKE EXECUTE ON FUNCTION app.customer_total(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.customer_total(integer) TO app_ro;

GRANT USAGE ON SCHEMA app TO app_ro, app_rls_user, reporting;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO app_ro;
GRANT SELECT ON app.customer_totals, app.orders TO reporting;
GRANT SELECT (id, name) ON app.customers TO reporting;
GRANT SELECT ON app.documents TO app_rls_user;
GRANT USAGE ON SEQUENCE app.invoice_no TO app_ro;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO reporting;
RESET ROLE;
"""

LATIN1_ROWS = [
    (1, "Müller", "Köln"),
    (2, "Françoise Lefèvre", "Besançon"),
    (3, "Peña", "A Coruña"),
    (4, "Ærø Ørsted", "Ålborg"),
    (5, "£ ¥ © ® ° ± µ ¶ ½ ÷ ÿ", None),
]


def create_app_roles(pg: PgCluster) -> None:
    """The application's roles (cluster-wide); those that exist are left alone."""
    with pg.connect() as conn:
        found = {
            str(r[0])
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(APP_ROLES),)
            ).fetchall()
        }
    if found == set(APP_ROLES):
        return
    assert not found, f"some application roles exist already: {sorted(found)}"
    pg.psql(
        sql.SQL(ROLES_SQL)
        .format(
            owner=sql.Literal(PASSWORDS["app_owner"]),
            ro=sql.Literal(PASSWORDS["app_ro"]),
            rls=sql.Literal(PASSWORDS["app_rls_user"]),
        )
        .as_string()
    )


def build_app_database(pg: PgCluster, db: str = "app") -> None:
    """The application database `db`, owned by app_owner, with everything described
    in this module's docstring (roles are created when missing)."""
    create_app_roles(pg)
    pg.psql(
        sql.SQL(DATABASE_SQL)
        .format(db=sql.Identifier(db), comment=sql.Literal(COMMENT))
        .as_string()
    )
    pg.psql(APP_SCHEMA_SQL, dbname=db)


def build_legacy_database(pg: PgCluster, db: str = "legacy") -> None:
    """A LATIN1 database (C locale, from template0) owned by app_owner, holding
    Latin-1 text outside ASCII."""
    create_app_roles(pg)
    pg.execute(
        sql.SQL(
            "CREATE DATABASE {} OWNER app_owner ENCODING 'LATIN1' LC_COLLATE 'C' "
            "LC_CTYPE 'C' TEMPLATE template0"
        ).format(sql.Identifier(db))
    )
    pg.execute(sql.SQL("COMMENT ON DATABASE {} IS 'Altdaten (Latin-1)'").format(sql.Identifier(db)))
    with psycopg.connect(**pg.conn_kwargs(db), autocommit=True, client_encoding="UTF8") as conn:
        conn.execute("SET ROLE app_owner")
        conn.execute("CREATE TABLE public.kunden (id integer PRIMARY KEY, name text, ort text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO public.kunden VALUES (%s, %s, %s)", LATIN1_ROWS)
        conn.execute(
            "INSERT INTO public.kunden SELECT g, 'Kunde ' || g || ' Straße', 'Zürich' "
            "FROM generate_series(6, 500) AS g"
        )
        conn.execute("GRANT SELECT ON public.kunden TO app_ro")
        conn.execute("RESET ROLE")


# --- the snapshot -------------------------------------------------------------------

NONSYS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"

# a session whose text output does not depend on the database's own settings
SESSION = (
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET TimeZone = 'UTC'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET search_path = pg_catalog",
    "SET statement_timeout = 0",
)

TABLES_Q = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {NONSYS} ORDER BY 1, 2
"""

SEQUENCES_Q = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {NONSYS} ORDER BY 1, 2
"""

OWNERS_Q = f"""
SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner)
FROM pg_namespace n WHERE {NONSYS}
UNION ALL
SELECT 'relation(' || c.relkind::text || ') ' || n.nspname || '.' || c.relname,
       pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {NONSYS}
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, pg_get_userbyid(p.proowner)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {NONSYS}
UNION ALL
SELECT 'type ' || t.oid::regtype::text, pg_get_userbyid(t.typowner)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {NONSYS} AND t.typtype IN ('c', 'd', 'e', 'r') AND t.typrelid = 0
ORDER BY 1
"""

ACL_ITEM = """
CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
|| ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END
|| ' by ' || pg_get_userbyid(a.grantor)
"""

GRANTS_Q = f"""
WITH objs AS (
    SELECT 'relation ' || n.nspname || '.' || c.relname AS obj,
           coalesce(c.relacl, acldefault(
               CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner)) AS acl
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {NONSYS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    UNION ALL
    SELECT 'column ' || n.nspname || '.' || c.relname || '.' || att.attname, att.attacl
    FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {NONSYS} AND att.attacl IS NOT NULL
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {NONSYS}
    UNION ALL
    SELECT 'schema ' || n.nspname, coalesce(n.nspacl, acldefault('n', n.nspowner))
    FROM pg_namespace n WHERE {NONSYS}
    UNION ALL
    SELECT 'default privileges for ' || pg_get_userbyid(d.defaclrole) || ' in '
           || coalesce(n.nspname, '*') || ' on ' || d.defaclobjtype::text, d.defaclacl
    FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
)
SELECT obj, array_agg(item ORDER BY item)
FROM (SELECT obj, {ACL_ITEM} AS item FROM objs, aclexplode(objs.acl) AS a) AS items
GROUP BY obj ORDER BY obj
"""

LARGE_OBJECTS_Q = f"""
SELECT pg_get_userbyid(m.lomowner), md5(lo_get(m.oid)), length(lo_get(m.oid)),
       obj_description(m.oid, 'pg_largeobject'),
       (SELECT array_agg(item ORDER BY item) FROM (
            SELECT {ACL_ITEM} AS item
            FROM aclexplode(coalesce(m.lomacl, acldefault('L', m.lomowner))) AS a) AS items)
FROM pg_largeobject_metadata m
"""

POLICIES_Q = """
SELECT schemaname || '.' || tablename || ' ' || policyname,
       jsonb_build_object('permissive', permissive, 'roles', roles::text[], 'cmd', cmd,
                          'qual', qual, 'with_check', with_check)
FROM pg_policies ORDER BY 1
"""

RLS_Q = f"""
SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {NONSYS} ORDER BY 1
"""

# the database's row without what differs between any two databases (oid, xid horizons)
DATABASE_Q = """
SELECT to_jsonb(d) - ARRAY['oid', 'datname', 'datdba', 'datacl', 'datfrozenxid',
                           'datminmxid', 'dattablespace', 'datlastsysoid'],
       pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
       shobj_description(d.oid, 'pg_database')
FROM pg_database d WHERE d.datname = current_database()
"""

DATABASE_ACL_Q = f"""
SELECT {ACL_ITEM}
FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a
WHERE d.datname = current_database() ORDER BY 1
"""

DATABASE_SETTINGS_Q = """
SELECT CASE WHEN s.setrole = 0 THEN '(every role)' ELSE pg_get_userbyid(s.setrole) END,
       s.setconfig
FROM pg_db_role_setting s
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1
"""

ROLES_Q = """
SELECT a.rolname, to_jsonb(a) - ARRAY['oid', 'rolname', 'rolpassword'],
       a.rolpassword IS NOT NULL, split_part(a.rolpassword, '$', 1)
FROM pg_authid a WHERE a.rolname = ANY(%s) ORDER BY 1
"""

MEMBERS_Q = """
SELECT pg_get_userbyid(m.roleid), pg_get_userbyid(m.member), pg_get_userbyid(m.grantor),
       to_jsonb(m) - ARRAY['oid', 'roleid', 'member', 'grantor']
FROM pg_auth_members m
WHERE pg_get_userbyid(m.roleid) = ANY(%s) OR pg_get_userbyid(m.member) = ANY(%s)
ORDER BY 1, 2
"""

ROLE_SETTINGS_Q = """
SELECT pg_get_userbyid(s.setrole), s.setconfig FROM pg_db_role_setting s
WHERE s.setdatabase = 0 AND pg_get_userbyid(s.setrole) = ANY(%s) ORDER BY 1
"""

DB_SECTIONS = ("database", "database_settings", "database_acl")
CONTENT_SECTIONS = ("tables", "sequences", "large_objects")


def _plain(value: Any) -> Any:
    """JSON's view of a value: tuples become lists, Decimals and dates strings."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_MESSAGES"] = "C"
    return env


def pg_tool(pg: PgCluster, name: str, *args: str, stdin: bytes | None = None) -> bytes:
    """Run one of the cluster's client tools as the superuser over the unix socket."""
    argv = [str(pg.bindir / name), "-h", pg.host, "-p", str(pg.port), "-U", pg.superuser, *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=_env(), timeout=120)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stderr.decode()}"
    return proc.stdout


LO_OID = re.compile(r"(LARGE OBJECT |lo_create\(')\d+")


def schema_dump(pg: PgCluster, db: str) -> list[str]:
    """`pg_dump --schema-only --create`, without what varies between two dumps of the
    same database: comments, SET lines, \\restrict keys, large object oids, and the
    order of consecutive GRANT lines (an ACL's entries in another order are the same
    ACL; the REVOKE lines before them stay in place)."""
    text = pg_tool(pg, "pg_dump", "--schema-only", "--create", "--encoding=UTF8", "-d", db)
    lines: list[str] = []
    grants: list[str] = []
    for line in text.decode().splitlines():
        if not line.strip() or line.startswith(("--", "SET ", "\\restrict", "\\unrestrict")):
            continue
        if line.startswith("SELECT pg_catalog.set_config('search_path'"):
            continue
        line = LO_OID.sub(r"\1<oid>", line)
        if line.startswith("GRANT "):
            grants.append(line)
            continue
        lines += sorted(grants)
        grants = []
        lines.append(line)
    return lines + sorted(grants)


def _checksums(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for schema, table in conn.execute(TABLES_Q).fetchall():
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
        ).fetchone()
        assert row is not None
        out[f"{schema}.{table}"] = {"rows": row[0], "md5": row[1]}
    return out


def _sequences(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for schema, seq in conn.execute(SEQUENCES_Q).fetchall():
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(seq)
            )
        ).fetchone()
        assert row is not None
        out[f"{schema}.{seq}"] = {"last_value": row[0], "is_called": row[1]}
    return out


def _roles(conn: psycopg.Connection[Any], roles: Sequence[str]) -> dict[str, Any]:
    names = list(roles)
    attrs = {
        str(name): {**facts, "has_password": has_pw, "password_kind": kind}
        for name, facts, has_pw, kind in conn.execute(ROLES_Q, (names,)).fetchall()
    }
    members = [
        {"role": r, "member": m, "grantor": g, **opts}
        for r, m, g, opts in conn.execute(MEMBERS_Q, (names, names)).fetchall()
    ]
    settings = {
        str(r): sorted(cfg) for r, cfg in conn.execute(ROLE_SETTINGS_Q, (names,)).fetchall()
    }
    return {"attributes": attrs, "memberships": members, "settings": settings}


def snapshot(
    pg: PgCluster, db: str, *, logins: bool = False, roles: Sequence[str] = APP_ROLES
) -> dict[str, Any]:
    """Everything a restore of `db` must bring back, as comparable plain data.

    `logins`: also log in as app_ro and app_rls_user (TCP, passwords) and record what
    they see: search_path, settings, RLS, a large object (databases from
    build_app_database only)."""
    with pg.connect(db) as conn:
        for stmt in SESSION:
            conn.execute(stmt)
        row = conn.execute(DATABASE_Q).fetchone()
        assert row is not None, f"no database {db}"
        pg_database, owner, encoding, comment = row
        state: dict[str, Any] = {
            "database": {
                **pg_database,
                "owner": owner,
                "encoding_name": encoding,
                "comment": comment,
            },
            "database_settings": {
                str(r): sorted(cfg) for r, cfg in conn.execute(DATABASE_SETTINGS_Q).fetchall()
            },
            "database_acl": [str(r[0]) for r in conn.execute(DATABASE_ACL_Q).fetchall()],
            "tables": _checksums(conn),
            "sequences": _sequences(conn),
            "large_objects": sorted(
                (list(r) for r in conn.execute(LARGE_OBJECTS_Q).fetchall()), key=str
            ),
            "owners": {str(k): str(v) for k, v in conn.execute(OWNERS_Q).fetchall()},
            "grants": {str(k): list(v) for k, v in conn.execute(GRANTS_Q).fetchall()},
            "policies": {str(k): v for k, v in conn.execute(POLICIES_Q).fetchall()},
            "row_security": {
                str(k): {"enabled": e, "forced": f} for k, e, f in conn.execute(RLS_Q).fetchall()
            },
            "roles": _roles(conn, roles),
        }
    state["schema"] = schema_dump(pg, db)
    if logins:
        state["logins"] = login_facts(pg, db)
    plain: dict[str, Any] = _plain(state)
    return plain


def login(pg: PgCluster, db: str, role: str, *, tcp: bool = True) -> psycopg.Connection[Any]:
    """A session of an application role: over TCP with its password (scram), or over
    the unix socket (trust) with tcp=False."""
    kwargs = pg.conn_kwargs(db, user=role, tcp=tcp)
    if tcp:
        kwargs["password"] = PASSWORDS[role]
    return psycopg.connect(**kwargs, autocommit=True, connect_timeout=10)


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def login_facts(pg: PgCluster, db: str) -> dict[str, Any]:
    """What the application sees: app_ro's settings (database, per-role in the
    database, role-wide), its unqualified `customers` (search_path), a granted large
    object; app_rls_user's rows through the policy that reads app.tenant. A refused
    login or query is recorded as its error, so a diff shows it."""
    out: dict[str, Any] = {}
    try:
        with login(pg, db, "app_ro") as conn:
            row = conn.execute(
                "SELECT current_setting('search_path'), current_setting('work_mem'), "
                "current_setting('DateStyle'), current_setting('statement_timeout'), "
                "current_setting('app.tenant'), "
                "current_setting('idle_in_transaction_session_timeout'), "
                "'03/04/2024'::date::text"
            ).fetchone()
            out["app_ro settings"] = list(row or ())
            out["app_ro customers"] = conn.execute("SELECT count(*) FROM customers").fetchone()
            out["app_ro contract"] = conn.execute(
                "SELECT md5(lo_get(body)) FROM app.documents WHERE id = 1"
            ).fetchone()
    except psycopg.Error as exc:
        out["app_ro error"] = _error(exc)
    try:
        with login(pg, db, "app_rls_user") as conn:
            out["app_rls_user documents"] = conn.execute(
                "SELECT count(*), min(tenant), max(tenant) FROM app.documents"
            ).fetchone()
    except psycopg.Error as exc:
        out["app_rls_user error"] = _error(exc)
    return out


def can_connect(pg: PgCluster, db: str, role: str) -> str | None:
    """None when `role` may connect to `db` (unix socket, trust); else the error."""
    try:
        with psycopg.connect(**pg.conn_kwargs(db, user=role), connect_timeout=10):
            return None
    except psycopg.Error as exc:
        return _error(exc)


# --- comparing ----------------------------------------------------------------------

MAX_DIFF_LINES = 80


def _lines(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False).splitlines()


def state_diff(
    want: Mapping[str, Any],
    got: Mapping[str, Any],
    *,
    sections: Iterable[str] | None = None,
    labels: tuple[str, str] = ("source", "restored"),
) -> str:
    """A unified diff per section that differs ('' when all are equal)."""
    keys = sorted(set(want) | set(got)) if sections is None else list(sections)
    parts = []
    for key in keys:
        a, b = want.get(key), got.get(key)
        if a == b:
            continue
        diff = list(
            difflib.unified_diff(
                _lines(a), _lines(b), f"{labels[0]} {key}", f"{labels[1]} {key}", n=2, lineterm=""
            )
        )
        if len(diff) > MAX_DIFF_LINES:
            diff = [*diff[:MAX_DIFF_LINES], f"... {len(diff) - MAX_DIFF_LINES} more lines"]
        parts.append(f"== {key} ==\n" + "\n".join(diff))
    return "\n\n".join(parts)


def differing(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))


def assert_same_state(
    want: Mapping[str, Any],
    got: Mapping[str, Any],
    what: str,
    *,
    sections: Iterable[str] | None = None,
    context: str = "",
) -> None:
    diff = state_diff(want, got, sections=sections)
    if diff:
        scope = sorted(sections) if sections is not None else differing(want, got)
        bad = [k for k in scope if want.get(k) != got.get(k)]
        raise AssertionError(
            f"{what}: {', '.join(bad)} differ(s) (- expected, + actual)\n{diff}"
            + (f"\n\n{context}" if context else "")
        )


# --- copying a database by hand (the reference the comparison is checked with) ------


def copy_by_hand(src: PgCluster, dst: PgCluster, dbs: Sequence[str]) -> None:
    """What an operator does without pyops: replay `pg_dumpall --globals-only` (minus
    the bootstrap superuser, which exists), then `pg_dump -Fc --create | pg_restore
    --create` per database."""
    roles = pg_tool(src, "pg_dumpall", "--globals-only").decode()
    replay = "\n".join(
        ln for ln in roles.splitlines() if ln.strip() != f"CREATE ROLE {src.superuser};"
    )
    dst.psql(replay)
    for db in dbs:
        archive = pg_tool(src, "pg_dump", "-Fc", "--create", "-d", db)
        pg_tool(dst, "pg_restore", "--create", "--exit-on-error", "-d", "postgres", stdin=archive)


def databases_of(pg: PgCluster) -> list[str]:
    with pg.connect() as conn:
        return sorted(str(r[0]) for r in conn.execute("SELECT datname FROM pg_database"))


def roles_of(pg: PgCluster, names: Sequence[str] = APP_ROLES) -> list[str]:
    with pg.connect() as conn:
        return sorted(
            str(r[0])
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)
            )
        )


# --- pyops on one host ---------------------------------------------------------------


@dataclass
class Host:
    """One machine's pyops: its config file, repository, repository key, GnuPG home
    (public key only on a backup host; the secret key on the recovery host)."""

    base: Path
    repo: Path
    key_file: Path | None = None
    gnupghome: Path | None = None
    recipient: str = ""
    s3: S3 | None = None
    name: str = "db1"  # [repository] host: the recovery host says it is the old one
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.base / "pyops.toml"

    def write(self, targets: str) -> Host:
        head = [
            "[repository]",
            f"path = {toml_str(self.repo)}",
            f"host = {toml_str(self.name)}",
            "lock_wait_seconds = 2",
        ]
        if self.key_file is not None:
            head.append(f"key_file = {toml_str(self.key_file)}")
        body = "\n".join(head) + "\n\n" + compression("zstd", 1) + "\n"
        if self.gnupghome is not None:
            body += encryption_public([self.recipient], self.gnupghome, None) + "\n"
        if self.s3 is not None:
            body += self.s3.config() + "\n"
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(body + targets)
        self.config.chmod(0o600)
        return self

    def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYOPS, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, f"pyops {' '.join(args)}: {describe(proc)}"
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json").stdout)

    def files(self) -> list[str]:
        """Every file of the repository but its lock and state dir (relative names)."""
        if not self.repo.exists():
            return []
        return sorted(
            str(p.relative_to(self.repo))
            for p in self.repo.rglob("*")
            if p.is_file() and p.name != ".lock" and ".pyops" not in p.parts
        )


def pg_target_toml(name: str, dsn: str, *, fmt: str = "custom", password_env: str = "") -> str:
    lines = [
        "[[targets]]",
        f"name = {toml_str(name)}",
        'type = "postgres"',
        f"dsn = {toml_str(dsn)}",
        f"format = {toml_str(fmt)}",
    ]
    if password_env:
        lines.append(f"password_env = {toml_str(password_env)}")
    return "\n".join(lines) + "\n\n"
