"""Peers in the same run as pyops (part of `make bench`), each only when installed:
restic taking the same dump on stdin, and borgmatic with its PostgreSQL hook.
Neither is installed by `make deps`: `apt-get install restic borgmatic` first."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from fixtures.pgcluster import PgCluster

PASSWORD = "bench-only-passphrase"


PEER_TIMEOUT = 90  # seconds: a peer that hangs is left out, not waited for
broken: dict[str, str] = {}  # peers that failed once in this run, and why: not tried again


def _sh(script: str, env: dict[str, str]) -> None:
    """Run a peer's pipeline in its own process group; one that hangs (borgmatic 1.7
    was seen spinning on its dump's named pipe) is killed whole after PEER_TIMEOUT."""
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, script, stderr=err[-2000:])


def restic(pg: PgCluster, db: str, work: Path, env: dict[str, str]) -> Callable[[], None] | None:
    """`pg_dump -Fc -Z0 | restic backup --stdin` (restic compresses and encrypts)."""
    if shutil.which("restic") is None:
        return None
    repo = work / "restic-repo"
    shutil.rmtree(repo, ignore_errors=True)
    env = {**env, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    _sh("restic init -q", env)
    return lambda: _sh(
        f"pg_dump -Fc -Z0 -d '{pg.dsn(db)}' | restic backup -q --stdin --stdin-filename db.pgdump",
        env,
    )


def borgmatic(pg: PgCluster, db: str, work: Path, env: dict[str, str]) -> Callable[[], None] | None:
    """borgmatic (1.7 configuration) with its postgresql_databases hook, custom format,
    into a repokey-encrypted borg repository."""
    if shutil.which("borgmatic") is None or shutil.which("borg") is None:
        return None
    repo = work / "borg-repo"
    shutil.rmtree(repo, ignore_errors=True)
    cfg = work / "borgmatic.yaml"
    empty = work / "borgmatic-empty"  # borg create needs a path besides the dump's pipe
    empty.mkdir(exist_ok=True)
    cfg.write_text(
        "location:\n"
        f"    source_directories: ['{empty}']\n"
        f"    repositories: ['{repo}']\n"
        f"    borgmatic_source_directory: '{work / 'borgmatic-state'}'\n"
        "storage:\n"
        f"    encryption_passphrase: '{PASSWORD}'\n"
        "    compression: zstd,3\n"
        "hooks:\n"
        "    postgresql_databases:\n"
        f"        - name: {db}\n"
        f"          hostname: {pg.host}\n"
        f"          port: {pg.port}\n"
        "          username: postgres\n"
        "          format: custom\n"
    )
    env = {**env, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "borg-home")}
    _sh(f"borg init -e repokey {repo}", env)
    return lambda: _sh(f"borgmatic -c {cfg} create", env)


def available(
    pg: PgCluster, db: str, work: Path, env: dict[str, str]
) -> dict[str, Callable[[], None]]:
    found = {
        "restic backup --stdin": restic(pg, db, work, env),
        "borgmatic create": borgmatic(pg, db, work, env),
    }
    return {name: fn for name, fn in found.items() if fn is not None and name not in broken}
