"""The stock-tools one-liners of docs/restore-runbook.md, run for real.

Each `<!-- oneliner: NAME -->` block is extracted from the runbook and run with
`bash -o pipefail` against an artifact the real `pyops` CLI wrote, with the
runbook's variables ($ARTIFACT, $MANIFEST, $NEWDB, ...) in the environment.
The restored data is then compared with the source, so the runbook cannot drift
from what pyops writes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import run_pyops, write_config
from fixtures.gpgkeys import GpgKey
from fixtures.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "restore-runbook.md"
ONELINER = re.compile(r"<!-- oneliner: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```", re.S)
PASSPHRASE = "correct horse battery staple"


def oneliners() -> dict[str, str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for name, body in ONELINER.findall(text):
        assert name not in found, f"runbook: oneliner {name} appears twice"
        found[name] = body
    return found


@dataclass(frozen=True)
class Scenario:
    """What backup a one-liner needs, and how its result is checked."""

    kind: str  # postgres | sqlite | files
    compression: str  # zstd | gzip
    encryption: str  # none | gpg-public | gpg-symmetric
    check: str  # database | sqlite | files | listing | sha256 | exit-0
    format: str = "custom"  # postgres targets only
    jobs: int = 1


SCENARIOS: dict[str, Scenario] = {
    "sha256-check": Scenario("files", "zstd", "gpg-public", "sha256"),
    "pgdump-zst-gpg": Scenario("postgres", "zstd", "gpg-public", "database"),
    "pgdump-zst": Scenario("postgres", "zstd", "none", "database"),
    "pgdump-gz": Scenario("postgres", "gzip", "none", "database"),
    "pgdump-zst-gpg-check": Scenario("postgres", "zstd", "gpg-public", "exit-0"),
    "pgdump-zst-gpg-jobs": Scenario("postgres", "zstd", "gpg-public", "database"),
    "sql-zst": Scenario("postgres", "zstd", "none", "database", format="plain"),
    "sql-gz": Scenario("postgres", "gzip", "none", "database", format="plain"),
    "sql-zst-gpg": Scenario("postgres", "zstd", "gpg-public", "database", format="plain"),
    "sql-gz-complete": Scenario("postgres", "gzip", "none", "exit-0", format="plain"),
    "pgtar-zst": Scenario("postgres", "zstd", "none", "database", format="tar"),
    "pgdir-zst-gpg": Scenario(
        "postgres", "zstd", "gpg-public", "database", format="directory", jobs=2
    ),
    "sqlite3-zst-gpg": Scenario("sqlite", "zstd", "gpg-symmetric", "sqlite"),
    "sqlite3-zst": Scenario("sqlite", "zstd", "none", "sqlite"),
    "sqlite3-gz": Scenario("sqlite", "gzip", "none", "sqlite"),
    "tar-list-zst": Scenario("files", "zstd", "none", "listing"),
    "tar-zst": Scenario("files", "zstd", "none", "files"),
    "tar-zst-gpg": Scenario("files", "zstd", "gpg-public", "files"),
    "tar-gz": Scenario("files", "gzip", "none", "files"),
}


# --------------------------------------------------------------------------- sources

PG_SEED = """
CREATE TABLE items (
    id int PRIMARY KEY, name text, price numeric(10, 2), tags text[], payload bytea,
    created timestamptz
);
INSERT INTO items
SELECT g, 'item ' || g || ' \u2013 ünïcödé ''quoted''', g * 1.25, ARRAY['a', 'b c'],
       decode(md5(g::text), 'hex'), '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 400) g;
INSERT INTO items VALUES (0, NULL, NULL, NULL, NULL, NULL);
CREATE SCHEMA audit;
CREATE TABLE audit.log (id bigserial PRIMARY KEY, msg text NOT NULL);
INSERT INTO audit.log (msg) SELECT 'line ' || g FROM generate_series(1, 75) g;
CREATE VIEW item_names AS SELECT id, name FROM items WHERE name IS NOT NULL;
"""


def pg_fingerprint(pg: PgCluster, db: str) -> dict[str, str]:
    """Row count and md5 of every row of each table, the view, and the sequence."""
    out: dict[str, str] = {}
    for table in ("public.items", "audit.log", "public.item_names"):
        rows = "coalesce(string_agg(t::text, '|' ORDER BY t::text), '')"
        out[table] = pg.psql(f"SELECT count(*) || ' ' || md5({rows}) FROM {table} t", db).strip()
    out["sequence"] = pg.psql("SELECT last_value FROM audit.log_id_seq", dbname=db).strip()
    return out


def make_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, data BLOB)")
        conn.executemany(
            "INSERT INTO notes (body, data) VALUES (?, ?)",
            [(f"note {i} \u2013 ü", bytes([i % 256]) * (i % 50)) for i in range(300)],
        )
        conn.execute('CREATE TABLE "odd ""name""" (k TEXT PRIMARY KEY, v REAL)')
        conn.executemany('INSERT INTO "odd ""name""" VALUES (?, ?)', [("a", 1.5), ("b", None)])
        conn.commit()
    finally:
        conn.close()


def sqlite_dump(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def make_tree(base: Path) -> list[Path]:
    """Two configured paths with awkward names, an empty file and a relative link."""
    media = base / "srv" / "app" / "media"
    (media / "sub dir").mkdir(parents=True)
    (media / "a.txt").write_text("hello\n")
    (media / "sub dir" / "b.bin").write_bytes(os.urandom(70_000))
    (media / "with space.txt").write_text("spaces\n")
    (media / "empty").write_bytes(b"")
    (media / "link").symlink_to("a.txt")
    (media / "script.sh").write_text("#!/bin/sh\n")
    (media / "script.sh").chmod(0o750)
    nginx = base / "etc" / "nginx"
    nginx.mkdir(parents=True)
    (nginx / "nginx.conf").write_text("events {}\n")
    return [media, nginx]


def tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = path.lstat().st_mode & 0o7777
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", mode)
        else:
            out[rel] = ("file", mode, path.read_bytes())
    return out


# --------------------------------------------------------------------------- backups


@dataclass
class Made:
    """A backup made by the real CLI, and what the one-liner needs to restore it."""

    artifact: Path
    manifest: dict[str, Any]
    manifest_path: Path
    env: dict[str, str]
    source: Any  # source db name, sqlite path, or the list of file paths


def make_backup(
    request: pytest.FixtureRequest, tmp_path: Path, scenario: Scenario
) -> tuple[Made, PgCluster | None]:
    body = [f'[compression]\nalgorithm = "{scenario.compression}"\n']
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    pg: PgCluster | None = None
    if scenario.encryption != "none":
        key: GpgKey = request.getfixturevalue("gpg_home")
        env["GNUPGHOME"] = str(key.gnupghome)
        body.append(f'[encryption]\nmode = "{scenario.encryption}"\ngnupghome = "{key.gnupghome}"')
        if scenario.encryption == "gpg-public":
            body.append(f'recipients = ["{key.email}"]\n')
        else:
            passfile = tmp_path / "passphrase"
            passfile.write_text(PASSPHRASE + "\n")
            passfile.chmod(0o600)
            env["PASSFILE"] = str(passfile)
            body.append(f'passphrase_file = "{passfile}"\n')
    source: Any
    if scenario.kind == "postgres":
        pg = request.getfixturevalue("pg")
        db: str = request.getfixturevalue("pg_db")
        pg.psql(PG_SEED, dbname=db)
        env.update(PGHOST=pg.host, PGPORT=str(pg.port), PGUSER=pg.superuser)
        body.append(
            f'[[targets]]\nname = "app-db"\ntype = "postgres"\ndsn = "{pg.dsn(db)}"\n'
            f'format = "{scenario.format}"\njobs = {scenario.jobs}\n'
        )
        source, target = db, "app-db"
    elif scenario.kind == "sqlite":
        db_path = tmp_path / "live" / "app.sqlite3"
        make_sqlite(db_path)
        body.append(f'[[targets]]\nname = "app-sqlite"\ntype = "sqlite"\npath = "{db_path}"\n')
        source, target = db_path, "app-sqlite"
    else:
        paths = make_tree(tmp_path / "live")
        listed = ", ".join(f'"{p}"' for p in paths)
        body.append(f'[[targets]]\nname = "media"\ntype = "files"\npaths = [{listed}]\n')
        source, target = paths, "media"

    repo = tmp_path / "repo"
    config = write_config(tmp_path / "pyops.toml", repo, "\n".join(body))
    result = run_pyops(config, "backup", "--target", target, "--format", "json")
    assert result.returncode == 0, result.stderr
    (made,) = json.loads(result.stdout)["backups"]
    directory = repo / target / "daily"
    manifest_path = directory / f"{made['id']}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    artifact = directory / manifest["artifact"]["name"]
    env.update(
        ARTIFACT=str(artifact),
        MANIFEST=str(manifest_path),
        NEWDB=f"rb_{uuid.uuid4().hex[:10]}",
        SCRATCH=str(tmp_path / "scratch"),
        RESTORED=str(tmp_path / "restored" / "db.sqlite3"),
        RESTORE_DIR=str(tmp_path / "restore"),
    )
    (tmp_path / "restored").mkdir()
    return Made(artifact, manifest, manifest_path, env, source), pg


def run_oneliner(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --------------------------------------------------------------------------- tests


def test_every_oneliner_has_a_scenario() -> None:
    found = oneliners()
    assert set(found) == set(SCENARIOS), (
        "runbook one-liners and tests/runbook scenarios differ: "
        f"untested {sorted(set(found) - set(SCENARIOS))}, "
        f"missing from the runbook {sorted(set(SCENARIOS) - set(found))}"
    )
    for name, line in found.items():
        assert "\n" not in line, f"{name}: one line, please"


def test_every_variable_is_documented() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    table = text.split("### The variables used below", 1)[1].split("\n\n```", 1)[0]
    for name, line in oneliners().items():
        for var in re.findall(r"\$\{?([A-Z_]+)", line):
            assert f"`{var}`" in table, f"{name}: ${var} is not in the runbook's variable table"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.postgres) if s.kind == "postgres" else n
        for n, s in SCENARIOS.items()
    ],
)
def test_oneliner_restores(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> None:
    scenario = SCENARIOS[name]
    line = oneliners()[name]
    made, pg = make_backup(request, tmp_path, scenario)
    newdb = made.env["NEWDB"]
    try:
        result = run_oneliner(line, made.env, tmp_path)
        assert result.returncode == 0, f"{name}: {line}\nstderr: {result.stderr}"
        check_result(scenario, made, pg, result)
    finally:
        if pg is not None:
            pg.drop_database(newdb)


def check_result(
    scenario: Scenario, made: Made, pg: PgCluster | None, result: subprocess.CompletedProcess[str]
) -> None:
    env = made.env
    if scenario.check == "database":
        assert pg is not None
        restored = pg_fingerprint(pg, env["NEWDB"])
        assert restored == pg_fingerprint(pg, made.source)
        counts = {k: int(v.split()[0]) for k, v in restored.items() if k != "public.item_names"}
        del counts["sequence"]
        assert counts == made.manifest["content"]["tables"]
        assert not Path(env["SCRATCH"]).exists(), "the plaintext scratch must be removed"
    elif scenario.check == "sqlite":
        assert result.stdout.strip() == "ok"
        restored_path = Path(env["RESTORED"])
        assert sqlite_dump(restored_path) == sqlite_dump(made.source)
        conn = sqlite3.connect(restored_path)
        try:
            count = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        finally:
            conn.close()
        assert count == made.manifest["content"]["tables"]["notes"] == 300
    elif scenario.check == "files":
        base = Path(env["RESTORE_DIR"])
        files = 0
        for path in made.source:
            restored = base / path.relative_to("/")
            assert tree(restored) == tree(path), f"{restored} differs from {path}"
            files += sum(1 for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        assert made.manifest["content"]["files"] == files
    elif scenario.check == "listing":
        names = result.stdout.splitlines()
        assert names, "tar -t listed nothing"
        assert not [n for n in names if n.startswith("/") or ".." in n.split("/")]
        roots = [str(path.relative_to("/")) for path in made.source]
        assert all(any(n.rstrip("/") == root for n in names) for root in roots)
        assert f"{roots[0]}/a.txt" in names and f"{roots[1]}/nginx.conf" in names
        assert all(any(n.startswith(root) for root in roots) for n in names)
    elif scenario.check == "sha256":
        assert result.stdout.strip() == f"{made.artifact}: OK"
    else:
        assert scenario.check == "exit-0"


# --------------------------------------------------------------------------- damage


def test_sha256_check_fails_on_an_altered_artifact(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    made, _ = make_backup(request, tmp_path, SCENARIOS["sha256-check"])
    data = bytearray(made.artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    made.artifact.write_bytes(bytes(data))
    result = run_oneliner(oneliners()["sha256-check"], made.env, tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout


@pytest.mark.postgres
def test_pg_check_fails_on_a_truncated_artifact(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    made, _ = make_backup(request, tmp_path, SCENARIOS["pgdump-zst-gpg-check"])
    data = made.artifact.read_bytes()
    made.artifact.write_bytes(data[: int(len(data) * 0.6)])
    result = run_oneliner(oneliners()["pgdump-zst-gpg-check"], made.env, tmp_path)
    assert result.returncode != 0, "a dump cut at 60% must fail the check (set -o pipefail)"


def test_symmetric_oneliner_fails_with_a_wrong_passphrase(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    made, _ = make_backup(request, tmp_path, SCENARIOS["sqlite3-zst-gpg"])
    Path(made.env["PASSFILE"]).write_text("not the passphrase\n")
    result = run_oneliner(oneliners()["sqlite3-zst-gpg"], made.env, tmp_path)
    assert result.returncode != 0
