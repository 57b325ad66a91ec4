"""Issue 10 row 1: pg_restore reading a tar-format dump from a pipe stops before the
archive's end (the trailing `restore.sql` and end blocks), so the decoder feeding it
used to die of SIGPIPE and a valid backup failed `verify --deep` about one run in
five. pyops now drains what pg_restore leaves once it has finished successfully, and
still reads and hashes every byte of the artifact: a valid backup always verifies,
a cut or altered one never does.

Real CLI, real cluster, real pg_dump/pg_restore/zstd; run many times in one test,
because the failure was a race."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import Repo, compression, databases, describe, pg_target
from fixtures.pgcluster import PgCluster

pytestmark = pytest.mark.postgres

TARGET = "tar-db"
RUNS = 30

# ~6 MB of rows that compress poorly, so zstd still has output in flight when
# pg_restore has read its last data member
SEED = """
CREATE TABLE events (id int PRIMARY KEY, body text, blob bytea);
INSERT INTO events
SELECT g, repeat(md5(g::text), 4), decode(md5((g * 7)::text) || md5((g * 13)::text), 'hex')
FROM generate_series(1, 30000) g;
CREATE TABLE notes (id int, note text);
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g;
"""


def tar_backup(pg: PgCluster, db: str, repo: Repo, algorithm: str = "zstd") -> Path:
    pg.psql(SEED, dbname=db)
    repo.write(compression(algorithm, 1) + pg_target(TARGET, pg.dsn(db), fmt="tar"))
    (result,) = repo.json("backup")["backups"]
    assert result["ok"] is True, result
    (artifact,) = [p for p in repo.backup_files() if ".pgtar" in p.name]
    return artifact


def test_deep_verify_of_a_tar_dump_never_fails_a_valid_backup(
    pg: PgCluster, pg_db: str, repo: Repo
) -> None:
    tar_backup(pg, pg_db, repo)
    started = time.monotonic()
    failures = []
    for n in range(RUNS):
        proc = repo.run("verify", "--deep")
        if proc.returncode != 0:
            failures.append(f"run {n}: {describe(proc)}")
    elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} of {RUNS} deep verifies failed:\n" + "\n".join(
        failures[:3]
    )
    print(f"{RUNS} deep verifies took {elapsed:.1f}s")  # a hang would hit the run's timeout


def test_deep_verify_of_an_uncompressed_tar_dump(pg: PgCluster, pg_db: str, repo: Repo) -> None:
    """No decoder: pg_restore reads straight from pyops, which must still hash the
    bytes pg_restore left unread (else the size check reports a false truncation)."""
    tar_backup(pg, pg_db, repo, algorithm="none")
    for _ in range(10):
        verified = repo.json("verify", "--deep")["results"]
        assert [(r["ok"], r["error"]) for r in verified] == [(True, None)], verified


@pytest.mark.parametrize("cut", [1024, 10240, 20000])
def test_a_tar_dump_cut_in_the_part_pg_restore_never_reads_is_refused(
    pg: PgCluster, pg_db: str, repo: Repo, cut: int
) -> None:
    """pg_restore succeeds on such a stream: the sha256 of every byte, still read after
    pg_restore stopped, refuses it. A restore by id reads the artifact once (no
    checksum pass first), so this is the drained single pass at work."""
    artifact = tar_backup(pg, pg_db, repo, algorithm="none")
    backup_id = artifact.name.split(".pgtar")[0]
    artifact.write_bytes(artifact.read_bytes()[:-cut])
    into = f"{pg_db}_cut"

    proc = repo.run("restore", backup_id, "--into", into, "--yes")

    assert proc.returncode == 1, describe(proc)
    assert f"{backup_id} failed its checksum" in proc.stderr, describe(proc)
    assert "truncated or replaced" in proc.stderr, describe(proc)
    assert databases(pg, pg_db) == [pg_db], "the restored copy must be dropped"
    assert repo.run("verify", "--deep").returncode == 1


@pytest.mark.parametrize("algorithm", ["none", "zstd"])
def test_a_tar_dump_cut_in_its_middle_is_refused_not_waited_for(
    pg: PgCluster, pg_db: str, repo: Repo, algorithm: str
) -> None:
    """pg_restore never ends on a tar archive cut short (it spins at end of input):
    pyops stops it once the checksum, or the failed decoder, has spoken."""
    artifact = tar_backup(pg, pg_db, repo, algorithm=algorithm)
    backup_id = artifact.name.split(".pgtar")[0]
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    into = f"{pg_db}_half"
    started = time.monotonic()

    proc = repo.run("restore", backup_id, "--into", into, "--yes")

    assert proc.returncode == 1, describe(proc)
    assert time.monotonic() - started < 30
    assert f"{backup_id} failed its checksum" in proc.stderr, describe(proc)
    assert "truncated or replaced" in proc.stderr, describe(proc)
    assert databases(pg, pg_db) == [pg_db], "the restored copy must be dropped"


def test_a_zstd_tar_dump_altered_near_its_end_is_refused(
    pg: PgCluster, pg_db: str, repo: Repo
) -> None:
    artifact = tar_backup(pg, pg_db, repo)
    backup_id = artifact.name.split(".pgtar")[0]
    data = bytearray(artifact.read_bytes())
    data[-200] ^= 0x40
    artifact.write_bytes(bytes(data))
    into = f"{pg_db}_altered"

    proc = repo.run("restore", backup_id, "--into", into, "--yes")

    assert proc.returncode == 1, describe(proc)
    assert f"{backup_id} failed its checksum" in proc.stderr, describe(proc)
    assert databases(pg, pg_db) == [pg_db], "the restored copy must be dropped"
    verified = repo.run("verify", "--deep")
    assert verified.returncode == 1 and "sha256 mismatch" in verified.stderr, describe(verified)


def test_restore_of_a_tar_dump_round_trips_many_times(
    pg: PgCluster, pg_db: str, repo: Repo
) -> None:
    tar_backup(pg, pg_db, repo)
    want = pg.psql("SELECT count(*), md5(string_agg(body, '' ORDER BY id)) FROM events", pg_db)
    for n in range(5):
        into = f"{pg_db}_r{n}"
        try:
            proc = repo.run("restore", "--latest", "--into", into, "--yes")
            assert proc.returncode == 0, describe(proc)
            got = pg.psql(
                "SELECT count(*), md5(string_agg(body, '' ORDER BY id)) FROM events", into
            )
            assert got == want
        finally:
            pg.drop_database(into)


# --- the runbook's stock-tools one-liner, the same fix ------------------------------------

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "restore-runbook.md"


def runbook_oneliner(name: str) -> str:
    text = RUNBOOK.read_text(encoding="utf-8")
    match = re.search(rf"<!-- oneliner: {name} -->\n```sh\n(.*?)\n```", text, re.S)
    assert match, f"runbook one-liner {name} not found"
    return match.group(1)


def run_oneliner(
    pg: PgCluster, line: str, artifact: Path, newdb: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGUSER": pg.superuser,
        "ARTIFACT": str(artifact),
        "NEWDB": newdb,
    }
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_runbook_pgtar_oneliner_restores_a_big_tar_dump_every_time(
    pg: PgCluster, pg_db: str, repo: Repo
) -> None:
    artifact = tar_backup(pg, pg_db, repo)
    line = runbook_oneliner("pgtar-zst")
    want = pg.psql("SELECT count(*), md5(string_agg(body, '' ORDER BY id)) FROM events", pg_db)
    for n in range(8):
        newdb = f"{pg_db}_rb{n}"
        try:
            proc = run_oneliner(pg, line, artifact, newdb)
            assert proc.returncode == 0, f"run {n}: {line}\n{proc.stderr}"
            got = pg.psql(
                "SELECT count(*), md5(string_agg(body, '' ORDER BY id)) FROM events", newdb
            )
            assert got == want
        finally:
            pg.drop_database(newdb)


def test_runbook_pgtar_oneliner_still_fails_a_cut_dump(
    pg: PgCluster, pg_db: str, repo: Repo
) -> None:
    """The drain does not hide a cut stream: zstd, decoding to the end, says so."""
    artifact = tar_backup(pg, pg_db, repo)
    artifact.write_bytes(artifact.read_bytes()[:-200])
    newdb = f"{pg_db}_rbcut"
    try:
        proc = run_oneliner(pg, runbook_oneliner("pgtar-zst"), artifact, newdb)
        assert proc.returncode != 0, proc.stderr
        assert "premature end" in proc.stderr, proc.stderr
    finally:
        pg.drop_database(newdb)
