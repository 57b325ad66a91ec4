"""Helpers for the drill and shell-script tests: a repository + config with the three
target types, content snapshots to prove live data untouched, manifest surgery."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixtures.cli import run_pyops, write_config
from fixtures.pgcluster import PgCluster
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CLI_TIMEOUT = 120.0


def toml_str(value: str | Path) -> str:
    """A TOML basic string (JSON string syntax is a subset for what we write)."""
    return json.dumps(str(value))


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# --- config pieces --------------------------------------------------------------------


def pg_target(name: str, dsn: str) -> str:
    return (
        f'[[targets]]\nname = {toml_str(name)}\ntype = "postgres"\n'
        f'dsn = {toml_str(dsn)}\nformat = "custom"\n'
    )


def sqlite_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = {toml_str(name)}\ntype = "sqlite"\npath = {toml_str(path)}\n'


def files_target(name: str, path: Path) -> str:
    return f'[[targets]]\nname = {toml_str(name)}\ntype = "files"\npaths = [{toml_str(path)}]\n'


ZSTD = '[compression]\nalgorithm = "zstd"\nlevel = 1\nthreads = 1\n'


def gpg_public(email: str, gnupghome: Path) -> str:
    return (
        f'[encryption]\nmode = "gpg-public"\nrecipients = [{toml_str(email)}]\n'
        f"gnupghome = {toml_str(gnupghome)}\n"
    )


def gpg_symmetric(passphrase_file: Path, gnupghome: Path) -> str:
    return (
        f'[encryption]\nmode = "gpg-symmetric"\npassphrase_file = {toml_str(passphrase_file)}\n'
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
    env: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.base / "repo"

    @property
    def config(self) -> Path:
        return self.base / "pyops.toml"

    @property
    def drill_dir(self) -> Path:
        return self.path / ".pyops" / "drill"

    def write(self, body: str) -> Repo:
        write_config(self.config, self.path, body)
        return self

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=self.env, timeout=CLI_TIMEOUT)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, describe(proc)
        return proc

    def json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok(*args, "--format", "json").stdout)
        return data

    def artifact(self, target: str) -> Path:
        """The newest artifact of `target` (any tier)."""
        manifest = newest_manifest(self.path, target)
        name = json.loads(manifest.read_text())["artifact"]["name"]
        return manifest.with_name(name)


# --- live data ------------------------------------------------------------------------


@dataclass
class Live:
    """The live data of the three targets, and how to fingerprint each."""

    pg: PgCluster
    db: str
    sqlite: Path
    files: Path

    def fingerprint(self) -> dict[str, Any]:
        return {
            "pg": pg_snapshot(self.pg, self.db),
            "sqlite": file_sha256(self.sqlite),
            "files": tree_digest(self.files),
        }


def seed_postgres(pg: PgCluster, db: str) -> None:
    pg.psql(
        """
        CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2));
        INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 250) g;
        CREATE TABLE "MixedCase" ("Id" int PRIMARY KEY, "Label" text);
        INSERT INTO "MixedCase" SELECT g, 'label-' || g FROM generate_series(1, 17) g;
        CREATE SCHEMA audit;
        CREATE TABLE audit.events (id bigserial PRIMARY KEY, what text);
        INSERT INTO audit.events (what) SELECT 'e' || g FROM generate_series(1, 3) g;
        """,
        dbname=db,
    )


def seed_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(40)])
        conn.execute('CREATE TABLE "Tags" (name TEXT)')
        conn.executemany('INSERT INTO "Tags" VALUES (?)', [("a",), ("b",), ("c",)])
    conn.close()


def seed_files(path: Path) -> None:
    (path / "sub" / "deeper").mkdir(parents=True)
    (path / "a.txt").write_text("alpha\n")
    (path / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (path / "sub" / "deeper" / "c.txt").write_text("gamma " * 1000)
    (path / "empty").write_bytes(b"")
    (path / "private.key").write_text("not really a key\n")
    (path / "private.key").chmod(0o600)


def pg_snapshot(pg: PgCluster, db: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every user table's rows, sorted: equal snapshots mean equal content."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with pg.connect(db) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            out[f"{schema}.{table}"] = sorted(conn.execute(query).fetchall(), key=repr)
    return out


def sqlite_snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        quoted = {n: '"' + n.replace('"', '""') + '"' for n in names}
        return {n: sorted(conn.execute(f"SELECT * FROM {quoted[n]}").fetchall()) for n in names}
    finally:
        conn.close()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mode) of every regular file, plus every directory."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root)) + "/"] = ("dir", p.stat().st_mode & 0o7777)
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = (file_sha256(p), p.stat().st_mode & 0o7777)
    return out


def databases_like(pg: PgCluster, prefix: str) -> list[str]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
    return [str(r[0]) for r in rows]


# --- manifests ------------------------------------------------------------------------


def newest_manifest(repo: Path, target: str) -> Path:
    found = sorted(
        (repo / target).glob("*/*.manifest.json"),
        key=lambda p: json.loads(p.read_text())["started_at"],
    )
    assert found, f"no manifest for {target} under {repo}"
    return found[-1]


def edit_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Rewrite a manifest in place (mode kept); returns the edited document."""
    doc: dict[str, Any] = json.loads(path.read_text())
    change(doc)
    mode = path.stat().st_mode & 0o7777
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    path.chmod(mode)
    return doc


def run_script(
    name: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """`bash scripts/NAME ARGS...` with exactly `env` (os.environ if None)."""
    return subprocess.run(
        ["/bin/bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ if env is None else env),
        timeout=timeout,
        check=False,
    )


# --- scratch clusters -----------------------------------------------------------------


@contextlib.contextmanager
def scratch_tmpdir() -> Iterator[Path]:
    """A short TMPDIR the postgres system user can traverse, for `--scratch-cluster`
    (a unix socket path has ~107 bytes: pytest's tmp_path is too deep). It must be
    empty again afterwards: the scratch cluster removes itself."""
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        left = sorted(p.name for p in path.iterdir())
        shutil.rmtree(path, ignore_errors=True)
        assert left == [], f"a scratch cluster was left in {path}: {left}"


def cluster_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())
