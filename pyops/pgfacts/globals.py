"""What a database needs from its cluster to come back on a new server, read in the
backup's snapshot session: the roles it references (owners, grantees, policy roles,
roles with settings in it) with the roles joined to them by membership, their
memberships and settings, and the database's own state (owner, encoding and locale,
settings, per-role settings, ACL, comment, connection limit).

pg_dump does not carry any of it into a dump of one database, and pg_dumpall
--globals-only cannot be limited to one database's roles or replayed without
altering existing roles; pyops keeps it as data, and pyops.pgstate turns it back into
statements. Role password hashes are readable only by a superuser (pg_authid);
without that right the roles are kept without passwords, and the note says so.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pyops.pgfacts.server import _dicts

FORMAT = 1
FIRST_USER_OID = 16384  # below: the bootstrap superuser (10) and predefined roles

DATABASE = """
SELECT d.oid, d.datname AS name, pg_get_userbyid(d.datdba) AS owner,
       d.datdba = 10 AS owner_is_bootstrap, pg_encoding_to_char(d.encoding) AS encoding,
       d.datcollate AS collate, d.datctype AS ctype, d.datconnlimit AS connection_limit,
       d.datacl IS NULL AS default_acl, shobj_description(d.oid, 'pg_database') AS comment
FROM pg_database d WHERE d.datname = current_database()
"""
LOCALE_15 = """
SELECT CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'c' THEN 'libc' ELSE d.datlocprovider::text
       END AS locale_provider, d.daticulocale AS icu_locale
FROM pg_database d WHERE d.datname = current_database()
"""
ACL = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type AS privilege, a.is_grantable AS grantable
FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database()
ORDER BY 1, 2
"""
DB_SETTINGS = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END AS role,
       s.setconfig AS settings
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database()
ORDER BY 1 NULLS FIRST
"""
# every role an object of this database, or the database itself, depends on
REFERENCED = """
WITH db AS (SELECT oid FROM pg_database WHERE datname = current_database())
SELECT d.refobjid AS oid FROM pg_shdepend d, db
WHERE d.refclassid = 'pg_authid'::regclass
  AND (d.dbid = db.oid OR (d.dbid = 0 AND d.classid = 'pg_database'::regclass
                           AND d.objid = db.oid))
UNION SELECT datdba FROM pg_database WHERE datname = current_database()
UNION SELECT s.setrole FROM pg_db_role_setting s, db WHERE s.setdatabase = db.oid
"""
MEMBERS = "SELECT roleid, member FROM pg_auth_members"
ROLES = """
SELECT r.oid, r.rolname AS name, r.rolsuper AS superuser, r.rolinherit AS inherit,
r.rolcreaterole AS createrole, r.rolcreatedb AS createdb, r.rolcanlogin AS login,
r.rolreplication AS replication, r.rolbypassrls AS bypassrls,
r.rolconnlimit AS connection_limit, r.rolvaliduntil::text AS valid_until,
shobj_description(r.oid, 'pg_authid') AS comment,
(SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0)
  AS settings
FROM pg_catalog.pg_roles r WHERE r.oid = ANY(%(oids)s) ORDER BY r.rolname
"""
PASSWORDS = "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE oid = ANY(%(oids)s)"
MEMBERSHIPS = """
SELECT pg_get_userbyid(m.roleid) AS role, pg_get_userbyid(m.member) AS member,
       m.admin_option AS admin{extra}
FROM pg_auth_members m
WHERE m.member = ANY(%(oids)s) AND (m.roleid = ANY(%(oids)s) OR m.roleid < {first})
ORDER BY 1, 2
"""


def may_read_passwords(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')").fetchone()
    return bool(row and row[0])


def _closure(start: set[int], edges: list[tuple[int, int]]) -> set[int]:
    """`start` and every role joined to one of them by membership, either way: the
    login role that acts through a group the database names comes back with it."""
    found, todo = set(start), list(start)
    while todo:
        oid = todo.pop()
        for role, member in edges:
            for near in (member,) if role == oid else (role,) if member == oid else ():
                if near not in found:
                    found.add(near)
                    todo.append(near)
    return found


def capture(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The roles and the database state of the connected database (JSON-ready)."""
    major = int(conn.info.server_version) // 10000
    db = _dicts(conn, DATABASE)[0]
    if major >= 15:
        db.update(_dicts(conn, LOCALE_15)[0])
    db["acl"] = None if db.pop("default_acl") else _dicts(conn, ACL)
    settings = _dicts(conn, DB_SETTINGS)
    db["settings"] = next((list(s["settings"]) for s in settings if s["role"] is None), [])
    db["role_settings"] = {
        str(s["role"]): list(s["settings"]) for s in settings if s["role"] is not None
    }
    db.pop("oid")
    referenced = {int(r["oid"]) for r in _dicts(conn, REFERENCED)}
    edges = [(int(r["roleid"]), int(r["member"])) for r in _dicts(conn, MEMBERS)]
    oids = sorted(o for o in _closure(referenced, edges) if o >= FIRST_USER_OID)
    passwords = may_read_passwords(conn)
    roles = _dicts(conn, ROLES, {"oids": oids})
    hashes: dict[str, str] = {}
    if passwords:
        hashes = {str(n): p for n, p in conn.execute(PASSWORDS, {"oids": oids}) if p}
    for role in roles:
        role.pop("oid")
        role["settings"] = list(role["settings"] or [])
        role["password"] = hashes.get(role["name"])
    extra = ", m.inherit_option AS inherit, m.set_option AS set" if major >= 16 else ""
    memberships = _dicts(
        conn, MEMBERSHIPS.format(extra=extra, first=FIRST_USER_OID), {"oids": oids}
    )
    notes = []
    if not passwords:
        notes.append(
            "role passwords were not saved: the backup role may not read pg_authid (a "
            "superuser may). After a restore onto a new server, set them: ALTER ROLE ... "
            "PASSWORD ..."
        )
    return {
        "format": FORMAT,
        "server_major": major,
        "passwords": passwords,
        "notes": notes,
        "database": db,
        "roles": roles,
        "memberships": memberships,
    }
