"""PostgreSQL: pg_dump from an exported snapshot, with exact row counts taken in the
same snapshot while the dump runs; restore into a new database, then swap names.

The password reaches libpq only through the child's environment (PGPASSWORD from
`password_env` or `password_file`) or .pgpass / PGPASSFILE; never argv.

With `container`, the tools run inside it and pyops' own sessions reach the server
through pyops.containers' bridge; the dsn is then the container's view.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyops import containers, pgstate, secrets, stream, tarsafe
from pyops.config import PostgresTarget
from pyops.errors import PyopsError, StageFailed, UsageError, VerifyFailed
from pyops.execute import DEVNULL, PIPE, Stage, first_line, pipeline
from pyops.manifest import Manifest
from pyops.pgfacts import globals as pg_globals
from pyops.pgfacts import session
from pyops.sources import Dump, RestoreOptions, RestorePlan, Staged, pgrebuild, pgsnapshot
from pyops.tools import pg
from pyops.tools.container import Exec

log = logging.getLogger(__name__)
PLAIN_END = b"-- PostgreSQL database dump complete"


def extension(target: PostgresTarget) -> str:
    return pg.EXTENSIONS[target.format]


# --- connecting -------------------------------------------------------------


def child_env(target: PostgresTarget) -> dict[str, str]:
    """What libpq children (pg_dump, pg_restore, psql) need: the password, from the file
    or the variable the config names (ConfigError naming the key when it cannot be
    had), and PGOPTIONS lifting the role's own timeouts from the first statement on:
    pg_dump's own `SET statement_timeout = 0` is cancelled by a role's 1 ms timeout."""
    value = secrets.password(target)
    env = {"PGOPTIONS": _child_options(target)}
    return env if value is None else {**env, "PGPASSWORD": value}


def _child_options(target: PostgresTarget) -> str:
    return session.startup_options(target, session.restore(target.lock_wait_seconds))


def dbname(target: PostgresTarget) -> str:
    return str(conninfo_to_dict(target.dsn)["dbname"])


def conninfo(target: PostgresTarget, db: str | None = None) -> str:
    return make_conninfo(target.dsn, dbname=db) if db else target.dsn


def child_conninfo(target: PostgresTarget, db: str | None = None) -> str:
    """The connection string a libpq child gets: `options` in the dsn hides PGOPTIONS
    from libpq, so there the child's limits join the dsn's own options."""
    info = conninfo(target, db)
    if conninfo_to_dict(info).get("options"):
        return make_conninfo(info, options=_child_options(target))
    return info


def where(target: PostgresTarget) -> str:
    parts = conninfo_to_dict(target.dsn)
    host = parts.get("host") or "local socket"
    port = parts.get("port") or "5432"
    box = f" in container {target.container}" if target.container else ""
    return f"{parts.get('user') or 'current user'}@{host}:{port}/{parts.get('dbname')}{box}"


def connect(
    target: PostgresTarget, db: str | None = None, application_name: str = "pyops", **kw: Any
) -> psycopg.Connection[Any]:
    """A plain connection; pgfacts.session.connect adds the session limits to it. With
    `container`, through the bridge into it (opened, and probed, at first use)."""
    env = child_env(target)
    info = conninfo(target, db)
    bridge = containers.bridge(target)
    if bridge is not None:
        info = bridge.conninfo(info)
    try:
        return psycopg.connect(
            info,
            password=env.get("PGPASSWORD"),
            connect_timeout=10,
            application_name=application_name,
            **kw,
        )
    except psycopg.OperationalError as exc:
        said = str(exc)
        if bridge is not None:  # the bridge's socket means nothing to the operator
            said = said.replace(f'on socket "{bridge.path}"', f"through {bridge.where}")
        text = explain_connect_error(target, said)
        failure = bridge.failure() if bridge is not None else None
        raise PyopsError(f"{text} (inside the container: {failure})" if failure else text) from None


def explain_connect_error(target: PostgresTarget, text: str) -> str:
    first = text.strip().splitlines()[-1] if text.strip() else text
    if "password authentication failed" in text or "no password supplied" in text:
        hint = f"{secrets.password_source(target)}, ~/.pgpass or PGPASSFILE"
        return f"target {target.name}: password rejected for {where(target)}: {hint}"
    if "does not exist" in text and "database" in text:
        return f"target {target.name}: database missing at {where(target)}: {first}"
    if "too many connections for" in text:
        from pyops.sources import pgsnapshot

        return pgsnapshot.connection_limit_message(target, text)
    if "Connection refused" in text or "No such file" in text or "timeout" in text:
        return (
            f"target {target.name}: cannot reach PostgreSQL at {where(target)}: is the server "
            f"running and the dsn right? ({first})"
        )
    return f"target {target.name}: cannot connect to {where(target)}: {first}"


# --- choosing client binaries -------------------------------------------------


def _major(banner: str) -> int:
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", banner) or re.search(r"(\d+)", banner)
    return int(match.group(1)) if match else 0


def bin_dir(target: PostgresTarget, server_major: int) -> Path | None:
    """The configured bin dir, else the newest Debian-style client at least as new as
    the server, else PATH. pg_dump older than the server refuses to run."""
    if target.pg_bin_dir:
        return target.pg_bin_dir
    for major, path in debian_clients("pg_dump"):
        if major >= server_major:
            return path
    return None


def debian_clients(tool: str) -> list[tuple[int, Path]]:
    """(major, bin dir) of every /usr/lib/postgresql/N/bin holding `tool`, oldest first."""
    found = [
        (int(p.parent.name), p)
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if p.parent.name.isdigit() and (p / tool).exists()
    ]
    return sorted(found)


def client_for(target: PostgresTarget, server_major: int, name: str) -> tuple[Path | None, str]:
    box = containers.of(target)
    directory = target.pg_bin_dir if box else bin_dir(target, server_major)
    banner = version_banner(target, directory, name, box)
    if _major(banner) < server_major:
        raise PyopsError(
            f"{name} is version {_major(banner)} but the server of target {target.name} is "
            f"{server_major}: install postgresql-client-{server_major} or set pg_bin_dir"
            + (f" (a directory inside container {target.container})" if box else "")
        )
    return directory, banner


def version_banner(
    target: PostgresTarget, directory: Path | None, name: str, box: Exec | None
) -> str:
    """`name --version` where the tool runs: here, or inside the target's container."""
    try:
        return first_line(pg.version(directory, name, container=box))
    except StageFailed as exc:
        if box is None:
            raise
        raise containers.tool_failed(target, box, exc, name) from None


# --- dump ---------------------------------------------------------------------


@contextlib.contextmanager
def dump(target: PostgresTarget, scratch: Path) -> Iterator[Dump]:
    """pg_dump from the snapshot pyops' own session exports and holds; that session
    counts each table's rows meanwhile. A failure of that session is the cause of a
    failed backup, and is raised as such (pgsnapshot explains)."""
    env = child_env(target)
    box = containers.of(target)
    snap = pgsnapshot.open_snapshot(target, lambda conn: _housekeeping(target, conn))
    try:
        directory, banner = client_for(target, snap.server_major, "pg_dump")
        lock_wait_ms = max(1, round(target.lock_wait_seconds * 1000))
        try:  # in the snapshot's transaction, before the count takes the session
            saved = pg_globals.capture(snap.conn)
        except psycopg.Error as exc:
            raise snap.explain(exc) from None
        snap.start_counting()
        try:
            if target.format == "directory":
                _dump_directory(target, directory, env, snap.id, scratch / "dump", lock_wait_ms)
                stages = [_tar_directory(scratch)]
            else:
                stages = [
                    pg.pg_dump(
                        directory,
                        child_conninfo(target),
                        target.format,
                        env=env,
                        snapshot=snap.id,
                        lock_wait_ms=lock_wait_ms,
                        container=box,
                        **pg.dump_options(target),
                    )
                ]
            size = int(snap.source["size"])
            inside = {"container": box.container, "container_engine": box.engine} if box else {}
            yield Dump(
                format=target.format,
                source={**snap.source, **snap.dump_facts, **inside},
                tools={"pg_dump": banner},
                stages=stages,
                estimate=lambda: size,
                content=lambda: {"tables": snap.counts()},
                attachments={"globals": saved},
            )
            snap.counts()
        except BaseException as exc:
            cause = snap.explain(exc)
            if cause is exc:
                raise
            raise cause from None
    finally:
        snap.close()


def _dump_directory(
    target: PostgresTarget,
    directory: Path | None,
    env: dict[str, str],
    snapshot: str,
    out: Path,
    lock_wait_ms: int,
) -> None:
    """pg_dump -j needs a directory: it goes to the private scratch, then is streamed as
    tar through the encoders and removed (docs/operators-guide.md explains the trade-off)."""
    stage = pg.pg_dump(
        directory,
        child_conninfo(target),
        "directory",
        env=env,
        snapshot=snapshot,
        jobs=target.jobs,
        directory=out,
        lock_wait_ms=lock_wait_ms,
        **pg.dump_options(target),
    )
    with pipeline([stage], stdout=PIPE) as running:
        for _ in running.chunks():
            pass


def _tar_directory(scratch: Path) -> Stage:
    return Stage("tar", ("tar", "--create", "--file=-", f"--directory={scratch}", "dump"))


# --- checks -------------------------------------------------------------------


def _pg_restore_stage(
    conninfo_: str | None,
    env: dict[str, str],
    jobs: int = 1,
    source: Path | None = None,
    flags: tuple[str, ...] = (),
    target: PostgresTarget | None = None,
) -> Stage:
    """pg_restore here (the newest client), or inside `target`'s container."""
    box = containers.of(target) if target else None
    directory = (target.pg_bin_dir if target else None) if box else newest_client()
    return pg.pg_restore(
        directory, conninfo_, env=env, jobs=jobs, source=source, flags=flags, container=box
    )


def newest_client() -> Path | None:
    """pg_restore must be at least as new as the pg_dump that wrote the archive: take
    the newest installed client (Debian layout), else PATH."""
    candidates = debian_clients("pg_restore")
    return candidates[-1][1] if candidates else None


def deep_check(
    manifest: Manifest, chunks: Iterable[bytes], decoders: list[Stage], scratch: Path
) -> dict[str, Any]:
    """Decode everything and let pg_restore read every byte (to /dev/null): `--list`
    alone reads only the table of contents and passes a dump cut at 60%."""
    fmt = manifest.format
    if fmt == "plain":
        tail = b""
        with stream.decoded(chunks, decoders) as decoded:
            while chunk := decoded.read(1 << 20):
                tail = (tail + chunk)[-4096:]
        if PLAIN_END not in tail:
            raise VerifyFailed(f"{manifest.id}: SQL dump is incomplete (no end marker)")
        return {}
    if fmt == "directory":
        out = _unpack_directory(manifest, chunks, decoders, scratch)
        _run([_pg_restore_stage(None, {}, source=out)], manifest)
        return {}
    _run([*decoders, _pg_restore_stage(None, {})], manifest, chunks)
    return {}


def _run(stages: list[Stage], manifest: Manifest, chunks: Iterable[bytes] | None = None) -> None:
    from pyops.errors import StageFailed

    try:
        if chunks is None:
            with pipeline(stages, stdout=DEVNULL):
                pass
        else:
            stream.into_tool(chunks, stages)
    except StageFailed as exc:
        raise VerifyFailed(f"{manifest.id}: {exc}") from None


def _unpack_directory(
    manifest: Manifest, chunks: Iterable[bytes], decoders: list[Stage], scratch: Path
) -> Path:
    out = scratch / "unpacked"
    out.mkdir(mode=0o700)
    with stream.decoded(chunks, decoders) as decoded:
        tarsafe.extract(decoded, ["dump"], lambda root: out / root)
    return out / "dump"


# --- restore ------------------------------------------------------------------


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _maintenance_db(target: PostgresTarget) -> psycopg.Connection[Any]:
    """An autocommit session to the `postgres` database for CREATE/DROP/RENAME DATABASE,
    with pgfacts' restore limits (a role's own statement_timeout does not apply)."""
    return session.connect(
        target, session.restore(target.lock_wait_seconds), purpose="restore", db="postgres"
    )


RESTORE_SUFFIX = "_pyops_restore_"
STAMP_TAIL = re.compile(r"\d{8}T\d{6}Z$")


def drop_restore_leftovers(
    target: PostgresTarget, conn: psycopg.Connection[Any] | None = None
) -> list[str]:
    """Drop databases a killed in-place restore of this target left (`<db>_pyops_restore_
    <stamp>`). Only names pyops makes, and only under the repository lock, where no
    other pyops run can be restoring. `conn`: an autocommit session to use (a backup's
    snapshot session, before its transaction: no extra connection); default: a new one
    to the `postgres` database."""
    if conn is None:
        with _maintenance_db(target) as own:
            return drop_restore_leftovers(target, own)
    prefix = _name(dbname(target), RESTORE_SUFFIX + "0" * 16)[:-16]
    dropped = []
    names = [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    for name in names:
        if name.startswith(prefix) and STAMP_TAIL.fullmatch(name[len(prefix) :]):
            log.warning("dropping %s, left by an interrupted restore", name)
            _drop(conn, name)
            dropped.append(name)
    return dropped


def _housekeeping(target: PostgresTarget, conn: psycopg.Connection[Any]) -> None:
    """Before a backup: leftovers of interrupted restores go; failing that is a warning."""
    try:
        drop_restore_leftovers(target, conn)
    except (psycopg.Error, PyopsError) as exc:  # never the reason a backup fails
        log.warning("could not remove leftovers of interrupted restores: %s", exc)


def check_database_name(into: str) -> None:
    """--into names a database: something PostgreSQL can name, nothing else."""
    if not into.strip() or len(into.encode()) > 63 or "\0" in into or into != into.strip():
        raise UsageError(
            f"--into {into!r} is not a database name (1 to 63 bytes, no surrounding blanks)",
            "--into",
        )


def check_client(manifest: Manifest | None, target: PostgresTarget | None = None) -> Path | None:
    """pg_restore must be at least as new as the pg_dump that wrote the dump: say both
    versions before anything is touched. With the target's `container`, the client
    is the container's."""
    box = containers.of(target) if target else None
    directory = (target.pg_bin_dir if target else None) if box else newest_client()
    if manifest is None:
        return directory
    dumped = _major(manifest.tools.get("pg_dump", ""))
    tool = "pg_restore" if manifest.format != "plain" else "psql"
    banner = (
        version_banner(target, directory, tool, box)
        if target and box
        else first_line(pg.version(directory, tool))
    )
    if dumped and _major(banner) < dumped:
        there = f"in container {box.container}" if box else "here"
        fix = (
            f"run a PostgreSQL {dumped} image, or restore from a host with "
            f"postgresql-client-{dumped}"
            if box
            else f"install postgresql-client-{dumped}"
        )
        raise PyopsError(
            f"{manifest.id} was written by pg_dump {dumped} ({manifest.tools['pg_dump']}), but "
            f"the newest client {there} is {banner}: {fix} (nothing was changed)"
        )
    return directory


def plan(
    target: PostgresTarget,
    into: str | None,
    manifest: Manifest | None = None,
    options: RestoreOptions | None = None,
) -> RestorePlan:
    """What the restore will do, and everything that would stop it half-way, checked
    before anything changes: the client's version, the rights to create the roles and
    the database, to give it its owner, to end the sessions on the live database and
    to rename it aside."""
    opts = options or RestoreOptions()
    if into is not None:
        check_database_name(into)
    containers.bridge(target)  # the engine, the container, the server: before anything
    if target.container and manifest is not None and manifest.format == "directory":
        raise PyopsError(_directory_in_container(manifest, target.container))
    check_client(manifest, target)
    live = dbname(target)
    drop_restore_leftovers(target)
    notes: list[str] = []
    with _maintenance_db(target) as conn:
        who = pgrebuild.me(conn)
        problems: list[str] = []
        if into and _exists(conn, into):
            raise PyopsError(
                f"--into database {into!r} exists: drop it or choose a new name "
                "(nothing was changed)"
            )
        overwrites = not into and _exists(conn, live)
        state = opts.globals
        if state is not None:
            existing = pgrebuild.existing_roles(conn)
            roles = pgstate.roles(state, existing, int(conn.info.server_version) // 10000)
            owner = None if opts.no_owner else pgstate.owner(state, who)
            owner_needs = owner if owner and not _member(conn, owner) else None
            problems += pgstate.missing_rights(roles, state, who, owner_needs)
            if roles.create:
                notes.append(f"roles to create (missing here): {', '.join(roles.create)}")
            notes += [f"left out: {s}" for s in roles.skipped]
            if not opts.partial:
                notes += pgrebuild.foreseen_refusals(state, who)
        else:
            if manifest is not None and not opts.partial:
                notes.append(
                    "this backup holds no roles or database settings (taken before pyops "
                    "kept them): roles must exist; owner, settings and grants of the "
                    "database are not restored"
                )
            if not who.createdb and not who.superuser:
                problems.append(
                    f"creating the database needs CREATEDB (ALTER ROLE {who.name} CREATEDB)"
                )
        if overwrites:
            problems += pgrebuild.session_problems(conn, live, who)
    if problems:
        raise PyopsError(
            "this restore could not finish, so nothing was changed: " + "; ".join(problems)
        )
    if opts.no_owner:
        notes.append(f"--no-owner: every object will belong to {who.name}")
    if opts.no_acl:
        notes.append("--no-acl: no grants are restored")
    if target.container and opts.jobs > 1:
        notes.append(
            f"--jobs {opts.jobs} is not used: pg_restore runs in container {target.container} "
            "and reads the dump from its stdin (parallel restore needs a file it can seek)"
        )
    if opts.tables:
        notes.append(
            "--table restores the table's definition and rows only: its indexes, constraints, "
            "defaults and sequences are not restored with it"
        )
    if into:
        return RestorePlan(
            destination=f"database {into} on {where(target)}", overwrites=False, notes=notes
        )
    if overwrites:
        notes += [
            "restored into a new database, then names are swapped; the current one is "
            f"kept as {live}_pre_restore_<time>",
            "sessions connected to it are terminated at the swap: stop the application",
        ]
    else:
        notes.append(f"database {live} does not exist here: nothing to replace")
    return RestorePlan(
        destination=f"database {live} on {where(target)}", overwrites=overwrites, notes=notes
    )


def _member(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute(
        "SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = %s",
        (role,),
    ).fetchone()
    return bool(row and row[0])


def _name(base: str, suffix: str) -> str:
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode("utf-8", "ignore")
    return cut + suffix


def _create_db(
    conn: psycopg.Connection[Any],
    name: str,
    manifest: Manifest,
    state: dict[str, Any] | None,
    owner: str | None,
) -> None:
    """CREATE DATABASE with the source's encoding and locale (its locale provider
    too), then give it its owner: before hours of loading, so a refusal costs nothing."""
    facts = {**manifest.source, **((state or {}).get("database") or {})}
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if facts.get("encoding"):
        query += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(facts["encoding"]),
            sql.Literal(facts.get("collate")),
            sql.Literal(facts.get("ctype")),
        )
    if facts.get("locale_provider") == "icu" and facts.get("icu_locale"):
        query += sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(facts["icu_locale"])
        )
    try:
        conn.execute(query)
        if owner:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
    except psycopg.Error as exc:
        with contextlib.suppress(psycopg.Error):
            _drop(conn, name)
        raise PyopsError(f"cannot create database {name}: {exc}".strip()) from None


def drop_database(target: PostgresTarget, name: str) -> None:
    with _maintenance_db(target) as conn:
        _drop(conn, name)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    from pyops.sources import pgdrop

    pgdrop.drop(conn, name)


def restore(
    target: PostgresTarget,
    manifest: Manifest,
    chunks: Iterable[bytes],
    decoders: list[Stage],
    into: str | None,
    stamp: str,
    scratch: Path,
    jobs: int,
    options: RestoreOptions | None = None,
) -> Staged:
    """Roles first (the missing ones), then a new database with the source's encoding,
    locale and owner, the dump loaded into it, then its settings, grants and comment;
    commit swaps it in."""
    opts = options or RestoreOptions(jobs=jobs)
    live = dbname(target)
    work = into or _name(live, f"{RESTORE_SUFFIX}{stamp}")
    env = child_env(target)
    state = opts.globals
    outcome = pgrebuild.Outcome()
    with _maintenance_db(target) as conn:
        who = pgrebuild.me(conn)
        roles = pgrebuild.create_roles(conn, state, outcome) if state is not None else set()
        owner = None if opts.no_owner or state is None else pgstate.owner(state, who)
        _create_db(conn, work, manifest, state, owner if owner != who.name else None)
    try:
        if opts.partial:
            _create_schemas(target, work, partial_schemas(manifest, opts))
        _load(target, manifest, chunks, decoders, child_conninfo(target, work), env, scratch, opts)
        if state is not None and not opts.partial:
            final = into or live  # what a statement to run by hand must name
            steps, skipped = pgstate.database(
                state, work, roles, owner or who.name, acl=not opts.no_acl
            )
            shown, _ = pgstate.database(state, final, roles, owner or who.name, acl=not opts.no_acl)
            outcome.not_applied += skipped
            with _maintenance_db(target) as conn:
                pgrebuild.run_steps(conn, list(zip(steps, shown, strict=True)), outcome)
    except BaseException:
        with contextlib.suppress(Exception):
            drop_database(target, work)
        raise
    done = outcome.summary()

    def commit() -> str:
        said = f"restored into database {into}" if into else _swap(target, live, work, stamp)
        return f"{said}; {done}" if done else said

    return Staged(commit=commit, discard=lambda: drop_database(target, work))


def partial_schemas(manifest: Manifest, opts: RestoreOptions) -> list[str]:
    """The schemas a --table/--schema restore writes into: pg_restore --table restores
    the table alone, not its schema, so they are created first (the manifest knows in
    which schema each table lies)."""
    found = set(opts.schemas)
    for name in manifest.content.get("tables", {}):
        schema, _, table = name.partition(".")
        if table in opts.tables and (not opts.schemas or schema in opts.schemas):
            found.add(schema)
    return sorted(found)


def _create_schemas(target: PostgresTarget, database: str, schemas: list[str]) -> None:
    limits = session.restore(target.lock_wait_seconds)
    with session.connect(target, limits, purpose="restore", db=database) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def _load(
    target: PostgresTarget,
    manifest: Manifest,
    chunks: Iterable[bytes],
    decoders: list[Stage],
    dest: str,
    env: dict[str, str],
    scratch: Path,
    opts: RestoreOptions,
) -> None:
    fmt, jobs = manifest.format, opts.jobs
    flags = opts.pg_restore_flags()
    box = containers.of(target)
    if box and fmt == "directory":
        raise PyopsError(_directory_in_container(manifest, box.container))
    if box:
        jobs = 1  # the container's pg_restore reads stdin: no seekable file for -j
    if fmt == "plain":
        directory = target.pg_bin_dir if box else newest_client()
        psql = pg.psql_script(directory, dest, env=env, container=box)
        stream.into_tool(chunks, [*decoders, psql])
    elif fmt == "directory":
        out = _unpack_directory(manifest, chunks, decoders, scratch)
        stage = _pg_restore_stage(dest, env, jobs=jobs, source=out, flags=flags)
        with pipeline([stage], stdout=DEVNULL):
            pass
        shutil.rmtree(out, ignore_errors=True)
    elif fmt == "custom" and jobs > 1:
        # pg_restore -j needs a seekable file: decode into the private scratch first
        copy = scratch / "restore.pgdump"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out_file, stream.decoded(chunks, decoders) as decoded:
            shutil.copyfileobj(decoded, out_file, 1 << 20)
        stage = _pg_restore_stage(dest, env, jobs=jobs, source=copy, flags=flags)
        with pipeline([stage], stdout=DEVNULL):
            pass
        copy.unlink()
    else:
        stage = _pg_restore_stage(dest, env, flags=flags, target=target)
        stream.into_tool(chunks, [*decoders, stage])


def _directory_in_container(manifest: Manifest, container: str) -> str:
    return (
        f"{manifest.id} is a directory-format dump: pg_restore inside container {container} "
        "cannot read its files; restore it from a host with postgresql-client and a "
        "published port (nothing was changed)"
    )


def _swap(target: PostgresTarget, live: str, work: str, stamp: str) -> str:
    """Rename the live database aside and the restored one into its name, atomically."""
    aside = _name(live, f"_pre_restore_{stamp}")
    for attempt in range(5):
        with _maintenance_db(target) as conn:
            exists = _exists(conn, live)
            if exists:
                pgrebuild.terminate(conn, live, pgrebuild.me(conn))
            try:
                with conn.transaction():
                    if exists:
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(live), sql.Identifier(aside)
                            )
                        )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(work), sql.Identifier(live)
                        )
                    )
            except psycopg.errors.ObjectInUse:
                time.sleep(0.5 * (attempt + 1))
                continue
            except psycopg.Error as exc:
                raise PyopsError(
                    f"could not swap {work} into {live}: {exc.diag.message_primary or exc}. "
                    f"The restored copy is kept as {work}: run ALTER DATABASE {live} RENAME TO "
                    f"{aside}; ALTER DATABASE {work} RENAME TO {live}; (the next backup or "
                    "restore of this target drops it otherwise)"
                ) from None
        kept = f"; previous database kept as {aside}" if exists else ""
        return f"restored database {live}{kept}"
    raise PyopsError(
        f"could not swap {work} into {live}: clients keep reconnecting. Stop the application "
        f"and run: ALTER DATABASE {live} RENAME TO {aside}; ALTER DATABASE {work} RENAME TO {live};"
    )
