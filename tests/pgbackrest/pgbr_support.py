"""A throwaway cluster that archives its WAL with the real pgBackRest into a local posix
repository, and a pyops config with a pgbackrest target for it.

The server runs as an unprivileged user (fixtures.pgcluster: `postgres` when the tests
run as root), and archive_command runs as that user: the pgBackRest config, repository,
log, lock and spool directories are that user's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.cli import run_pyops, write_config
from fixtures.pgcluster import PgCluster

STANZA = "demo"
TARGET = "pgb"
ARCHIVE_TIMEOUT_S = 10


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@dataclass
class Archiving:
    """The cluster, its pgBackRest config, and how to run pgbackrest as its user."""

    pg: PgCluster
    base: Path  # pgBackRest's config, repository, log, lock and spool live here

    @property
    def conf(self) -> Path:
        return self.base / "pgbackrest.conf"

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def user(self) -> str:
        return self.pg.run_as[0] if self.pg.run_as else os.environ.get("USER", "postgres")

    def pgbackrest(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix: list[str] = []
        if self.pg.run_as is not None:
            _, uid, gid = self.pg.run_as
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
        proc = subprocess.run(
            [*prefix, "pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.base), "LC_ALL": "C.UTF-8"},
            timeout=300,
            check=False,
        )
        assert not check or proc.returncode == 0, describe(proc)
        return proc

    def info(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.pgbackrest("--output=json", "info").stdout)
        return data[0]

    def switch_wal_and_wait(self, timeout: float = 60) -> str:
        """Close the current WAL segment and wait until the archiver has pushed it."""
        segment = self.pg.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if last.strip()[:24] >= segment:
                return segment
            time.sleep(0.2)
        raise AssertionError(f"WAL segment {segment} was not archived within {timeout}s")

    def pyops_config(self, path: Path, repository: Path, extra: str = "") -> Path:
        body = (
            f'[[targets]]\nname = "{TARGET}"\ntype = "pgbackrest"\nstanza = "{STANZA}"\n'
            f"dsn = {toml_str(self.pg.dsn())}\npgbackrest_config = {toml_str(self.conf)}\n"
            f"system_user = {toml_str(self.user)}\n\n{extra}"
        )
        return write_config(path, repository, body)


def _own(path: Path, pg: PgCluster) -> None:
    if pg.run_as is not None:
        os.chown(path, pg.run_as[1], pg.run_as[2])


def setup_archiving(pg: PgCluster, settings: Mapping[str, str] | None = None) -> Archiving:
    """pgBackRest config and repository beside the cluster, archive_mode on (a restart),
    and the stanza created."""
    base = pg.base_dir / "pgbackrest"
    base.mkdir(mode=0o750)
    for name in ("repo", "log", "lock", "spool"):
        (base / name).mkdir(mode=0o750)
        _own(base / name, pg)
    _own(base, pg)
    options = {
        "repo1-path": str(base / "repo"),
        "repo1-retention-full": "2",
        "log-path": str(base / "log"),
        "lock-path": str(base / "lock"),
        "spool-path": str(base / "spool"),
        "log-level-file": "detail",
        "archive-timeout": str(ARCHIVE_TIMEOUT_S),
        "start-fast": "y",
        "compress-type": "lz4",
        **(settings or {}),
    }
    archiving = Archiving(pg, base)
    archiving.conf.write_text(
        "[global]\n"
        + "".join(f"{k}={v}\n" for k, v in options.items())
        + f"\n[{STANZA}]\npg1-path={pg.data_dir}\npg1-port={pg.port}\npg1-socket-path={pg.host}\n"
    )
    archiving.conf.chmod(0o640)
    _own(archiving.conf, pg)
    with (pg.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            "\n# --- pgBackRest archiving (tests/pgbackrest) ---\n"
            "archive_mode = on\n"
            f"archive_command = 'pgbackrest --config={archiving.conf} --stanza={STANZA} "
            "archive-push %p'\n"
            "wal_level = replica\n"
        )
    pg.stop(remove=False)
    pg._start()
    archiving.pgbackrest("stanza-create")
    return archiving


@dataclass
class Pyops:
    """pyops with a config holding the pgbackrest target."""

    config: Path

    def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=env, timeout=600)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, describe(proc)
        return proc

    def json(self, *args: str, expect: int = 0) -> dict[str, Any]:
        proc = self.run(*args, "--format", "json")
        assert proc.returncode == expect, describe(proc)
        data: dict[str, Any] = json.loads(proc.stdout)
        return data
