"""End to end, PostgreSQL: the installed `pyops` CLI against a real cluster, real
pg_dump/pg_restore/psql, zstd and gpg. Nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    MARKER,
    PG_TOOLS,
    Exec,
    ProcWatcher,
    Repo,
    assert_private_tree,
    compression,
    databases,
    describe,
    drop_databases,
    encryption_public,
    encryption_symmetric,
    pg_target,
    populate_rich,
    proc_children,
    proc_wchar,
    run_traced,
    secret_file,
    sha256_file,
    snapshot,
    strace_usable,
)
from fixtures.gpgkeys import GpgKey, cleanup_home, generate_key, gpg, public_only_home
from fixtures.pgcluster import PgCluster

pytestmark = pytest.mark.postgres

TARGET = "app-db"
EXTENSIONS = {"custom": "pgdump", "plain": "sql", "directory": "pgdir.tar", "tar": "pgtar"}
STAMP_RE = r"\d{8}T\d{6}Z"


def only_manifest(repo: Repo, tier: str = "daily") -> dict[str, Any]:
    found = [m for m in repo.manifests() if m["tier"] == tier]
    assert len(found) == 1, found
    return found[0]


def artifact_path(manifest: dict[str, Any]) -> Path:
    return Path(manifest["_dir"], str(manifest["artifact"]["name"]))


def row_counts(snap: dict[str, Any]) -> dict[str, int]:
    return {name: count for name, (count, _) in snap["tables"].items()}


def assert_same_content(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in want:
        assert got[key] == want[key], f"{key} differs after restore"


def assert_manifest_matches(manifest: dict[str, Any], snap: dict[str, Any], db: str) -> None:
    path = artifact_path(manifest)
    assert path.is_file()
    assert manifest["artifact"]["bytes"] == path.stat().st_size
    assert manifest["artifact"]["sha256"] == sha256_file(path)
    assert manifest["content"]["tables"] == row_counts(snap)
    assert manifest["source"]["database"] == db
    assert manifest["target"] == TARGET
    assert manifest["type"] == "postgres"
    assert re.fullmatch(rf"{TARGET}\.{manifest['tier']}\.{STAMP_RE}", manifest["id"])
    assert manifest["artifact"]["name"].startswith(manifest["id"] + ".")


def gpg_packets(path: Path, home: Path) -> str:
    """`gpg --list-packets` in a keyless home: lists the packets without decrypting."""
    proc = gpg(home, ["--list-packets", str(path)], check=False)
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def assert_marker_nowhere(repo: Repo) -> None:
    for path in repo.all_files():
        assert MARKER.encode() not in path.read_bytes(), f"plaintext marker in {path}"


# --- 1. round trip per format -------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "jobs"),
    [("custom", 1), ("plain", 1), ("directory", 2), ("tar", 1)],
    ids=["custom", "plain", "directory-j2", "tar"],
)
def test_round_trip(pg: PgCluster, src_db: str, repo: Repo, fmt: str, jobs: int) -> None:
    populate_rich(pg, src_db)
    before = snapshot(pg, src_db)
    # the fixture data is what the assertions below rely on
    assert before["sequences"]["Sales.Orders_id_seq"] == (5000, True)
    assert before["sequences"]["reporting.invoice_no"] == (4242, True)
    assert {"pg_trgm", "hstore"} <= set(before["extensions"])
    assert "reporting.order_totals" in before["views"]
    assert len(before["large_objects"]) == 2
    repo.write(compression("zstd", 1) + pg_target(TARGET, pg.dsn(src_db), fmt=fmt, jobs=jobs))

    out = repo.json("backup")
    (result,) = out["backups"]
    assert result["ok"] is True, result
    manifest = only_manifest(repo)
    assert result["id"] == manifest["id"]
    assert manifest["format"] == fmt
    assert manifest["artifact"]["name"] == f"{manifest['id']}.{EXTENSIONS[fmt]}.zst"
    assert manifest["compression"]["algorithm"] == "zstd"
    assert manifest["encryption"]["mode"] == "none"
    assert_manifest_matches(manifest, before, src_db)

    verified = repo.json("verify", "--deep")["results"]
    assert [(r["id"], r["ok"], r["deep"], r["error"]) for r in verified] == [
        (manifest["id"], True, True, None)
    ], verified

    into = f"{src_db}_into"
    repo.ok("restore", "--latest", "--target", TARGET, "--into", into, "--yes")
    after = snapshot(pg, into)
    assert_same_content(after, before)
    # the source is untouched by a restore --into
    assert snapshot(pg, src_db) == before
    assert databases(pg, src_db) == sorted([src_db, into])
    # nothing but the backup, its manifest and pyops' own state is left
    leftovers = [p for p in repo.backup_files() if p.parent != Path(manifest["_dir"])]
    assert leftovers == []
    assert not [p for p in repo.path.rglob("*") if ".tmp-" in p.name]
    assert_private_tree(repo.path)


# --- 2. restore in place ------------------------------------------------------------

CHANGE_AFTER_BACKUP = """
INSERT INTO "Sales"."Orders" (customer) VALUES ('written after the backup');
DELETE FROM public."Ünïcode" WHERE "ключ" = 2;
DROP VIEW reporting.order_totals;
DROP TABLE reporting.empty_table;
SELECT setval('reporting.invoice_no', 9999);
"""


def test_restore_in_place_swaps_and_keeps_the_old_database(
    pg: PgCluster, src_db: str, repo: Repo
) -> None:
    assert os.environ.get("PYOPS_CONFIRM_FROM_STDIN") is None
    populate_rich(pg, src_db)
    before = snapshot(pg, src_db)
    repo.write(compression("zstd", 1) + pg_target(TARGET, pg.dsn(src_db)))
    repo.ok("backup")
    backup = only_manifest(repo)
    pg.psql(CHANGE_AFTER_BACKUP, dbname=src_db)
    changed = snapshot(pg, src_db)
    assert changed != before

    # no --yes and no terminal: refused, nothing changed (even when the name is typed)
    refused = repo.run("restore", "--latest", input=f"{TARGET}\n")
    assert refused.returncode == 1, describe(refused)
    assert "--yes" in refused.stderr
    assert snapshot(pg, src_db) == changed
    assert databases(pg, src_db) == [src_db]
    assert repo.json("list", "--tier", "pre-restore")["backups"] == []

    done = repo.ok("restore", "--latest", "--yes")
    assert_same_content(snapshot(pg, src_db), before)
    dbs = databases(pg, src_db)
    assert len(dbs) == 2, dbs
    aside = next(d for d in dbs if d != src_db)
    assert re.fullmatch(rf"{src_db}_pre_restore_{STAMP_RE}", aside), aside
    assert aside in done.stdout + done.stderr
    # the old database is kept exactly as it was
    assert snapshot(pg, aside) == changed

    safety = repo.json("list", "--tier", "pre-restore")["backups"]
    assert len(safety) == 1, safety
    assert safety[0]["tier"] == "pre-restore"
    assert safety[0]["target"] == TARGET
    safety_manifest = only_manifest(repo, "pre-restore")
    assert_manifest_matches(safety_manifest, changed, src_db)
    # the daily backup is still the one `restore --latest` picks
    assert repo.json("list", "--tier", "daily")["backups"][0]["id"] == backup["id"]
    assert_private_tree(repo.path)


def test_restore_in_place_parallel_from_custom_format(
    pg: PgCluster, src_db: str, repo: Repo
) -> None:
    populate_rich(pg, src_db)
    before = snapshot(pg, src_db)
    repo.write(compression("zstd", 1) + pg_target(TARGET, pg.dsn(src_db), fmt="custom"))
    repo.ok("backup")
    pg.psql(CHANGE_AFTER_BACKUP, dbname=src_db)

    repo.ok("restore", "--latest", "--yes", "--jobs", "2")
    assert_same_content(snapshot(pg, src_db), before)
    assert len(databases(pg, src_db)) == 2
    # the decrypted/decompressed scratch copy for pg_restore -j is gone
    scratch = [p for p in repo.path.rglob("*") if "scratch" in p.parts and p.is_file()]
    assert scratch == []
    assert not [p for p in repo.all_files() if p.name.endswith(".pgdump")]


# --- 3. encryption ------------------------------------------------------------------


def test_gpg_public_round_trip_without_compression(
    pg: PgCluster, src_db: str, repo: Repo, gpg_home: GpgKey, empty_gnupghome: Path
) -> None:
    populate_rich(pg, src_db)
    before = snapshot(pg, src_db)
    repo.write(
        compression("none")
        + encryption_public([gpg_home.email], gpg_home.gnupghome, None)
        + pg_target(TARGET, pg.dsn(src_db))
    )
    repo.ok("backup")
    manifest = only_manifest(repo)
    path = artifact_path(manifest)
    assert path.name == f"{manifest['id']}.pgdump.gpg"
    assert manifest["encryption"]["mode"] == "gpg-public"
    assert manifest["encryption"]["recipients"] == [gpg_home.fingerprint]
    assert_manifest_matches(manifest, before, src_db)
    packets = gpg_packets(path, empty_gnupghome)
    assert ":pubkey enc packet:" in packets, packets
    # no compression, yet the marker row is nowhere on disk
    assert_marker_nowhere(repo)
    assert repo.json("list")["backups"][0]["encrypted"] is True

    repo.ok("verify", "--deep")
    into = f"{src_db}_into"
    repo.ok("restore", "--latest", "--into", into, "--yes")
    assert_same_content(snapshot(pg, into), before)
    assert_private_tree(repo.path)


SMALL = f"""
CREATE TABLE secrets (id int PRIMARY KEY, v text);
INSERT INTO secrets VALUES (1, '{MARKER}'), (2, 'second');
"""


def test_gpg_public_protected_key_needs_the_passphrase_file(
    pg: PgCluster, src_db: str, repo: Repo, gpg_home_protected: GpgKey, tmp_path: Path
) -> None:
    key = gpg_home_protected
    assert key.passphrase
    pg.psql(SMALL, dbname=src_db)
    before = snapshot(pg, src_db)
    good = secret_file(tmp_path / "key-passphrase", key.passphrase + "\n")
    wrong = secret_file(tmp_path / "wrong-passphrase", "not the passphrase\n")
    target = pg_target(TARGET, pg.dsn(src_db))

    repo.write(
        compression("zstd", 1) + encryption_public([key.email], key.gnupghome, wrong) + target
    )
    repo.ok("backup")
    assert_marker_nowhere(repo)
    into = f"{src_db}_into"
    failed = repo.run("restore", "--latest", "--into", into, "--yes")
    assert failed.returncode == 1, describe(failed)
    assert databases(pg, src_db) == [src_db]

    repo.write(
        compression("zstd", 1) + encryption_public([key.email], key.gnupghome, good) + target
    )
    repo.ok("restore", "--latest", "--into", into, "--yes")
    assert_same_content(snapshot(pg, into), before)


def test_gpg_public_backup_host_without_secret_key(
    pg: PgCluster, src_db: str, repo: Repo, gpg_home: GpgKey
) -> None:
    """Backups encrypt with the public key only; restore there fails and leaves the
    database alone, and works where the secret key is."""
    pg.psql(SMALL, dbname=src_db)
    before = snapshot(pg, src_db)
    public = public_only_home(gpg_home)
    try:
        target = pg_target(TARGET, pg.dsn(src_db))
        repo.write(
            compression("zstd", 1)
            + encryption_public([gpg_home.email], public.gnupghome, None)
            + target
        )
        repo.ok("backup")
        manifest = only_manifest(repo)
        assert manifest["encryption"]["recipients"] == [gpg_home.fingerprint]
        pg.psql("UPDATE secrets SET v = 'changed' WHERE id = 2", dbname=src_db)
        changed = snapshot(pg, src_db)

        failed = repo.run("restore", "--latest", "--yes")
        assert failed.returncode == 1, describe(failed)
        assert "secret key" in failed.stderr
        assert snapshot(pg, src_db) == changed
        assert databases(pg, src_db) == [src_db]

        repo.write(
            compression("zstd", 1)
            + encryption_public([gpg_home.email], gpg_home.gnupghome, None)
            + target
        )
        repo.ok("restore", "--latest", "--yes")
        assert_same_content(snapshot(pg, src_db), before)
    finally:
        cleanup_home(public.gnupghome)


def test_gpg_symmetric_round_trip(
    pg: PgCluster, src_db: str, repo: Repo, tmp_path: Path, empty_gnupghome: Path
) -> None:
    populate_rich(pg, src_db)
    before = snapshot(pg, src_db)
    good = secret_file(tmp_path / "passphrase", f"sym-{uuid.uuid4().hex}\n")
    repo.write(
        compression("zstd", 1)
        + encryption_symmetric(good, empty_gnupghome)
        + pg_target(TARGET, pg.dsn(src_db))
    )
    repo.ok("backup")
    manifest = only_manifest(repo)
    path = artifact_path(manifest)
    assert path.name == f"{manifest['id']}.pgdump.zst.gpg"
    assert manifest["encryption"]["mode"] == "gpg-symmetric"
    assert_manifest_matches(manifest, before, src_db)
    packets = gpg_packets(path, empty_gnupghome)
    assert ":symkey enc packet:" in packets, packets
    assert_marker_nowhere(repo)
    repo.ok("verify", "--deep")

    into = f"{src_db}_into"
    repo.ok("restore", "--latest", "--into", into, "--yes")
    assert_same_content(snapshot(pg, into), before)
    assert_private_tree(repo.path)


def test_gpg_symmetric_wrong_passphrase_leaves_the_database_alone(
    pg: PgCluster, src_db: str, repo: Repo, tmp_path: Path, empty_gnupghome: Path
) -> None:
    pg.psql(SMALL, dbname=src_db)
    good = secret_file(tmp_path / "passphrase", f"sym-{uuid.uuid4().hex}\n")
    wrong = secret_file(tmp_path / "other-passphrase", f"sym-{uuid.uuid4().hex}\n")
    target = pg_target(TARGET, pg.dsn(src_db))
    repo.write(compression("zstd", 1) + encryption_symmetric(good, empty_gnupghome) + target)
    repo.ok("backup")
    pg.psql("UPDATE secrets SET v = 'changed' WHERE id = 2", dbname=src_db)
    changed = snapshot(pg, src_db)

    repo.write(compression("zstd", 1) + encryption_symmetric(wrong, empty_gnupghome) + target)
    into = f"{src_db}_into"
    for extra in ([], ["--into", into]):
        failed = repo.run("restore", "--latest", "--yes", *extra)
        assert failed.returncode == 1, describe(failed)
        assert snapshot(pg, src_db) == changed
        assert databases(pg, src_db) == [src_db]
    (daily,) = repo.json("list", "--tier", "daily")["backups"]
    verify = repo.run("verify", "--deep", daily["id"])
    assert verify.returncode == 1, describe(verify)


@pytest.mark.parametrize(
    "case", ["symmetric-wrong-passphrase", "public-wrong-key-passphrase", "public-no-secret-key"]
)
def test_undecryptable_backup_is_refused_before_the_safety_backup(
    case: str,
    pg: PgCluster,
    src_db: str,
    repo: Repo,
    tmp_path: Path,
    empty_gnupghome: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Contract 5 + codec.probe_decrypt: 'wrong key: stop before anything'."""
    pg.psql(SMALL, dbname=src_db)
    target = pg_target(TARGET, pg.dsn(src_db))
    wrong = secret_file(tmp_path / "wrong-passphrase", "not the passphrase\n")
    homes: list[Path] = []
    if case == "symmetric-wrong-passphrase":
        good = secret_file(tmp_path / "passphrase", f"sym-{uuid.uuid4().hex}\n")
        backup_enc = encryption_symmetric(good, empty_gnupghome)
        restore_enc = encryption_symmetric(wrong, empty_gnupghome)
        expected = "passphrase"
    elif case == "public-wrong-key-passphrase":
        key: GpgKey = request.getfixturevalue("gpg_home_protected")
        backup_enc = restore_enc = encryption_public([key.email], key.gnupghome, wrong)
        expected = "passphrase"
    else:
        key = request.getfixturevalue("gpg_home")
        public = public_only_home(key)
        homes.append(public.gnupghome)
        backup_enc = restore_enc = encryption_public([key.email], public.gnupghome, None)
        expected = "secret key"
    try:
        repo.write(compression("zstd", 1) + backup_enc + target)
        repo.ok("backup")
        pg.psql("UPDATE secrets SET v = 'changed' WHERE id = 2", dbname=src_db)
        changed = snapshot(pg, src_db)
        repo.write(compression("zstd", 1) + restore_enc + target)

        failed = repo.run("restore", "--latest", "--yes")
        assert failed.returncode == 1, describe(failed)
        assert snapshot(pg, src_db) == changed
        assert databases(pg, src_db) == [src_db]
        # refused up front: no safety backup taken, and the message says why
        assert repo.json("list", "--tier", "pre-restore")["backups"] == []
        assert expected in failed.stderr, failed.stderr
        assert "safety backup" not in failed.stderr
    finally:
        for home in homes:
            cleanup_home(home)


def test_backup_fails_when_recipient_key_is_missing(
    pg: PgCluster, src_db: str, repo: Repo, empty_gnupghome: Path
) -> None:
    pg.psql(SMALL, dbname=src_db)
    recipient = f"nobody-{uuid.uuid4().hex[:8]}@example.invalid"
    repo.write(
        compression("zstd", 1)
        + encryption_public([recipient], empty_gnupghome, None)
        + pg_target(TARGET, pg.dsn(src_db))
    )
    failed = repo.run("backup")
    assert failed.returncode == 1, describe(failed)
    assert recipient in failed.stderr
    assert repo.manifests() == []
    assert repo.backup_files() == []
    assert repo.json("list")["backups"] == []


# --- 4. passwords -------------------------------------------------------------------

PW_ENV = "PYOPS_TEST_PW"


def role_database(pg: PgCluster, role: str, rows: int) -> str:
    db = f"t_{uuid.uuid4().hex[:12]}"
    pg.create_database(db, owner=role)
    pg.psql(
        f"""
        SET ROLE "{role}";
        CREATE TABLE filler (id int PRIMARY KEY, v text);
        INSERT INTO filler SELECT g, md5(g::text) || md5((g + 1)::text) || '{MARKER}'
        FROM generate_series(1, {rows}) g;
        """,
        dbname=db,
    )
    return db


def test_password_env_never_on_argv_and_only_pg_tools_get_it(
    pg: PgCluster, pg_role: tuple[str, str], repo: Repo, tmp_path: Path, empty_gnupghome: Path
) -> None:
    role, password = pg_role
    assert PW_ENV not in os.environ
    db = role_database(pg, role, 40_000)
    before = snapshot(pg, db)
    passphrase = f"sym-{uuid.uuid4().hex}"
    pfile = secret_file(tmp_path / "passphrase", passphrase + "\n")
    repo.write(
        compression("zstd", 1)
        + encryption_symmetric(pfile, empty_gnupghome)
        + pg_target(TARGET, pg.dsn(db, user=role, tcp=True), fmt="custom", password_env=PW_ENV)
    )
    env = {PW_ENV: password}

    with ProcWatcher([password, passphrase], password) as backup_watch:
        done = backup_watch.run(repo.argv("backup"), env)
    assert done.returncode == 0, describe(done)
    into = f"{db}_into"
    with ProcWatcher([password, passphrase], password) as restore_watch:
        done = restore_watch.run(repo.argv("restore", "--latest", "--into", into, "--yes"), env)
    assert done.returncode == 0, describe(done)
    assert_same_content(snapshot(pg, into), before)

    for watch, tool in ((backup_watch, "pg_dump"), (restore_watch, "pg_restore")):
        assert watch.argv_leaks == [], watch.argv_leaks
        seen = watch.tools_seen()
        assert {tool, "gpg", "zstd"} <= seen, (seen, watch.samples)
        # the libpq tool gets the password; the gpg and zstd stages do not. (That no
        # other child at all gets it is checked exactly, with strace, below: sampling
        # cannot promise to see a process that lives for a millisecond.)
        assert tool in watch.holders(), watch.sightings
        for s in watch.sightings:
            if s.tool in ("gpg", "zstd"):
                assert not s.secret_in_env, s


@dataclass
class Traced:
    password: str
    backup: subprocess.CompletedProcess[str]
    restore: subprocess.CompletedProcess[str]
    execs: list[Exec]  # children of pyops only, backup then restore


@pytest.fixture(scope="module")
def traced(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """Backup + restore (gpg-public, zstd, password over TCP) with every exec traced."""
    if not strace_usable():
        pytest.skip("strace missing or ptrace not permitted")
    role, password = f"r_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    pg.create_role(role, password)
    key = generate_key()
    db = ""
    try:
        db = role_database(pg, role, 2000)
        repo = Repo(tmp_path_factory.mktemp("traced"))
        repo.write(
            compression("zstd", 1)
            + encryption_public([key.email], key.gnupghome, None)
            + pg_target(TARGET, pg.dsn(db, user=role, tcp=True), password_env=PW_ENV)
        )
        env = {PW_ENV: password}
        backup, backup_execs = run_traced(repo.argv("backup"), env, repo.base / "backup.strace")
        restore, restore_execs = run_traced(
            repo.argv("restore", "--latest", "--into", f"{db}_into", "--yes"),
            env,
            repo.base / "restore.strace",
        )
        # the first exec of each log is pyops itself, which holds the variable by design
        assert backup_execs[0].tool == "pyops" and restore_execs[0].tool == "pyops"
        yield Traced(password, backup, restore, backup_execs[1:] + restore_execs[1:])
    finally:
        if db:
            drop_databases(pg, db)
        pg.drop_role(role)
        cleanup_home(key.gnupghome)


def test_traced_password_only_in_libpq_tool_environments(traced: Traced) -> None:
    assert traced.backup.returncode == 0, describe(traced.backup)
    assert traced.restore.returncode == 0, describe(traced.restore)
    pw = traced.password
    ran = {e.tool for e in traced.execs}
    assert {"pg_dump", "pg_restore", "zstd", "gpg"} <= ran, ran
    for e in traced.execs:
        assert not any(pw in a for a in e.argv), e.argv
        if e.tool in PG_TOOLS and "--version" not in e.argv:
            assert f"PGPASSWORD={pw}" in e.env, e.argv
        # the data-path stages (absolute paths, built by pyops.tools) never get it
        if e.tool in ("gpg", "zstd") and e.argv[0].startswith("/"):
            assert not any(pw in v for v in e.env), e.argv


def test_traced_no_other_child_inherits_the_password(traced: Traced) -> None:
    pw = traced.password
    holders = sorted({e.tool for e in traced.execs if any(pw in v for v in e.env)})
    assert set(holders) <= set(PG_TOOLS), holders


def test_password_errors(pg: PgCluster, pg_role: tuple[str, str], repo: Repo) -> None:
    role, password = pg_role
    assert PW_ENV not in os.environ
    db = role_database(pg, role, 10)
    target = pg_target(TARGET, pg.dsn(db, user=role, tcp=True), password_env=PW_ENV)
    repo.write(compression("zstd", 1) + target)

    wrong = repo.run("backup", env={PW_ENV: "not-the-password"})
    assert wrong.returncode == 1, describe(wrong)
    assert "password" in wrong.stderr.lower()
    assert "not-the-password" not in wrong.stdout + wrong.stderr

    missing = f"nodb_{uuid.uuid4().hex[:8]}"
    repo.write(
        compression("zstd", 1)
        + pg_target(TARGET, pg.dsn(missing, user=role, tcp=True), password_env=PW_ENV)
    )
    nodb = repo.run("backup", env={PW_ENV: password})
    assert nodb.returncode == 1, describe(nodb)
    assert missing in nodb.stderr

    assert repo.manifests() == []
    assert repo.backup_files() == []


def unset_password_env_run(pg: PgCluster, role: str, repo: Repo) -> Any:
    assert PW_ENV not in os.environ
    db = role_database(pg, role, 10)
    repo.write(
        compression("zstd", 1)
        + pg_target(TARGET, pg.dsn(db, user=role, tcp=True), password_env=PW_ENV)
    )
    return repo.run("backup")


def test_password_env_unset_names_the_key(
    pg: PgCluster, pg_role: tuple[str, str], repo: Repo
) -> None:
    unset = unset_password_env_run(pg, pg_role[0], repo)
    assert unset.returncode != 0, describe(unset)
    assert "password_env" in unset.stderr, describe(unset)
    assert PW_ENV in unset.stderr
    assert repo.manifests() == []
    assert repo.backup_files() == []


def test_password_env_unset_exits_2(pg: PgCluster, pg_role: tuple[str, str], repo: Repo) -> None:
    unset = unset_password_env_run(pg, pg_role[0], repo)
    assert unset.returncode == 2, describe(unset)


# --- 5. pg_dump killed mid-stream ---------------------------------------------------

BIG_ROWS = 300_000  # ~ 4 x 32 hex chars per row: ~40 MB of text


def test_pg_dump_killed_mid_stream_leaves_nothing(pg: PgCluster, src_db: str, repo: Repo) -> None:
    pg.psql(
        f"""
        CREATE TABLE big (id int, v text);
        INSERT INTO big SELECT g, md5(random()::text) || md5(random()::text)
                                 || md5(random()::text) || md5(random()::text)
        FROM generate_series(1, {BIG_ROWS}) g;
        """,
        dbname=src_db,
    )
    repo.write(compression("zstd", 1) + pg_target(TARGET, pg.dsn(src_db), fmt="custom"))
    proc = subprocess.Popen(
        repo.argv("backup"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_at = -1
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            dumps = [pid for pid, comm in proc_children(proc.pid) if comm == "pg_dump"]
            if dumps and (written := proc_wchar(dumps[0])) > 1 << 20:
                os.kill(dumps[0], signal.SIGKILL)
                killed_at = written
                break
            time.sleep(0.001)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert killed_at > 0, f"pg_dump finished before it could be killed: make `big` bigger\n{stderr}"
    assert proc.returncode == 1, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "pg_dump" in stderr and "SIGKILL" in stderr, stderr

    assert list(repo.path.rglob("*.manifest.json")) == []
    assert [p for p in repo.path.rglob("*") if ".tmp-" in p.name] == []
    assert repo.backup_files() == []
    assert repo.json("list")["backups"] == []
    listing = repo.ok("list")
    assert "no complete backups" in listing.stdout
    runs = repo.json("history")["runs"]
    assert runs[0]["command"] == "backup"
    assert runs[0]["result"] == "failed"
    assert json.dumps(runs[0])  # a well-formed record


def test_proc_watcher_catches_what_it_looks_for() -> None:
    """The /proc watcher the password test relies on does see leaks (negative control)."""
    secret = f"pw-{uuid.uuid4().hex}"
    with ProcWatcher([secret], secret) as watch:
        done = watch.run(["sh", "-c", "sleep 0.3; true", secret], {"SOME_VAR": secret})
    assert done.returncode == 0
    assert any(secret in argv for argv in watch.argv_leaks)
    assert "sleep" in watch.holders()
    assert any(s.tool == "sleep" and s.ours for s in watch.sightings)
