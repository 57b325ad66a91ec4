"""Which databases a postgres target covers, and which tables' rows it leaves out.

`databases = "all"` makes one target stand for one backup per database of its
server. Backup ids are `<target>.<tier>.<stamp>` with target names of
[A-Za-z0-9_-], so each database becomes a child target `<name>-<database>` (the
dsn's dbname replaced), with its own ids, retention and drill. The name is
invertible from the config alone (`Config.target("pg-all-app")` needs no server:
restore onto a bare server, list, prune), and config_rules keeps it unambiguous:
no other target's name starts with an "all" target's name and "-".

The rules come first and are pure; the server listing (one query on pg_database)
and the expansion of a run's targets follow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    import psycopg

    from pyops.app import App
    from pyops.catalog import Catalog, Listing
    from pyops.config import Config, PostgresTarget, Target

ALL = "all"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
MAX_NAME = 128  # a target name; file names built from it stay far below 255 bytes
# databases pyops itself creates and drops: a drill's scratch, a restore's work copy
INTERNAL = re.compile(r"^pyops_drill_|_pyops_restore_\d{8}T\d{6}Z$")


# --- child targets: naming and resolving -------------------------------------------------


def is_all(target: Any) -> bool:
    return getattr(target, "type", "") == "postgres" and target.databases == ALL


def child_name(parent: str, database: str) -> str | None:
    """`<parent>-<database>`, or None when the database's name cannot be part of a
    target name (see `unnamable`)."""
    name = f"{parent}-{database}"
    if not database or not set(database) <= NAME_CHARS or len(name) > MAX_NAME:
        return None
    return name


def unnamable(parent: str, database: str) -> str:
    """Why `database` has no child target name, for the operator."""
    if not set(database) <= NAME_CHARS:
        return "its name has characters other than letters, digits, '-' and '_'"
    return f"{parent}-{database} would be longer than {MAX_NAME} characters"


def database_of(parent: str, name: str) -> str | None:
    """The database a child target name stands for (the inverse of child_name)."""
    prefix = f"{parent}-"
    if not name.startswith(prefix):
        return None
    database = name[len(prefix) :]
    return database if child_name(parent, database) == name else None


def child(parent: PostgresTarget, database: str) -> PostgresTarget:
    """The target of one database of an "all" target: everything inherited but the
    name and the dsn's dbname."""
    name = child_name(parent.name, database)
    assert name is not None, f"{database!r} cannot be named under {parent.name}"
    return dataclasses.replace(
        parent,
        name=name,
        dsn=make_conninfo(parent.dsn, dbname=database),
        databases="",
        exclude=(),
    )


def resolve(targets: Iterable[Target], name: str) -> PostgresTarget | None:
    """The child target `name` stands for, from the config alone; None if none does."""
    for t in targets:
        if is_all(t):
            database = database_of(t.name, name)
            if database is not None:
                return child(t, database)  # type: ignore[arg-type]
    return None


def parent_of(targets: Iterable[Target], name: str) -> PostgresTarget | None:
    for t in targets:
        if is_all(t) and database_of(t.name, name) is not None:
            return t  # type: ignore[return-value]
    return None


# --- which databases: exclusion, templates, pyops' own ------------------------------------


@dataclass(frozen=True)
class Database:
    name: str
    allows_connections: bool = True
    template: bool = False

    @property
    def eligible(self) -> bool:
        """A database a backup can and should hold: not a template, open to
        connections, and not one pyops made for a drill or a restore."""
        return self.allows_connections and not self.template and not INTERNAL.search(self.name)


def excluded_by(patterns: Sequence[str], database: str) -> str | None:
    """The first `exclude` pattern (fnmatch, case-sensitive) matching `database`."""
    return next((p for p in patterns if fnmatchcase(database, p)), None)


@dataclass
class Split:
    """What an "all" target makes of a server's databases."""

    included: list[str] = field(default_factory=list)  # backed up, one child each
    excluded: dict[str, str] = field(default_factory=dict)  # database -> pattern
    unnamable: dict[str, str] = field(default_factory=dict)  # database -> why


def split(target: PostgresTarget, databases: Iterable[Database]) -> Split:
    out = Split()
    for db in databases:
        if not db.eligible:
            continue
        pattern = excluded_by(target.exclude, db.name)
        if pattern is not None:
            out.excluded[db.name] = pattern
        elif child_name(target.name, db.name) is None:
            out.unnamable[db.name] = unnamable(target.name, db.name)
        else:
            out.included.append(db.name)
    return out


def unnamable_message(target: PostgresTarget, database: str, why: str) -> str:
    return (
        f"database {database!r} is not backed up by target {target.name} "
        f'(databases = "all"): {why}. Give it a target of its own (dsn with dbname '
        f"{database!r})"
    )


# --- servers and coverage -------------------------------------------------------------------


def server_of(dsn: str) -> tuple[str, str]:
    """(host, port) of a dsn: the key by which targets share a server."""
    parts = conninfo_to_dict(dsn)
    host = str(parts.get("host") or parts.get("hostaddr") or "")
    return host, str(parts.get("port") or "5432")


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname") or "")


def servers(targets: Iterable[PostgresTarget]) -> dict[tuple[str, str], list[PostgresTarget]]:
    """The targets by server, in config order."""
    out: dict[tuple[str, str], list[PostgresTarget]] = {}
    for t in targets:
        out.setdefault(server_of(t.dsn), []).append(t)
    return out


def describe_server(server: tuple[str, str]) -> str:
    host, port = server
    return f"{host or 'local socket'}:{port}"


@dataclass
class Coverage:
    """Which target covers each database of one server."""

    covered: dict[str, str] = field(default_factory=dict)  # database -> target name
    uncovered: list[str] = field(default_factory=list)
    unnamable: dict[str, str] = field(default_factory=dict)  # database -> message
    excluded: dict[str, str] = field(default_factory=dict)  # database -> "target: pattern"


def coverage(targets: Sequence[PostgresTarget], databases: Iterable[Database]) -> Coverage:
    """`targets`: the postgres targets of one server. A database is covered by a
    target whose dsn names it, or by an "all" target that includes it and can name
    it; one an "all" target excludes is left out on purpose (the config says so)."""
    out = Coverage()
    own = {dbname_of(t.dsn): t.name for t in targets if not is_all(t)}
    alls = [t for t in targets if is_all(t)]
    for db in databases:
        if not db.eligible:
            continue
        if db.name in own:
            out.covered[db.name] = own[db.name]
            continue
        splits = [(t, split(t, [db])) for t in alls]
        including = [t for t, s in splits if s.included]
        if including:
            covering = child_name(including[0].name, db.name)
            assert covering is not None
            out.covered[db.name] = covering
        elif any(s.unnamable for _, s in splits):
            t, s = next((t, s) for t, s in splits if s.unnamable)
            out.unnamable[db.name] = unnamable_message(t, db.name, s.unnamable[db.name])
        elif any(s.excluded for _, s in splits):
            t, s = next((t, s) for t, s in splits if s.excluded)
            out.excluded[db.name] = f"{t.name}: exclude {s.excluded[db.name]!r}"
        else:
            out.uncovered.append(db.name)
    return out


# --- table patterns (pg_dump's own syntax, for exclude_table_data) ---------------------------


class PatternError(ValueError):
    """A table pattern pyops will not pass to pg_dump; the message says why."""


def table_pattern(pattern: str) -> tuple[str | None, str]:
    """(schema regex or None, table regex) for a pg_dump table pattern, exactly as
    pg_dump builds them (fe_utils patternToSQLRegex, without forced escaping):
    unquoted letters folded to lower case, `*` -> `.*`, `?` -> `.`, `$` literal,
    double quotes keep case and make every character literal, other regular
    expression characters pass through outside quotes. Both are anchored. None for
    the schema means "any schema on the search_path" (pg_table_is_visible).
    A database part (`db.schema.table`) is refused: the same patterns serve every
    database of an "all" target, and pg_dump refuses cross-database references."""
    if not pattern:
        raise PatternError("empty pattern")
    parts: list[list[str]] = [[]]
    inquotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        cur = parts[-1]
        if ch == '"':
            if inquotes and pattern[i + 1 : i + 2] == '"':
                cur.append('"')
                i += 1
            else:
                inquotes = not inquotes
        elif not inquotes and ch.isascii() and ch.isupper():
            cur.append(ch.lower())
        elif not inquotes and ch == "*":
            cur.append(".*")
        elif not inquotes and ch == "?":
            cur.append(".")
        elif not inquotes and ch == ".":
            parts.append([])
        elif ch == "$":
            cur.append("\\$")
        else:
            special = inquotes and ch in "|*+?()[]{}.^$\\"
            if special or (ch == "[" and pattern[i + 1 : i + 2] == "]"):
                cur.append("\\")
            cur.append(ch)
        i += 1
    if inquotes:
        raise PatternError(f"unbalanced double quote in {pattern!r}")
    if len(parts) > 2:
        raise PatternError(f"expected table or schema.table, not {pattern!r}")
    regexes = [f"^({''.join(p)})$" for p in parts]
    if any(r == "^()$" for r in regexes):
        raise PatternError(f"empty schema or table name in {pattern!r}")
    if len(regexes) == 1:
        return None, regexes[0]
    return regexes[0], regexes[1]


# --- the server's databases (one query) ---------------------------------------------------

DATABASES = "SELECT datname, datallowconn, datistemplate FROM pg_database ORDER BY datname"


def list_databases(conn: psycopg.Connection[Any]) -> list[Database]:
    return [Database(str(n), bool(a), bool(t)) for n, a, t in conn.execute(DATABASES).fetchall()]


def server_databases(target: PostgresTarget) -> list[Database]:
    """The databases of the target's server, read through its dsn's own database
    (read-only, short timeouts, as health's sessions); PyopsError says why not."""
    from pyops.pgfacts import session

    with session.connect(target, session.HEALTH, purpose="list databases") as conn:
        return list_databases(conn)


# --- the targets of a run -------------------------------------------------------------------


@dataclass
class Expanded:
    """A run's targets with each "all" target replaced by its databases' targets."""

    targets: list[Target] = field(default_factory=list)
    failed: list[tuple[Target, str]] = field(default_factory=list)  # not listed, and why
    warnings: list[str] = field(default_factory=list)  # databases that cannot be named

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets] + [t.name for t, _ in self.failed]


def expand_targets(app: App, targets: Sequence[Target]) -> Expanded:
    """Ask each "all" target's server which databases it holds now (what a backup run
    works on). A server that cannot be asked fails that target with the reason, so a
    run never backs up nothing in silence; so does a server with nothing left to back
    up. A database without a child name is a warning, unless another target's dsn
    names it."""
    import psycopg

    from pyops.errors import PyopsError

    out = Expanded()
    for t in targets:
        if not is_all(t):
            out.targets.append(t)
            continue
        try:
            listed = server_databases(t)  # type: ignore[arg-type]
        except (PyopsError, psycopg.Error) as exc:
            out.failed.append((t, f"cannot list the databases of the server: {exc}"))
            continue
        parts = split(t, listed)  # type: ignore[arg-type]
        if not parts.included:
            out.failed.append((t, _nothing_left(parts)))
            continue
        out.targets += [child(t, db) for db in parts.included]  # type: ignore[arg-type]
        own = _named_elsewhere(app.config, t)
        out.warnings += [
            unnamable_message(t, db, why)  # type: ignore[arg-type]
            for db, why in parts.unnamable.items()
            if db not in own
        ]
    # `--target pg-all --target pg-all-app`: each database once
    out.targets = list({t.name: t for t in out.targets}.values())
    return out


def _nothing_left(parts: Split) -> str:
    excluded = f" ({len(parts.excluded)} excluded by exclude)" if parts.excluded else ""
    return (
        f'databases = "all" found no database to back up on the server{excluded}: '
        "check exclude and the dsn"
    )


def _named_elsewhere(config: Config, target: Target) -> set[str]:
    """Databases of the target's server that another (plain) target's dsn names."""
    server = server_of(target.dsn)  # type: ignore[union-attr]
    return {
        dbname_of(t.dsn)
        for t in config.targets
        if t.type == "postgres" and not is_all(t) and server_of(t.dsn) == server
    }


def stored_names(config: Config, catalog: Catalog, names: Sequence[str]) -> list[str]:
    """Target names as a catalog holds them: an "all" target's name stands for its
    children that have backups there (list, prune, verify, sync, drill: a database
    dropped since, or a bare server, still has its backups)."""
    out: list[str] = []
    for name in names:
        target = next((t for t in config.targets if t.name == name), None)
        if target is None or not is_all(target):
            out.append(name)
            continue
        found = {info.key.split("/", 1)[0] for info in catalog.store.list(f"{name}-")}
        out += sorted(n for n in found if database_of(name, n) is not None)
    return list(dict.fromkeys(out))


def stored_targets(config: Config, catalog: Catalog, targets: Sequence[Target]) -> list[Target]:
    """As stored_names, as targets (a drill of an "all" target drills each database
    whose backups the catalog holds, with no server to ask)."""
    out: list[Target] = []
    for t in targets:
        if not is_all(t):
            out.append(t)
            continue
        out += [config.target(n) for n in stored_names(config, catalog, [t.name])]
    return out


def scan(config: Config, catalog: Catalog, target: str | None, tier: str | None = None) -> Listing:
    """catalog.scan, where the name of a `databases = "all"` target stands for its
    databases' backups (`list --target pg-all`, `verify --target pg-all`)."""
    names = stored_names(config, catalog, [target]) if target else [target]
    if names == [target]:
        return catalog.scan(target, tier)
    from pyops.catalog import Listing

    merged = Listing()
    for name in names:
        part = catalog.scan(name, tier)
        merged.backups += part.backups
        merged.refused += part.refused
        merged.foreign += part.foreign
    merged.backups.sort(key=lambda b: (b.manifest.started_at, b.id), reverse=True)
    return merged
