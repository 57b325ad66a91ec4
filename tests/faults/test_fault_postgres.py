"""PostgreSQL faults: pyops killed in the middle of an in-place restore, and secret
hygiene of the commands the e2e tests do not sample (verify --deep, drill, sync).
A real cluster, real pg_dump/pg_restore, gpg and a real S3 (moto) server."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_support import (
    PASSPHRASE,
    Repo,
    children,
    comm_of,
    descendants,
    rchar,
    said,
    toml,
    wait_for,
    zstd,
)
from fixtures.pgcluster import PgCluster
from fixtures.s3 import CREDS, S3

pytestmark = pytest.mark.postgres

TARGET = "app-db"


def pg_target(dsn: str, password_env: str = "") -> str:
    body = (
        f'[[targets]]\nname = "{TARGET}"\ntype = "postgres"\ndsn = {toml(dsn)}\nformat = "custom"\n'
    )
    if password_env:
        body += f"password_env = {toml(password_env)}\n"
    return body


def checksum(pg: PgCluster, db: str) -> str:
    return pg.psql("SELECT md5(string_agg(id::text || body, ',' ORDER BY id)) FROM big", dbname=db)


def restore_scratch(pg: PgCluster, db: str) -> list[str]:
    out = pg.psql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{db}\\_pyops\\_restore\\_%' "
        f"OR datname LIKE '{db}\\_pre\\_restore\\_%'"
    )
    return [line for line in out.split() if line]


def test_restore_killed_leaves_live_db_alone(pg: PgCluster, pg_db: str, repo: Repo) -> None:
    pg.psql(
        "CREATE TABLE big (id int PRIMARY KEY, body text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text || random()::text), 4) "
        "FROM generate_series(1, 250000) g;",
        dbname=pg_db,
    )
    repo.write(pg_target(pg.dsn(pg_db)) + zstd())
    repo.backup(TARGET)
    before = checksum(pg, pg_db)

    proc = repo.popen("restore", "--latest", "--yes", "--no-safety-backup")

    def restoring() -> int:
        assert proc.poll() is None, proc.communicate()
        found = [c for c in children(proc.pid) if comm_of(c) == "pg_restore"]
        return next((c for c in found if rchar(c) > 1 << 20), 0)

    wait_for(restoring, 60, "pg_restore reading > 1 MB")
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not any(Path(f"/proc/{k}").exists() for k in kids), 30, "children to exit")

    try:
        assert checksum(pg, pg_db) == before, "live database changed by an interrupted restore"
        leftovers = restore_scratch(pg, pg_db)
        assert not any("_pre_restore_" in n for n in leftovers), leftovers
        # the next run (any command holding the lock) must clean or at least report it
        nxt = repo.run("backup", "--target", TARGET, "--no-prune")
        assert nxt.returncode == 0, said(nxt)
        still = restore_scratch(pg, pg_db)
        reported = any(n in nxt.stderr for n in leftovers)
        assert not still or reported, f"scratch databases linger unreported: {still}\n{said(nxt)}"
    finally:
        for name in restore_scratch(pg, pg_db):
            pg.drop_database(name)


# --- secret sampling ------------------------------------------------------------------

PG_TOOLS = {"pg_dump", "pg_restore", "psql"}


@dataclass
class Sampler:
    """Every few ms: argv and environment of each descendant of `root`."""

    root: int
    secrets: dict[str, str]
    seen: dict[int, str] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    pw_holders: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.002)

    def sample(self) -> None:
        own = comm_of(self.root)
        for pid in descendants(self.root):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            comm = comm_of(pid)
            if not comm or comm == own:
                # forked by pyops, not yet exec'd: /proc shows pyops' own start-up
                # environment (its memory), not what the child will run with
                continue
            self.seen[pid] = comm
            for what, secret in self.secrets.items():
                raw = secret.encode()
                if raw in argv:
                    self.leaks.append(f"{what} in argv of {comm} ({pid})")
                if raw in environ:
                    if what == "db password":
                        self.pw_holders.add(comm)
                        if comm not in PG_TOOLS:
                            self.leaks.append(f"{what} in environ of {comm} ({pid})")
                    else:
                        self.leaks.append(f"{what} in environ of {comm} ({pid})")


@pytest.fixture
def pg_role(pg: PgCluster) -> Iterator[tuple[str, str]]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    pw = f"pw-{uuid.uuid4().hex}"
    pg.create_role(name, pw)
    try:
        yield name, pw
    finally:
        for db in pg.psql(
            f"SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles "
            f"WHERE rolname = '{name}')"
        ).split():
            pg.drop_database(db)
        pg.drop_role(name)


def test_secrets_stay_out_of_verify_deep_drill_and_sync(
    pg: PgCluster, pg_role: tuple[str, str], repo: Repo, sym_crypto: str, s3: S3
) -> None:
    role, pw = pg_role
    db = f"t_{uuid.uuid4().hex[:10]}"
    pg.create_database(db, owner=role)
    pg.psql(
        f"CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t OWNER TO {role};"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        dbname=db,
    )
    body = pg_target(pg.dsn(db, user=role, tcp=True), "FAULT_DB_PW") + sym_crypto + s3.config()
    repo.write(body)
    env = {"FAULT_DB_PW": pw, **CREDS}
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") == CREDS["AWS_SECRET_ACCESS_KEY"]
    backup = repo.ok("backup", "--no-offsite", env=env)
    assert "app-db" in backup.stderr + backup.stdout

    secrets = {
        "db password": pw,
        "AWS secret key": CREDS["AWS_SECRET_ACCESS_KEY"],
        "passphrase": PASSPHRASE,
    }
    holders: dict[str, set[str]] = {}
    for args in (("verify", "--latest", "--deep"), ("drill",), ("sync",)):
        proc = repo.popen(*args, env=env)
        sampler = Sampler(proc.pid, secrets)
        thread = threading.Thread(target=sampler.loop, daemon=True)
        thread.start()
        out, err = proc.communicate(timeout=120)
        sampler.stop.set()
        thread.join()
        assert proc.returncode == 0, f"{args}: {out}\n{err}"
        assert sampler.leaks == [], f"{args}: {sorted(set(sampler.leaks))}"
        for secret in secrets.values():
            assert secret not in out and secret not in err, args
        holders[args[0]] = sampler.pw_holders
        if args[0] != "sync":  # sync talks to S3 itself, starting no child
            assert sampler.seen, f"{args}: no child sampled"

    assert "pg_restore" in holders["verify"] | holders["drill"], holders
    assert s3.object_keys(), "sync uploaded nothing"
