"""Helpers for the end-to-end tests: a repository + config, a rich source database,
content snapshots to compare databases, and a /proc watcher for leaked secrets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixtures.cli import PYOPS, run_pyops, write_config
from fixtures.pgcluster import PgCluster
from psycopg import sql

CLI_TIMEOUT = 180.0


def toml_str(value: str | Path) -> str:
    """A TOML basic string (JSON string syntax is a subset for what we write)."""
    return json.dumps(str(value))


def pg_target(
    name: str,
    dsn: str,
    *,
    fmt: str = "custom",
    jobs: int = 1,
    password_env: str = "",
) -> str:
    lines = [
        "[[targets]]",
        f"name = {toml_str(name)}",
        'type = "postgres"',
        f"dsn = {toml_str(dsn)}",
        f"format = {toml_str(fmt)}",
    ]
    if jobs != 1:
        lines.append(f"jobs = {jobs}")
    if password_env:
        lines.append(f"password_env = {toml_str(password_env)}")
    return "\n".join(lines) + "\n"


def compression(algorithm: str = "zstd", level: int = 1) -> str:
    body = f"[compression]\nalgorithm = {toml_str(algorithm)}\n"
    if algorithm != "none":
        body += f"level = {level}\nthreads = 1\n"
    return body


def encryption_public(recipients: list[str], gnupghome: Path, passphrase_file: Path | None) -> str:
    body = (
        '[encryption]\nmode = "gpg-public"\n'
        f"recipients = [{', '.join(toml_str(r) for r in recipients)}]\n"
        f"gnupghome = {toml_str(gnupghome)}\n"
    )
    if passphrase_file is not None:
        body += f"passphrase_file = {toml_str(passphrase_file)}\n"
    return body


def encryption_symmetric(passphrase_file: Path, gnupghome: Path) -> str:
    return (
        '[encryption]\nmode = "gpg-symmetric"\n'
        f"passphrase_file = {toml_str(passphrase_file)}\n"
        f"gnupghome = {toml_str(gnupghome)}\n"
    )


def secret_file(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return path


@dataclass
class Repo:
    """A repository directory (created by pyops) and the config that points at it."""

    base: Path
    body: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.base / "repo"

    @property
    def config(self) -> Path:
        return self.base / "pyops.toml"

    def write(self, body: str) -> Repo:
        self.body = body
        write_config(self.config, self.path, body)
        return self

    def run(
        self, *args: str, input: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(
            self.config, *args, input=input, env={**self.env, **(env or {})}, timeout=CLI_TIMEOUT
        )

    def ok(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, describe(proc)
        return proc

    def argv(self, *args: str) -> list[str]:
        return [PYOPS, "--config", str(self.config), *args]

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json").stdout)

    def manifests(self) -> list[dict[str, Any]]:
        """Every manifest on disk, with `_dir` added (newest first by id)."""
        out = []
        for p in sorted(self.path.glob("*/*/*.manifest.json"), reverse=True):
            data = json.loads(p.read_text())
            data["_dir"] = str(p.parent)
            out.append(data)
        return out

    def all_files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if not p.is_dir())

    def backup_files(self) -> list[Path]:
        """Every file but the repository's own housekeeping: the state dir, the lock
        and the identity."""
        return [
            p
            for p in self.all_files()
            if ".pyops" not in p.parts and p.relative_to(self.path).parts[0] not in HOUSEKEEPING
        ]


HOUSEKEEPING = (".lock", "repository.json")


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {proc.returncode}\nargv: {proc.args}\n--- stdout ---\n{proc.stdout}\n"
        f"--- stderr ---\n{proc.stderr}"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_private_tree(root: Path) -> None:
    """Every directory 0700, every file 0600 (the repository holds secrets)."""
    bad = []
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = 0o700 if p.is_dir() else 0o600
        if mode != want:
            bad.append(f"{p.relative_to(root.parent)}: {oct(mode)} (want {oct(want)})")
    assert not bad, "wrong permissions:\n" + "\n".join(bad)


# --- source databases ---------------------------------------------------------------

MARKER = "PYOPS-PLAINTEXT-MARKER-5f1c0a9e7d2b4c38"

RICH_SCHEMA = f"""
CREATE EXTENSION pg_trgm;
CREATE EXTENSION hstore;
CREATE SCHEMA "Sales";
CREATE SCHEMA reporting;

CREATE TABLE "Sales"."Orders" (
    id serial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2),
    doc jsonb,
    attrs hstore,
    payload bytea,
    created timestamptz
);
INSERT INTO "Sales"."Orders" (customer, amount, doc, attrs, payload, created)
SELECT 'Kunde ' || (g % 17) || ' Grüße',
       (g * 3.17)::numeric(12, 2),
       jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'ß', g % 3),
                          'nested', jsonb_build_object('ok', g % 2 = 0)),
       hstore(ARRAY['k' || g, 'colour'], ARRAY[g::text, 'blau']),
       decode(md5(g::text) || md5((g * 7)::text), 'hex'),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 400) AS g;
CREATE INDEX orders_customer_trgm ON "Sales"."Orders" USING gin (customer gin_trgm_ops);
-- the serial's sequence is far ahead of its rows: restore must keep 5000, not 400
SELECT setval(pg_get_serial_sequence('"Sales"."Orders"', 'id'), 5000);

CREATE TABLE "Sales"."Line Items" (
    order_id int REFERENCES "Sales"."Orders" (id),
    sku text,
    qty int
);
INSERT INTO "Sales"."Line Items"
SELECT g % 400 + 1, 'SKU-' || g, g % 5 FROM generate_series(1, 900) g;

CREATE TABLE public."Ünïcode" (
    "ключ" int PRIMARY KEY,
    "wert" text,
    raw bytea
);
INSERT INTO public."Ünïcode" VALUES
    (1, 'äöü ß €', '\\x00ff10'),
    (2, '日本語テキスト', (SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), ''), 'hex')
                          FROM generate_series(0, 255) b)),
    (3, 'emoji 🐘 and tab	end', NULL),
    (4, E'quote '' backslash \\\\ newline\\n', ''),
    (5, '{MARKER}', NULL);

CREATE SEQUENCE reporting.invoice_no START 100;
SELECT setval('reporting.invoice_no', 4242, true);

CREATE TABLE reporting.empty_table (x int);

CREATE VIEW reporting.order_totals AS
    SELECT customer, count(*) AS n, sum(amount) AS total
    FROM "Sales"."Orders" GROUP BY customer;

CREATE TABLE public.blobs (name text PRIMARY KEY, lo oid);
INSERT INTO public.blobs VALUES
    ('big', lo_from_bytea(0, (SELECT decode(string_agg(md5(g::text), ''), 'hex')
                               FROM generate_series(1, 5000) g))),
    ('small', lo_from_bytea(0, '\\x00010203fffe'::bytea));
"""


def populate_rich(pg: PgCluster, db: str) -> None:
    pg.psql(RICH_SCHEMA, dbname=db)


TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2
"""


def snapshot(pg: PgCluster, db: str) -> dict[str, Any]:
    """What must survive a restore, as comparable plain data."""
    with pg.connect(db) as conn:
        tables = [(str(s), str(t)) for s, t in conn.execute(TABLES_SQL).fetchall()]
        checksums: dict[str, tuple[int, str | None]] = {}
        for schema, table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
            row = conn.execute(query).fetchone()
            assert row is not None
            checksums[f"{schema}.{table}"] = (int(row[0]), row[1])
        sequences = {
            f"{s}.{n}": (last, called)
            for s, n, last, called in conn.execute(
                "SELECT schemaname, sequencename, last_value, last_value IS NOT NULL "
                "FROM pg_sequences ORDER BY 1, 2"
            ).fetchall()
        }
        blobs = conn.execute(
            "SELECT oid::bigint, md5(lo_get(oid)), length(lo_get(oid)) "
            "FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
        views = {}
        for schema, view in conn.execute(
            "SELECT schemaname, viewname FROM pg_views "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall():
            row = conn.execute(
                sql.SQL(
                    "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {}.{} t"
                ).format(sql.Identifier(schema), sql.Identifier(view))
            ).fetchone()
            assert row is not None
            views[f"{schema}.{view}"] = row[0]
        extensions = sorted(
            str(r[0]) for r in conn.execute("SELECT extname FROM pg_extension").fetchall()
        )
        indexes = sorted(
            f"{r[0]}.{r[1]}"
            for r in conn.execute(
                "SELECT schemaname, indexname FROM pg_indexes "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
        )
    return {
        "tables": checksums,
        "sequences": sequences,
        "large_objects": blobs,
        "views": views,
        "extensions": extensions,
        "indexes": indexes,
    }


def databases(pg: PgCluster, prefix: str) -> list[str]:
    with pg.connect() as conn:
        return sorted(
            str(r[0])
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            ).fetchall()
        )


def drop_databases(pg: PgCluster, prefix: str) -> None:
    for name in databases(pg, prefix):
        pg.drop_database(name)


# --- watching /proc for secrets ------------------------------------------------------

WATCHED = ("pg_dump", "pg_restore", "psql", "gpg", "zstd", "gzip", "tar")
PG_TOOLS = ("pg_dump", "pg_restore", "psql")


@dataclass
class Sighting:
    pid: int
    argv: list[str]
    secret_in_env: bool
    ours: bool  # a descendant of the watched pyops process

    @property
    def tool(self) -> str:
        return os.path.basename(self.argv[0]) if self.argv else ""


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


def is_descendant(pid: int, root: int) -> bool:
    for _ in range(64):
        pid = parent_pid(pid)
        if pid == root:
            return True
        if pid <= 1:
            return False
    return False


class ProcWatcher:
    """Samples /proc/*/cmdline every few ms on a thread while `run` runs pyops. Records
    any argv holding a secret (any process on the machine), and for every new exec of a
    watched tool, and any process at all whose environment holds `env_secret`, whether
    its environment holds it and whether it descends from the pyops process."""

    def __init__(self, secrets: list[str], env_secret: str, interval: float = 0.002) -> None:
        self.secrets = [s.encode() for s in secrets if s]
        self.env_secret = env_secret.encode()
        self.interval = interval
        self.argv_leaks: list[list[str]] = []
        self.sightings: list[Sighting] = []
        self.samples = 0
        self._seen: set[tuple[int, bytes]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._me = os.getpid()
        self.root = -1

    def run(
        self, argv: list[str], env: Mapping[str, str], timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **env},
        )
        self.root = proc.pid
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def __enter__(self) -> ProcWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tools_seen(self) -> set[str]:
        """Watched tools seen running under the pyops process."""
        return {s.tool for s in self.sightings if s.ours}

    def holders(self) -> set[str]:
        """Programs (anywhere) whose environment held `env_secret`."""
        return {s.tool for s in self.sightings if s.secret_in_env}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self.samples += 1
            time.sleep(self.interval)

    def _sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid == self._me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            if not raw:
                continue
            if any(s in raw for s in self.secrets):
                self.argv_leaks.append([a.decode(errors="replace") for a in raw.split(b"\0")])
            key = (pid, raw)
            if key in self._seen:
                continue
            self._seen.add(key)
            argv = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
            # pyops itself (and its forks before exec) hold the variable by design
            if any(os.path.basename(a) == "pyops" for a in argv[:2]):
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
                # the exec may have happened between the two reads: re-check
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() != raw:
                        self._seen.discard(key)
                        continue
            except OSError:
                continue
            holds = self.env_secret in env
            if holds or os.path.basename(argv[0]) in WATCHED:
                ours = self.root > 0 and is_descendant(pid, self.root)
                self.sightings.append(Sighting(pid, argv, holds, ours))


def proc_children(ppid: int) -> Iterator[tuple[int, str]]:
    """(pid, comm) of the live children of `ppid`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split at the last ')'
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == ppid:
            yield int(entry.name), comm


def proc_wchar(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return -1
    return -1


# --- tracing every exec with strace ---------------------------------------------------

_STR = re.compile(r'"((?:[^"\\]|\\.)*)"(?:\.\.\.)?')


@dataclass
class Exec:
    """One execve(2) seen by strace: who tried to run what, with which environment."""

    pid: int
    path: str
    argv: list[str]
    env: list[str]

    @property
    def tool(self) -> str:
        return os.path.basename(self.path)


def _string_list(text: str, i: int) -> tuple[list[str], int]:
    assert text[i] == "[", text[i : i + 40]
    i += 1
    items: list[str] = []
    while True:
        while text[i] in ", ":
            i += 1
        if text[i] == "]":
            return items, i + 1
        match = _STR.match(text, i)
        assert match, text[i : i + 80]
        items.append(match.group(1))
        i = match.end()


def parse_strace(log: Path) -> list[Exec]:
    execs = []
    for line in log.read_text(errors="replace").splitlines():
        head = re.match(r"(\d+)\s+execve\(", line)
        if not head:
            continue
        path = _STR.match(line, head.end())
        assert path, line[:200]
        i = path.end() + 2  # ", "
        argv, i = _string_list(line, i)
        env, _ = _string_list(line, i + 2)
        execs.append(Exec(int(head.group(1)), path.group(1), argv, env))
    return execs


def run_traced(
    argv: list[str], env: Mapping[str, str], log: Path
) -> tuple[subprocess.CompletedProcess[str], list[Exec]]:
    """Run `argv` under `strace -f -e trace=execve -v` (every exec with its full
    environment, failed PATH lookups included)."""
    strace = shutil.which("strace")
    assert strace
    cmd = [
        strace,
        "-f",
        "-qq",
        "-v",
        "-s",
        "65536",
        "-e",
        "trace=execve",
        "-e",
        "signal=none",
        "-o",
        str(log),
        *argv,
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return proc, parse_strace(log)


def strace_usable() -> bool:
    if not shutil.which("strace"):
        return False
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-o", "/dev/null", "true"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return probe.returncode == 0
