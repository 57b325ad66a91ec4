"""pyops.scratchcluster for real: initdb, a private socket and no TCP, no roles but its
superuser, and nothing left afterwards however the block ends."""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from drill_support import scratch_tmpdir
from fixtures.pgcluster import PgNotAvailable, find_bindir

from pyops import scratchcluster
from pyops.errors import PyopsError


@pytest.fixture(autouse=True)
def server_installed() -> None:
    try:
        find_bindir()
    except PgNotAvailable as exc:
        pytest.skip(str(exc))
    if not scratchcluster.installed():
        pytest.skip("no /usr/lib/postgresql/<major>/bin with a server")


@pytest.fixture
def parent() -> Iterator[Path]:
    with scratch_tmpdir() as path:
        yield path


def alive(pid: int) -> bool:
    """Not gone, and not a zombie waiting for init (the server is not our child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def postmaster_pid(cluster: scratchcluster.Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split("\n", 1)[0])


def test_a_bare_private_cluster_then_nothing(parent: Path) -> None:
    newest, _ = scratchcluster.installed()[-1]
    with scratchcluster.start(newest, parent) as cluster:
        assert cluster.base is not None and cluster.base.parent == parent
        pid = postmaster_pid(cluster)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            assert conn.info.server_version // 10000 == newest
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1"
            ).fetchall()
            assert roles == [("postgres",)]  # no application roles
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # no TCP
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        # the socket is private: only its owner (and root) get through
        sock = cluster.socket_dir.stat()
        assert sock.st_mode & 0o777 == 0o700
        owner = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert sock.st_uid == owner
        assert (cluster.data / "PG_VERSION").stat().st_uid == owner
        assert cluster.leftover is None
    assert not alive(pid)
    assert cluster.leftover is None
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("raised", [RuntimeError, KeyboardInterrupt], ids=["error", "ctrl-c"])
def test_removed_when_the_block_fails_or_is_interrupted(
    parent: Path, raised: type[BaseException]
) -> None:
    with pytest.raises(raised), scratchcluster.start(None, parent) as cluster:
        pid = postmaster_pid(cluster)
        raise raised("inside the block")
    assert not alive(pid)
    assert list(parent.iterdir()) == []


def test_removed_even_when_its_server_died(parent: Path) -> None:
    with scratchcluster.start(None, parent) as cluster:
        pid = postmaster_pid(cluster)
        os.kill(pid, signal.SIGKILL)
    assert cluster.leftover is None
    assert list(parent.iterdir()) == []


def test_a_parent_the_postgres_user_cannot_reach_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only as root does the cluster run as another user")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with (
        pytest.raises(PyopsError, match=r"cannot reach .*set TMPDIR"),
        scratchcluster.start(None, closed),
    ):
        pass
    assert list(closed.iterdir()) == []


def test_major_of_reads_only_a_number() -> None:
    assert scratchcluster.major_of("15.4 (Debian 15.4-1.pgdg120+1)") == 15
    assert scratchcluster.major_of("9.6.24") == 9
    assert scratchcluster.major_of("17devel") == 17
    for bad in ("../../bin", "", None, 15, "x15", "12345"):
        assert scratchcluster.major_of(bad) is None, bad


def test_a_major_not_installed_falls_back_to_the_newest() -> None:
    newest = scratchcluster.installed()[-1]
    assert scratchcluster.choose(999) == newest
    assert scratchcluster.choose(None) == newest
